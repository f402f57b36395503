"""experiments.screen: the adoption rule's mean validation accuracy and the summed test confusions of a screen."""

from __future__ import annotations

import json

from experiments.screen import main, mean_report, offset_of, read_runs, summed_confusions


def _folder(root, name: str, vals: dict[str, float], confusion: list[list[int]]) -> str:
    folder = root / name
    splits = {fold: {"0": {"val_accuracy": v, "offline_accuracy_torch": v - 0.1}} for fold, v in vals.items()}
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"splits": splits}))
    for fold in vals:
        (folder / fold).mkdir()
        (folder / fold / "metrics.json").write_text(json.dumps(
            {"test": {"confusion": confusion, "labels": ["a", "b"]}, "val": {"confusion": confusion,
                                                                         "labels": ["a", "b"]}}))
    return str(folder)


def test_means_per_offset_and_over_every_run(tmp_path) -> None:
    one = _folder(tmp_path, "X_off1_s0", {"loso-ann": 0.8, "loso-bob": 0.6}, [[1, 0], [0, 1]])
    two = _folder(tmp_path, "X_off2_s0", {"loso-ann": 0.5, "loso-bob": 0.7}, [[1, 0], [0, 1]])
    runs = read_runs([one, two])
    assert [(r.fold, r.val_accuracy) for r in runs] == [("loso-ann", 0.8), ("loso-bob", 0.6), ("loso-ann", 0.5),
                                                         ("loso-bob", 0.7)]
    lines = mean_report(runs)
    assert lines[0] == "X_off1_s0: ann=0.800 bob=0.600"
    assert "offset 1: 2 runs, mean validation 0.7000" in lines and "offset 2: 2 runs, mean validation 0.6000" in lines
    assert lines[-1] == "all 4 runs: mean validation 0.6500 (test, printed and not used: 0.5500)"
    assert offset_of("out/RV05_s1") == "1" and offset_of("out/RV05_off3_s1/") == "3"


def test_confusions_are_summed_per_fold_and_the_largest_named(tmp_path, capsys) -> None:
    one = _folder(tmp_path, "X_off1_s0", {"loso-ann": 0.8}, [[3, 2], [0, 5]])
    two = _folder(tmp_path, "X_off2_s0", {"loso-ann": 0.8}, [[1, 4], [1, 4]])
    (tmp_path / "X_off1_s0.log").write_text("a log beside the folders")
    total, labels = summed_confusions([one, two])["loso-ann"]
    assert total.tolist() == [[4, 6], [1, 9]] and labels == ["a", "b"]
    assert main(["confusions", one, two, str(tmp_path / "X_off1_s0.log")]) == 0
    out = capsys.readouterr()
    assert "loso-ann: accuracy 0.650; recall a=0.40 b=0.90" in out.out
    assert "most confused: a -> b: 6 of 10, b -> a: 1 of 10" in out.out
    assert "skipped 1 paths that are not folders" in out.err
    assert main(["mean", str(tmp_path / "missing")]) == 1

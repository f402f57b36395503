"""experiments.screen: the adoption rule's mean validation accuracy, its pairwise verdict and the summed test
confusions of a screen."""

from __future__ import annotations

import json

import pytest

from experiments._common import environment
from experiments.screen import (compare_report, environment_report, main, mean_report, offset_of, pair_runs,
                                read_runs, summed_confusions)


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


def _arm(root, name: str, vals: dict[str, float], speaker: str, refit: float | None = None) -> str:
    """A folder of one seed's runs whose records name their validation speaker (a refit's record with ``refit``)."""
    folder = root / name
    folder.mkdir()
    splits = {}
    for fold, v in vals.items():
        rec = {"val_accuracy": v, "offline_accuracy_torch": v - 0.1, "val_speaker": speaker}
        if refit is not None:
            rec = {**rec, "selection": dict(rec), "offline_accuracy_torch": refit}
        splits[fold] = {"0": rec}
    (folder / "results.json").write_text(json.dumps({"splits": splits}))
    return str(folder)


def test_compare_pairs_runs_by_fold_seed_and_validation_speaker(tmp_path) -> None:
    base = read_runs([_arm(tmp_path, "B_off1_s0", {"loso-ann": 0.70, "loso-bob": 0.80}, "cid"),
                      _arm(tmp_path, "B_off2_s0", {"loso-ann": 0.60}, "dan")])
    cand = read_runs([_arm(tmp_path, "C_off1_s0", {"loso-ann": 0.75, "loso-bob": 0.78}, "cid", refit=0.9),
                      _arm(tmp_path, "C_off3_s0", {"loso-ann": 0.99}, "eve")])
    assert cand[0].test_accuracy == 0.65 and cand[0].refit_accuracy == 0.9  # the selection run's test, the refit's
    pairs, alone = pair_runs(base, cand)
    assert [(b.val_accuracy, c.val_accuracy) for b, c in pairs] == [(0.70, 0.75), (0.80, 0.78)]
    assert sorted(r.key[2] for r in alone) == ["dan", "eve"]  # other validation speakers: never paired
    lines = compare_report(pairs, gate=0.02, min_higher=1)
    assert "2 pairs: mean validation base 0.7500, candidate 0.7650 (+0.0150); higher in 1, lower in 1, tied in 0" in \
        lines[-4]
    assert lines[-3] == "test of the selection runs, printed and not used: base 0.6500, candidate 0.6650"
    assert lines[-2] == "candidate refits' test, printed and not used: 0.9000 over 2 runs"
    assert lines[-1] == "verdict: NOT ADOPTED (the rule: mean >= 0.7700 and higher in >= 1)"
    assert compare_report(pairs, gate=0.01)[-1] == "verdict: ADOPT (the rule: mean >= 0.7600)"
    assert compare_report(pairs, gate=0.01, min_higher=2)[-1].startswith("verdict: NOT ADOPTED")
    assert compare_report([], gate=0.01) == ["no pairs: the two arms share no fold, seed and validation speaker"]


def test_compare_refuses_an_arm_with_a_run_twice(tmp_path, capsys) -> None:
    one = _arm(tmp_path, "B_s0", {"loso-ann": 0.7}, "cid")
    again = _arm(tmp_path, "B_again_s0", {"loso-ann": 0.8}, "cid")
    with pytest.raises(ValueError, match="two runs of"):
        pair_runs(read_runs([one, again]), [])
    assert main(["compare", one, "--base", one, again]) == 1
    assert "two runs of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", one])  # no --base
    assert main(["compare", one, "--base", _arm(tmp_path, "C_s0", {"loso-ann": 0.6}, "cid"), "--gate", "0.05"]) == 0
    assert "verdict: ADOPT (the rule: mean >= 0.6500)" in capsys.readouterr().out


def test_compare_says_whether_the_arms_ran_in_one_environment(tmp_path, capsys) -> None:
    """A run repeats to the digit only on its own kind of machine: compare names environments that differ."""
    env = environment()
    assert set(env) == {"python", "packages", "cpu", "cpus", "cpu_flags"} and env["packages"]["numpy"]
    folders = {}
    for name, e in (("B_s0", env), ("C_s0", env), ("D_s0", {**env, "cpu_flags": ["avx2"]}), ("E_s0", None)):
        folders[name] = _arm(tmp_path, name, {"loso-ann": 0.7}, "cid")
        if e is not None:
            path = tmp_path / name / "results.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "environment": e}))
    same = environment_report([folders["B_s0"]], [folders["C_s0"]])
    assert same == [f"environment: the same for all 2 folders that recorded one ({env['cpu']}, {env['cpus']} CPUs, "
                    f"{'/'.join(env['cpu_flags'])})"]
    differ = environment_report([folders["B_s0"]], [folders["D_s0"]])
    assert len(differ) == 1 and differ[0].startswith("WARNING: the runs recorded 2 different environments "
                                                     "(differing in cpu_flags)")
    unknown = environment_report([folders["E_s0"]], [folders["C_s0"]])
    assert unknown[-1].startswith("environment not recorded by 1 folder(s)") and folders["E_s0"] in unknown[-1]
    assert main(["compare", folders["D_s0"], "--base", folders["B_s0"]]) == 0
    assert "WARNING: the runs recorded 2 different environments" in capsys.readouterr().out

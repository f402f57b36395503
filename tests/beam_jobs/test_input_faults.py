"""Inputs that must not break a batch job (issue 13): decoding bounds, special files and names.

Each fault becomes one dead letter with its reason; the job still writes its summary, with
``inputs == outputs + dead_letters``, and the CLI exits 0 (some inputs succeeded) or 1 (none did).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rnnstream.beam_jobs import infer
from rnnstream.cli import main as cli_main

from .conftest import LABEL_PATTERN, RATE, read_jsonl, tone, write_good_audio

FLAGS = ["--sample-rate", str(RATE), "--n-mels", "20", "--runner", "DirectRunner"]
BAD_NAME = b"9_bad\xff_0.wav"


def write_faults(root: Path) -> dict[str, tuple[str, str]]:
    """Faulty inputs in ``root`` -> {path as listed (os.fsdecode): (dead-letter kind, reason fragment)}."""
    faults: dict[str, tuple[str, str]] = {}
    p = root / "8_slow_0.wav"  # 800 frames declaring 1 Hz: 800 s, 6.4 M samples once resampled to 8 kHz
    sf.write(p, tone(800, 0.1, seed=1, rate=1), 1, subtype="PCM_16")
    faults[str(p)] = ("SampleRateTooLowError", "8_slow_0.wav: sample rate 1 Hz is below the minimum of 1000 Hz")
    p = root / "8_slow_1.wav"
    sf.write(p, tone(800, 1.0, seed=2, rate=8), 8, subtype="PCM_16")
    faults[str(p)] = ("SampleRateTooLowError", "8_slow_1.wav: sample rate 8 Hz is below the minimum of 1000 Hz")
    p = root / "5_fifo_0.wav"
    os.mkfifo(p)
    faults[str(p)] = ("SpecialFileError", "5_fifo_0.wav: is a FIFO (named pipe), not a regular file")
    raw = os.fsencode(root) + b"/" + BAD_NAME
    with open(raw, "wb") as fh:
        fh.write((root / "0_ann_0.wav").read_bytes())
    faults[os.fsdecode(raw)] = ("FileNameError", "9_bad\\xff_0.wav: the file name is not valid UTF-8")
    os.symlink("6_loop_1.wav", root / "6_loop_0.wav")
    os.symlink("6_loop_0.wav", root / "6_loop_1.wav")
    for name in ("6_loop_0.wav", "6_loop_1.wav"):
        faults[str(root / name)] = ("BrokenLinkError", f"{name}: symbolic-link loop")
    os.symlink("gone.wav", root / "6_dangle_0.wav")
    faults[str(root / "6_dangle_0.wav")] = ("BrokenLinkError", "6_dangle_0.wav: dangling symbolic link to 'gone.wav'")
    return faults


@pytest.fixture
def faulty_corpus(tmp_path: Path) -> tuple[Path, list[Path], dict[str, tuple[str, str]]]:
    root = tmp_path / "corpus"
    root.mkdir()
    good = write_good_audio(root, n=2)
    return root, good, write_faults(root)


def check_letters(out: Path, faults: dict[str, tuple[str, str]]) -> None:
    letters = {d["path"]: d for d in read_jsonl(out / "dead_letter.jsonl")}
    assert set(letters) == set(faults)
    for path, (kind, fragment) in faults.items():
        assert letters[path]["kind"] == kind, letters[path]
        assert fragment in letters[path]["reason"], letters[path]


@pytest.mark.timeout(180)
def test_featurize_turns_every_fault_into_a_dead_letter_and_finishes(faulty_corpus, tmp_path, capsys):
    root, _good, faults = faulty_corpus
    out = tmp_path / "out"
    assert cli_main(["featurize", "--input", str(root), "--output", str(out), *FLAGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (9, 2, 7)
    assert summary["dead_letter_kinds"] == {"BrokenLinkError": 3, "FileNameError": 1, "SampleRateTooLowError": 2,
                                            "SpecialFileError": 1}
    check_letters(out, faults)
    assert json.loads(capsys.readouterr().out)["inputs"] == 9  # the summary is printed


@pytest.mark.timeout(180)
def test_featurize_exits_1_when_every_input_is_a_fault(faulty_corpus, tmp_path, capsys):
    root, good, faults = faulty_corpus
    for p in good:
        p.unlink()
    out = tmp_path / "out"
    assert cli_main(["featurize", "--input", str(root), "--output", str(out), *FLAGS]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (7, 0, 7)
    assert "all 7 input(s) became dead letters" in capsys.readouterr().err
    check_letters(out, faults)


@pytest.mark.timeout(180)
def test_decoding_bounds_are_flags(tmp_path):
    """--max-seconds refuses a long file from its header; --min-sample-rate lowers the rate bound."""
    root = tmp_path / "c"
    root.mkdir()
    sf.write(root / "0_ann_0.wav", tone(2000, 200.0, seed=0), RATE, subtype="PCM_16")  # 0.25 s
    sf.write(root / "1_ann_0.wav", tone(4000, 300.0, seed=1), RATE, subtype="PCM_16")  # 0.5 s
    sf.write(root / "2_ann_0.wav", tone(80, 1.0, seed=2, rate=8), 8, subtype="PCM_16")  # 10 s at 8 Hz
    sf.write(root / "3_ann_0.wav", tone(80, 0.1, seed=3, rate=1), 1, subtype="PCM_16")  # 80 s at 1 Hz
    out = tmp_path / "out"
    argv = ["featurize", "--input", str(root), "--output", str(out), *FLAGS, "--max-seconds", "20",
            "--min-sample-rate", "4"]
    assert cli_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (4, 3, 1)
    (letter,) = read_jsonl(out / "dead_letter.jsonl")
    assert letter["kind"] == "SampleRateTooLowError"
    assert letter["reason"].endswith("3_ann_0.wav: sample rate 1 Hz is below the minimum of 4 Hz; refused before "
                                     "decoding (--min-sample-rate / AudioLimits.min_rate)")
    assert cli_main([*argv[:-4], "--max-seconds", "0.3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (4, 1, 3)
    letters = {Path(d["path"]).name: d for d in read_jsonl(out / "dead_letter.jsonl")}
    assert letters["1_ann_0.wav"]["kind"] == "AudioTooLongError"
    assert "1_ann_0.wav: 4000 frames at 8000 Hz last 0.5 s, longer than the maximum of 0.3 s" in \
        letters["1_ann_0.wav"]["reason"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    import torch

    from rnnstream.models.checkpoint import save_checkpoint
    from rnnstream.models.rnn import rnn_classifier
    from rnnstream.pipeline.config import FeatureConfig

    cfg = FeatureConfig.audio_default(sample_rate=RATE, n_mels=20)
    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(str(ckpt), rnn_classifier(input_dim=cfg.dim, num_classes=3, hidden_size=8, num_layers=1), cfg,
                    labels=["0", "1", "2"])
    return ckpt


@pytest.mark.timeout(180)
def test_infer_turns_every_fault_into_a_dead_letter_and_finishes(classifier, faulty_corpus, tmp_path, capsys):
    root, good, faults = faulty_corpus
    out = tmp_path / "out"
    argv = ["infer", "--model", str(classifier), "--input", str(root), "--output", str(out),
            "--runner", "DirectRunner"]
    assert cli_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (9, 2, 7)
    check_letters(out, faults)
    # the bounds are flags: 8 Hz is allowed now, and 100 s is not too long; the 1 Hz file lasts 800 s
    assert cli_main([*argv, "--min-sample-rate", "1", "--max-seconds", "100"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (9, 3, 6)
    letters = {Path(d["path"]).name: d for d in read_jsonl(out / "dead_letter.jsonl")}
    assert letters["8_slow_0.wav"]["kind"] == "AudioTooLongError" and "8_slow_1.wav" not in letters
    assert "800 frames at 1 Hz last 800.0 s, longer than the maximum of 100 s" in letters["8_slow_0.wav"]["reason"]
    for p in good:
        p.unlink()
    assert cli_main(argv) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (7, 0, 7)


@pytest.mark.timeout(180)
def test_infer_counts_labels_the_model_never_saw_apart_from_accuracy(classifier, tmp_path, caplog):
    root = tmp_path / "c"
    root.mkdir()
    good = write_good_audio(root, n=2)  # labels 0 and 1: the model knows them
    for name, seed in (("7_ann_0.wav", 7), ("7_bob_1.wav", 8), ("8_ann_0.wav", 9)):
        sf.write(root / name, tone(2400, 250.0, seed=seed), RATE, subtype="PCM_16")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="rnnstream.beam_jobs.infer"):
        summary = infer.infer_corpus(str(classifier), [str(root)], str(out), label_pattern=LABEL_PATTERN,
                                     pipeline_args=["--runner", "DirectRunner"])
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (5, 5, 0)
    assert summary["labeled"] == 2 and summary["unknown_labels"] == 3
    assert summary["unknown_label_values"] == ["7", "8"]
    preds = {Path(p["path"]).name: p for p in read_jsonl(out / "predictions.jsonl")}
    right = sum(preds[p.name]["predicted"] == preds[p.name]["label"] for p in good)
    assert summary["accuracy"] == right / 2
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert ("3 prediction(s) have a known label the model never saw ('7', '8'; the model's labels are "
            "['0', '1', '2'])") in warning.getMessage()


def test_accuracy_summary_without_model_labels_counts_every_label():
    from rnnstream.beam_jobs.infer import PredictionRecord, accuracy_summary

    preds = [PredictionRecord(id=str(i), path=str(i), predicted="a", scores=[1.0], frames=1, label=lab, metadata={})
             for i, lab in enumerate(["a", "b", None])]
    assert accuracy_summary(preds, ()) == {"labeled": 2, "accuracy": 0.5}
    assert accuracy_summary(preds, ("x",)) == {"unknown_labels": 2, "unknown_label_values": ["a", "b"]}
    assert np.isclose(accuracy_summary(preds, ("a", "b"))["accuracy"], 0.5)


def test_a_remote_file_read_is_capped(tmp_path, monkeypatch):
    """No size is known before reading a gs:// or s3:// file: the read stops at max_bytes + 1."""
    from rnnstream.beam_jobs.common import InputRecord
    from rnnstream.beam_jobs.featurize import FileFeaturizer
    from rnnstream.pipeline.audio_io import AudioLimits
    from rnnstream.pipeline.config import FeatureConfig
    from rnnstream.pipeline.errors import AudioTooLargeError

    wav = tmp_path / "a.wav"
    sf.write(wav, tone(4000, 300.0, seed=0), RATE, subtype="PCM_16")
    asked = []

    def fake_read(path: str, max_bytes: int | None = None, size: int | None = None) -> bytes:
        asked.append((path, max_bytes, size))
        return wav.read_bytes()[: None if max_bytes is None else max_bytes + 1]

    fz = FileFeaturizer(FeatureConfig.audio_default(sample_rate=RATE, n_mels=20), limits=AudioLimits(max_bytes=1000))
    monkeypatch.setattr(fz, "_read", fake_read)
    with pytest.raises(AudioTooLargeError, match=r"^gs://b/0_a_0\.wav: the file holds at least 1001 bytes, more than "
                       r"the maximum of 1000 bytes"):
        fz(InputRecord(path="gs://b/0_a_0.wav"))
    assert asked == [("gs://b/0_a_0.wav", 1000, None)]  # no size known: the capped read decides


def test_a_local_read_is_sized_by_the_stat_and_still_bounded_when_the_file_grew(tmp_path):
    """Local files are read with ``open`` for the size ``stat`` gave; a file that grew since is read on,
    up to max_bytes + 1 (so the size check still refuses it), never cut at the old size."""
    from rnnstream.beam_jobs.featurize import FileFeaturizer

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 8)  # 2048 bytes
    read = FileFeaturizer._read
    assert read(str(path), None, 2048) == path.read_bytes()
    assert read(str(path), 4096, 100) == path.read_bytes()  # grew from 100 to 2048 bytes: all of it
    assert len(read(str(path), 1000, 100)) == 1001  # grew past the bound: max_bytes + 1, refused by check_size
    assert len(read(str(path), 1000, 2048)) == 1001

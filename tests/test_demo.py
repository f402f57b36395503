"""Smoke tests of ``rnnstream demo`` (tiny settings) and of the embedded-data loaders it uses."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rnnstream.pipeline.sensors import SensorFeaturizer, read_sensor_table
from rnnstream import datasets as D
from rnnstream import demo

PLOTS = ("curves.png", "confusion.png", "confusion_streaming.png", "stream_trace.png")


def _check_report(out: str, n_test: int) -> dict:
    with open(os.path.join(out, "report.json"), encoding="utf-8") as fh:
        report = json.load(fh)
    s = report["streaming"]
    assert s["n"] == n_test
    assert 0.0 <= s["accuracy_streaming_onnx"] <= 1.0
    # streaming through onnxruntime chunk by chunk must reproduce offline PyTorch
    assert s["label_agreement"] == 1.0
    assert s["accuracy_streaming_onnx"] == s["accuracy_offline_torch"]
    assert s["max_abs_score_diff"] < 1e-4
    assert s["max_abs_logit_diff_all_frames"] < 1e-3
    assert s["chunks"] > n_test and s["latency_ms_mean"] > 0
    for name in PLOTS:
        path = os.path.join(out, name)
        assert os.path.getsize(path) > 1000, name
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.exists(os.path.join(out, "model.onnx"))
    return report


def test_uea_tables_round_trip_exactly(tmp_path):
    """The sensor tables hold the aeon series bit for bit, and the featurizer returns them frame for frame."""
    written = D.write_uea_tables("BasicMotions", str(tmp_path), splits=("test",), limit=1)
    assert len(written["test"]) == 4  # one per activity
    series = D.load_uea("BasicMotions", "test")
    cfg = D.uea_feature_config("BasicMotions")
    fz = SensorFeaturizer(cfg)
    for path in written["test"]:
        label, _, index = os.path.basename(path)[: -len(".csv")].split("_")
        original = series[int(index)]
        assert original.label == label
        ts, values = read_sensor_table(path, cfg)
        assert np.array_equal(values, original.values)
        np.testing.assert_allclose(np.diff(ts), 0.1, atol=1e-12)
        frames = fz.featurize(ts, values)
        assert len(frames) == original.values.shape[0] and not frames.segment_starts
        assert np.array_equal(frames.values, original.values)


def test_load_uea_refuses_unknown_split():
    with pytest.raises(ValueError, match="split must be"):
        D.load_uea("BasicMotions", "validation")


def test_demo_basicmotions_tiny(tmp_path, capsys):
    out = str(tmp_path / "demo_out")
    rc = demo.main(["--out", out, "--limit", "2", "--epochs", "1", "--hidden", "8", "--layers", "1", "--no-progress"])
    assert rc == 0
    report = _check_report(out, n_test=8)  # 2 per activity, 4 activities
    assert report["streaming"]["chunk_s"] == 1.0
    assert "accuracy, streamed through onnxruntime" in capsys.readouterr().out


def test_demo_audio_dir(tmp_path):
    """The same job on a folder of labelled WAVs (synthetic tones here; FSDD in the experiments)."""
    from rnnstream.pipeline.audio_io import write_audio

    audio = tmp_path / "wavs"
    audio.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 8000.0
    for label, freq in (("0", 440.0), ("1", 1200.0)):
        for take in range(4):
            x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
            write_audio(str(audio / f"{label}_alice_{take}.wav"), x.astype(np.float32), 8000)
    out = str(tmp_path / "demo_audio")
    rc = demo.main(["--out", out, "--audio-dir", str(audio), "--test-match", "[0]", "--epochs", "1", "--hidden", "8",
                    "--layers", "1", "--val-fraction", "0", "--no-progress"])
    assert rc == 0
    report = _check_report(out, n_test=2)
    assert report["feature_config"]["kind"] == "audio"


def test_demo_reports_missing_audio(tmp_path, capsys):
    rc = demo.main(["--out", str(tmp_path / "o"), "--audio-dir", str(tmp_path), "--no-progress"])
    assert rc == 2  # an input error
    assert "no .wav files" in capsys.readouterr().err

"""``rnnstream stream``: JSON lines per chunk; the same final prediction for any chunking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from rnnstream.export import stream_cli
from rnnstream.export.onnx_export import export_onnx
from rnnstream.models.checkpoint import save_checkpoint
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig
from rnnstream import cli
from tests.export.conftest import FC, LABELS, noise


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.strip().splitlines()]


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("wav") / "clip.wav"
    sf.write(str(path), noise(1.23, seed=11), 8000, subtype="PCM_16")
    return str(path)


@pytest.mark.parametrize("raw_audio", [False, True])
def test_same_final_prediction_for_any_chunk_length(exported, wav: str, capsys, raw_audio: bool) -> None:
    _, model = exported("gru", "classify_mean", raw_audio=raw_audio)
    finals = {}
    for ms in (10, 100, 370, 0):
        assert stream_cli.main(["--model", model, "--input", wav, "--chunk-ms", str(ms), "--threads", "1"]) == 0
        lines = _lines(capsys.readouterr().out)
        final = lines[-1]
        assert final["final"] is True and final["frames"] == 123 and final["t"] == pytest.approx(1.23)
        chunks = lines[:-1]
        assert all("final" not in c for c in chunks)
        expected_chunks = 1 if ms == 0 else int(np.ceil(9840 / (ms * 8)))
        assert len(chunks) == expected_chunks
        assert sum(c["frames"] for c in chunks) == 123
        assert chunks[-1]["predicted"] == final["predicted"] and chunks[-1]["scores"] == final["scores"]
        assert chunks[0]["t"] == pytest.approx(min(9840, ms * 8 if ms else 9840) / 8000)
        finals[ms] = final
    for ms in (10, 100, 370):
        assert finals[ms]["predicted"] == finals[0]["predicted"] in LABELS
        assert list(finals[ms]["scores"]) == list(LABELS)
        np.testing.assert_allclose(list(finals[ms]["scores"].values()), list(finals[0]["scores"].values()),
                                   rtol=0, atol=1e-5)
    if raw_audio:  # before the first full hop there is no prediction yet
        stream_cli.main(["--model", model, "--input", wav, "--chunk-ms", "5"])
        first = _lines(capsys.readouterr().out)[0]
        assert first == {"t": 0.005, "frames": 0, "predicted": None}


def test_checkpoint_and_onnx_print_the_same_final(exported, wav: str, tmp_path, capsys) -> None:
    model, onnx_path = exported("lstm", "tag")
    ckpt = tmp_path / "m.pt"
    save_checkpoint(str(ckpt), model, FC, labels=list(LABELS))
    finals = []
    for m in (onnx_path, str(ckpt)):
        assert cli.main(["stream", "--model", m, "--input", wav, "--chunk-ms", "100", "--final-only"]) == 0
        lines = _lines(capsys.readouterr().out)
        assert len(lines) == 1
        finals.append(lines[0])
    assert finals[0]["predicted"] == finals[1]["predicted"]
    np.testing.assert_allclose(list(finals[0]["scores"].values()), list(finals[1]["scores"].values()), atol=1e-5)


def test_sensor_table_streams_by_time_windows(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    fc = FeatureConfig.sensor_default(["x", "y"], rate_hz=4.0, max_gap_s=2.0)
    model = rnn_classifier(input_dim=2, num_classes=2, hidden_size=8, num_layers=1).eval()
    path = export_onnx(model, tmp_path / "s.onnx", fc, ["calm", "busy"])
    rng = np.random.default_rng(0)
    t = np.concatenate([np.sort(rng.uniform(0, 10, 60)), np.sort(rng.uniform(15, 20, 30))])  # a 5 s gap
    table = tmp_path / "readings.csv"
    with open(table, "w", encoding="utf-8") as fh:
        fh.write("timestamp,x,y\n")
        for ti in t:
            fh.write(f"{ti:.6f},{np.sin(ti):.5f},{rng.normal():.5f}\n")
    finals = []
    for ms in (250, 1000, 3000, 0):
        assert stream_cli.main(["--model", path, "--input", str(table), "--chunk-ms", str(ms)]) == 0
        lines = _lines(capsys.readouterr().out)
        chunks, final = lines[:-1], lines[-1]
        if ms:
            # every chunk's rows lie in one window of ms from the first row
            assert len(chunks) == len(np.unique(np.floor((t - t[0]) / (ms / 1000))))
        assert final["t"] == pytest.approx(t[-1], abs=1e-6)
        finals.append(final)
    # The whole table in one chunk crosses the gap: that chunk says where the new segment starts.
    assert "segment_starts" in chunks[0] and len(chunks) == 1
    for f in finals[:-1]:
        assert f["predicted"] == finals[-1]["predicted"] and f["frames"] == finals[-1]["frames"]
        np.testing.assert_allclose(list(f["scores"].values()), list(finals[-1]["scores"].values()), rtol=0, atol=1e-5)


def test_bad_input_file_reports_typed_error(exported, tmp_path, capsys) -> None:
    _, model = exported("gru", "tag")
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00")
    assert stream_cli.main(["--model", model, "--input", str(bad)]) == 2  # an input error
    err = capsys.readouterr().err
    assert err.startswith("rnnstream stream: error: ") and "broken.wav" in err and "Traceback" not in err
    assert stream_cli.main(["--model", str(tmp_path / "missing.onnx"), "--input", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "rnnstream stream: error: " in err and "missing.onnx" in err and "Traceback" not in err


def test_chunk_shorter_than_a_sample_refused(exported, wav: str, capsys) -> None:
    _, model = exported("gru", "tag")
    assert stream_cli.main(["--model", model, "--input", wav, "--chunk-ms", "0.01"]) == 2
    assert "error: --chunk-ms 0.01 is less than one sample at 8000 Hz" in capsys.readouterr().err


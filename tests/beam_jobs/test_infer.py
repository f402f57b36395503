"""`rnnstream infer`: RunInference predictions equal the streaming runtime's final predictions per file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rnnstream.beam_jobs import featurize, infer
from rnnstream.beam_jobs.infer import RnnModelHandler
from rnnstream.api import load_backend
from rnnstream.models.checkpoint import save_checkpoint
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.audio_io import load_audio
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import CheckpointError, ConfigError
from rnnstream.pipeline.streaming import StreamSession

from .conftest import AUDIO_FLAGS, LABEL_PATTERN, RATE, label_of, read_jsonl, write_bad_audio, write_good_audio

CFG = FeatureConfig.audio_default(sample_rate=RATE, n_mels=20, resample=False)
LABELS = ["0", "1", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny untrained classifier (checkpoint + ONNX export) and a corpus of good and bad files."""
    root = tmp_path_factory.mktemp("infer")
    torch.manual_seed(0)
    model = rnn_classifier(input_dim=CFG.dim, num_classes=len(LABELS), hidden_size=12, num_layers=1)
    ckpt = root / "model.pt"
    save_checkpoint(str(ckpt), model, CFG, labels=LABELS)
    from rnnstream.export.onnx_export import export_onnx

    onnx_path = export_onnx(str(ckpt), str(root / "model.onnx"))
    corpus = root / "corpus"
    corpus.mkdir()
    good = write_good_audio(corpus)
    bad = write_bad_audio(corpus)
    return root, ckpt, Path(onnx_path), good, bad


def streaming_final(model_path: Path, wav: Path, chunk: int = 333):
    """What the streaming runtime says at the end of the file, pushed in odd-sized chunks."""
    session = StreamSession(load_backend(str(model_path)), sample_rate=CFG.audio.sample_rate)
    x = load_audio(wav, CFG)
    for i in range(0, len(x), chunk):
        session.push(x[i : i + chunk])
    return session.final()


def test_raw_files_predictions_equal_streaming_final(setup):
    root, ckpt, _, good, bad = setup
    out = root / "raw_out"
    rc = infer.main(["--model", str(ckpt), "--input", str(root / "corpus"), "--output", str(out),
                     "--label-pattern", LABEL_PATTERN])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (9, 4, 5)
    assert summary["labeled"] == 4 and 0.0 <= summary["accuracy"] <= 1.0
    preds = {p["path"]: p for p in read_jsonl(out / "predictions.jsonl")}
    assert set(preds) == {str(p) for p in good}
    for wav in good:
        want = streaming_final(ckpt, wav)
        got = preds[str(wav)]
        assert got["predicted"] == want.label and got["frames"] == want.frames
        np.testing.assert_allclose(got["scores"], want.values, rtol=1e-5, atol=1e-6)
        assert got["label"] == label_of(wav)[0]  # the truth; "predicted" is the model's answer
    dead = {d["path"]: d["kind"] for d in read_jsonl(out / "dead_letter.jsonl")}
    assert dead == {str(p): kind for p, kind in bad.items()}


def test_dataset_onnx_parquet_predictions_equal_streaming_final(setup):
    root, _, onnx_path, good, _ = setup
    ds = root / "ds"
    assert featurize.main(["--input", *[str(p) for p in good], "--output", str(ds), *AUDIO_FLAGS,
                           "--label-pattern", LABEL_PATTERN, "--num-shards", "2"]) == 0
    out = root / "ds_out"
    summary = infer.infer_corpus(str(onnx_path), [str(ds)], str(out), fmt="parquet", batch_size=3)
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (4, 4, 0)
    assert summary["metrics"] == {"inputs": 4, "predictions": 4, "dead_letters": 0}
    rows = {r["path"]: r for r in pq.read_table(out / "predictions.parquet").to_pylist()}
    assert set(rows) == {str(p) for p in good}
    for wav in good:
        want = streaming_final(onnx_path, wav)
        assert rows[str(wav)]["predicted"] == want.label
        np.testing.assert_allclose(rows[str(wav)]["scores"], want.values, rtol=1e-5, atol=1e-6)
        assert json.loads(rows[str(wav)]["metadata"]) == label_of(wav)[1]


def test_inference_errors_become_dead_letters(setup, tmp_path):
    """A model whose feature dim differs from a dataset's rows: each row is dead-lettered with the reason."""
    root, ckpt, _, good, _ = setup
    ds = tmp_path / "ds"
    featurize.featurize_corpus([str(good[0])], str(ds), CFG)
    other = tmp_path / "wide.pt"
    save_checkpoint(str(other), rnn_classifier(input_dim=CFG.dim, num_classes=2, hidden_size=4, num_layers=1), CFG)
    # corrupt one row's dimension behind the dataset's back: the model cannot take it
    import pyarrow as pa

    shard = next(ds.glob("examples-*.parquet"))
    table = pq.read_table(shard)
    row = table.to_pylist()[0]
    n = row["n_frames"] * row["dim"]
    bad = {**row, "id": "bad#0", "dim": row["dim"] // 2, "n_frames": n // (row["dim"] // 2)}
    pq.write_table(pa.Table.from_pylist([row, bad], schema=table.schema), shard)
    out = tmp_path / "out"
    summary = infer.infer_corpus(str(other), [str(ds)], str(out))
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (2, 1, 1)
    (letter,) = read_jsonl(out / "dead_letter.jsonl")
    assert letter["path"] == "bad#0" and letter["kind"] == "ShapeError" and "[T >= 1, 20]" in letter["reason"]


def test_failed_run_inference_batches_are_dead_lettered(setup, tmp_path, monkeypatch):
    """An exception inside run_inference goes through RunInference.with_exception_handling to dead letters."""
    root, ckpt, _, good, _ = setup

    def broken(self, batch, model, inference_args=None):
        raise ConfigError("model exploded")

    monkeypatch.setattr(RnnModelHandler, "run_inference", broken)
    out = tmp_path / "out"
    summary = infer.infer_corpus(str(ckpt), [str(p) for p in good[:2]], str(out))
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (2, 0, 2)
    letters = read_jsonl(out / "dead_letter.jsonl")
    assert {d["path"] for d in letters} == {str(p) for p in good[:2]}
    assert all(d["kind"] == "ConfigError" and d["reason"] == "model exploded" for d in letters)


def test_bad_invocations(setup, tmp_path):
    root, ckpt, _, good, _ = setup
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        infer.infer_corpus(str(tmp_path / "junk.pt"), [str(good[0])], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="--model"):
        infer.run(["--input", str(good[0]), "--output", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="feature options"):
        infer.run(["--model", str(ckpt), "--input", str(good[0]), "--output", str(tmp_path / "o"), "--n-mels", "5"])
    ds = tmp_path / "ds"
    featurize.featurize_corpus([str(good[0])], str(ds), FeatureConfig.audio_default(sample_rate=RATE, n_mels=21))
    with pytest.raises(ConfigError, match="featurized with"):
        infer.infer_corpus(str(ckpt), [str(ds)], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="DaskRunner"):
        infer.infer_corpus(str(ckpt), [str(good[0])], str(tmp_path / "o"), batch_size=4,
                           pipeline_args=["--runner=DaskRunner"])


def test_sensor_tables_one_prediction_per_file_equal_to_streaming(tmp_path):
    """A table with a long gap: per-segment predictions from fresh states; the object's predicted/scores are the
    last segment's, which is what the streaming runtime's final() says at the end of the file."""
    from rnnstream.pipeline.sensors import read_sensor_table
    from rnnstream.pipeline.streaming import SensorChunk

    from .conftest import write_sensor_table

    cfg = FeatureConfig.sensor_default(["ax", "ay"], timestamp_column="t", rate_hz=20.0, max_gap_s=1.0)
    torch.manual_seed(2)
    ckpt = tmp_path / "s.pt"
    save_checkpoint(str(ckpt), rnn_classifier(input_dim=cfg.dim, num_classes=2, hidden_size=6, num_layers=1), cfg,
                    labels=["still", "moving"])
    corpus = tmp_path / "s"
    corpus.mkdir()
    write_sensor_table(corpus / "a.csv", gap_at=30, seed=1)
    write_sensor_table(corpus / "b.csv", seed=2)
    out = tmp_path / "out"
    summary = infer.infer_corpus(str(ckpt), [str(corpus)], str(out))
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (2, 2, 0)
    preds = {Path(p["path"]).name: p for p in read_jsonl(out / "predictions.jsonl")}
    assert len(preds["a.csv"]["segments"]) == 2 and "segments" not in preds["b.csv"]
    for name, pred in preds.items():
        ts, vals = read_sensor_table(corpus / name, cfg)
        session = StreamSession(load_backend(str(ckpt)))
        for i in range(0, len(ts), 7):
            session.push(SensorChunk(ts[i : i + 7], vals[i : i + 7]))
        want = session.final()
        assert pred["predicted"] == want.label
        np.testing.assert_allclose(pred["scores"], want.values, rtol=1e-5, atol=1e-6)

"""The stream job on sensor streams: interleaved, shuffled, duplicated and missing chunks of irregular rows
give, per stream, exactly the predictions of a StreamSession fed that stream's rows in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.transforms.window import TimestampedValue

from rnnstream.beam_jobs import stream_job
from rnnstream.beam_jobs.messages import chunk, encode_message
from rnnstream.beam_jobs.stateful import StreamInference, StreamJobConfig
from rnnstream.beam_jobs.stream_job import WriteRecords, read_records
from rnnstream.api import load_backend
from rnnstream.models.checkpoint import save_checkpoint
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.streaming import SensorChunk, StreamSession, predict_signal

FC = FeatureConfig.sensor_default(["temp", "load"], rate_hz=10.0, max_gap_s=0.5, gap_policy="split")
ROWS = 12  # rows per chunk, ~0.6 s of irregular samples
N_CHUNKS = 5
T0 = 1_764_000_000.0


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(3)
    model = rnn_classifier(input_dim=FC.dim, num_classes=3, hidden_size=8, num_layers=1)
    path = tmp_path_factory.mktemp("sensor_model") / "model.pt"
    save_checkpoint(str(path), model, FC, labels=["idle", "run", "fault"])
    return str(path)


def rows(stream: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Irregular timestamps (strictly increasing, ~50 ms apart) and two channels, cut into chunks."""
    rng = np.random.default_rng(stream)
    n = ROWS * N_CHUNKS
    ts = 100.0 * stream + np.cumsum(rng.uniform(0.03, 0.07, n))
    vals = np.stack([np.sin(ts * (1 + stream)), rng.standard_normal(n)], axis=1)
    return [(ts[i : i + ROWS], vals[i : i + ROWS]) for i in range(0, n, ROWS)]


def offline(backend: Any, chunks: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    session = StreamSession(backend)
    return [json.loads(json.dumps(session.push(SensorChunk(t, v)).to_dict())) for t, v in chunks]


def scenario() -> tuple[list[tuple[str, float]], dict[str, list[int]]]:
    """s0 shuffled with duplicates; s1 in order; s2 without chunk 2; s3 reversed. Returns lines, kept seqs."""
    rng = np.random.default_rng(11)
    kept = {"s0": [0, 1, 2, 3, 4], "s1": [0, 1, 2, 3, 4], "s2": [0, 1, 3, 4], "s3": [0, 1, 2, 3, 4]}
    order = {"s0": [3, 0, 1, 1, 4, 2, 0], "s1": [0, 1, 2, 3, 4], "s2": [0, 1, 3, 4], "s3": [4, 3, 2, 1, 0]}
    queues = {}
    for s, seqs in order.items():
        data = rows(int(s[1]))
        queues[s] = [(encode_message(chunk(s, q, T0 + q, timestamps=data[q][0], values=data[q][1])), T0 + q)
                     for q in seqs]
    arrival = []
    while any(queues.values()):
        k = rng.choice(sorted(k for k, v in queues.items() if v))
        arrival.append(queues[k].pop(0))
    return arrival, kept


def check(backend: Any, preds: list[dict[str, Any]], kept: dict[str, list[int]]) -> None:
    for s, seqs in kept.items():
        got = sorted((p for p in preds if p["stream"] == s), key=lambda p: p["seq"])
        assert [p["seq"] for p in got] == seqs, s
        data = rows(int(s[1]))
        want = offline(backend, [data[q] for q in seqs])
        assert [{k: v for k, v in p.items() if k not in ("stream", "seq", "event_time")} for p in got] == want, s
        ts = np.concatenate([data[q][0] for q in seqs])
        final = predict_signal(backend, SensorChunk(ts, np.concatenate([data[q][1] for q in seqs])))
        assert got[-1]["predicted"] == final.label
        assert got[-1]["scores"].keys() == final.scores.keys()
        np.testing.assert_allclose([got[-1]["scores"][k] for k in final.scores], list(final.scores.values()),
                                   rtol=1e-5, atol=1e-6)
    # s2's hole (1 chunk ~0.6 s > max_gap_s) made the featurizer start a new segment, i.e. a state reset.
    assert any("segment_starts" in p for p in preds if p["stream"] == "s2" and p["seq"] == 3)


def test_sensor_replay_equals_offline(tmp_path: Path, model_path: str) -> None:
    backend = load_backend(model_path, provider="cpu")
    lines, kept = scenario()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(line + "\n" for line, _ in lines))
    out = tmp_path / "out"
    stream_job.run(["--model", model_path, "--input", str(src), "--output", str(out), "--chunk-size", str(ROWS)])
    preds = read_records(str(out), "predictions")
    check(backend, preds, kept)
    gaps = [e for e in read_records(str(out), "events") if e["type"] == "gap"]
    assert [(g["stream"], g["missing"], g["filled_samples"]) for g in gaps] == [("s2", [2], 0)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["messages_in"] == len(lines) == len(preds) + summary["duplicates"]
    assert summary["duplicates"] == 2 and summary["dead_letters"] == 0 and summary["balanced"] is True


def test_sensor_teststream_equals_offline(tmp_path: Path, model_path: str) -> None:
    backend = load_backend(model_path, provider="cpu")
    lines, kept = scenario()
    ts = BeamTestStream()
    for i in range(0, len(lines), 5):  # watermark steps that stay behind every gap deadline
        ts.add_elements([TimestampedValue(line, et) for line, et in lines[i : i + 5]])
        ts.advance_watermark_to(T0 + 0.1 * (i + 1))
    ts.advance_watermark_to_infinity()
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    out = str(tmp_path / "out")
    with beam.Pipeline(options=options) as p:
        _ = p | ts | StreamInference(model_path, StreamJobConfig(gap_timeout_s=2.0)) | WriteRecords(out)
    preds = read_records(out, "predictions")
    check(backend, preds, kept)
    assert read_records(out, "dead_letters") == []
    assert len(preds) == len(lines) - 2  # two duplicates

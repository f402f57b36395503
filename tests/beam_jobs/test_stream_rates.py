"""Sample rates in the stream job: the chunk that opens an audio stream declares its ``sample_rate``.

A stream without one is refused (dead letters naming the field and the model's rate) while the others go on;
a stream at another rate than the model's is resampled, its final prediction equal to offline prediction
over the whole signal; int16 and float32 payloads of the same audio give the same predictions (one codec
scale); eviction snapshots carry the rate, and a resume must declare it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rnnstream.beam_jobs import stream_job
from rnnstream.beam_jobs.messages import chunk, encode_message, resume
from rnnstream.beam_jobs.stateful import StreamJobConfig
from rnnstream.beam_jobs.stream_job import read_records
from rnnstream.pipeline.streaming import StreamSession

from rnnstream.api import Model, load_backend
from tests.beam_jobs.test_stream_job import RATE, T0, _save_model
from tests.beam_jobs.test_stream_ordering import BACKEND, Driver

FAST = 16000  # a stream rate other than the models' 8 kHz


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _save_model(tmp_path_factory.mktemp("rates_model") / "model.pt", seed=0)


@pytest.fixture(scope="module")
def backend(model_path: str) -> Any:
    return load_backend(model_path, provider="cpu")


def tone(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def quantised(x: np.ndarray) -> np.ndarray:
    """What an int16 payload of ``x`` decodes to: round(x * 32768) / 32768."""
    return (np.clip(np.round(x * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def lines_for(stream: str, x: np.ndarray, rate: int | None, n_chunks: int, *, dtype: str = "float32",
              every: bool = False) -> list[str]:
    """``x`` as ``n_chunks`` chunk messages, the last an end marker; ``rate`` on seq 0 (or on ``every`` chunk)."""
    parts = np.array_split(x, n_chunks)
    return [encode_message(chunk(stream, q, T0 + q * 0.1, audio=c, end=q == n_chunks - 1,
                                 sample_rate=rate if q == 0 or every else None), audio_dtype=dtype)
            for q, c in enumerate(parts)]


def assert_final_equals_offline(record: dict[str, Any], offline: Any, tol: float = 1e-5) -> None:
    assert record["predicted"] == offline.label and sorted(record["scores"]) == sorted(offline.scores)
    np.testing.assert_allclose([record["scores"][k] for k in offline.scores], list(offline.scores.values()),
                               rtol=0, atol=tol)


def test_replay_rates_missing_resampled_and_int16(tmp_path: Path, model_path: str, backend: Any) -> None:
    """One replay: s0 at the model's rate, s1 without a rate, s2 at 16 kHz, s3/s4 the same 16 kHz audio as
    int16 and as (quantised) float32 -- interleaved."""
    x0, x2, x3 = tone(0.6, RATE, 0), tone(0.5, FAST, 2), tone(0.45, FAST, 3)
    per_stream = {
        "s0": lines_for("s0", x0, RATE, 6),
        "s1": lines_for("s1", tone(0.4, RATE, 1), None, 4),
        "s2": lines_for("s2", x2, FAST, 5),
        "s3": lines_for("s3", x3, FAST, 5, dtype="int16"),
        "s4": lines_for("s4", quantised(x3), FAST, 5),
    }
    arrival = [line for group in zip(*(v[:4] for v in per_stream.values())) for line in group]
    arrival += [line for v in per_stream.values() for line in v[4:]]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(line + "\n" for line in arrival))
    out = tmp_path / "out"
    stream_job.run(["--runner=DirectRunner", "--model", model_path, "--input", str(src), "--output", str(out)])
    preds: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(read_records(str(out), "predictions"), key=lambda p: (p["stream"], p["seq"])):
        preds.setdefault(p["stream"], []).append(p)
    dead = read_records(str(out), "dead_letters")
    ends = {e["stream"]: e for e in read_records(str(out), "events") if e["type"] == "end"}
    model = Model(backend)
    # (a) s1 is refused, every chunk a dead letter naming the missing field and the model's rate
    assert "s1" not in preds
    assert sorted(d["seq"] for d in dead if d["stream"] == "s1") == [0, 1, 2, 3] and len(dead) == 4
    for d in dead:
        assert d["kind"] == "MessageError" and "'sample_rate'" in d["reason"] and f"{RATE} Hz" in d["reason"]
    assert ends["s1"]["predicted"] is None
    # the others are unaffected: s0 equals offline at the model's rate
    assert_final_equals_offline(preds["s0"][-1], model.predict(x0, sample_rate=RATE))
    assert_final_equals_offline(ends["s0"], model.predict(x0, sample_rate=RATE))
    # (b) s2 at 16 kHz into the 8 kHz model: final == offline over the resampled whole signal
    assert [p["seq"] for p in preds["s2"]] == list(range(5))
    assert_final_equals_offline(preds["s2"][-1], model.predict(x2, sample_rate=FAST))
    assert_final_equals_offline(ends["s2"], model.predict(x2, sample_rate=FAST))
    assert ends["s2"]["sample_rate"] == FAST and abs(ends["s2"]["t"] - x2.size / FAST) < 1e-6
    # (c) int16 and float32 payloads of the same audio: the same predictions, chunk by chunk
    strip = [{k: v for k, v in p.items() if k not in ("stream", "event_time")} for p in preds["s3"]]
    assert strip == [{k: v for k, v in p.items() if k not in ("stream", "event_time")} for p in preds["s4"]]
    assert_final_equals_offline(preds["s3"][-1], model.predict(quantised(x3), sample_rate=FAST))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["balanced"] is True and summary["dead_letters"] == 4


def test_opener_without_rate_is_refused_until_one_declares_it() -> None:
    """Only the opener must carry the rate; later chunks may. A stream whose first chunk lacks it stays
    closed (dead letters), and the first chunk that declares one opens it."""
    x = tone(0.3, RATE, 5)
    parts = np.array_split(x, 3)
    driver = Driver(StreamJobConfig(gap_policy="reset", gap_timeout_s=1.0, idle_timeout_s=10.0))
    driver.push(encode_message(chunk("a", 0, T0, audio=parts[0])))
    driver.push(encode_message(chunk("a", 1, T0 + 0.1, audio=parts[1], sample_rate=RATE)))
    driver.push(encode_message(chunk("a", 2, T0 + 0.2, audio=parts[2], end=True)))
    driver.finish()
    (dead,) = driver.records("dead_letters")
    assert dead["seq"] == 0 and dead["kind"] == "MessageError"
    assert "must carry 'sample_rate'" in dead["reason"] and "8000 Hz" in dead["reason"]
    session = StreamSession(BACKEND, sample_rate=RATE)
    want = [json.loads(json.dumps(session.push(c).to_dict())) for c in parts[1:]]
    got = [{k: v for k, v in p.items() if k not in ("stream", "seq", "event_time")} for p in driver.records(None)]
    assert got == want


def test_a_later_chunk_with_another_rate_is_a_dead_letter_naming_both() -> None:
    x = tone(0.4, RATE, 6)
    parts = np.array_split(x, 4)
    driver = Driver(StreamJobConfig(gap_timeout_s=1.0, idle_timeout_s=10.0))
    for q, c in enumerate(parts):
        rate = {0: RATE, 1: RATE, 2: FAST}.get(q)
        driver.push(encode_message(chunk("a", q, T0 + q * 0.1, audio=c, sample_rate=rate)))
    driver.finish()
    (dead,) = driver.records("dead_letters")
    assert dead["seq"] == 2 and dead["kind"] == "SampleRateError"
    assert "16000 Hz" in dead["reason"] and "8000 Hz" in dead["reason"]
    assert [(p["seq"], p.get("filled", False)) for p in driver.records(None)] == [(0, False), (1, False), (2, True),
                                                                                  (3, False)]


def test_no_resample_refuses_another_rate_naming_both() -> None:
    driver = Driver(StreamJobConfig(resample=False, idle_timeout_s=10.0))
    for line in lines_for("fast", tone(0.2, FAST, 7), FAST, 2, every=True) + lines_for("ok", tone(0.2, RATE, 8), RATE, 2):
        driver.push(line)
    driver.finish()
    dead = driver.records("dead_letters")
    assert [(d["stream"], d["seq"], d["kind"]) for d in dead] == [("fast", 0, "SampleRateError"),
                                                                 ("fast", 1, "SampleRateError")]
    assert all("16000 Hz" in d["reason"] and "8000 Hz" in d["reason"] for d in dead)
    assert {p["stream"] for p in driver.records(None)} == {"ok"}


def test_eviction_snapshot_carries_the_rate_and_resume_must_declare_it() -> None:
    x = tone(0.5, FAST, 9)
    parts = np.array_split(x, 5)
    first = Driver(StreamJobConfig(idle_timeout_s=10.0))
    for q in range(3):
        first.push(encode_message(chunk("r", q, T0 + q * 0.1, audio=parts[q], sample_rate=FAST if q == 0 else None)))
    first.finish()
    (ev,) = [e for e in first.records("events") if e["type"] == "eviction"]
    assert ev["sample_rate"] == FAST and ev["next_seq"] == 3
    snap = base64.b64decode(ev["snapshot"])
    second = Driver(StreamJobConfig(idle_timeout_s=10.0))
    second.push(encode_message(resume("w", 3, T0 + 1, snap)))  # no rate: refused
    second.push(encode_message(resume("v", 3, T0 + 1, snap, sample_rate=RATE)))  # another rate: refused
    second.push(encode_message(resume("r", 3, T0 + 1, snap, sample_rate=FAST)))
    for q in (3, 4):
        second.push(encode_message(chunk("r", q, T0 + 1 + q * 0.1, audio=parts[q], end=q == 4)))
    second.finish()
    dead = {d["stream"]: d for d in second.records("dead_letters")}
    assert dead["w"]["kind"] == "MessageError" and "'sample_rate'" in dead["w"]["reason"]
    assert dead["v"]["kind"] == "ResumeError" and "16000 Hz" in dead["v"]["reason"] and "8000 Hz" in dead["v"]["reason"]
    final = [p for p in second.records(None) if p["stream"] == "r"][-1]
    assert_final_equals_offline(final, Model(BACKEND).predict(x, sample_rate=FAST))


@pytest.mark.parametrize("policy", ["fill", "reset"])
def test_fill_and_reset_keep_the_stream_rate(policy: str) -> None:
    """seq 1 lost: filled with zeros at the stream's rate, or the stream restarts at its declared rate."""
    x = tone(0.4, FAST, 10)
    parts = np.array_split(x, 4)
    driver = Driver(StreamJobConfig(gap_policy=policy, gap_timeout_s=1.0, idle_timeout_s=10.0))
    for q in (0, 2, 3):
        driver.push(encode_message(chunk("g", q, T0 + q * 0.1, audio=parts[q], end=q == 3,
                                         sample_rate=FAST if q == 0 else None)))
    driver.finish()
    assert driver.records("dead_letters") == []
    if policy == "fill":
        signal = np.concatenate([parts[0], np.zeros(parts[0].size, np.float32), parts[2], parts[3]])
    else:
        signal = np.concatenate(parts[2:])
    assert_final_equals_offline(driver.records(None)[-1], Model(BACKEND).predict(signal, sample_rate=FAST))

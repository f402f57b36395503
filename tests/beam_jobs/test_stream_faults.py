"""Containment: one bad message never ends the stream job. Each fault becomes a dead letter with a precise
reason; the job exits 0 and writes its summary; the other streams' predictions stay exact (equal to offline
``rnnstream.api.Model(backend).predict``); counts in == predictions + duplicates + dead letters.

The faults run through the real CLI (``stream_job.main``) on a bounded replay, one file holding two good
streams and the bad lines, so each test checks the whole path: reading, parsing, the stream core, the sink.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rnnstream.beam_jobs import stream_job
from rnnstream.beam_jobs.messages import chunk, encode_message, resume
from rnnstream.beam_jobs.stream_job import _WriteShardFn, read_records
from rnnstream.pipeline.streaming import StreamSession

from rnnstream.api import Model, load_backend
from tests.beam_jobs.test_stream_job import CHUNK, LABELS, RATE, T0, _save_model, signal


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _save_model(tmp_path_factory.mktemp("fault_model") / "model.pt", seed=0)


@pytest.fixture(scope="module")
def backend(model_path: str) -> Any:
    return load_backend(model_path, provider="cpu")


def good_lines() -> list[bytes]:
    """Two healthy streams, g0 and g1, four chunks each, interleaved."""
    out = []
    for q in range(4):
        for s in (0, 1):
            out.append(encode_message(chunk(f"g{s}", q, T0 + q * 0.1, audio=signal(10 + s)[q],
                                             sample_rate=RATE if q == 0 else None)).encode())
    return out


def run_job(tmp_path: Path, bad: list[bytes], capsys: pytest.CaptureFixture[str], model_path: str) -> dict[str, Any]:
    lines = good_lines()
    mixed = lines[:3] + bad + lines[3:]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(line + b"\n" for line in mixed))
    out = tmp_path / "out"
    status = stream_job.main(["--model", model_path, "--input", str(src), "--output", str(out), "--runner", "DirectRunner"])
    capsys.readouterr()
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    preds = read_records(str(out), "predictions")
    dead = read_records(str(out), "dead_letters")
    real = [p for p in preds if not p.get("filled")]
    assert summary["messages_in"] == len(mixed) == len(real) + summary["duplicates"] + len(dead) + summary["resumes"]
    assert summary["balanced"] is True and summary["dead_letters"] == len(dead)
    return {"preds": preds, "dead": dead, "summary": summary, "events": read_records(str(out), "events")}


def assert_good_streams_exact(backend: Any, preds: list[dict[str, Any]]) -> None:
    model = Model(backend)
    for s in (0, 1):
        got = sorted((p for p in preds if p["stream"] == f"g{s}"), key=lambda p: p["seq"])
        assert [p["seq"] for p in got] == [0, 1, 2, 3]
        session = StreamSession(backend, sample_rate=RATE)
        want = [json.loads(json.dumps(session.push(c).to_dict())) for c in signal(10 + s)[:4]]
        assert [{k: p[k] for k in ("t", "frames", "predicted", "scores")} for p in got] == want
        final = model.predict(np.concatenate(signal(10 + s)[:4]), sample_rate=RATE)
        np.testing.assert_allclose([got[-1]["scores"][k] for k in LABELS], [final.scores[k] for k in LABELS],
                                   rtol=1e-5, atol=1e-6)


def the_dead(result: dict[str, Any]) -> dict[str, Any]:
    (dead,) = result["dead"]
    return dead


def test_a_line_that_is_not_utf8(tmp_path: Path, model_path: str, backend: Any, capsys: Any) -> None:
    line = b'{"stream": "b\xff\xfe", "seq": 0, "event_time": 1764000000.0, "audio": [0.0]}'
    result = run_job(tmp_path, [line], capsys, model_path)
    dead = the_dead(result)
    assert dead["kind"] == "MessageError" and dead["reason"].startswith("not UTF-8: byte 0xff at position 13")
    assert "\ufffd" in dead["message"]  # the line kept, undecodable bytes replaced
    assert_good_streams_exact(backend, result["preds"])


def test_an_integer_with_thousands_of_digits(tmp_path: Path, model_path: str, backend: Any, capsys: Any) -> None:
    lines = [b'{"stream": "b", "seq": ' + b"9" * 5000 + b', "event_time": 1764000000.0, "audio": [0.0]}',
             b'{"stream": "b", "seq": 0, "event_time": ' + b"1" * 400 + b', "audio": [0.0]}',
             b'{"stream": "b", "seq": 0, "event_time": 1764000000.0, "audio": [1' + b"0" * 400 + b"]}"]
    result = run_job(tmp_path, lines, capsys, model_path)
    reasons = sorted((d["kind"], d["reason"]) for d in result["dead"])
    assert reasons[0][0] == "MessageError" and "Exceeds the limit (4300 digits)" in reasons[0][1]
    assert reasons[1][0] == "MessageError" and "'event_time' must be a finite number of seconds" in reasons[1][1]
    assert reasons[2][0] == "PayloadError" and "int too large to convert to float" in reasons[2][1]
    assert_good_streams_exact(backend, result["preds"])


def test_deeply_nested_arrays(tmp_path: Path, model_path: str, backend: Any, capsys: Any) -> None:
    deep = b'{"stream": "b", "seq": 0, "event_time": 1764000000.0, "audio": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    shallow = b'{"stream": "b", "seq": 1, "event_time": 1764000000.0, "audio": [[[[0.5]]]]}'
    result = run_job(tmp_path, [deep, shallow], capsys, model_path)
    dead = sorted(result["dead"], key=lambda d: len(d["message"]))
    assert dead[0]["kind"] == "PayloadError" and "expected 1 dimension(s), got lists nested deeper" in dead[0]["reason"]
    assert dead[1]["kind"] == "MessageError" and "nested too deeply to parse" in dead[1]["reason"]
    assert_good_streams_exact(backend, result["preds"])


def test_an_event_time_beyond_beam_timestamps(tmp_path: Path, model_path: str, backend: Any, capsys: Any) -> None:
    line = encode_message(chunk("b", 0, 1e13, audio=signal(3)[0], sample_rate=RATE)).encode()
    result = run_job(tmp_path, [line], capsys, model_path)
    dead = the_dead(result)
    assert dead["kind"] == "MessageError" and "from 0 to 1e+11, got 10000000000000.0" in dead["reason"]
    assert_good_streams_exact(backend, result["preds"])


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _snapshot_arrays(backend: Any) -> dict[str, np.ndarray]:
    session = StreamSession(backend, sample_rate=RATE)
    session.push(signal(4)[0])
    with np.load(io.BytesIO(session.snapshot()), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_resume_snapshots_with_a_malformed_header_carry_or_nan_state(tmp_path: Path, model_path: str, backend: Any, capsys: Any) -> None:
    good = _snapshot_arrays(backend)
    header = dict(good, header=np.array("{not json"))
    carry = dict(good, carry=np.zeros(3, np.float32))
    state = next(k for k in good if k.startswith("state."))
    nan = dict(good, **{state: np.full_like(good[state], np.nan)})
    lines = [encode_message(resume(f"r{i}", 1, T0 + 0.05, _npz(arrays), sample_rate=RATE)).encode()
             for i, arrays in enumerate((header, carry, nan))]
    result = run_job(tmp_path, lines, capsys, model_path)
    dead = {d["stream"]: d for d in result["dead"]}
    assert {d["kind"] for d in dead.values()} == {"ResumeError"}
    assert "snapshot header is not JSON" in dead["r0"]["reason"]
    assert "snapshot carry has 3 samples; expected" in dead["r1"]["reason"]
    assert f"snapshot array '{state}' holds NaN or Inf" in dead["r2"]["reason"]
    assert not [e for e in result["events"] if e["stream"].startswith("r")]  # nothing opened, nothing evicted
    assert_good_streams_exact(backend, result["preds"])


def test_a_chunk_that_makes_the_state_nan(tmp_path: Path, model_path: str, backend: Any, capsys: Any) -> None:
    """Finite but absurd samples (1e30) drive the RNN's state to NaN: refused, rolled back, its seq a gap."""
    x = signal(5)
    first = encode_message(chunk("b", 0, T0, audio=x[0], sample_rate=RATE)).encode()
    loud = encode_message(chunk("b", 1, T0 + 0.1, audio=np.full(CHUNK, 1e30, np.float32))).encode()
    last = encode_message(chunk("b", 2, T0 + 0.2, audio=x[2])).encode()
    result = run_job(tmp_path, [first, loud, last], capsys, model_path)
    dead = the_dead(result)
    assert dead["kind"] == "StateError" and dead["seq"] == 1 and "NaN or Inf on this chunk" in dead["reason"]
    b = sorted((p for p in result["preds"] if p["stream"] == "b"), key=lambda p: p["seq"])
    session = StreamSession(backend, sample_rate=RATE)  # offline on silence in place of the refused chunk
    want = [json.loads(json.dumps(session.push(c).to_dict())) for c in (x[0], np.zeros(CHUNK, np.float32), x[2])]
    assert [(p["seq"], p.get("filled", False)) for p in b] == [(0, False), (1, True), (2, False)]
    assert [{k: p[k] for k in ("t", "frames", "predicted", "scores")} for p in b] == want
    assert_good_streams_exact(backend, result["preds"])


def test_json_booleans_as_samples(tmp_path: Path, model_path: str, backend: Any, capsys: Any) -> None:
    lines = [b'{"stream": "b", "seq": 0, "event_time": 1764000000.0, "sample_rate": 8000, "audio": [true, false]}',
             b'{"stream": "c", "seq": 0, "event_time": 1764000000.0, "sample_rate": true, "audio": [0.1]}']
    result = run_job(tmp_path, lines, capsys, model_path)
    dead = {d["message"][:16]: d for d in result["dead"]}
    b, c = dead['{"stream": "b", '], dead['{"stream": "c", ']
    assert b["kind"] == "PayloadError" and "a JSON boolean is not a number: True" in b["reason"]
    assert c["kind"] == "MessageError" and "'sample_rate' must be a positive integer (Hz) up to 384000, got True" in c["reason"]
    assert_good_streams_exact(backend, result["preds"])


@pytest.mark.parametrize(("stream", "words"), [
    ("mic\n7", "control character U+000A"), ("mic\x1b[2J", "control character U+001B"),
    ("../../etc/passwd", "may not contain '/'"), ("..", "nor be '.' or '..'"), ("x" * 300, "300 characters long"),
])
def test_stream_ids_with_control_characters_or_paths(tmp_path: Path, model_path: str, backend: Any, capsys: Any, stream: str,
                                                      words: str) -> None:
    line = json.dumps({"stream": stream, "seq": 0, "event_time": T0, "sample_rate": RATE, "audio": [0.0]}).encode()
    dead = the_dead(result := run_job(tmp_path, [line], capsys, model_path))
    assert dead["kind"] == "StreamIdError" and words in dead["reason"] and dead["stream"] is None
    assert_good_streams_exact(backend, result["preds"])


def test_the_sink_does_not_duplicate_a_retried_bundle(tmp_path: Path) -> None:
    """A runner retrying the writer (same group, same pane) leaves one file with each record once; a failed
    attempt's temporary file is never read as output."""
    fn = _WriteShardFn(str(tmp_path))
    lines = [json.dumps({"stream": "s", "seq": q}) for q in range(3)]
    pane = type("Pane", (), {"index": 0})()
    (tmp_path / "predictions-00001-000000.jsonl.deadbeef.partial").write_text(lines[0] + "\n")  # a crashed attempt
    first = list(fn.process((("predictions", 1), lines), pane=pane))
    again = list(fn.process((("predictions", 1), lines), pane=pane))  # the retry
    assert len(first) == 1 and again == []
    assert [r["seq"] for r in read_records(str(tmp_path), "predictions")] == [0, 1, 2]
    later = list(fn.process((("predictions", 1), lines[:1]), pane=type("Pane", (), {"index": 1})()))
    assert later and len(read_records(str(tmp_path), "predictions")) == 4  # a later firing is a new file

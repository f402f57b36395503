"""Property tests of the stream job's ordering logic, driven without a runner.

The private stateful DoFn is called directly with in-memory state cells and timers, and a tiny driver that
fires due timers in time order (the watermark moving only at the end, as in a bounded replay). For any
arrival order with duplicates and missing chunks, each stream's predictions must equal offline
inference on its signal with the gap policy applied, and every message must be accounted for.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils import shared
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from rnnstream.beam_jobs.messages import chunk, encode_message, parse_message
from rnnstream.beam_jobs.stateful import StreamJobConfig, _EventTimeStreamFn
from rnnstream.models.backend import TorchBackend
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.streaming import StreamSession

RATE = 8000
FC = FeatureConfig.audio_default(sample_rate=RATE, n_mels=8)
CHUNK = 240  # 30 ms at 8 kHz: 3 frames per chunk
T0 = 1000.0


def _backend() -> TorchBackend:
    torch.manual_seed(5)
    return TorchBackend(rnn_classifier(input_dim=FC.dim, num_classes=3, hidden_size=6, num_layers=1), FC, ["a", "b", "c"])


BACKEND = _backend()


def signal(stream: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(stream)
    return [(0.2 * rng.standard_normal(CHUNK)).astype(np.float32) for _ in range(n)]


class Cell:
    def __init__(self) -> None:
        self.value: Any = None

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value

    def clear(self) -> None:
        self.value = None


class Timer:
    def __init__(self) -> None:
        self.at: float | None = None

    def set(self, ts: Timestamp) -> None:
        self.at = ts.micros / 1e6

    def clear(self) -> None:
        self.at = None


class Driver:
    """Calls the DoFn like a runner would for one bounded input: elements, then timers in time order."""

    def __init__(self, config: StreamJobConfig, backend: Any = None):
        backend = BACKEND if backend is None else backend
        self.fn = _EventTimeStreamFn("unused", config, shared.Shared(), loader=lambda _: backend)
        self.fn.setup()
        self.cells: dict[str, Cell] = {}
        self.timers: dict[str, dict[str, Timer]] = {}
        self.out: list[Any] = []

    def push(self, line: str) -> None:
        msg = parse_message(line)
        key = msg.stream
        cell = self.cells.setdefault(key, Cell())
        timers = self.timers.setdefault(key, {"gap": Timer(), "idle": Timer()})
        self.out += self.fn._on_message((key, msg), Timestamp.of(msg.event_time), cell, timers["gap"], timers["idle"])

    def finish(self) -> None:
        """The final watermark: fire every timer, earliest first, until none is set."""
        while True:
            due = [(t.at, name, key) for key, ts in self.timers.items() for name, t in ts.items() if t.at is not None]
            if not due:
                return
            at, name, key = min(due)
            timers = self.timers[key]
            timers[name].clear()
            if name == "gap":
                self.out += self.fn._on_gap(key, Timestamp.of(at), self.cells[key], timers["gap"])
            else:  # the idle timer may set itself again (for a later deadline): the loop fires it then
                self.out += self.fn._on_idle(key, Timestamp.of(at), self.cells[key], timers["gap"], timers["idle"])

    def records(self, tag: str | None) -> list[dict[str, Any]]:
        if tag is None:
            return [o for o in self.out if not isinstance(o, TaggedOutput)]
        return [o.value for o in self.out if isinstance(o, TaggedOutput) and o.tag == tag]


def offline(chunks: list[np.ndarray]) -> list[dict[str, Any]]:
    session = StreamSession(BACKEND, sample_rate=RATE)
    return [json.loads(json.dumps(session.push(c).to_dict())) for c in chunks]


def strip(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k not in ("stream", "seq", "event_time", "filled")}


@st.composite
def arrivals(draw: Any) -> tuple[dict[int, list[int]], list[tuple[int, int]]]:
    """Per stream the seqs that arrive (at least the first... or not), and an interleaved arrival order with dups."""
    n_streams = draw(st.integers(1, 3))
    kept: dict[int, list[int]] = {}
    events: list[tuple[int, int]] = []
    for s in range(n_streams):
        n = draw(st.integers(1, 6))
        present = [q for q in range(n) if draw(st.booleans()) or q == n - 1]
        kept[s] = present
        dups = draw(st.lists(st.sampled_from(present), max_size=3))
        events += [(s, q) for q in present + dups]
    order = draw(st.permutations(events))
    return kept, list(order)


@pytest.mark.parametrize("policy", ["fill", "reset"])
@settings(max_examples=15)
@given(case=arrivals())
def test_any_arrival_order_gives_offline_predictions(policy: str, case: Any) -> None:
    kept, order = case
    driver = Driver(StreamJobConfig(gap_policy=policy, gap_timeout_s=1.0, idle_timeout_s=10.0, max_buffer=16))
    signals = {s: signal(s, max(q) + 1) for s, q in kept.items()}
    for s, q in order:
        # Every chunk carries the rate (any of them may open the stream: seq 0 may be lost).
        driver.push(encode_message(chunk(f"s{s}", q, T0 + q * 0.03, audio=signals[s][q], sample_rate=RATE)))
    driver.finish()
    preds = driver.records(None)
    events = driver.records("events")
    assert driver.records("dead_letters") == []
    for s, present in kept.items():
        got = sorted((p for p in preds if p["stream"] == f"s{s}"), key=lambda p: p["seq"])
        missing = [q for q in range(max(present) + 1) if q not in present]
        if policy == "fill":
            assert [p["seq"] for p in got] == list(range(max(present) + 1))
            assert [p.get("filled", False) for p in got] == [q in missing for q in range(max(present) + 1)]
            filled = [signals[s][q] if q in present else np.zeros(CHUNK, np.float32) for q in range(max(present) + 1)]
            assert [strip(p) for p in got] == offline(filled)
        else:
            assert [p["seq"] for p in got] == present
            # After each gap the stream starts over: offline on each run of consecutive chunks.
            runs: list[list[int]] = []
            for q in present:
                if runs and q == runs[-1][-1] + 1:
                    runs[-1].append(q)
                else:
                    runs.append([q])
            want = [r for run in runs for r in offline([signals[s][q] for q in run])]
            assert [strip(p) for p in got] == want
        gaps = [e for e in events if e["type"] == "gap" and e["stream"] == f"s{s}"]
        assert sorted(q for g in gaps for q in g["missing"]) == missing
        (evicted,) = [e for e in events if e["type"] == "eviction" and e["stream"] == f"s{s}"]
        assert evicted["next_seq"] == max(present) + 1
    # Accounting: every message is a prediction or a duplicate.
    dups = sum(e["counters"]["duplicates"] for e in events if e["type"] == "eviction")
    assert len(order) == len([p for p in preds if not p.get("filled")]) + dups
    assert all(c.value is None for c in driver.cells.values())  # evicted: no state left behind


def test_end_of_stream_then_late_and_far_chunks() -> None:
    driver = Driver(StreamJobConfig(max_buffer=4))
    sig = signal(0, 4)
    for q, end in ((1, False), (0, False), (2, True), (3, False), (9, False), (2, True)):
        driver.push(encode_message(chunk("s0", q, T0 + q, audio=sig[q % 4][: CHUNK if not end else 100], end=end,
                                         sample_rate=RATE if q == 0 else None)))
    driver.push(encode_message(chunk("s1", 40, T0, audio=sig[0], sample_rate=RATE)))
    driver.finish()
    preds = driver.records(None)
    assert [strip(p) for p in preds if p["stream"] == "s0"] == offline([sig[0], sig[1], sig[2][:100]])
    dead = driver.records("dead_letters")
    reasons = sorted((d["stream"], d["seq"], d["kind"], d["reason"].split(": ", 1)[1][:20]) for d in dead)
    assert reasons == [("s0", 3, "OrderingError", "after end-of-stream "), ("s0", 9, "OrderingError", "after end-of-stream "),
                       ("s1", 40, "OrderingError", "40 seqs ahead of the")]
    assert "resume" in [d for d in dead if d["stream"] == "s1"][0]["reason"]  # a fresh stream: hint to resume
    (end,) = [e for e in driver.records("events") if e["type"] == "end"]
    assert end["seq"] == 2 and end["counters"]["chunks"] == 3  # counters as of the end; later ones are metrics
    assert [e["type"] for e in driver.records("events") if e["stream"] == "s0"] == ["end"]  # no eviction after end

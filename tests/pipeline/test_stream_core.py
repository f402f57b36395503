"""The stream core, driven directly (no Beam, no asyncio): ordering, duplicates, gaps, end, eviction, resume,
containment, and stepping many streams in one batch equal to stepping each alone."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rnnstream.models.backend import TorchBackend
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import StreamIdError
from rnnstream.pipeline.stream_core import (
    ChunkMessage,
    CoreConfig,
    Record,
    StreamCore,
    StreamState,
    check_stream_id,
)
from rnnstream.pipeline.streaming import StreamSession

RATE = 8000
FC = FeatureConfig.audio_default(sample_rate=RATE, n_mels=8)
CHUNK = 240
T0 = 1000.0


def _backend() -> TorchBackend:
    torch.manual_seed(5)
    return TorchBackend(rnn_classifier(input_dim=FC.dim, num_classes=3, hidden_size=6, num_layers=1), FC, ["a", "b", "c"])


BACKEND = _backend()


def sig(stream: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(stream)
    return [(0.2 * rng.standard_normal(CHUNK)).astype(np.float32) for _ in range(n)]


def msg(stream: str, seq: int, audio: Any = None, **kw: Any) -> ChunkMessage:
    kw.setdefault("sample_rate", RATE)
    return ChunkMessage(stream, seq, T0 + seq * 0.03, audio=audio, **kw)


def offline(chunks: list[np.ndarray]) -> list[dict[str, Any]]:
    session = StreamSession(BACKEND, sample_rate=RATE)
    return [json.loads(json.dumps(session.push(c).to_dict())) for c in chunks]


def strip(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k not in ("stream", "seq", "event_time", "filled")}


class Driver:
    """An adapter in a few lines: states stored as pickled values between messages, timers fired in time
    order at the end (a bounded replay), chunks stepped alone or in cross-stream batches."""

    def __init__(self, config: CoreConfig, *, batched: bool = False, backend: Any = BACKEND):
        self.counts: Counter[str] = Counter()
        self.core = StreamCore(backend, config, count=lambda s, name, n: self.counts.update({name: n}))
        self.stored: dict[str, bytes] = {}
        self.batched = batched
        self.records: list[Record] = []

    def _load(self, stream: str) -> StreamState:
        raw = self.stored.get(stream)
        return self.core.load(stream, None if raw is None else pickle.loads(raw))

    def _save(self, state: StreamState) -> None:
        value = self.core.save(state)
        if value is None:
            self.stored.pop(state.stream, None)
        else:
            self.stored[state.stream] = pickle.dumps(value)

    def push_all(self, msgs: list[ChunkMessage]) -> None:
        for m in msgs:
            state = self._load(m.stream)
            self.records += self.core.accept(state, m, m.event_time)
            self._step([state])
            self._save(state)

    def _step(self, states: list[StreamState]) -> None:
        if not self.batched:
            for state in states:
                self.records += self.core.run(state)
            return
        while True:  # one step per stream per round, all in one step_batch call
            work = [(s, step) for s in states if (step := self.core.next_step(s, self.records)) is not None]
            if not work:
                return
            outcomes = self.core.step_batch([step for _, step in work])
            for (s, step), outcome in zip(work, outcomes):
                self.records += self.core.commit(s, step, outcome)

    def finish(self) -> None:
        """The final watermark: gap timers, then idle timers, earliest first."""
        while self.stored:
            due = []
            for stream in self.stored:
                state = self._load(stream)
                gap, idle = self.core.gap_deadline(state), self.core.idle_deadline(state)
                due += [(gap, 0, stream)] if gap is not None else []
                due += [(idle, 1, stream)] if idle is not None else []
            at, kind, stream = min(due)
            state = self._load(stream)
            if kind == 0:
                self.core.expire(state, at)
                self._step([state])
            else:
                self.records += self.core.evict(state, at)
            self._save(state)

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.records if r.type == type_]


@st.composite
def arrivals(draw: Any) -> tuple[dict[int, list[int]], list[tuple[int, int, str]]]:
    """Per stream the seqs that arrive, and an interleaved arrival order with duplicates and bad messages."""
    kept: dict[int, list[int]] = {}
    events: list[tuple[int, int, str]] = []
    for s in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 6))
        present = [q for q in range(n) if draw(st.booleans()) or q == n - 1]
        kept[s] = present
        events += [(s, q, "ok") for q in present + draw(st.lists(st.sampled_from(present), max_size=3))]
        events += [(s, q, draw(st.sampled_from(["model", "far"]))) for q in draw(st.lists(st.integers(0, n), max_size=2))]
    return kept, list(draw(st.permutations(events)))


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
@pytest.mark.parametrize("policy", ["fill", "reset"])
@settings(max_examples=12, deadline=None)
@given(case=arrivals())
def test_any_arrival_order_gives_offline_predictions_and_balanced_counts(policy: str, batched: bool, case: Any) -> None:
    kept, order = case
    driver = Driver(CoreConfig(gap_policy=policy, gap_timeout_s=1.0, idle_timeout_s=10.0, max_buffer=16),
                    batched=batched)
    signals = {s: sig(s, max(q) + 1) for s, q in kept.items()}
    bad = {"model": {"model": "another-model"}, "far": {}}
    msgs = [msg(f"s{s}", q if kind != "far" else q + 100, signals[s][q % len(signals[s])], **bad.get(kind, {}))
            for s, q, kind in order]
    driver.push_all(msgs)
    driver.finish()
    preds, dead = driver.of("prediction"), driver.of("dead_letter")
    assert Counter(d["kind"] for d in dead) == Counter(
        {"ModelMismatchError": sum(k == "model" for *_, k in order), "OrderingError": sum(k == "far" for *_, k in order)}
    ) - Counter()
    for s, present in kept.items():
        got = sorted((p for p in preds if p["stream"] == f"s{s}"), key=lambda p: p["seq"])
        if policy == "fill":
            filled = [signals[s][q] if q in present else np.zeros(CHUNK, np.float32) for q in range(max(present) + 1)]
            assert [p.get("filled", False) for p in got] == [q not in present for q in range(max(present) + 1)]
            assert [strip(p) for p in got] == offline(filled)
        else:
            runs: list[list[int]] = []
            for q in present:
                runs[-1].append(q) if runs and q == runs[-1][-1] + 1 else runs.append([q])
            assert [strip(p) for p in got] == [r for run in runs for r in offline([signals[s][q] for q in run])]
    real = [p for p in preds if not p.get("filled")]
    assert len(msgs) == len(real) + driver.counts["duplicates"] + len(dead)  # counts in == out
    assert driver.counts["chunks"] == len(real) and driver.counts["dead_letters"] == len(dead)
    assert driver.stored == {}  # every stream evicted: nothing left behind


def test_batched_steps_equal_alone_across_streams() -> None:
    msgs = [msg(f"s{s}", q, c) for q in range(5) for s in range(4) for c in [sig(s, 5)[q]]]
    alone, batched = Driver(CoreConfig()), Driver(CoreConfig(), batched=True)
    for d in (alone, batched):
        d.push_all(msgs)
        d.finish()
    assert [r.to_dict() for r in alone.records if r.type == "prediction"] == batched.of("prediction")


def test_resume_from_an_eviction_continues_exactly() -> None:
    x = sig(7, 6)
    first = Driver(CoreConfig())
    first.push_all([msg("r", q, x[q]) for q in range(3)])
    first.finish()
    (ev,) = first.of("event")
    assert ev["type"] == "eviction" and ev["next_seq"] == 3
    import base64

    second = Driver(CoreConfig())
    snap = base64.b64decode(ev["snapshot"])
    second.push_all([ChunkMessage("r", 3, T0 + 1, "resume", snapshot=snap, sample_rate=RATE)]
                    + [msg("r", q, x[q], sample_rate=None) for q in (4, 3, 5)])
    second.finish()
    assert [strip(p) for p in first.of("prediction") + second.of("prediction")] == offline(x)
    assert second.counts["resumes"] == 1 and second.of("dead_letter") == []


def test_a_forged_snapshot_is_a_resume_dead_letter() -> None:
    d = Driver(CoreConfig())
    d.push_all([ChunkMessage("r", 0, T0, "resume", snapshot=b"PK\x03\x04 not a zip", sample_rate=RATE)])
    (dead,) = d.of("dead_letter")
    assert dead["kind"] == "ResumeError" and "not an rnnstream snapshot" in dead["reason"]


class NaNOnSecondCall:
    """A backend whose outputs and states turn NaN on its second call (a model blowing up on extreme input)."""

    def __init__(self, inner: Any):
        self.inner, self.info, self.calls = inner, inner.info, 0

    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> Any:
        y, new = self.inner.step(x, states)
        self.calls += 1
        if self.calls == 2:
            y, new = y * np.nan, {k: v * np.nan for k, v in new.items()}
        return y, new


def test_a_chunk_that_makes_the_state_nan_is_refused_and_rolled_back() -> None:
    x = sig(3, 3)
    loud = np.full(CHUNK, 0.9, np.float32)
    d = Driver(CoreConfig(), backend=NaNOnSecondCall(BACKEND))
    d.push_all([msg("n", 0, x[0]), msg("n", 1, loud), msg("n", 2, x[2])])
    d.finish()
    (dead,) = d.of("dead_letter")
    assert dead["kind"] == "StateError" and dead["seq"] == 1 and "NaN or Inf" in dead["reason"]
    want = offline([x[0], np.zeros(CHUNK, np.float32), x[2]])  # seq 1 refused: a gap, filled at once
    assert [strip(p) for p in d.of("prediction")] == want


@pytest.mark.parametrize("bad", ["", "a\nb", "tab\there", "nul\x00", "esc\x1b[31m", "rtl\u202e", "a/b", "..", ".",
                                 "..\\x", "x" * 257, 5, None])
def test_stream_ids_are_refused_precisely(bad: Any) -> None:
    with pytest.raises(StreamIdError, match="'stream'"):
        check_stream_id(bad)


def test_good_stream_ids_pass() -> None:
    for good in ("mic-7", "pump 3", "ñandú", "x" * 256, "a.b", "..."):
        assert check_stream_id(good) == good


def test_deadlines_and_eviction_close_the_state() -> None:
    core = StreamCore(BACKEND, CoreConfig(gap_timeout_s=2.0, idle_timeout_s=9.0))
    state = core.load("g")
    assert core.accept(state, msg("g", 1, sig(0, 2)[1]), 100.0) == [] and core.run(state) == []
    assert core.gap_deadline(state) == 102.0 and core.idle_deadline(state) == 109.0
    core.expire(state, 101.0)  # not yet due
    assert core.run(state) == [] and list(state.buffer) == [1]
    core.expire(state, 102.0)
    records = core.run(state)
    assert [(r.type, r.seq, r.fields.get("filled")) for r in records] == [("event", None, None), ("prediction", 0, True),
                                                                          ("prediction", 1, None)]
    assert records[0].to_dict()["missing"] == [0] and core.gap_deadline(state) is None
    records = core.evict(state, 109.0)
    assert [r.kind for r in records] == ["eviction"] and core.save(state) is None

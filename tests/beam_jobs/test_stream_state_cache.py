"""The stateful DoFn's compact state and its session cache: Beam's state is the truth, the cache only a shortcut.

The DoFn's callbacks are driven directly, with a state store that, like a runner, keeps only what the coder
encoded (so nothing live leaks through the store), and timers that record what they were set to. The same
message sequence is run with the cache on and off, on one DoFn instance and alternating between two instances
sharing the store (as when a key moves between workers), with a bundle whose state writes are discarded (a
failed bundle, retried), and through an eviction and a resume; every variant must give the same records as
sessions fed the chunks in order.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from apache_beam.utils import shared
from apache_beam.utils.timestamp import Timestamp
from rnnstream.beam_jobs.messages import chunk, resume
from rnnstream.beam_jobs.session_state import (
    CompactSessions,
    SessionValue,
    StreamStateCoder,
)
from rnnstream.beam_jobs.stateful import StreamJobConfig, _EventTimeStreamFn
from rnnstream.models.checkpoint import save_checkpoint
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import StateError
from rnnstream.pipeline.streaming import StreamSession

from rnnstream.api import load_backend

RATE = 8000
FC = FeatureConfig.audio_default(sample_rate=RATE, n_mels=8)
CHUNK = 800
T0 = 1_764_000_000.0
CODER = StreamStateCoder()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(3)
    model = rnn_classifier(input_dim=FC.dim, num_classes=3, hidden_size=8, num_layers=2)
    with torch.no_grad():
        model.feat_mean.fill_(-6.0)
        model.feat_std.fill_(3.0)
    path = tmp_path_factory.mktemp("cache_model") / "model.pt"
    save_checkpoint(str(path), model, FC, labels=["a", "b", "c"])
    return str(path)


def audio(stream: int, seq: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * stream + seq)
    return (0.2 * rng.standard_normal(CHUNK)).astype(np.float32)


class Store:
    """Beam state of every key, committed as the coder's bytes (reads decode them: nothing live survives)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.timers: dict[tuple[str, str], float | None] = {}

    def state(self, key: str) -> Any:
        store = self

        class _State:
            def read(self) -> Any:
                raw = store.data.get(key)
                return None if raw is None else CODER.decode(raw)

            def write(self, value: Any) -> None:
                store.data[key] = CODER.encode(value)

            def clear(self) -> None:
                store.data.pop(key, None)

        return _State()

    def timer(self, key: str, name: str) -> Any:
        store = self

        class _Timer:
            def set(self, ts: Timestamp) -> None:
                store.timers[(key, name)] = ts.micros / 1e6

            def clear(self) -> None:
                store.timers[(key, name)] = None

        return _Timer()


def make_fn(model_path: str, cache: int) -> Any:
    fn = _EventTimeStreamFn(model_path, StreamJobConfig(session_cache=cache, per_stream_metrics=False),
                            shared.Shared())
    fn.setup()
    return fn


def deliver(fn: Any, store: Store, msg: Any, at: float) -> list[dict[str, Any]]:
    out = fn._on_message((msg.stream, msg), Timestamp(micros=round(at * 1e6)), store.state(msg.stream),
                         store.timer(msg.stream, "gap"), store.timer(msg.stream, "idle"))
    return [json.loads(json.dumps(getattr(o, "value", o))) for o in out]


def fire_idle(fn: Any, store: Store, key: str) -> list[dict[str, Any]]:
    """Fire the key's idle timer at its set time, as the watermark would (again while it keeps being moved)."""
    out: list[Any] = []
    for _ in range(10):  # a timer that keeps re-arming itself at the same time would loop forever
        if (at := store.timers.get((key, "idle"))) is None:
            break
        store.timers[(key, "idle")] = None
        out += fn._on_idle(key, Timestamp(micros=round(at * 1e6)), store.state(key), store.timer(key, "gap"),
                           store.timer(key, "idle"))
    else:
        raise AssertionError(f"the idle timer of {key!r} kept firing")
    return [json.loads(json.dumps(getattr(o, "value", o))) for o in out]


def messages(streams: int = 2, chunks: int = 5) -> list[Any]:
    """Chunks of ``streams`` streams, interleaved, each stream's seq 1 before its seq 0."""
    out = []
    for q in range(chunks):
        for s in range(streams):
            seq = {0: 1, 1: 0}.get(q, q)
            out.append(chunk(f"s{s}", seq, T0 + 0.1 * seq, audio=audio(s, seq), sample_rate=RATE))
    return out


def run(pick: Callable[[int], Any], msgs: list[Any]) -> list[dict]:
    """Deliver ``msgs`` (message ``i`` to the DoFn ``pick(i)``), then fire every idle timer."""
    store = Store()
    records = []
    for i, msg in enumerate(msgs):
        records += deliver(pick(i), store, msg, msg.event_time)
    for key in sorted({m.stream for m in msgs}):
        records += fire_idle(pick(len(msgs)), store, key)
    return records


def predictions(records: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["stream"], r["seq"]): r for r in records if "frames" in r and r.get("type") is None}


def reference(model_path: str, streams: int = 2, chunks: int = 5) -> dict[tuple[str, int], dict]:
    backend = load_backend(model_path, provider="cpu")
    out = {}
    for s in range(streams):
        session = StreamSession(backend, sample_rate=RATE)
        for q in range(chunks):
            out[(f"s{s}", q)] = json.loads(json.dumps(session.push(audio(s, q)).to_dict()))
    return out


def _same(got: dict[tuple[str, int], dict], ref: dict[tuple[str, int], dict]) -> None:
    assert set(got) == set(ref)
    for k, r in ref.items():
        g = got[k]
        assert g["frames"] == r["frames"] and g["predicted"] == r["predicted"] and "scores" in r, k
        np.testing.assert_allclose([g["scores"][lb] for lb in sorted(r["scores"])],
                                   [r["scores"][lb] for lb in sorted(r["scores"])], rtol=1e-6, atol=1e-7)


def test_cache_on_off_and_two_instances_give_offline_results(model_path: str) -> None:
    msgs, ref = messages(), reference(model_path)
    one = make_fn(model_path, cache=64)
    off = make_fn(model_path, cache=0)
    a, b = make_fn(model_path, cache=64), make_fn(model_path, cache=64)
    runs = {
        "cache": run(lambda i: one, msgs),
        "no cache": run(lambda i: off, msgs),
        "two instances": run(lambda i: (a, b)[(i // 3) % 2], msgs),  # a key moves back and forth
    }
    for name, records in runs.items():
        _same(predictions(records), ref)
        evictions = [r for r in records if r.get("type") == "eviction"]
        assert sorted(e["stream"] for e in evictions) == ["s0", "s1"], name
    # the eviction snapshots are portable and equal across variants
    snaps = {name: {e["stream"]: e["snapshot"] for e in recs if e.get("type") == "eviction"} for name, recs in runs.items()}
    backend = load_backend(model_path, provider="cpu")
    restored = {name: StreamSession.restore(backend, base64.b64decode(by["s1"])) for name, by in snaps.items()}
    for name, session in restored.items():
        assert session.samples_seen == 5 * CHUNK, name
        for k, v in restored["cache"].states.items():
            np.testing.assert_array_equal(session.states[k], v, err_msg=name)


def test_stale_cache_entry_is_not_used(model_path: str) -> None:
    """Instance a holds s0 after chunk 0; b applies chunks 1-2; a then gets chunk 3 and must restore from the
    state b wrote, not continue its own (older) live session."""
    msgs = [chunk("s0", q, T0 + 0.1 * q, audio=audio(0, q), sample_rate=RATE) for q in range(5)]
    a, b, store = make_fn(model_path, cache=64), make_fn(model_path, cache=64), Store()
    records = deliver(a, store, msgs[0], T0)
    records += deliver(b, store, msgs[1], T0 + 0.1) + deliver(b, store, msgs[2], T0 + 0.2)
    cached, stored = a.core._cache["s0"][0], CODER.decode(store.data["s0"])["snapshot"]
    assert cached != stored  # a's entry is stale: the case under test
    for msg in msgs[3:]:
        records += deliver(a, store, msg, msg.event_time)
    records += fire_idle(a, store, "s0")
    _same(predictions(records), reference(model_path, 1))


def test_discarded_bundle_writes_are_redone_from_state(model_path: str) -> None:
    """A bundle fails after the DoFn applied chunk 2 (its state write is discarded); the retry on the same
    instance finds the older state and must not reuse the live session that already moved past it."""
    msgs = [chunk("s0", q, T0 + 0.1 * q, audio=audio(0, q), sample_rate=RATE) for q in range(5)]
    fn, store = make_fn(model_path, cache=64), Store()
    records = []
    for msg in msgs:
        if msg.seq == 2:
            before = dict(store.data)
            deliver(fn, store, msg, msg.event_time)  # applied, then the bundle fails
            store.data = before
        records += deliver(fn, store, msg, msg.event_time)
    records += fire_idle(fn, store, "s0")
    _same(predictions(records), reference(model_path, 1))


def test_eviction_then_resume_continues_exactly(model_path: str) -> None:
    """Evict s0 after chunk 2 (idle timer), resume it from the eviction snapshot, continue: offline results."""
    fn, store = make_fn(model_path, cache=64), Store()
    records = []
    for q in range(3):
        records += deliver(fn, store, chunk("s0", q, T0 + 0.1 * q, audio=audio(0, q), sample_rate=RATE), T0 + 0.1 * q)
    ev = fire_idle(fn, store, "s0")
    assert [r["type"] for r in ev] == ["eviction"] and "s0" not in store.data
    snap = base64.b64decode(ev[0]["snapshot"])
    later = T0 + 100.0
    records += deliver(fn, store, resume("s0", 3, later, snap, sample_rate=RATE), later)
    for q in range(3, 5):
        records += deliver(fn, store, chunk("s0", q, later + q, audio=audio(0, q)), later + q)
    records += fire_idle(fn, store, "s0")
    _same(predictions(records), reference(model_path, 1))


def test_timers_move_only_when_their_time_changes(model_path: str) -> None:
    """The gap timer is touched only when the earliest hole's deadline changes (untouched while chunks come in
    order), the idle timer follows the last message; a timer that fires before its due time sets itself again."""
    fn, store = make_fn(model_path, cache=64), Store()
    calls: list[tuple[str, float | None]] = []
    timer = store.timer

    def spy(key: str, name: str) -> Any:
        inner = timer(key, name)

        class _Spy:
            def set(self, ts: Timestamp) -> None:
                calls.append((name, ts.micros / 1e6))
                inner.set(ts)

            def clear(self) -> None:
                calls.append((name, None))
                inner.clear()

        return _Spy()

    store.timer = spy  # type: ignore[method-assign]
    idle = fn.config.idle_timeout_s
    for q in range(3):
        deliver(fn, store, chunk("s0", q, T0 + q, audio=audio(0, q), sample_rate=RATE), T0 + q)
    assert calls == [("idle", T0 + idle), ("idle", T0 + 1 + idle), ("idle", T0 + 2 + idle)]  # no gap timer calls
    calls.clear()
    deliver(fn, store, chunk("s0", 4, T0 + 4, audio=audio(0, 4)), T0 + 4)  # seq 3 missing: the gap timer is set
    gap = fn.config.gap_timeout_s
    assert calls == [("gap", T0 + 4 + gap), ("idle", T0 + 4 + idle)]
    calls.clear()
    deliver(fn, store, chunk("s0", 3, T0 + 5, audio=audio(0, 3)), T0 + 5)  # the hole is filled: cleared once
    assert calls == [("gap", None), ("idle", T0 + 5 + idle)]
    value = CODER.decode(store.data["s0"])
    store.data["s0"] = CODER.encode({**value, "timers": None})  # a state that does not know its timers' times
    early = fn._on_idle("s0", Timestamp.of(T0 + 1 + idle), store.state("s0"), store.timer("s0", "gap"),
                        store.timer("s0", "idle"))
    assert early == [] and calls[-1] == ("idle", T0 + 5 + idle)  # not due: set again for the deadline
    ev = fire_idle(fn, store, "s0")
    assert [r["type"] for r in ev] == ["eviction"] and ev[0]["next_seq"] == 5


def test_timers_at_times_finer_than_a_microsecond_fire_once(model_path: str) -> None:
    """A deadline of sub-microsecond precision rounds below itself in a Beam timestamp: the callback must still
    treat the timer as due (no re-arming at the same time forever), for the idle and the gap timer."""
    fn, store = make_fn(model_path, cache=64), Store()
    t = T0 + 84.4421852  # t + 30 s rounds down to whole microseconds
    assert round((t + fn.config.idle_timeout_s) * 1e6) / 1e6 < t + fn.config.idle_timeout_s
    deliver(fn, store, chunk("s0", 1, t, audio=audio(0, 1), sample_rate=RATE), t)  # seq 0 missing: gap timer
    gap_at, store.timers[("s0", "gap")] = store.timers[("s0", "gap")], None  # it fires
    out = fn._on_gap("s0", Timestamp(micros=round(gap_at * 1e6)), store.state("s0"), store.timer("s0", "gap"))
    records = [getattr(o, "value", o) for o in out]
    assert [r.get("type") for r in records] == ["gap", None, None]  # the gap, filled seq 0, then seq 1
    assert records[1]["filled"] and records[2]["seq"] == 1 and store.timers[("s0", "gap")] is None
    ev = fire_idle(fn, store, "s0")
    assert [r["type"] for r in ev] == ["eviction"]


def test_coder_round_trip_and_model_check(model_path: str) -> None:
    backend = load_backend(model_path, provider="cpu")
    codec = CompactSessions(backend)
    session = StreamSession(backend, sample_rate=16000)  # resamples to 8 kHz: the resampler state travels too
    session.push(np.random.default_rng(0).standard_normal(1600).astype(np.float32) * 0.1)
    value = codec.dump(session)
    stored = {"next": 1, "end": None, "ended": False, "chunk_len": 1600, "rate": 16000, "skipped": [],
              "counters": {"chunks": 1}, "buffer": {}, "ready": [], "snapshot": value, "last_seen": T0,
              "timers": (None, T0 + 30)}
    back = CODER.decode(CODER.encode(stored))
    assert back["snapshot"] == value and back["timers"] == (None, T0 + 30) and back["counters"]["chunks"] == 1
    assert codec.dump(session) != value  # every write has its own token
    restored, live = codec.load(back["snapshot"], "s"), session
    nxt = np.random.default_rng(1).standard_normal(1600).astype(np.float32) * 0.1
    np.testing.assert_array_equal(restored.push(nxt).outputs, live.push(nxt).outputs)
    with pytest.raises(StateError, match="belongs to model other"):
        codec.load(replace(value, model="other"), "s")
    with pytest.raises(StateError, match="do not fit"):
        codec.load(replace(value, states={k: v[:, :1] for k, v in value.states.items()}), "s")
    assert isinstance(value, SessionValue)

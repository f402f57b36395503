"""The stream core's server mode: strict order, duplicate records, an end of no seq, and a stepping function
passed in (``batching.step_streams_contained``, as the server's batcher steps)."""

from __future__ import annotations

import numpy as np
import pytest
from rnnstream.pipeline.errors import OrderingError
from rnnstream.pipeline.stream_core import CoreConfig, StreamCore
from rnnstream.pipeline.batching import step_streams_contained
from rnnstream.pipeline.streaming import StreamSession

from tests.pipeline.test_stream_core import BACKEND, RATE, msg, offline, sig, strip

STRICT = CoreConfig(strict_order=True, duplicate_records=True)


def _step_all(core: StreamCore, state, records):  # type: ignore[no-untyped-def]
    while (step := core.next_step(state, records)) is not None:
        (outcome,) = core.step_batch([step], stepper=step_streams_contained)
        records += core.commit(state, step, outcome)


def test_strict_order_refuses_a_gap_and_reports_duplicates() -> None:
    core = StreamCore(BACKEND, STRICT)
    state = core.load("s")
    x = sig(1, 3)
    records = core.accept(state, msg("s", 0, x[0]), 1.0)
    _step_all(core, state, records)
    assert [r.type for r in records] == ["prediction"]
    (dup,) = core.accept(state, msg("s", 0, x[0]), 1.0)
    assert dup.to_dict() == {"type": "duplicate", "stream": "s", "seq": 0, "expected": 1}
    (dead,) = core.accept(state, msg("s", 2, x[2]), 1.0)
    assert dead.type == "dead_letter" and dead.kind == "OrderingError" and "expected seq 1" in (dead.reason or "")
    assert not state.buffer and not state.ready and core.gap_deadline(state) is None
    assert core.order(state, 1) is None and core.order(state, 3)[0].type == "dead_letter"  # type: ignore[index]
    assert state.counters["duplicates"] == 1 and state.counters["dead_letters"] == 2


def test_the_default_config_keeps_duplicates_as_counts_only() -> None:
    core = StreamCore(BACKEND)
    state = core.load("s")
    core.process(state, msg("s", 0, sig(1, 1)[0]), 1.0)
    assert core.accept(state, msg("s", 0, sig(1, 1)[0]), 1.0) == []
    assert state.counters["duplicates"] == 1


def test_end_of_no_seq_equals_offline_and_refuses_later_chunks() -> None:
    core = StreamCore(BACKEND, STRICT)
    state = core.load("e")
    x = sig(2, 4)
    records = []
    for q, c in enumerate(x):
        records += core.accept(state, msg("e", q, c), 1.0)
        _step_all(core, state, records)
    core.end(state, 2.0)
    _step_all(core, state, records)
    preds = [r.to_dict() for r in records if r.type == "prediction"]
    assert [strip(p) for p in preds] == offline(x)
    (end,) = [r for r in records if r.type == "event"]
    ref = StreamSession(BACKEND, sample_rate=RATE)
    for c in x:
        ref.push(c)
    ref.end()
    assert end.kind == "end" and end.seq is None and end.fields["next_seq"] == 4
    assert end.fields["frames"] == ref.frames_seen and end.fields["scores"] == ref.final().to_dict()["scores"]
    assert state.ended and state.next == 4 and core.save(state) is not None
    (late,) = core.accept(state, msg("e", 4, x[0]), 3.0)
    assert late.type == "dead_letter" and "after end-of-stream" in (late.reason or "")
    with pytest.raises(OrderingError):
        core.end(state, 3.0)


def test_a_failing_stepper_result_is_rolled_back_and_dead_lettered() -> None:
    core = StreamCore(BACKEND, STRICT)
    state = core.load("f")
    x = sig(3, 2)
    records = core.accept(state, msg("f", 0, x[0]), 1.0)
    _step_all(core, state, records)
    t = state.session.t  # type: ignore[union-attr]
    core.accept(state, msg("f", 1, x[1]), 1.0)
    step = core.next_step(state, records)
    assert step is not None
    (outcome,) = core.step_batch([step], stepper=lambda s, p, m: [RuntimeError("boom")])
    out = core.commit(state, step, outcome)
    assert out[0].type == "dead_letter" and out[0].kind == "RuntimeError"
    assert state.session.t == t and np.isfinite(state.session.t)  # type: ignore[union-attr]


def test_without_prediction_records_commit_keeps_counts_and_dead_letters() -> None:
    """The server's mode: no prediction record per chunk, the same state, counts and dead letters."""
    import dataclasses

    quiet = StreamCore(BACKEND, dataclasses.replace(STRICT, prediction_records=False))
    loud = StreamCore(BACKEND, STRICT)
    x = sig(4, 3)
    states, outputs = [], []
    for core in (quiet, loud):
        state = core.load("s")
        records = []
        for i in range(3):
            records += core.accept(state, msg("s", i, x[i]), 1.0)
            _step_all(core, state, records)
        states.append(state)
        outputs.append([r.type for r in records])
    assert outputs == [[], ["prediction"] * 3]
    assert states[0].counters == states[1].counters and states[0].next == states[1].next == 3
    np.testing.assert_array_equal(states[0].session.last_output, states[1].session.last_output)
    bad = quiet.accept(states[0], msg("s", 3, np.full(160, np.nan, np.float32)), 1.0)
    assert [r.type for r in bad] == ["dead_letter"] and "NaN or Inf" in (bad[0].reason or "")

"""``rnnstream.pipeline.batching``: many streams in one call equal each pushed alone, and one stream's
non-finite output or state stays that stream's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rnnstream.pipeline import batching
from rnnstream.pipeline.batching import (NonFiniteOutputError, gather_states, scatter_states, step_streams,
                                         step_streams_contained)
from rnnstream.pipeline.streaming import StreamSession

from tests.pipeline.test_stream_core import BACKEND, RATE, sig


class PoisonRow:
    """The real backend, with row ``row`` of the new state (``where="state"``) or of the output set to NaN."""

    def __init__(self, row: int, where: str):
        self.row, self.where, self.info = row, where, BACKEND.info

    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> Any:
        y, new = BACKEND.step(x, states)
        y, new = np.array(y), {k: np.array(v) for k, v in new.items()}
        if self.where == "state":
            next(iter(new.values()))[self.row] = np.nan
        else:
            y[self.row, -1, 0] = np.inf
        return y, new


def test_scatter_inverts_gather() -> None:
    rng = np.random.default_rng(0)
    parts = [{"h": rng.standard_normal((n, 2, 3)), "c": rng.standard_normal((n, 4))} for n in (1, 3, 2)]
    back = scatter_states(gather_states(parts), [1, 3, 2])
    for want, got in zip(parts, back):
        assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)


def test_many_streams_in_one_call_equal_each_alone() -> None:
    chunks = [sig(k, 3) for k in range(4)]
    together = [StreamSession(BACKEND, sample_rate=RATE) for _ in range(4)]
    alone = [StreamSession(BACKEND, sample_rate=RATE) for _ in range(4)]
    for t in range(3):
        got = step_streams(together, [c[t] for c in chunks])
        want = [s.push(c[t]) for s, c in zip(alone, chunks)]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.outputs, w.outputs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("where", ["state", "output"])
def test_a_non_finite_row_is_that_streams_error_and_its_state_is_not_committed(where: str) -> None:
    backend = PoisonRow(2, where)
    sessions = [StreamSession(backend, sample_rate=RATE) for _ in range(4)]  # type: ignore[arg-type]
    ref = [StreamSession(BACKEND, sample_rate=RATE) for _ in range(4)]
    chunks = [sig(k, 1)[0] for k in range(4)]
    before = {k: v.copy() for k, v in sessions[2].states.items()}
    out = step_streams_contained(sessions, chunks)
    assert isinstance(out[2], NonFiniteOutputError)
    assert all(np.array_equal(sessions[2].states[k], before[k]) for k in before) and sessions[2].samples_seen == 0
    for k in (0, 1, 3):
        want = ref[k].push(chunks[k])
        np.testing.assert_allclose(out[k].outputs, want.outputs, rtol=0, atol=1e-5)  # type: ignore[union-attr]
        assert all(np.isfinite(v).all() for v in sessions[k].states.values())


def _pushed_alone(chunks: list[Any], rates: list[int]) -> list[Any]:
    """Each chunk pushed through a fresh session of its own (the reference), outcome or exception."""
    out: list[Any] = []
    for c, rate in zip(chunks, rates):
        try:
            out.append(StreamSession(BACKEND, sample_rate=rate).push(c))
        except Exception as exc:  # noqa: BLE001 -- the reference outcome of a bad chunk
            out.append(exc)
    return out


@pytest.mark.parametrize("case", ["uniform", "nan", "resampled", "short", "int16", "lengths"])
def test_every_batch_shape_equals_each_stream_pushed_alone(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of open audio streams at the model's rate with float32 chunks of one length is one featurizing group
    without preparing each stream (the server's common case; a NaN chunk among them makes the group fall back to
    stream by stream, chunks too short for a frame are committed without a model call); other batches (a stream at
    another rate, int16 chunks, chunks of several lengths) are prepared stream by stream: every outcome is still the one each stream would get pushed
    alone, and a failing stream's state is left as it was."""
    chunks: list[Any] = [sig(k, 1)[0] for k in range(6)]
    rates = [RATE] * 6
    if case == "nan":
        chunks[3] = chunks[3].copy()
        chunks[3][5] = np.nan
    elif case == "resampled":
        rates[1] = 16000
        chunks[1] = np.concatenate([chunks[1], chunks[1]])
    elif case == "short":
        chunks = [c[:20] for c in chunks]
    elif case == "int16":
        chunks = [np.round(c * 32767).astype(np.int16) for c in chunks]
    elif case == "lengths":
        chunks = [c[: 160 + 40 * k] for k, c in enumerate(chunks)]
    want = _pushed_alone(chunks, rates)
    fast: list[bool] = []
    one_pass = batching._uniform_audio

    def spy(*args: Any) -> Any:
        prepared = one_pass(*args)
        fast.append(prepared is not None)
        return prepared

    monkeypatch.setattr(batching, "_uniform_audio", spy)
    for step in (step_streams_contained, step_streams):
        sessions = [StreamSession(BACKEND, sample_rate=r) for r in rates]
        if step is step_streams and case == "nan":
            with pytest.raises(type(want[3]), match="NaN or Inf"):
                step(sessions, chunks)
            continue
        got = step(sessions, chunks)
        for k, (g, w) in enumerate(zip(got, want)):
            if isinstance(w, Exception):
                assert type(g) is type(w) and sessions[k].samples_seen == 0
                continue
            np.testing.assert_allclose(g.outputs, w.outputs, rtol=0, atol=1e-5)
            assert g.frames_seen == w.frames_seen and sessions[k].samples_seen == len(chunks[k])
    assert fast and all(fast) == (case in ("uniform", "nan", "short"))  # one group exactly when shapes are uniform

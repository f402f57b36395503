"""Batched stepping that contains failures: one stream's bad state or chunk fails that stream only.

:func:`step_contained` is :func:`rnnstream.pipeline.streaming.step_streams` (same grouping by input length,
same commits, so the same numbers) except that

* a chunk whose featurization fails is that stream's error, found without a backend call;
* a batched backend call that raises is split in two and each half retried (bisection) until the
  culprit stream is alone; every other stream of the batch gets its prediction;
* a stream whose output is not finite gets an error and its state is not committed;
* a session is committed only when its own result is good, so a retried half never applies a chunk twice.

Each element of the returned list is a :class:`ChunkResult` or the exception for that stream's chunk.
It uses the session's ``_prepare``/``_commit`` steps, as ``step_streams`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rnnstream.pipeline.model_info import FRONTEND_STATE
from rnnstream.pipeline.streaming import (
    ChunkResult,
    StreamSession,
    gather_states,
    scatter_states,
)

Outcome = ChunkResult | Exception


class NonFiniteOutput(ArithmeticError):
    """The model produced NaN or infinity for a stream (its state is left as it was)."""


def step_contained(sessions: Sequence[StreamSession], chunks: Sequence[Any], max_batch: int = 256,
                   on_split: Callable[[], None] | None = None) -> list[Outcome]:
    """Advance each session by its chunk; a failure is returned in that stream's place (see module doc)."""
    out: list[Outcome | None] = [None] * len(sessions)
    groups: dict[tuple[int, ...], list[tuple[int, Any]]] = {}
    for i, (s, c) in enumerate(zip(sessions, chunks)):
        try:
            work = s._prepare(c)
            if work.x is None:
                out[i] = s._commit(work, None, s.states)
            elif work.segment_starts:  # sensor gap resets inside the chunk: run alone (push commits at the end)
                out[i] = _checked(s.push(c))
            else:
                groups.setdefault((id(s.backend), *work.x.shape[1:]), []).append((i, work))
        except Exception as exc:  # noqa: BLE001 -- this stream's chunk or state: its error only
            out[i] = exc
    for members in groups.values():
        for start in range(0, len(members), max_batch):
            _run_part(sessions, members[start : start + max_batch], out, on_split)
    return out  # type: ignore[return-value]


def _checked(result: ChunkResult) -> ChunkResult:
    if result.outputs.size and not np.isfinite(result.outputs).all():
        raise NonFiniteOutput("the model produced NaN or infinity for this stream")
    return result


def _run_part(sessions: Sequence[StreamSession], part: list[tuple[int, Any]], out: list[Outcome | None],
              on_split: Callable[[], None] | None) -> None:
    """One backend call for ``part``; on failure bisect until the failing stream is alone."""
    backend = sessions[part[0][0]].backend
    try:
        x = np.concatenate([w.x for _, w in part], axis=0)
        st = gather_states([{**sessions[i].states, **w.extra_states} for i, w in part])
        y, new = backend.step(x, st)
        new.pop(FRONTEND_STATE, None)
        ys = np.split(np.asarray(y), len(part), axis=0)
        states = scatter_states(new, [1] * len(part))
    except Exception as exc:  # noqa: BLE001 -- any backend failure: bisect to find its stream
        if len(part) == 1:
            out[part[0][0]] = exc
            return
        if on_split is not None:
            on_split()
        mid = len(part) // 2
        _run_part(sessions, part[:mid], out, on_split)
        _run_part(sessions, part[mid:], out, on_split)
        return
    for (i, w), yi, si in zip(part, ys, states):
        if yi.size and not np.isfinite(yi).all():
            out[i] = NonFiniteOutput("the model produced NaN or infinity for this stream; its state is unchanged")
            continue
        out[i] = sessions[i]._commit(w, yi, si)


__all__ = ["NonFiniteOutput", "Outcome", "step_contained"]

"""Many streams in one call: :func:`step_streams` and :func:`step_streams_contained`.

Each stream is a :class:`~rnnstream.pipeline.streaming.StreamSession`; one call advances each by one chunk,
with one backend call per group of streams whose inputs have the same shape (at most ``max_batch`` streams
each), and audio streams into a features graph featurized together (:meth:`AudioFeaturizer.step_batch`) where
their chunks and carries have equal lengths. A batch where that holds for every stream (open audio streams at the
model's rate, float32 chunks of one length: what a server's real-time streams send) is one group without
preparing each stream (:func:`_uniform_audio`): 2.1-3.8 us per chunk less at batches of 60 (docs/serving.md).
The result equals pushing each session alone (float rounding: tests hold it within 1e-5). The server's batcher and
the stream core's batched stepping call these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rnnstream.pipeline.codec import all_finite
from rnnstream.pipeline.errors import RnnstreamError, ShapeError, StateError
from rnnstream.pipeline.model_info import FRONTEND_STATE
from rnnstream.pipeline.resample import StreamResampler
from rnnstream.pipeline.streaming import ChunkResult, StreamSession, _Work

_F32 = np.dtype(np.float32)


def gather_states(states: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-stream states (each batch 1, or any batch) along axis 0."""
    return {k: np.concatenate([s[k] for s in states], axis=0) for k in states[0]}


def scatter_states(states: dict[str, np.ndarray], sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Inverse of :func:`gather_states` (views of ``states``)."""
    ends = np.cumsum(sizes).tolist()
    bounds = list(zip([0, *ends[:-1]], ends))
    return [{k: v[a:b] for k, v in states.items()} for a, b in bounds]


def step_streams(sessions: Sequence[StreamSession], chunks: Sequence[Any], max_batch: int = 256) -> list[ChunkResult]:
    """Advance each session by its chunk, batching streams whose chunks give the same input length.

    Equal to ``[s.push(c) for s, c in zip(sessions, chunks)]``, with at most one backend call per distinct
    input length (per ``max_batch`` streams). A session must appear at most once per call. The first error
    raises (see :func:`step_streams_contained` for per-stream outcomes).
    """
    results: list[Any] = [None] * len(sessions)
    for part in _batches(sessions, chunks, max_batch, results, contain=False):
        ys, states = _rows(*_call(sessions, part), len(part))
        for (i, w), yi, si in zip(part, ys, states):
            results[i] = sessions[i]._commit(w, yi, si)
    return results


class NonFiniteOutputError(ArithmeticError):
    """The model produced NaN or infinity for a stream; that stream's state is left as it was."""


def step_streams_contained(sessions: Sequence[StreamSession], chunks: Sequence[Any], max_batch: int = 256,
                           on_split: Callable[[], None] | None = None) -> list[ChunkResult | Exception]:
    """:func:`step_streams` where one stream's failure stays that stream's: each element is its
    :class:`ChunkResult` or the exception for its chunk (same grouping, same commits, so the same numbers).

    * a chunk whose featurizing fails is that stream's error, found without a backend call;
    * a batched backend call that raises is split in two and each half retried (bisection; ``on_split`` is
      called per split) until the culprit stream is alone; every other stream of the batch gets its prediction;
    * a stream whose output or new state is not finite gets :class:`NonFiniteOutputError` and its state is not
      committed (so every :class:`ChunkResult` returned has finite outputs and a finite state);
    * a session is committed only with its own good result, so a retried half never applies a chunk twice.
    """
    out: list[Any] = [None] * len(sessions)
    for part in _batches(sessions, chunks, max_batch, out, contain=True):
        _run_contained(sessions, part, out, on_split)
    return out


def _batches(sessions: Sequence[StreamSession], chunks: Sequence[Any], max_batch: int, out: list[Any], *,
             contain: bool) -> list[list[tuple[int, _Work]]]:
    """Prepare every chunk; fill ``out`` for chunks that need no batched call; return the batches to run.

    Audio streams into a features graph are featurized together where their chunks (after resampling) and
    carries have equal lengths (:meth:`AudioFeaturizer.step_batch`); other streams one by one."""
    if len(sessions) != len(chunks):
        raise ShapeError(f"step_streams got {len(sessions)} sessions and {len(chunks)} chunks")
    if len({id(s) for s in sessions}) != len(sessions):
        raise StateError("step_streams: a session appears twice in one call; its chunks must be applied in order")
    members = _uniform_audio(sessions, chunks)
    if members is None:
        prepared = _prepare_each(sessions, chunks, contain)
    else:
        prepared = _featurize_together(sessions, members, contain)
        if all(isinstance(w, _Work) and w.x is not None for _, w in prepared):  # the common case: one group
            return [prepared[k : k + max_batch] for k in range(0, len(prepared), max_batch)]  # type: ignore[misc]
    groups: dict[tuple[int, ...], list[tuple[int, _Work]]] = {}
    for i, work in prepared:
        s = sessions[i]
        try:
            if isinstance(work, Exception):
                out[i] = work
            elif work.x is None:
                out[i] = s._commit(work, None, s.states)
            elif work.segment_starts:  # rare: sensor gap resets inside the chunk; run alone
                out[i] = _push_alone(s, chunks[i], contain)
            else:
                groups.setdefault((id(s.backend), *work.x.shape[1:]), []).append((i, work))
        except Exception as exc:  # noqa: BLE001 -- contained: this stream's chunk or state, its error only
            out[i] = _raise_or(exc, contain)
    return [m[k : k + max_batch] for m in groups.values() for k in range(0, len(m), max_batch)]


def _uniform_audio(sessions: Sequence[StreamSession], chunks: Sequence[Any]) -> list[tuple[int, _Resampled]] | None:
    """The members of one :func:`_featurize_together` group, or ``None`` (prepare each stream): every session an
    open audio stream at the model's rate (no resampler) into the same features graph, every chunk a float32 array
    ``[S]`` of one length, every carry of one length (a server's batch of real-time streams). Such a batch skips
    the preparation stream by stream (conversion, its own finiteness check: ``step_batch`` checks the batch)."""
    first = sessions[0]
    backend, size, carry = first.backend, np.shape(chunks[0]), first.carry.shape
    if len(size) != 1:
        return None
    for s, c in zip(sessions, chunks):
        if not (type(c) is np.ndarray and c.dtype == _F32 and c.shape == size and s.backend is backend
                and s.resampler is None and s.carry.shape == carry and s._featurizes_audio()):
            return None
    return [(i, (c, size[0], None)) for i, c in enumerate(chunks)]


def _prepare_each(sessions: Sequence[StreamSession], chunks: Sequence[Any],
                  contain: bool) -> list[tuple[int, _Work | Exception]]:
    """Each chunk prepared for its stream (resampled, checked), audio chunks featurized together by group."""
    prepared: list[tuple[int, _Work | Exception]] = []
    audio: dict[tuple[int, int, int], list[tuple[int, _Resampled]]] = {}
    for i, (s, c) in enumerate(zip(sessions, chunks)):
        try:
            if s._featurizes_audio():
                r = s._resample(c)
                audio.setdefault((id(s.backend), r[0].shape[0], s.carry.shape[0]), []).append((i, r))
            else:
                prepared.append((i, s._prepare(c)))
        except Exception as exc:  # noqa: BLE001 -- contained: this stream's chunk or state, its error only
            prepared.append((i, _raise_or(exc, contain)))
    for members in audio.values():
        prepared.extend(_featurize_together(sessions, members, contain))
    return prepared


def _push_alone(s: StreamSession, chunk: Any, contain: bool) -> ChunkResult:
    """A chunk with sensor gap resets inside (rare): pushed on its own; contained, a non-finite result is not
    committed (as in :func:`_run_contained`)."""
    if not contain:
        return s.push(chunk)
    prev = s.__copy__()
    try:
        return _finite(s.push(chunk), s)
    except NonFiniteOutputError:
        s.__dict__.clear()
        s.__dict__.update(prev.__dict__)
        raise


def _raise_or(exc: Exception, contain: bool) -> Exception:
    if not contain:
        raise exc
    return exc


#: A chunk at the model's rate: ``(samples [S], samples consumed at the stream's rate, resampler afterwards)``.
_Resampled = tuple[np.ndarray, int, StreamResampler | None]


def _featurize_together(sessions: Sequence[StreamSession], members: list[tuple[int, _Resampled]],
                        contain: bool) -> list[tuple[int, _Work | Exception]]:
    """The :class:`_Work` of each member, featurized in one :meth:`AudioFeaturizer.step_batch` call when there
    are several; one by one should that call fail, so that the failing stream alone gets its error."""
    if len(members) > 1:
        first = sessions[members[0][0]]
        try:
            feats, carries = first._featurizer.audio.step_batch(  # type: ignore[union-attr]
                np.stack([r[0] for _, r in members]), np.stack([sessions[i].carry for i, _ in members]))
        except RnnstreamError:
            pass
        else:
            n = feats.shape[1]
            return [(i, _Work(feats[k : k + 1] if n else None, carries[k], (), r[1], None, r[2]))
                    for k, (i, r) in enumerate(members)]
    out: list[tuple[int, _Work | Exception]] = []
    for i, r in members:
        try:
            out.append((i, sessions[i]._featurize(r)))
        except Exception as exc:  # noqa: BLE001 -- contained, as in _batches
            out.append((i, _raise_or(exc, contain)))
    return out


def _call(sessions: Sequence[StreamSession], part: list[tuple[int, _Work]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One backend call for a batch: outputs ``[B, T, O]`` and states (batch first), row ``k`` for ``part[k]``."""
    backend = sessions[part[0][0]].backend
    x = np.concatenate([w.x for _, w in part], axis=0)
    y, new = backend.step(x, gather_states([{**sessions[i].states, **w.extra_states} if w.extra_states
                                            else sessions[i].states for i, w in part]))
    new.pop(FRONTEND_STATE, None)
    return np.asarray(y), new


def _rows(y: np.ndarray, states: dict[str, np.ndarray], n: int) -> tuple[list[np.ndarray], list[dict]]:
    """Per-stream outputs ``[1, T, O]`` and states of a batch of ``n`` (views)."""
    return [y[k : k + 1] for k in range(n)], scatter_states(states, [1] * n)


def _finite_rows(y: np.ndarray, states: dict[str, np.ndarray]) -> np.ndarray:
    """Which rows of a batch have finite outputs and states (bool ``[B]``): one check of the whole batch,
    row by row only when it finds NaN or infinity."""
    arrays = [y, *states.values()]
    if all(all_finite(a) for a in arrays):
        return np.ones(y.shape[0], bool)
    ok = np.ones(y.shape[0], bool)
    for a in arrays:
        ok &= np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    return ok


def _finite(result: ChunkResult, session: StreamSession) -> ChunkResult:
    if not (all_finite(result.outputs) and all(all_finite(v) for v in session.states.values())):
        raise NonFiniteOutputError("the model produced NaN or infinity for this stream")
    return result


def _run_contained(sessions: Sequence[StreamSession], part: list[tuple[int, _Work]], out: list[Any],
                   on_split: Callable[[], None] | None) -> None:
    try:
        y, new = _call(sessions, part)
    except Exception as exc:  # noqa: BLE001 -- any backend failure: bisect to find its stream
        if len(part) == 1:
            out[part[0][0]] = exc
            return
        if on_split is not None:
            on_split()
        _run_contained(sessions, part[: len(part) // 2], out, on_split)
        _run_contained(sessions, part[len(part) // 2 :], out, on_split)
        return
    ok = _finite_rows(y, new)
    ys, states = _rows(y, new, len(part))
    for k, ((i, w), yi, si) in enumerate(zip(part, ys, states)):
        if not ok[k]:
            out[i] = NonFiniteOutputError("the model produced NaN or infinity for this stream; its state is unchanged")
        else:
            out[i] = sessions[i]._commit(w, yi, si)


__all__ = ["NonFiniteOutputError", "gather_states", "scatter_states", "step_streams", "step_streams_contained"]

"""The data of the stream core (:mod:`rnnstream.pipeline.stream_core`): its config, its one record shape, a
stream's persisted state and a step of work. Plain data, free of Beam and asyncio.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from rnnstream.pipeline.codec import all_finite
from rnnstream.pipeline.errors import ConfigError, RnnstreamError
from rnnstream.pipeline.stream_checks import ChunkMessage
from rnnstream.pipeline.batching import step_streams
from rnnstream.pipeline.streaming import ChunkResult, StreamSession, prediction_fields

GapPolicy = Literal["fill", "reset"]
RecordType = Literal["prediction", "event", "dead_letter", "duplicate"]
#: Per-stream counters kept in the state (and reported through the ``count`` hook, with ``ends``).
COUNTERS = ("chunks", "filled", "gaps", "missing", "duplicates", "dead_letters", "evictions", "resumes")


@dataclass(frozen=True)
class CoreConfig:
    """Ordering, gap and eviction settings (see ``docs/stream_job.md``)."""

    gap_policy: GapPolicy = "fill"
    gap_timeout_s: float = 5.0
    idle_timeout_s: float = 30.0
    max_buffer: int = 64
    chunk_size: int | None = None  # exact samples/rows per chunk (the last may be shorter); None: any
    resample: bool = True  # audio streams at another rate than the model's: resample (False: dead letters)
    #: Strict order (the server's protocol): a chunk ahead of the next expected seq is refused with an
    #: ordering dead letter instead of buffered; there are no gaps to time out.
    strict_order: bool = False
    #: A duplicate is a ``duplicate`` record (``fields["expected"]``: the next expected seq), not only a count.
    duplicate_records: bool = False
    #: ``commit`` returns a ``prediction`` record per chunk (the stream job's output); ``False`` for an adapter
    #: that builds its own replies from the ``ChunkResult`` (the server), which saves the record's softmax and dict.
    prediction_records: bool = True

    def __post_init__(self) -> None:
        if self.gap_policy not in ("fill", "reset"):
            raise ConfigError(f"gap policy must be 'fill' or 'reset', got {self.gap_policy!r}")
        if not self.gap_timeout_s > 0 or not self.idle_timeout_s > 0:
            raise ConfigError(f"timeouts must be > 0 s, got gap {self.gap_timeout_s}, idle {self.idle_timeout_s}")
        if self.gap_timeout_s > self.idle_timeout_s:
            raise ConfigError(
                f"gap timeout {self.gap_timeout_s} s must not exceed the idle timeout {self.idle_timeout_s} s")
        if self.max_buffer < 1:
            raise ConfigError(f"max_buffer must be >= 1, got {self.max_buffer}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1 (or None), got {self.chunk_size}")


@dataclass(frozen=True)
class Record:
    """What the core emits: a ``prediction``, an ``event`` (``kind``: gap, end, eviction), a ``dead_letter``
    (``kind``: the error class, ``reason``: its message, ``message``: the offending message or raw text) or,
    with ``CoreConfig(duplicate_records=True)``, a ``duplicate`` (``fields["expected"]``: the next seq)."""

    type: RecordType
    stream: str | None
    seq: int | None = None
    kind: str | None = None
    reason: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    message: Any = None

    def to_dict(self, encode: Callable[[ChunkMessage], str] | None = None) -> dict[str, Any]:
        """The JSON record; ``encode`` writes a dead letter's :class:`ChunkMessage` back (else it is omitted)."""
        if self.type == "prediction":
            return {"stream": self.stream, "seq": self.seq, **self.fields}
        if self.type == "duplicate":
            return {"type": "duplicate", "stream": self.stream, "seq": self.seq, **self.fields}
        if self.type == "event":
            head: dict[str, Any] = {"type": self.kind, "stream": self.stream}
            if self.seq is not None:
                head["seq"] = self.seq
            if self.reason is not None:
                head["reason"] = self.reason
            return {**head, **self.fields}
        msg = self.message
        text = msg if isinstance(msg, str) or msg is None else (encode(msg) if encode is not None else None)
        return {"kind": self.kind, "reason": self.reason, "stream": self.stream, "seq": self.seq, "message": text}


def dead_letter(error: BaseException, *, stream: str | None = None, seq: int | None = None,
                message: Any = None) -> Record:
    """The dead-letter record of ``error`` (``kind`` its class name, ``reason`` its message)."""
    return Record("dead_letter", stream, seq, type(error).__name__, str(error), message=message)


@dataclass
class StreamState:
    """One stream's state: plain data (:meth:`to_value` / :meth:`from_value` for a state store) plus the live
    session, which is never persisted (:meth:`StreamCore.save` writes it into ``snapshot`` first).

    ``ready`` holds ordered work not yet stepped: ``("chunk", msg)``, ``("gap", missing, reason)``,
    ``("fill", seq, length)`` and ``("end", msg)``; it is empty whenever an adapter has run it to completion.
    """

    stream: str
    next: int = 0
    end: int | None = None
    ended: bool = False
    chunk_len: int | None = None
    rate: int | None = None
    skipped: list[int] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    buffer: dict[int, tuple[ChunkMessage, float]] = field(default_factory=dict)
    ready: list[tuple[Any, ...]] = field(default_factory=list)
    snapshot: bytes | None = None
    last_seen: float | None = None
    session: StreamSession | None = field(default=None, repr=False)
    dirty: bool = False  # the session moved since ``snapshot`` was written
    fresh: bool = True  # nothing was stored for this stream before
    closed: bool = False  # ended or evicted: the adapter drops the stored state

    _PERSISTED = ("next", "end", "ended", "chunk_len", "rate", "skipped", "counters", "buffer", "ready",
                  "snapshot", "last_seen")

    def to_value(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._PERSISTED}

    @classmethod
    def from_value(cls, stream: str, value: dict[str, Any] | None) -> StreamState:
        if not value:
            return cls(stream)
        return cls(stream, **{k: value[k] for k in cls._PERSISTED if k in value}, fresh=False)

    @property
    def opened(self) -> bool:
        return self.session is not None or self.snapshot is not None


@dataclass
class Step:
    """One chunk to push through ``session`` (``payload``: float32 samples or a SensorChunk); ``prev`` is the
    session as it was right before the chunk was stepped (taken by the stepping functions below), to roll back
    to when the chunk is refused."""

    stream: str
    seq: int
    session: StreamSession
    payload: Any
    msg: ChunkMessage | None = None  # None for a filled chunk
    filled: bool = False
    prev: StreamSession | None = None

    @property
    def end(self) -> bool:
        return self.msg is not None and self.msg.end


def finite(result: ChunkResult, session: StreamSession) -> bool:
    """The chunk's outputs and the session's new states hold no NaN or infinity."""
    return all_finite(result.outputs) and all(all_finite(v) for v in session.states.values())


def rollback(step: Step) -> None:
    """Put the session back as it was before the step (pushing replaces its attributes, never writes into them);
    nothing to do for a step not yet stepped."""
    if step.prev is None:
        return
    step.session.__dict__.clear()
    step.session.__dict__.update(step.prev.__dict__)


def _keep_prev(step: Step) -> None:
    """Take the session as it is now, right before stepping, for :func:`rollback`."""
    step.prev = copy.copy(step.session)


#: What stepping a chunk gave: its result, or the exception that refused it (a stepper such as
#: ``batching.step_streams_contained`` may return any exception it contained, not only a :class:`RnnstreamError`).
Outcome = ChunkResult | Exception


def prediction_record(step: Step, result: ChunkResult, flushed: ChunkResult | None) -> Record:
    """The prediction of one stepped chunk; ``flushed``: what the end-of-stream flush added after it."""
    d = result.to_dict()
    if flushed is not None and flushed.n_frames:
        d = {**flushed.to_dict(), "frames": d["frames"] + flushed.n_frames}
    fields = {"event_time": None if step.msg is None else step.msg.event_time, **d}
    if step.filled:
        fields["filled"] = True
    return Record("prediction", step.stream, step.seq, fields=fields)


def eviction_record(state: StreamState, session: StreamSession, model: str) -> Record:
    """The ``eviction`` event: the stream's position, rate, prediction so far and snapshot (base64)."""
    return Record("event", state.stream, kind="eviction", fields={
        "next_seq": state.next, "t": session.t, "sample_rate": session.sample_rate,
        **prediction_fields(session.peek_end()),
        "snapshot": base64.b64encode(session.snapshot()).decode("ascii"),
        "model": model, "counters": dict(state.counters)})


def step_one(step: Step) -> Outcome:
    """Push one step's chunk alone: its result, or the error that refused it (the session rolled back)."""
    _keep_prev(step)
    try:
        return step.session.push(step.payload)
    except RnnstreamError as exc:
        rollback(step)
        return exc


#: A stepping function: ``(sessions, payloads, max_batch) -> one ChunkResult or exception per session``, that
#: applies a session's chunk only with its own good result (e.g. ``batching.step_streams_contained``).
Stepper = Callable[[list[StreamSession], list[Any], int], list[Any]]


def step_with(steps: Sequence[Step], stepper: Stepper, max_batch: int = 256) -> list[Outcome]:
    """Push one step of each of many streams with ``stepper``; each ``prev`` is taken right before, so a step
    made while earlier chunks of its stream were still queued rolls back to the right state."""
    for step in steps:
        _keep_prev(step)
    results = stepper([s.session for s in steps], [s.payload for s in steps], max_batch)
    out: list[Outcome] = []
    for step, result in zip(steps, results):
        if isinstance(result, BaseException):
            rollback(step)
        out.append(result)
    return out


def step_many(steps: Sequence[Step], max_batch: int = 256) -> list[Outcome]:
    """Push one step of each of many streams: audio chunks in one ``step_streams`` call (a call that fails is
    rolled back and its chunks pushed alone); sensor chunks alone, as the runtime may still refuse one (its
    timestamps against the stream's last) and ``step_streams`` is not atomic."""
    out: list[Outcome | None] = [None] * len(steps)
    batch = [i for i, s in enumerate(steps) if isinstance(s.payload, np.ndarray)]
    alone = [i for i, s in enumerate(steps) if not isinstance(s.payload, np.ndarray)]
    if batch:
        for i in batch:
            _keep_prev(steps[i])
        try:
            results = step_streams([steps[i].session for i in batch], [steps[i].payload for i in batch], max_batch)
        except RnnstreamError:
            for i in batch:
                rollback(steps[i])
            alone = sorted(alone + batch)
        else:
            for i, result in zip(batch, results):
                out[i] = result
    for i in alone:
        out[i] = step_one(steps[i])
    return out  # type: ignore[return-value]


__all__ = [
    "COUNTERS",
    "CoreConfig",
    "GapPolicy",
    "Outcome",
    "Record",
    "Step",
    "Stepper",
    "StreamState",
    "dead_letter",
    "eviction_record",
    "finite",
    "prediction_record",
    "rollback",
    "step_many",
    "step_one",
    "step_with",
]

"""The stream core: one stream's life around a :class:`~rnnstream.pipeline.streaming.StreamSession`, free of
Beam and asyncio, shared by the Beam stream job (a stateful ``DoFn``) and the server (a cross-stream batcher).

It owns the stream id's and message's validity (:func:`check_message`: only finite arrays of the right dtype
and shape reach a session), opening at the stream's rate, ordering by ``seq`` (bounded reorder buffer),
duplicates, gaps and their policy (``fill``/``reset``) with due times the adapter turns into timers, end,
idle eviction (a record carrying the snapshot) and resume (from a snapshot validated before a session is made).
Ordering is split from stepping, so an adapter can step the chunks of many streams in one model call::

    state = core.load("mic-7", stored)             # StreamState: plain, picklable data (+ a live session)
    records = core.accept(state, msg, now)         # ordering only: duplicates, dead letters, buffering
    while (step := core.next_step(state, records)) is not None:
        outcome = core.step(step)                  # or core.step_batch([one step of each of many streams])
        records += core.commit(state, step, outcome)
    stored = core.save(state)                      # None once the stream is closed (its state is dropped)

:meth:`StreamCore.run` is that loop stepping alone; at most one step per stream may be outstanding. Timers:
:meth:`~StreamCore.gap_deadline` -> :meth:`~StreamCore.expire` (then step), :meth:`~StreamCore.idle_deadline`
-> :meth:`~StreamCore.evict`. Every accepted message ends as exactly one of a prediction, a duplicate
(counted), a dead letter or an accepted resume (counted); filled chunks add predictions of no message.

The server's mode (``CoreConfig(strict_order=True, duplicate_records=True)``): a chunk ahead of the next seq
is an ordering dead letter (no buffering, no gaps), a duplicate a ``duplicate`` record; :meth:`~StreamCore.end`
ends a stream without a seq and :meth:`~StreamCore.step_batch` takes the adapter's stepping function.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from rnnstream.pipeline.errors import (
    MessageError,
    OrderingError,
    ResumeError,
    RnnstreamError,
    SampleRateError,
    StateError,
)
from rnnstream.pipeline.stream_checks import (
    ChunkMessage,
    check_message,
    check_stream_id,
    payload_of,
)
from rnnstream.pipeline.stream_events import EventsMixin
from rnnstream.pipeline.stream_state import (
    COUNTERS,
    CoreConfig,
    Outcome,
    Record,
    Step,
    Stepper,
    StreamState,
    dead_letter,
    eviction_record,
    finite,
    prediction_record,
    rollback,
    step_many,
    step_one,
    step_with,
)
from rnnstream.pipeline.streaming import ChunkResult, StreamSession

_SKIPPED_KEEP = 4096
#: What restoring a foreign snapshot may raise besides our typed errors (malformed header values).
_RESTORE_ERRORS = (RnnstreamError, LookupError, TypeError, ArithmeticError)
CountHook = Callable[[str, str, int], None]


class SessionCodec(Protocol):
    """How an adapter persists a live session in :attr:`StreamState.snapshot` (default: the portable
    ``rnnstream.snapshot/2`` bytes). ``dump`` must return a value that compares equal (``==``) to itself after a
    round trip through the adapter's store and unequal to any other dump, so the session cache can tell the
    stored value is the one it holds."""

    def dump(self, session: StreamSession) -> Any: ...

    def load(self, value: Any, stream: str) -> StreamSession: ...


class StreamCore(EventsMixin):
    """The lifecycle of streams over one backend (see the module docstring).

    Args:
        backend: the model (``Backend``); wrap it to time ``step`` calls.
        config: ordering, gap and eviction settings.
        count: ``(stream, name, n)`` called for every counted thing (``chunks``, ``filled``, ``gaps``, ``missing``,
            ``duplicates``, ``dead_letters``, ``evictions``, ``resumes``, ``ends``), for the adapter's metrics.
        session_cache: live sessions kept by stream id for adapters that persist states as bytes (a hit skips
            a snapshot restore when the stored snapshot is the one this core wrote); 0 for none.
        session_codec: how sessions are written into / read from ``StreamState.snapshot`` (None: the portable
            snapshot bytes, ``StreamSession.snapshot`` / ``restore``).
    """

    def __init__(self, backend: Any, config: CoreConfig | None = None, *, count: CountHook | None = None,
                 session_cache: int = 0, session_codec: SessionCodec | None = None):
        self.backend = backend
        self.info = backend.info
        self.config = config or CoreConfig()
        self._count_hook = count
        self._cache_size = session_cache
        self._cache: OrderedDict[str, tuple[Any, StreamSession]] = OrderedDict()
        self._codec = session_codec

    # -- state ------------------------------------------------------------------------------------
    def load(self, stream: str, stored: dict[str, Any] | None = None) -> StreamState:
        """The state of ``stream`` from what :meth:`save` returned (None: a stream never seen)."""
        return StreamState.from_value(check_stream_id(stream), stored)

    def save(self, state: StreamState) -> dict[str, Any] | None:
        """Write the live session into the state's snapshot; the value to store, or None to drop the state."""
        if state.closed:
            self._cache.pop(state.stream, None)
            return None
        if state.session is not None and state.dirty:
            state.snapshot = state.session.snapshot() if self._codec is None else self._codec.dump(state.session)
            state.dirty = False
        if self._cache_size and state.session is not None and state.snapshot is not None:
            self._cache[state.stream] = (state.snapshot, state.session)
            self._cache.move_to_end(state.stream)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return state.to_value()

    def gap_deadline(self, state: StreamState) -> float | None:
        """When the earliest buffered chunk's hole is declared lost (None: nothing buffered)."""
        if not state.buffer or state.ended:
            return None
        return min(arrival for _, arrival in state.buffer.values()) + self.config.gap_timeout_s

    def idle_deadline(self, state: StreamState) -> float | None:
        """When the stream is evicted for want of messages (None: it never received one)."""
        return None if state.last_seen is None else state.last_seen + self.config.idle_timeout_s

    # -- ordering ---------------------------------------------------------------------------------
    def accept(self, state: StreamState, msg: ChunkMessage, now: float) -> list[Record]:
        """Take one message at time ``now``: check it, then resume, drop, refuse or buffer it (no stepping)."""
        state.last_seen = now
        try:
            if msg.stream != state.stream:
                raise MessageError(f"{msg.describe()}: delivered to the state of stream {state.stream!r}")
            check_message(msg, self.info, self.config.chunk_size)
        except RnnstreamError as exc:
            return [self._dead(state, exc, msg)]
        if msg.kind == "resume":
            return self._resume(state, msg)
        return self._order(state, msg, now)

    def order(self, state: StreamState, seq: int, msg: ChunkMessage | None = None) -> list[Record] | None:
        """Strict order's verdict on ``seq`` (callable before a chunk is decoded): None for the next expected
        seq; else its records: after the end or ahead of the next seq an ordering dead letter, below it a
        duplicate (counted; a ``duplicate`` record with ``duplicate_records``)."""
        if seq == state.next and not state.ended and state.end is None:
            return None  # the common case, before any message text is built
        where = msg.describe() if msg is not None else f"stream {state.stream!r} seq {seq}"
        if state.ended or (state.end is not None and (seq > state.end or self.config.strict_order)):
            return [self._dead(state, OrderingError(f"{where}: after end-of-stream"), msg, seq)]
        if seq < state.next:
            return self._duplicate(state, seq)
        if seq != state.next:
            return [self._dead(state, OrderingError(
                f"{where}: expected seq {state.next} (chunks are numbered 0, 1, 2, ... in order, continuing after a "
                "resume; a gap means chunks were lost)"), msg, seq)]
        return None

    def _duplicate(self, state: StreamState, seq: int) -> list[Record]:
        self._count(state, "duplicates")
        if not self.config.duplicate_records:
            return []
        return [Record("duplicate", state.stream, seq, fields={"expected": state.next})]

    def _order(self, state: StreamState, msg: ChunkMessage, now: float) -> list[Record]:
        if self.config.strict_order and (verdict := self.order(state, msg.seq, msg)) is not None:
            return verdict
        ahead = msg.seq - state.next
        if state.end is not None and msg.seq > state.end:
            return [self._dead(state, OrderingError(f"{msg.describe()}: after end-of-stream at seq {state.end}"), msg)]
        if msg.seq < state.next and msg.seq in state.skipped:
            return [self._dead(state, OrderingError(
                f"{msg.describe()}: arrived after its gap was resolved (policy {self.config.gap_policy})"), msg)]
        if msg.seq < state.next or msg.seq in state.buffer:
            return self._duplicate(state, msg.seq)
        if ahead >= self.config.max_buffer:
            hint = (" This stream has no state here: if it was evicted, send a 'resume' message with its eviction "
                    "snapshot first." if state.fresh else "")
            return [self._dead(state, OrderingError(
                f"{msg.describe()}: {ahead} seqs ahead of the next expected {state.next}, beyond the reorder "
                f"buffer bound {self.config.max_buffer}.{hint}"), msg)]
        if msg.end and any(s > msg.seq for s in state.buffer):
            return [self._dead(state, OrderingError(
                f"{msg.describe()}: end-of-stream before already received seq {max(state.buffer)}"), msg)]
        if msg.end:
            state.end = msg.seq
        state.buffer[msg.seq] = (msg, now)
        self._drain(state)
        return []

    def _drain(self, state: StreamState) -> None:
        while state.next in state.buffer:
            msg, _ = state.buffer.pop(state.next)
            state.ready.append(("chunk", msg))
            state.next += 1

    def _declare_lost(self, state: StreamState, stop: int, reason: str) -> None:
        """Seqs from the next expected up to ``stop`` are lost: queue the gap, then what follows it."""
        missing = list(range(state.next, stop))
        state.ready.append(("gap", missing, reason))
        state.skipped = (state.skipped + missing)[-_SKIPPED_KEEP:]
        state.next = stop
        self._drain(state)

    def expire(self, state: StreamState, now: float, *, everything: bool = False) -> None:
        """Declare lost the holes whose gap timeout passed by ``now`` (all of them if ``everything``); the
        policy is applied as the queued work is stepped (:meth:`next_step`)."""
        while state.buffer and not state.ended:
            deadline = self.gap_deadline(state)
            if not everything and deadline is not None and deadline > now:
                return
            self._declare_lost(state, min(state.buffer), f"not received within {self.config.gap_timeout_s} s")

    def _resume(self, state: StreamState, msg: ChunkMessage) -> list[Record]:
        if state.opened or state.ended or state.ready or state.next > 0 or state.counters["chunks"] \
                or state.counters["gaps"]:
            return [self._dead(state, ResumeError(
                f"{msg.describe()}: resume for a stream that is active here (next seq {state.next}); "
                "evict it first or use another stream id"), msg)]
        try:
            session = StreamSession.restore(self.backend, msg.snapshot, sample_rate=msg.sample_rate,  # type: ignore[arg-type]
                                            stream_id=state.stream)
        except _RESTORE_ERRORS as exc:
            return [self._dead(state, ResumeError(f"{msg.describe()}: cannot resume: {exc}"), msg)]
        audio = self.info.feature_config.audio
        if audio is not None and session.sample_rate != audio.sample_rate and not self.config.resample:
            return [self._dead(state, ResumeError(
                f"{msg.describe()}: cannot resume: the stream runs at {session.sample_rate} Hz, not at the model's "
                f"{audio.sample_rate} Hz, and this job does not resample (--no-resample)"), msg)]
        self._count(state, "resumes")
        state.session, state.dirty, state.rate, state.next = session, True, session.sample_rate, msg.seq
        out = []
        for seq in sorted(s for s in state.buffer if s < msg.seq):
            early, _ = state.buffer.pop(seq)
            out.append(self._dead(state, OrderingError(f"{early.describe()}: before the resume point seq {msg.seq}"),
                                  early))
        self._drain(state)
        return out

    # -- stepping ---------------------------------------------------------------------------------
    def next_step(self, state: StreamState, records: list[Record]) -> Step | None:
        """The next chunk to push (None: nothing ready); records produced on the way (gap and end events,
        chunks the stream cannot take) are appended to ``records``."""
        while state.ready:
            item = state.ready.pop(0)
            if item[0] == "gap":
                records += self._gap(state, item[1], item[2])
            elif item[0] == "end":
                records += self._end(state, item[1])
            elif item[0] == "fill":
                session = self._session(state, None)
                return Step(state.stream, item[1], session, np.zeros(item[2], np.float32), filled=True)
            else:
                msg = item[1]
                try:
                    self._check_rate(state, msg)
                    session = self._session(state, msg)
                except RnnstreamError as exc:
                    records += self._refuse(state, msg, exc)
                    continue
                return Step(state.stream, msg.seq, session, payload_of(msg, self.info), msg)
        return None

    def step(self, step: Step) -> Outcome:
        """Push one step's chunk alone: its result, or the error that refused it (the session unchanged)."""
        return step_one(step)

    def step_batch(self, steps: Sequence[Step], max_batch: int = 256, stepper: Stepper | None = None) -> list[Outcome]:
        """One step of each of many streams, audio chunks in one model call (:func:`step_many`), or with the
        adapter's ``stepper`` (:func:`step_with`; the server's is ``batching.step_streams_contained``)."""
        return step_many(steps, max_batch) if stepper is None else step_with(steps, stepper, max_batch)

    def end(self, state: StreamState, now: float) -> None:
        """End the stream without using up a seq (the server's ``end`` message): pending holes are resolved,
        then the ``end`` event (``seq`` None; ``next_seq``, ``frames``) follows what is ready, as
        :meth:`next_step` reaches it."""
        if state.ended or state.end is not None:
            raise OrderingError(f"stream {state.stream!r}: already ended")
        state.last_seen = now
        self.expire(state, now, everything=True)
        state.end = state.next - 1
        state.ready.append(("end", None))

    def commit(self, state: StreamState, step: Step, outcome: Outcome, *, finite_checked: bool = False) -> list[Record]:
        """The records of a stepped chunk; a refused one (or one that made the model's output or state NaN/Inf,
        rolled back) is a dead letter and its seq a gap, resolved at once by the policy. ``finite_checked``: the
        stepper already refused non-finite outputs and states (``batching.step_streams_contained`` does)."""
        flushed = None
        if isinstance(outcome, ChunkResult) and not finite_checked and not finite(outcome, step.session):
            rollback(step)
            outcome = StateError(f"stream {state.stream!r} seq {step.seq}: the model's output or state became NaN "
                                 "or Inf on this chunk; the chunk was not applied")
        if isinstance(outcome, ChunkResult) and step.end:
            ended = copy.copy(step.session)
            flushed = ended.end()  # the resampler's tail: the final prediction equals offline
            if not finite(flushed, ended):
                rollback(step)
                outcome = StateError(f"stream {state.stream!r} seq {step.seq}: the end-of-stream flush made the "
                                     "model's output or state NaN or Inf; the chunk was not applied")
            else:
                step.session.__dict__.update(ended.__dict__)
        if not isinstance(outcome, ChunkResult):
            if step.msg is None:  # zeros cannot be refused; should it happen, keep the count balanced anyway
                return [dead_letter(outcome, stream=state.stream, seq=step.seq)]
            return self._refuse(state, step.msg, outcome)
        state.dirty = True
        msg = step.msg
        if msg is not None and msg.size and not msg.end:
            state.chunk_len = msg.size
        self._count(state, "filled" if step.filled else "chunks")
        records = [prediction_record(step, outcome, flushed)] if self.config.prediction_records else []
        if msg is not None and msg.end:
            records += self._end(state, msg)
        return records

    def run(self, state: StreamState) -> list[Record]:
        """Step everything ready, alone (the Beam adapter; a batcher interleaves :meth:`step_batch` instead)."""
        records: list[Record] = []
        while (step := self.next_step(state, records)) is not None:
            records += self.commit(state, step, self.step(step))
        return records

    def process(self, state: StreamState, msg: ChunkMessage, now: float) -> list[Record]:
        """:meth:`accept` then :meth:`run`."""
        return self.accept(state, msg, now) + self.run(state)

    def evict(self, state: StreamState, now: float) -> list[Record]:
        """Idle: resolve every pending hole, step what is ready, then close the stream with an ``eviction``
        record carrying its snapshot (none for a stream that ended or never opened)."""
        self.expire(state, now, everything=True)
        records = self.run(state)
        never_opened = not state.opened and (state.next == 0 or (self.info.feature_config.kind == "audio"
                                                                 and not state.rate))
        if not (state.ended or never_opened):
            records.append(self._eviction(state))
        self._close(state)
        return records

    # -- the pieces ---------------------------------------------------------------------------------
    def _eviction(self, state: StreamState) -> Record:
        session = self._session(state, None)  # after a reset: a fresh session at the stream's rate
        self._count(state, "evictions")
        return eviction_record(state, session, self.info.weights_hash)

    def _close(self, state: StreamState) -> None:
        self._cache.pop(state.stream, None)
        state.session, state.snapshot, state.dirty, state.closed = None, None, False, True

    def _count(self, state: StreamState, name: str, n: int = 1) -> None:
        if name in state.counters:
            state.counters[name] += n
        if self._count_hook is not None:
            self._count_hook(state.stream, name, n)

    def _dead(self, state: StreamState, error: Exception, msg: ChunkMessage | None,
              seq: int | None = None) -> Record:
        self._count(state, "dead_letters")
        return dead_letter(error, stream=state.stream, seq=msg.seq if msg is not None else seq, message=msg)

    def _refuse(self, state: StreamState, msg: ChunkMessage, error: Exception) -> list[Record]:
        """A chunk the stream cannot take: a dead letter, its seq a gap at once (then the end, if it was one)."""
        state.skipped = (state.skipped + [msg.seq])[-_SKIPPED_KEEP:]
        state.ready[:0] = [("gap", [msg.seq], f"chunk {msg.seq} rejected by the runtime")] + (
            [("end", msg)] if msg.end else [])
        return [self._dead(state, error, msg)]

    def _session(self, state: StreamState, msg: ChunkMessage | None) -> StreamSession:
        """The stream's live session: kept, cached, restored from its snapshot, or opened at its rate."""
        if state.session is None:
            cached = self._cache.pop(state.stream, None)
            if state.snapshot is None:
                state.session = self._open(state, msg)
            elif cached is not None and (cached[0] is state.snapshot or cached[0] == state.snapshot):
                state.session = cached[1]
            elif self._codec is not None:
                state.session = self._codec.load(state.snapshot, state.stream)
            else:
                state.session = StreamSession.restore(self.backend, state.snapshot, stream_id=state.stream)
        return state.session

    def _open(self, state: StreamState, msg: ChunkMessage | None) -> StreamSession:
        """A fresh session at the stream's rate: the one it opened with (kept across a reset), else ``msg``'s."""
        audio = self.info.feature_config.audio
        rate = None
        if audio is not None:
            rate = state.rate or (msg.sample_rate if msg is not None else None)
            where = msg.describe() if msg is not None else f"stream {state.stream!r}"
            if rate is None:
                raise MessageError(f"{where}: the chunk that opens an audio stream must carry 'sample_rate' (Hz of its "
                                   f"samples); this model runs at {audio.sample_rate} Hz")
            if rate != audio.sample_rate and not self.config.resample:
                raise SampleRateError(f"{where}: the stream's sample_rate {rate} Hz differs from the model's "
                                      f"{audio.sample_rate} Hz and this job does not resample (--no-resample)")
        session = StreamSession(self.backend, sample_rate=rate, stream_id=state.stream, resample=self.config.resample)
        state.rate = rate
        return session

    def _check_rate(self, state: StreamState, msg: ChunkMessage) -> None:
        if msg.sample_rate is not None and state.rate is not None and msg.sample_rate != state.rate:
            raise SampleRateError(f"{msg.describe()}: 'sample_rate' {msg.sample_rate} Hz differs from the stream's "
                                  f"{state.rate} Hz, declared when it opened; a stream keeps one rate")


__all__ = ["COUNTERS", "ChunkMessage", "CoreConfig", "Outcome", "Record", "SessionCodec", "Step", "StreamCore",
           "StreamState", "check_message", "check_stream_id", "dead_letter"]

"""Per-stream stateful inference in Beam: :class:`StreamInference` over a private stateful ``DoFn``.

``lines | StreamInference(model_path, StreamJobConfig(...))`` takes chunk messages (JSON lines, see
:mod:`rnnstream.beam_jobs.messages`) and returns ``{"predictions", "events", "dead_letters"}``, three PCollections
of JSON-ready dicts. Each element's *timestamp* is its event time (sources set it; see
``rnnstream.beam_jobs.stream_job``).

State kept per stream id (Beam keyed state, so it moves with the key between workers), in one cell:

* ``snapshot``: the runtime's portable ``StreamSession.snapshot()`` bytes (RNN states, featurizer carry,
  stream time), absent before the first applied chunk;
* ``meta``: the next expected ``seq``, the ``end`` seq once known, the chunk length, recently skipped
  seqs (to tell a late chunk from a duplicate) and the stream's counters;
* ``buffer``: the reorder buffer ``{seq: (message, arrival time)}``, at most ``max_buffer`` seqs ahead.

Two timers per stream, both in one time domain (``time_domain``: ``"event"`` = watermark, the default
and the only one that makes a bounded replay deterministic; ``"processing"`` = wall clock, for live
sources whose event times are not trustworthy):

* ``gap``: the earliest buffered chunk's arrival + ``gap_timeout_s``. When it fires, the missing seqs
  before the first buffered chunk are declared lost and the policy applies: ``"fill"`` pushes
  zeros of the stream's chunk length for each (audio; marked ``"filled": true``; a sensor stream's
  hole is already explicit in its timestamps, so its featurizer's own gap rule applies), ``"reset"``
  starts the stream over from a fresh state at the next chunk. Either way a ``gap`` event is emitted.
  On a bounded input the final watermark fires every pending timer, so nothing stays buffered.
* ``idle``: the last message's time + ``idle_timeout_s``. When it fires, pending holes are resolved as
  above, then an ``eviction`` event carries the final snapshot (base64) and the next seq, and the
  state is cleared. A ``resume`` message with that snapshot and seq continues the stream, here or in
  another job, exactly as if it had never stopped.

Accounting: every message becomes exactly one of: a prediction (``filled`` false), a duplicate
(counter ``duplicates``), a dead letter, or an accepted resume (counter ``resumes``). Filled chunks
add predictions with ``"filled": true`` that correspond to no message.
"""

from __future__ import annotations

import base64
import copy
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import apache_beam as beam
from apache_beam import typehints
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import TimestampedValue
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils import shared
from apache_beam.utils.timestamp import Timestamp

from rnnstream.beam_jobs.messages import ChunkMessage, MessageError, encode_message, parse_message, validate_for_model
from rnnstream.pipeline.errors import ConfigError, RnnstreamError, SampleRateError, StateError

NAMESPACE = "rnnstream"
STREAM_NAMESPACE = "rnnstream.stream"
EVENTS = "events"
DEAD_LETTERS = "dead_letters"
GapPolicy = Literal["fill", "reset"]
TimeDomainName = Literal["event", "processing"]
_SKIPPED_KEEP = 4096
_COUNTER_NAMES = ("chunks", "filled", "gaps", "missing", "duplicates", "dead_letters", "evictions", "resumes")


class OrderingError(RnnstreamError):
    """A chunk that cannot be placed in its stream: after end-of-stream, too far ahead, or too late."""


class ResumeError(RnnstreamError):
    """A resume message for a stream that is already active, or whose snapshot cannot be restored."""


@dataclass(frozen=True)
class StreamJobConfig:
    """Ordering, gap and eviction settings of :class:`StreamInference` (see the module docstring)."""

    gap_policy: GapPolicy = "fill"
    gap_timeout_s: float = 5.0
    idle_timeout_s: float = 30.0
    max_buffer: int = 64
    chunk_size: int | None = None  # exact samples/rows per chunk (the last may be shorter); None: any
    time_domain: TimeDomainName = "event"
    per_stream_metrics: bool = True
    session_cache: int = 4096  # sessions kept in memory per DoFn instance (restore is skipped on a hit)
    resample: bool = True  # audio streams at another rate than the model's: resample (False: dead letters)

    def __post_init__(self) -> None:
        if self.gap_policy not in ("fill", "reset"):
            raise ConfigError(f"gap policy must be 'fill' or 'reset', got {self.gap_policy!r}")
        if self.time_domain not in ("event", "processing"):
            raise ConfigError(f"time domain must be 'event' or 'processing', got {self.time_domain!r}")
        if not self.gap_timeout_s > 0 or not self.idle_timeout_s > 0:
            raise ConfigError(f"timeouts must be > 0 s, got gap {self.gap_timeout_s}, idle {self.idle_timeout_s}")
        if self.gap_timeout_s > self.idle_timeout_s:
            raise ConfigError(
                f"gap timeout {self.gap_timeout_s} s must not exceed the idle timeout {self.idle_timeout_s} s"
            )
        if self.max_buffer < 1:
            raise ConfigError(f"max_buffer must be >= 1, got {self.max_buffer}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1 (or None), got {self.chunk_size}")


# ----------------------------------------------------------------------------------------------
# Model loading (once per worker process) and timing
# ----------------------------------------------------------------------------------------------


def load_model(path: str) -> Any:
    """The backend for ``path``: ``rnnstream.api.load_backend`` (ONNX or checkpoint), CPU."""
    from rnnstream.api import load_backend

    return load_backend(path, provider="cpu")


class _Loaded:
    """What the ``Shared`` handle holds (it needs a weak-referenceable object)."""

    def __init__(self, backend: Any):
        self.backend = backend


class TimedBackend:
    """A backend proxy that adds the time spent in ``step`` to a Beam counter (microseconds)."""

    def __init__(self, backend: Any, counter: Any):
        self.inner = backend
        self.info = backend.info
        self._counter = counter

    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        t0 = time.perf_counter()
        try:
            return self.inner.step(x, states)
        finally:
            self._counter.inc(int((time.perf_counter() - t0) * 1e6))


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


def dead_letter(error: BaseException, *, stream: str | None = None, seq: int | None = None,
                message: str | None = None) -> dict[str, Any]:
    """``{"kind": class name, "reason": str(error), "stream", "seq", "message"}`` (the raw or re-encoded line)."""
    return {"kind": type(error).__name__, "reason": str(error), "stream": stream, "seq": seq, "message": message}


class _ParseFn(beam.DoFn):
    """JSON line -> ``(stream id, ChunkMessage)``; malformed lines to the dead letters.

    ``timestamps_from_messages``: give each element its message's ``event_time`` as timestamp (replays).
    """

    def __init__(self, timestamps_from_messages: bool = False) -> None:
        self.timestamps_from_messages = timestamps_from_messages
        self.messages = Metrics.counter(NAMESPACE, "messages_in")
        self.dead = Metrics.counter(NAMESPACE, "dead_letters")

    def process(self, line: str | bytes) -> Iterable[Any]:
        self.messages.inc()
        try:
            msg = parse_message(line)
        except MessageError as exc:
            self.dead.inc()
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
            yield TaggedOutput(DEAD_LETTERS, dead_letter(exc, message=text))
            return
        if self.timestamps_from_messages:
            yield TimestampedValue((msg.stream, msg), msg.event_time)
        else:
            yield msg.stream, msg


# ----------------------------------------------------------------------------------------------
# The stateful DoFn
# ----------------------------------------------------------------------------------------------


def _new_meta() -> dict[str, Any]:
    return {"next": 0, "end": None, "ended": False, "chunk_len": None, "skipped": [], "rate": None,
            "counters": {k: 0 for k in _COUNTER_NAMES}}


class _StreamState:
    """One key's state (a single Beam state cell), read once per callback, mutated in memory, written once.

    One cell rather than one per field: the SDK harness's state cache measures every written cell with
    ``objsize`` (about 10 ms per cell with torch imported), which would otherwise dominate the job.
    """

    def __init__(self, key: str, cell: Any):
        self.key = key
        self._cell = cell
        value = cell.read()
        self.fresh = value is None
        value = value or {}
        self.snapshot: bytes | None = value.get("snapshot")
        self.meta: dict[str, Any] = value.get("meta") or _new_meta()
        self.buffer: dict[int, tuple[ChunkMessage, float]] = value.get("buffer") or {}
        self.session: Any = None  # a live StreamSession once touched
        self.dirty_session = False

    def write(self) -> None:
        self._cell.write({"snapshot": self.snapshot, "meta": self.meta, "buffer": self.buffer})

    def clear(self) -> None:
        self._cell.clear()


class _StreamFnBase(beam.DoFn):
    """The work of the stateful DoFn; subclasses bind the timers to a time domain."""

    STATE = ReadModifyWriteStateSpec("stream", PickleCoder())  # {"snapshot", "meta", "buffer"}
    DOMAIN = TimeDomain.WATERMARK

    def __init__(self, model_path: str, config: StreamJobConfig, shared_handle: shared.Shared,
                 loader: Callable[[str], Any] = load_model):
        self.model_path = model_path
        self.config = config
        self._shared = shared_handle
        self._loader = loader
        self.backend: Any = None
        self._sessions: OrderedDict[str, tuple[bytes, Any]] = OrderedDict()
        self.c_chunks = Metrics.counter(NAMESPACE, "chunks")
        self.c_filled = Metrics.counter(NAMESPACE, "filled_chunks")
        self.c_gaps = Metrics.counter(NAMESPACE, "gaps")
        self.c_missing = Metrics.counter(NAMESPACE, "missing_chunks")
        self.c_dups = Metrics.counter(NAMESPACE, "duplicates")
        self.c_dead = Metrics.counter(NAMESPACE, "dead_letters")
        self.c_evict = Metrics.counter(NAMESPACE, "evictions")
        self.c_resume = Metrics.counter(NAMESPACE, "resumes")
        self.c_ends = Metrics.counter(NAMESPACE, "ends")
        self.c_model_us = Metrics.counter(NAMESPACE, "model_step_us")
        self.c_fn_us = Metrics.counter(NAMESPACE, "stateful_fn_us")
        self.d_depth = Metrics.distribution(NAMESPACE, "buffer_depth")

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self) -> None:
        path, loader = self.model_path, self._loader
        loaded = self._shared.acquire(lambda: _Loaded(loader(path)), tag=("stream_job", path))
        self.backend = TimedBackend(loaded.backend, self.c_model_us)

    # -- helpers --------------------------------------------------------------------------------
    def _now(self, timestamp: Any) -> float:
        if self.DOMAIN == TimeDomain.REAL_TIME:
            return time.time()
        return float(timestamp.micros) / 1e6

    def _bump(self, st: _StreamState, name: str, n: int = 1) -> None:
        st.meta["counters"][name] += n
        if self.config.per_stream_metrics:
            Metrics.counter(STREAM_NAMESPACE, f"{st.key}/{name}").inc(n)

    def _session(self, st: _StreamState, msg: ChunkMessage | None = None) -> Any:
        """The stream's live session: cached, restored from its snapshot, or opened (see :meth:`_open`)."""
        from rnnstream.pipeline.streaming import StreamSession

        if st.session is None:
            cached = self._sessions.pop(st.key, None)
            if st.snapshot is None:
                st.session = self._open(st, msg)
            elif cached is not None and cached[0] == st.snapshot:
                st.session = cached[1]
            else:
                st.session = StreamSession.restore(self.backend, st.snapshot, stream_id=st.key)
        return st.session

    def _open(self, st: _StreamState, msg: ChunkMessage | None) -> Any:
        """A fresh session at the stream's rate: the one it opened with (kept across a reset), else ``msg``'s.

        Raises:
            MessageError: an audio stream with no rate yet, and ``msg`` carries no ``sample_rate``.
            SampleRateError: a rate other than the model's with resampling off (names both rates).
        """
        from rnnstream.pipeline.streaming import StreamSession

        audio = self.backend.info.feature_config.audio
        rate = None
        if audio is not None:
            rate = st.meta.get("rate") or (msg.sample_rate if msg is not None else None)
            where = msg.describe() if msg is not None else f"stream {st.key!r}"
            if rate is None:
                raise MessageError(f"{where}: the chunk that opens an audio stream must carry 'sample_rate' (Hz of its "
                                   f"samples); this model runs at {audio.sample_rate} Hz")
            if rate != audio.sample_rate and not self.config.resample:
                raise SampleRateError(f"{where}: the stream's sample_rate {rate} Hz differs from the model's "
                                      f"{audio.sample_rate} Hz and this job does not resample (--no-resample)")
        session = StreamSession(self.backend, sample_rate=rate, stream_id=st.key, resample=self.config.resample)
        st.meta["rate"] = rate
        return session

    def _check_rate(self, st: _StreamState, msg: ChunkMessage) -> None:
        """A chunk's ``sample_rate``, when given, must be the stream's (:class:`SampleRateError` naming both)."""
        known = st.meta.get("rate")
        if msg.sample_rate is not None and known is not None and msg.sample_rate != known:
            raise SampleRateError(f"{msg.describe()}: 'sample_rate' {msg.sample_rate} Hz differs from the stream's "
                                  f"{known} Hz, declared when it opened; a stream keeps one rate")

    def _live_session(self, st: _StreamState) -> Any:
        """The stream's session if it has one (live or in its snapshot), else None (never opens one)."""
        if st.session is None and st.snapshot is None:
            return None
        return self._session(st)

    def _finish(self, st: _StreamState) -> None:
        """Write the session back into the snapshot state (and the in-memory cache)."""
        if st.session is not None and st.dirty_session:
            st.snapshot = st.session.snapshot()
        if st.session is not None and st.snapshot is not None:
            self._sessions[st.key] = (st.snapshot, st.session)
            while len(self._sessions) > self.config.session_cache:
                self._sessions.popitem(last=False)

    def _forget(self, st: _StreamState) -> None:
        self._sessions.pop(st.key, None)
        st.session = None
        st.clear()

    def _dead(self, st: _StreamState, error: BaseException, msg: ChunkMessage) -> TaggedOutput:
        self.c_dead.inc()
        self._bump(st, "dead_letters")
        return TaggedOutput(DEAD_LETTERS, dead_letter(error, stream=msg.stream, seq=msg.seq, message=encode_message(msg)))

    def _payload(self, msg: ChunkMessage) -> Any:
        from rnnstream.pipeline.streaming import SensorChunk

        if msg.timestamps is not None:
            values = msg.values
            if not values.shape[0]:  # an empty chunk: give it the model's channel count
                values = np.zeros((0, len(self.backend.info.feature_config.sensor.columns)), np.float64)
            return SensorChunk(msg.timestamps, values)
        if msg.audio is not None:
            return msg.audio
        if self.backend.info.feature_config.kind == "sensor":
            n = len(self.backend.info.feature_config.sensor.columns)
            return SensorChunk(np.zeros(0, np.float64), np.zeros((0, n), np.float64))
        return np.zeros(0, np.float32)

    def _prediction(self, st: _StreamState, seq: int, event_time: float | None, result: Any, filled: bool,
                    flushed: Any = None) -> dict[str, Any]:
        """The prediction record of one chunk; ``flushed``: what ``session.end()`` added after it (end marker)."""
        d = result.to_dict()
        if flushed is not None and flushed.n_frames:
            d = {**flushed.to_dict(), "frames": d["frames"] + flushed.n_frames}
        rec: dict[str, Any] = {"stream": st.key, "seq": seq, "event_time": event_time, **d}
        if filled:
            rec["filled"] = True
        return rec

    # -- applying chunks ------------------------------------------------------------------------
    def _apply(self, st: _StreamState, msg: ChunkMessage, out: list[Any]) -> None:
        try:
            self._check_rate(st, msg)
            session = self._session(st, msg)
            result = session.push(self._payload(msg))
            flushed = session.end() if msg.end else None  # the resampler's tail: final == offline
        except RnnstreamError as exc:  # no/other sample rate; e.g. sensor timestamps not after the previous chunk's
            out.append(self._dead(st, exc, msg))
            self._resolve_hole(st, msg.seq + 1, out, reason=f"chunk {msg.seq} rejected by the runtime", first=msg.seq)
            if msg.end:
                self._end(st, msg, out)
            return
        st.dirty_session = True
        st.meta["next"] = msg.seq + 1
        if msg.size and not msg.end:
            st.meta["chunk_len"] = msg.size
        self.c_chunks.inc()
        self._bump(st, "chunks")
        out.append(self._prediction(st, msg.seq, msg.event_time, result, False, flushed))
        if msg.end:
            self._end(st, msg, out)

    def _end(self, st: _StreamState, msg: ChunkMessage, out: list[Any]) -> None:
        session = self._live_session(st)  # None: the stream never opened (e.g. no sample rate)
        if session is not None and not session.ended:
            session.end()
        self.c_ends.inc()
        out.append(TaggedOutput(EVENTS, {
            "type": "end", "stream": st.key, "seq": msg.seq, "event_time": msg.event_time,
            "t": 0.0 if session is None else session.t, "sample_rate": st.meta.get("rate"),
            **_prediction_fields(None if session is None else session.final()),
            "counters": dict(st.meta["counters"]),
        }))
        st.meta["ended"] = True
        st.meta["next"] = msg.seq + 1
        st.snapshot = None
        st.session = None
        st.dirty_session = False
        self._sessions.pop(st.key, None)
        for seq in sorted(st.buffer):  # cannot happen (seqs > end are refused), kept for safety
            late, _ = st.buffer.pop(seq)
            out.append(self._dead(st, OrderingError(f"{late.describe()}: after end-of-stream at seq {msg.seq}"), late))

    def _drain(self, st: _StreamState, out: list[Any]) -> None:
        while not st.meta["ended"] and st.meta["next"] in st.buffer:
            msg, _ = st.buffer.pop(st.meta["next"])
            self._apply(st, msg, out)

    def _resolve_hole(self, st: _StreamState, stop: int, out: list[Any], reason: str, first: int | None = None) -> None:
        """Declare seqs ``first .. stop - 1`` (default: from the next expected) lost; apply the gap policy."""
        start = st.meta["next"] if first is None else first
        missing = list(range(start, stop))
        if not missing:
            st.meta["next"] = max(st.meta["next"], stop)
            return
        self.c_gaps.inc()
        self.c_missing.inc(len(missing))
        self._bump(st, "gaps")
        self._bump(st, "missing", len(missing))
        event: dict[str, Any] = {"type": "gap", "stream": st.key, "missing": missing,
                                 "policy": self.config.gap_policy, "reason": reason}
        info = self.backend.info
        if self.config.gap_policy == "reset":
            self._sessions.pop(st.key, None)
            st.session = None
            st.snapshot = None
            st.dirty_session = False
        elif info.feature_config.kind == "audio":
            self._fill(st, missing, stop, event, out)
        else:
            event["filled_samples"] = 0  # the hole is in the timestamps; the sensor featurizer handles it
        out.append(TaggedOutput(EVENTS, event))
        st.meta["skipped"] = (st.meta["skipped"] + missing)[-_SKIPPED_KEEP:]
        st.meta["next"] = stop

    def _fill(self, st: _StreamState, missing: list[int], stop: int, event: dict[str, Any], out: list[Any]) -> None:
        """The fill policy on an audio stream: zeros of the chunk length for each missing seq. A stream not
        opened yet opens at the rate of the chunk after the hole; without one nothing is filled."""
        following = st.buffer.get(stop)
        try:
            session = self._session(st, following[0] if following is not None else None)
        except RnnstreamError as exc:
            event["filled_samples"] = 0
            event["reason"] += f"; nothing filled, the stream cannot open ({exc})"
            return
        length = self._fill_length(st, stop)
        event["filled_samples"] = length
        for seq in missing:
            result = session.push(np.zeros(length, np.float32))
            st.dirty_session = True
            self.c_filled.inc()
            self._bump(st, "filled")
            out.append(self._prediction(st, seq, None, result, filled=True))

    def _fill_length(self, st: _StreamState, stop: int) -> int:
        if self.config.chunk_size:
            return self.config.chunk_size
        if st.meta["chunk_len"]:
            return int(st.meta["chunk_len"])
        following = st.buffer.get(stop)
        return following[0].size if following is not None else 0

    def _resolve_due(self, st: _StreamState, now: float, out: list[Any], *, everything: bool) -> float | None:
        """Resolve holes whose timeout passed (all of them if ``everything``); return the next deadline."""
        while st.buffer and not st.meta["ended"]:
            deadline = min(arrival for _, arrival in st.buffer.values()) + self.config.gap_timeout_s
            if not everything and deadline > now:
                return deadline
            first = min(st.buffer)
            self._resolve_hole(st, first, out, reason=f"not received within {self.config.gap_timeout_s} s")
            self._drain(st, out)
        return None

    # -- the callbacks ----------------------------------------------------------------------------
    def _on_message(self, element: tuple[str, ChunkMessage], timestamp: Any, state: Any,
                    gap_timer: Any, idle_timer: Any) -> list[Any]:
        t0 = time.perf_counter()
        key, msg = element
        st = _StreamState(key, state)
        now = self._now(timestamp)
        out: list[Any] = []
        try:
            validate_for_model(msg, self.backend.info, self.config.chunk_size)
        except RnnstreamError as exc:
            out.append(self._dead(st, exc, msg))
        else:
            if msg.kind == "resume":
                self._on_resume(st, msg, out)
            else:
                self._on_chunk(st, msg, now, out)
        self._finish(st)
        st.write()
        self.d_depth.update(len(st.buffer))
        if self.config.per_stream_metrics:
            Metrics.gauge(STREAM_NAMESPACE, f"{key}/buffer_depth").set(len(st.buffer))
        deadline = None
        if st.buffer and not st.meta["ended"]:
            deadline = min(a for _, a in st.buffer.values()) + self.config.gap_timeout_s
        self._set(gap_timer, deadline)
        self._set(idle_timer, now + self.config.idle_timeout_s)
        self.c_fn_us.inc(int((time.perf_counter() - t0) * 1e6))
        return out

    def _on_chunk(self, st: _StreamState, msg: ChunkMessage, now: float, out: list[Any]) -> None:
        m = st.meta
        end = m["end"]
        if end is not None and msg.seq > end:
            out.append(self._dead(st, OrderingError(f"{msg.describe()}: after end-of-stream at seq {end}"), msg))
        elif msg.seq < m["next"]:
            if msg.seq in m["skipped"]:
                out.append(self._dead(st, OrderingError(
                    f"{msg.describe()}: arrived after its gap was resolved (policy {self.config.gap_policy})"), msg))
            else:
                self.c_dups.inc()
                self._bump(st, "duplicates")
        elif msg.seq in st.buffer:
            self.c_dups.inc()
            self._bump(st, "duplicates")
        elif msg.seq - m["next"] >= self.config.max_buffer:
            hint = (" This stream has no state here: if it was evicted, send a 'resume' message with its eviction "
                    "snapshot first." if st.fresh else "")
            out.append(self._dead(st, OrderingError(
                f"{msg.describe()}: {msg.seq - m['next']} seqs ahead of the next expected {m['next']}, beyond the "
                f"reorder buffer bound {self.config.max_buffer}.{hint}"), msg))
        elif msg.end and any(s > msg.seq for s in st.buffer):
            # An end marker before chunks already buffered after it: the marker is the odd one out.
            out.append(self._dead(st, OrderingError(
                f"{msg.describe()}: end-of-stream before already received seq {max(st.buffer)}"), msg))
        else:
            if msg.end:
                m["end"] = msg.seq
            st.buffer[msg.seq] = (msg, now)
            self._drain(st, out)

    def _on_resume(self, st: _StreamState, msg: ChunkMessage, out: list[Any]) -> None:
        m = st.meta
        if st.snapshot is not None or m["ended"] or m["next"] > 0 or m["counters"]["chunks"] or m["counters"]["gaps"]:
            out.append(self._dead(st, ResumeError(
                f"{msg.describe()}: resume for a stream that is active here (next seq {m['next']}); "
                "evict it first or use another stream id"), msg))
            return
        from rnnstream.pipeline.streaming import StreamSession

        try:
            session = StreamSession.restore(self.backend, msg.snapshot, sample_rate=msg.sample_rate, stream_id=st.key)
        except StateError as exc:
            out.append(self._dead(st, ResumeError(f"{msg.describe()}: cannot resume: {exc}"), msg))
            return
        audio = self.backend.info.feature_config.audio
        if audio is not None and session.sample_rate != audio.sample_rate and not self.config.resample:
            out.append(self._dead(st, ResumeError(
                f"{msg.describe()}: cannot resume: the stream runs at {session.sample_rate} Hz, not at the model's "
                f"{audio.sample_rate} Hz, and this job does not resample (--no-resample)"), msg))
            return
        self.c_resume.inc()
        self._bump(st, "resumes")
        st.session, st.dirty_session = session, True
        m["rate"] = session.sample_rate
        m["next"] = msg.seq
        for seq in sorted(s for s in st.buffer if s < msg.seq):
            early, _ = st.buffer.pop(seq)
            out.append(self._dead(st, OrderingError(f"{early.describe()}: before the resume point seq {msg.seq}"), early))
        self._drain(st, out)

    def _on_gap(self, key: str, timestamp: Any, state: Any, gap_timer: Any) -> list[Any]:
        st = _StreamState(key, state)
        if st.fresh:
            return []
        out: list[Any] = []
        deadline = self._resolve_due(st, self._now(timestamp), out, everything=False)
        self._finish(st)
        st.write()
        self._set(gap_timer, deadline)
        return out

    def _on_idle(self, key: str, timestamp: Any, state: Any, gap_timer: Any) -> list[Any]:
        st = _StreamState(key, state)
        if st.fresh:
            return []
        out: list[Any] = []
        self._resolve_due(st, self._now(timestamp), out, everything=True)
        self._set(gap_timer, None)
        never_opened = st.snapshot is None and st.session is None and (
            st.meta["next"] == 0 or (self.backend.info.feature_config.kind == "audio" and not st.meta.get("rate")))
        if st.meta["ended"] or never_opened:
            self._forget(st)  # ended, or never opened (only dead letters/duplicates): nothing to resume
            return out
        self._finish(st)
        session = self._session(st)  # after a reset: a fresh session at the stream's rate
        self._bump(st, "evictions")
        self.c_evict.inc()
        out.append(TaggedOutput(EVENTS, {
            "type": "eviction", "stream": key, "next_seq": st.meta["next"], "t": session.t,
            "sample_rate": session.sample_rate, **_prediction_fields(_peek_final(session)),
            "snapshot": base64.b64encode(session.snapshot()).decode("ascii"),
            "model": self.backend.info.weights_hash, "counters": dict(st.meta["counters"]),
        }))
        self._forget(st)
        return out

    def _set(self, timer: Any, at: float | None) -> None:
        if at is None:
            timer.clear()
        else:
            timer.set(Timestamp(micros=int(round(at * 1e6))))


def _prediction_fields(pred: Any) -> dict[str, Any]:
    """``predicted`` and ``scores`` (classify/tag, keyed by label) or ``values`` of a stream's prediction."""
    if pred is None:
        return {"predicted": None}
    d = pred.to_dict()
    d.pop("frames")
    return d


def _peek_final(session: Any) -> Any:
    """The prediction as if the stream ended now (the resampler's held-back tail included), leaving it open."""
    if session.ended or session.resampler is None:
        return session.final()
    peek = copy.copy(session)
    peek.end()
    return peek.final()


class _EventTimeStreamFn(_StreamFnBase):
    DOMAIN = TimeDomain.WATERMARK
    GAP = TimerSpec("gap", TimeDomain.WATERMARK)
    IDLE = TimerSpec("idle", TimeDomain.WATERMARK)

    def process(self, element: tuple[str, ChunkMessage], timestamp: Any = beam.DoFn.TimestampParam,
                state: Any = beam.DoFn.StateParam(_StreamFnBase.STATE),
                gap_timer: Any = beam.DoFn.TimerParam(GAP),
                idle_timer: Any = beam.DoFn.TimerParam(IDLE)) -> list[Any]:
        return self._on_message(element, timestamp, state, gap_timer, idle_timer)

    @on_timer(GAP)
    def on_gap(self, key: Any = beam.DoFn.KeyParam, timestamp: Any = beam.DoFn.TimestampParam,
               state: Any = beam.DoFn.StateParam(_StreamFnBase.STATE),
               gap_timer: Any = beam.DoFn.TimerParam(GAP)) -> list[Any]:
        return self._on_gap(key, timestamp, state, gap_timer)

    @on_timer(IDLE)
    def on_idle(self, key: Any = beam.DoFn.KeyParam, timestamp: Any = beam.DoFn.TimestampParam,
                state: Any = beam.DoFn.StateParam(_StreamFnBase.STATE),
                gap_timer: Any = beam.DoFn.TimerParam(GAP)) -> list[Any]:
        return self._on_idle(key, timestamp, state, gap_timer)


class _ProcessingTimeStreamFn(_StreamFnBase):
    DOMAIN = TimeDomain.REAL_TIME
    GAP = TimerSpec("gap", TimeDomain.REAL_TIME)
    IDLE = TimerSpec("idle", TimeDomain.REAL_TIME)

    def process(self, element: tuple[str, ChunkMessage], timestamp: Any = beam.DoFn.TimestampParam,
                state: Any = beam.DoFn.StateParam(_StreamFnBase.STATE),
                gap_timer: Any = beam.DoFn.TimerParam(GAP),
                idle_timer: Any = beam.DoFn.TimerParam(IDLE)) -> list[Any]:
        return self._on_message(element, timestamp, state, gap_timer, idle_timer)

    @on_timer(GAP)
    def on_gap(self, key: Any = beam.DoFn.KeyParam, timestamp: Any = beam.DoFn.TimestampParam,
               state: Any = beam.DoFn.StateParam(_StreamFnBase.STATE),
               gap_timer: Any = beam.DoFn.TimerParam(GAP)) -> list[Any]:
        return self._on_gap(key, timestamp, state, gap_timer)

    @on_timer(IDLE)
    def on_idle(self, key: Any = beam.DoFn.KeyParam, timestamp: Any = beam.DoFn.TimestampParam,
                state: Any = beam.DoFn.StateParam(_StreamFnBase.STATE),
                gap_timer: Any = beam.DoFn.TimerParam(GAP)) -> list[Any]:
        return self._on_idle(key, timestamp, state, gap_timer)


# ----------------------------------------------------------------------------------------------
# The public transform
# ----------------------------------------------------------------------------------------------


Record = dict[str, Any]


class StreamInference(beam.PTransform[beam.PCollection[str | bytes], dict[str, beam.PCollection[Record]]]):
    """Chunk messages (JSON lines, str or bytes) -> ``{"predictions", "events", "dead_letters"}``.

    Per stream id, chunks are applied in ``seq`` order through a ``rnnstream.pipeline.streaming.StreamSession`` whose
    portable snapshot lives in Beam state, so the predictions equal offline inference over the stream's
    signal whatever the arrival order, duplication and interleaving. See the module docstring.

    Args:
        model_path: an ``.onnx`` export or a checkpoint (``rnnstream.api.load_backend``), loaded once per
            worker process through ``apache_beam.utils.shared.Shared``.
        config: ordering, gap and eviction settings.
        timestamps_from_messages: set each element's timestamp to its message's ``event_time`` (bounded
            replays); otherwise the source's timestamps are the event times.
        loader: ``path -> Backend`` (picklable); defaults to :func:`load_model`.
    """

    def __init__(self, model_path: str, config: StreamJobConfig | None = None, *,
                 timestamps_from_messages: bool = False, loader: Callable[[str], Any] = load_model,
                 label: str | None = None):
        super().__init__(label)
        self.timestamps_from_messages = timestamps_from_messages
        self.model_path = str(model_path)
        self.config = config or StreamJobConfig()
        self.loader = loader
        self._shared = shared.Shared()

    def expand(self, lines: beam.PCollection[str | bytes]) -> dict[str, beam.PCollection[Record]]:
        fn_cls = _EventTimeStreamFn if self.config.time_domain == "event" else _ProcessingTimeStreamFn
        parsed = lines | "ParseMessages" >> (
            beam.ParDo(_ParseFn(self.timestamps_from_messages)).with_output_types(typehints.Tuple[str, typehints.Any])
            .with_outputs(DEAD_LETTERS, main="chunks")
        )
        applied = (
            parsed.chunks
            | "ApplyInOrder" >> beam.ParDo(fn_cls(self.model_path, self.config, self._shared, self.loader))
            .with_outputs(EVENTS, DEAD_LETTERS, main="predictions")
        )
        dead = (parsed[DEAD_LETTERS], applied[DEAD_LETTERS]) | "MergeDeadLetters" >> beam.Flatten()
        return {"predictions": applied.predictions, "events": applied[EVENTS], "dead_letters": dead}

    def display_data(self) -> dict[str, Any]:
        return {"model": self.model_path, **{k: str(v) for k, v in asdict(self.config).items()}}

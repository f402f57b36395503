"""Per-stream stateful inference in Beam: :class:`StreamInference` over a private stateful ``DoFn``.

``lines | StreamInference(model_path, StreamJobConfig(...))`` takes chunk messages (JSON lines, see
:mod:`rnnstream.beam_jobs.messages`) and returns ``{"predictions", "events", "dead_letters"}``, three PCollections
of JSON-ready dicts. Each element's *timestamp* is its event time (sources set it; see
``rnnstream.beam_jobs.stream_job``).

All stream logic — ordering, duplicates, gaps and their policy, end, eviction, resume, validation — is the
stream core's (:class:`rnnstream.pipeline.stream_core.StreamCore`, shared with the server). The ``DoFn`` here is
its Beam adapter, in the style of ``apache_beam.ml.inference``: the model is loaded once per worker process
(``apache_beam.utils.shared.Shared``), and each callback reads the key's state (one ``ReadModifyWriteState``
cell, :class:`~rnnstream.pipeline.stream_core.StreamState` as plain data: the session as a compact
:class:`~rnnstream.beam_jobs.session_state.SessionValue`, the next seq, the reorder buffer, counters, and the times
the timers are set for; encoded by :class:`~rnnstream.beam_jobs.session_state.StreamStateCoder`), delegates to
the core (whose session cache skips the rebuild when the state is the one this instance wrote), writes the
state back (or clears it once the stream is closed), moves the timers whose due time changed and emits its
records.

Two timers per stream, both in one time domain (``time_domain``: ``"event"`` = watermark, the default and the
only one that makes a bounded replay deterministic; ``"processing"`` = wall clock): ``gap`` (the core's
:meth:`~rnnstream.pipeline.stream_core.StreamCore.gap_deadline`: holes are declared lost and the gap policy
applies) and ``idle`` (the last message's time + ``idle_timeout_s``: the stream is evicted with a snapshot a
``resume`` message continues from). On a bounded input the final watermark fires every pending timer.

Accounting: every message becomes exactly one of: a prediction (``filled`` false), a duplicate (counter
``duplicates``), a dead letter, or an accepted resume (counter ``resumes``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import apache_beam as beam
import numpy as np
from apache_beam import typehints
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils import shared
from apache_beam.utils.timestamp import Timestamp
from rnnstream.beam_jobs import message_coder
from rnnstream.beam_jobs.messages import ChunkMessage, encode_message, parse_message
from rnnstream.beam_jobs.session_state import CompactSessions, StreamStateCoder
from rnnstream.pipeline.stream_state import GapPolicy  # noqa: F401 -- StreamJobConfig's inherited field annotations name
# it: pdoc resolves them in this module's namespace
from rnnstream.pipeline.errors import (
    ConfigError,
    MessageError,
    OrderingError,
    ResumeError,
)
from rnnstream.pipeline.stream_core import (
    COUNTERS,
    CoreConfig,
    Record,
    StreamCore,
    StreamState,
)

NAMESPACE = "rnnstream"
STREAM_NAMESPACE = "rnnstream.stream"
EVENTS = "events"
DEAD_LETTERS = "dead_letters"
TimeDomainName = Literal["event", "processing"]
#: The core's counter names -> the job's Beam counters (namespace ``rnnstream``).
_JOB_COUNTERS = {"chunks": "chunks", "filled": "filled_chunks", "gaps": "gaps", "missing": "missing_chunks",
                 "duplicates": "duplicates", "dead_letters": "dead_letters", "evictions": "evictions",
                 "resumes": "resumes", "ends": "ends"}


@dataclass(frozen=True)
class StreamJobConfig(CoreConfig):
    """The core's ordering, gap and eviction settings plus the Beam adapter's (timer domain, metrics, cache)."""

    time_domain: TimeDomainName = "event"
    per_stream_metrics: bool = True
    session_cache: int = 4096  # sessions kept in memory per DoFn instance (restore is skipped on a hit)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.time_domain not in ("event", "processing"):
            raise ConfigError(f"time domain must be 'event' or 'processing', got {self.time_domain!r}")

    def core(self) -> CoreConfig:
        return CoreConfig(self.gap_policy, self.gap_timeout_s, self.idle_timeout_s, self.max_buffer,
                          self.chunk_size, self.resample)


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


def dead_letter(error: BaseException, *, stream: str | None = None, seq: int | None = None,
                message: str | None = None) -> dict[str, Any]:
    """``{"kind": class name, "reason": str(error), "stream", "seq", "message"}`` (the raw or re-encoded line)."""
    return {"kind": type(error).__name__, "reason": str(error), "stream": stream, "seq": seq, "message": message}


def _line_text(line: str | bytes, limit: int = 65536) -> str:
    """A refused line as text for its dead letter (undecodable bytes replaced), cut at ``limit`` characters."""
    text = line.decode("utf-8", "replace") if isinstance(line, (bytes, bytearray)) else str(line)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


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
            yield TaggedOutput(DEAD_LETTERS, dead_letter(exc, message=_line_text(line)))
            return
        if self.timestamps_from_messages:
            yield TimestampedValue((msg.stream, msg), msg.event_time)
        else:
            yield msg.stream, msg


# ----------------------------------------------------------------------------------------------
# The stateful DoFn: the core's Beam adapter
# ----------------------------------------------------------------------------------------------


class _StreamFnBase(beam.DoFn):
    """Reads the key's state, delegates to the core, writes the state back, sets timers, emits records."""

    STATE = ReadModifyWriteStateSpec("stream", StreamStateCoder())  # StreamState.to_value() + "timers"
    DOMAIN = TimeDomain.WATERMARK

    def __init__(self, model_path: str, config: StreamJobConfig, shared_handle: shared.Shared,
                 loader: Callable[[str], Any] = load_model):
        self.model_path = model_path
        self.config = config
        self._shared = shared_handle
        self._loader = loader
        self.core: StreamCore | None = None
        self.c_model_us = Metrics.counter(NAMESPACE, "model_step_us")
        self.c_fn_us = Metrics.counter(NAMESPACE, "stateful_fn_us")
        self.d_depth = Metrics.distribution(NAMESPACE, "buffer_depth")
        self._counters = {name: Metrics.counter(NAMESPACE, job) for name, job in _JOB_COUNTERS.items()}

    def setup(self) -> None:
        path, loader = self.model_path, self._loader
        loaded = self._shared.acquire(lambda: _Loaded(loader(path)), tag=("stream_job", path))
        backend = TimedBackend(loaded.backend, self.c_model_us)
        self.core = StreamCore(backend, self.config.core(), count=self._count, session_cache=self.config.session_cache,
                               session_codec=CompactSessions(backend))

    def _count(self, stream: str, name: str, n: int) -> None:
        self._counters[name].inc(n)
        if self.config.per_stream_metrics and name in COUNTERS:
            Metrics.counter(STREAM_NAMESPACE, f"{stream}/{name}").inc(n)

    def _now(self, timestamp: Any) -> float:
        return time.time() if self.DOMAIN == TimeDomain.REAL_TIME else float(timestamp.micros) / 1e6

    def _fired(self, timestamp: Any, armed: float | None) -> float:
        """The time a timer callback runs at: at least the time the timer was set for (``armed``: the exact float
        the core gave, which the state keeps; a timer fires only once that time has passed), whatever its
        ``timestamp`` says (microseconds, and not always the time it was set for)."""
        now = self._now(timestamp)
        return now if armed is None else max(now, armed)

    def _emit(self, records: list[Record]) -> list[Any]:
        out: list[Any] = []
        for r in records:
            d = r.to_dict(encode_message)
            out.append(d if r.type == "prediction" else TaggedOutput(EVENTS if r.type == "event" else DEAD_LETTERS, d))
        return out

    def _store(self, state: Any, st: StreamState, armed: list[float | None], gap_timer: Any,
               idle_timer: Any | None = None) -> None:
        """Write the state back (or clear it once closed) and move the timers that must move.

        ``armed`` ``[gap, idle]``: the times the key's timers are set for (None: not set), kept in the state so
        a timer is touched only when its time changes (a gap timer stays cleared while chunks arrive in order).
        Both stay exact: moving the idle timer only when it fires would cost the runner another round of timer
        bundles per stream, each committing (and, in the SDK's state cache, measuring) the key's state again.
        """
        value = self.core.save(st)  # type: ignore[union-attr]
        if value is None:
            state.clear()
            _move(gap_timer, armed, 0, None)
            return
        _move(gap_timer, armed, 0, self.core.gap_deadline(st))  # type: ignore[union-attr]
        if idle_timer is not None:
            _move(idle_timer, armed, 1, self.core.idle_deadline(st))  # type: ignore[union-attr]
        value["timers"] = tuple(armed)
        state.write(value)

    def _load(self, key: str, stored: dict[str, Any] | None) -> tuple[StreamState, list[float | None]]:
        armed = list((stored or {}).get("timers") or (None, None))
        return self.core.load(key, stored), armed  # type: ignore[union-attr]

    # -- the callbacks (the runner's entry points call these) ---------------------------------------
    def _on_message(self, element: tuple[str, ChunkMessage], timestamp: Any, state: Any,
                    gap_timer: Any, idle_timer: Any) -> list[Any]:
        t0 = time.perf_counter()
        key, msg = element
        st, armed = self._load(key, state.read())
        records = self.core.process(st, msg, self._now(timestamp))  # type: ignore[union-attr]
        self._store(state, st, armed, gap_timer, idle_timer)
        self.d_depth.update(len(st.buffer))
        if self.config.per_stream_metrics:
            Metrics.gauge(STREAM_NAMESPACE, f"{key}/buffer_depth").set(len(st.buffer))
        self.c_fn_us.inc(int((time.perf_counter() - t0) * 1e6))
        return self._emit(records)

    def _on_gap(self, key: str, timestamp: Any, state: Any, gap_timer: Any) -> list[Any]:
        stored = state.read()
        if stored is None:
            return []
        st, armed = self._load(key, stored)
        now, armed[0] = self._fired(timestamp, armed[0]), None
        self.core.expire(st, now)  # type: ignore[union-attr]
        records = self.core.run(st)  # type: ignore[union-attr]
        self._store(state, st, armed, gap_timer)
        return self._emit(records)

    def _on_idle(self, key: str, timestamp: Any, state: Any, gap_timer: Any, idle_timer: Any) -> list[Any]:
        stored = state.read()
        if stored is None:
            return []
        st, armed = self._load(key, stored)
        now, armed[1] = self._fired(timestamp, armed[1]), None
        deadline = self.core.idle_deadline(st)  # type: ignore[union-attr]
        if deadline is not None and deadline > now:  # not due yet (a message moved it on): wait until the deadline
            self._store(state, st, armed, gap_timer, idle_timer)
            return []
        records = self.core.evict(st, now)  # type: ignore[union-attr]
        self._store(state, st, armed, gap_timer)
        return self._emit(records)


def _move(timer: Any, armed: list[float | None], i: int, at: float | None) -> None:
    """Set (or clear, ``at`` None) ``timer`` unless it is already set for ``at`` (``armed[i]``)."""
    if armed[i] != at:
        _set(timer, at)
        armed[i] = at


def _set(timer: Any, at: float | None) -> None:
    if at is None:
        timer.clear()
    else:
        timer.set(Timestamp(micros=round(at * 1e6)))


def _bind(domain: Any) -> type:
    """The DoFn with both timers in ``domain`` (Beam needs the specs as class attributes)."""
    gap, idle = TimerSpec("gap", domain), TimerSpec("idle", domain)
    state_spec = _StreamFnBase.STATE

    class _Fn(_StreamFnBase):
        DOMAIN = domain
        GAP, IDLE = gap, idle

        def process(self, element: tuple[str, ChunkMessage], timestamp: Any = beam.DoFn.TimestampParam,
                    state: Any = beam.DoFn.StateParam(state_spec), gap_timer: Any = beam.DoFn.TimerParam(gap),
                    idle_timer: Any = beam.DoFn.TimerParam(idle)) -> list[Any]:
            return self._on_message(element, timestamp, state, gap_timer, idle_timer)

        @on_timer(gap)
        def on_gap(self, key: Any = beam.DoFn.KeyParam, timestamp: Any = beam.DoFn.TimestampParam,
                   state: Any = beam.DoFn.StateParam(state_spec),
                   gap_timer: Any = beam.DoFn.TimerParam(gap)) -> list[Any]:
            return self._on_gap(key, timestamp, state, gap_timer)

        @on_timer(idle)
        def on_idle(self, key: Any = beam.DoFn.KeyParam, timestamp: Any = beam.DoFn.TimestampParam,
                    state: Any = beam.DoFn.StateParam(state_spec),
                    gap_timer: Any = beam.DoFn.TimerParam(gap),
                    idle_timer: Any = beam.DoFn.TimerParam(idle)) -> list[Any]:
            return self._on_idle(key, timestamp, state, gap_timer, idle_timer)

    return _Fn


_EventTimeStreamFn = _bind(TimeDomain.WATERMARK)
_EventTimeStreamFn.__name__ = _EventTimeStreamFn.__qualname__ = "_EventTimeStreamFn"
_ProcessingTimeStreamFn = _bind(TimeDomain.REAL_TIME)
_ProcessingTimeStreamFn.__name__ = _ProcessingTimeStreamFn.__qualname__ = "_ProcessingTimeStreamFn"


# ----------------------------------------------------------------------------------------------
# The public transform
# ----------------------------------------------------------------------------------------------


JsonRecord = dict[str, Any]


class StreamInference(beam.PTransform[beam.PCollection[str | bytes], dict[str, beam.PCollection[JsonRecord]]]):
    """Chunk messages (JSON lines, str or bytes) -> ``{"predictions", "events", "dead_letters"}``.

    Per stream id, chunks are applied in ``seq`` order through a ``rnnstream.pipeline.streaming.StreamSession``
    whose state lives in Beam state (compact arrays; portable snapshots on eviction), so the predictions equal
    offline inference over the stream's signal whatever the arrival order, duplication and interleaving. See
    the module docstring.

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

    def expand(self, lines: beam.PCollection[str | bytes]) -> dict[str, beam.PCollection[JsonRecord]]:
        fn_cls = _EventTimeStreamFn if self.config.time_domain == "event" else _ProcessingTimeStreamFn
        message_coder.register()  # (stream, ChunkMessage) crosses the keyed shuffle in ChunkMessageCoder
        parsed = lines | "ParseMessages" >> (
            beam.ParDo(_ParseFn(self.timestamps_from_messages)).with_output_types(typehints.Tuple[str, ChunkMessage])
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


__all__ = ["DEAD_LETTERS", "EVENTS", "NAMESPACE", "STREAM_NAMESPACE", "OrderingError", "ResumeError",
           "StreamInference", "StreamJobConfig", "TimedBackend", "dead_letter", "load_model"]

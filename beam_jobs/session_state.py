"""The stream job's per-key Beam state in a compact form: live sessions as raw arrays, not snapshot blobs.

The stream core keeps a stream's session in :attr:`~rnnstream.pipeline.stream_state.StreamState.snapshot`; by
default that is the portable ``rnnstream.snapshot/2`` file (an ``.npz`` with a JSON header, validated on
restore), which costs a zip archive per element. Inside a running job the state never leaves Beam, so the
stateful ``DoFn`` stores a :class:`SessionValue` instead (:class:`CompactSessions`, the core's ``session_codec``):
references to the session's arrays (pushing replaces a session's arrays, never writes into them, so nothing is
copied) and a few numbers, made in microseconds; Beam encodes it with :class:`StreamStateCoder` only when it
commits the key's state (once per key and bundle, not per element). Eviction records still carry the portable
snapshot, and ``resume`` messages still take one.

Each value has a token unique to the ``DoFn`` instance that wrote it and to the write (a random 63-bit instance
id and a counter), so the core's session cache (live sessions by stream id) can tell whether the state Beam
hands back is the one it last wrote: on a hit the live session is used as is; otherwise (another instance
wrote since, a failed bundle was retried, the cache evicted it) the session is rebuilt from the value. Beam's
state stays the source of truth.
"""

from __future__ import annotations

import itertools
import pickle
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.coders import Coder
from rnnstream.pipeline.errors import StateError
from rnnstream.pipeline.resample import StreamResampler
from rnnstream.pipeline.stream_state import COUNTERS, StreamState
from rnnstream.pipeline.streaming import StreamSession

#: Layout version of :class:`StreamStateCoder`'s bytes.
CODER_VERSION = 1
#: The persisted core fields besides ``snapshot`` and ``counters``, in the coder's order.
_FIELDS = tuple(k for k in StreamState._PERSISTED if k not in ("snapshot", "counters"))


@dataclass(frozen=True, eq=False)
class SessionValue:
    """One session's state as data. ``states``: ``{name: float32 [1, *spec shape]}``; ``carry``: the featurizer
    carry (audio float32 ``[context + pending]``, sensors float64 ``[k]``); ``last_output``: float32
    ``[outputs]`` or None; ``resampler``: ``(float64 buffer [K], counters)`` or None. Equal values have the
    same ``token`` (one write of one ``DoFn`` instance)."""

    token: tuple[int, int]
    model: str
    sample_rate: int | None
    samples_seen: int
    frames_seen: int
    t: float
    ended: bool
    carry: np.ndarray
    last_output: np.ndarray | None
    states: dict[str, np.ndarray]
    resampler: tuple[np.ndarray, dict[str, int]] | None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionValue) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)


class CompactSessions:
    """The core's ``session_codec``: :class:`SessionValue` in, live :class:`StreamSession` out (see the module)."""

    def __init__(self, backend: Any):
        self.backend = backend
        self.info = backend.info
        self._instance = secrets.randbits(63)
        self._writes = itertools.count()
        self._shapes = {s.name: (1, *s.shape) for s in self.info.state_specs}

    def dump(self, session: StreamSession) -> SessionValue:
        return SessionValue(
            (self._instance, next(self._writes)), self.info.weights_hash, session.sample_rate, session.samples_seen,
            session.frames_seen, session.t, session.ended, session.carry, session.last_output, dict(session.states),
            None if session.resampler is None else session.resampler.state())

    def load(self, value: Any, stream: str) -> StreamSession:
        """A live session from ``value`` (a portable snapshot's bytes are restored as such); :class:`StateError`
        when it was written for another model or its arrays do not fit this one."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return StreamSession.restore(self.backend, bytes(value), stream_id=stream)
        if not isinstance(value, SessionValue):
            raise StateError(f"stream {stream!r}: stored session is a {type(value).__name__}, expected a "
                             "SessionValue or snapshot bytes")
        if value.model != self.info.weights_hash:
            raise StateError(f"stream {stream!r}: stored session belongs to model {value.model}, not to this model "
                             f"{self.info.weights_hash}")
        shapes = {k: tuple(v.shape) for k, v in value.states.items()}
        if shapes != self._shapes:
            raise StateError(f"stream {stream!r}: stored states {shapes} do not fit this model's {self._shapes}")
        session = StreamSession(self.backend, sample_rate=value.sample_rate, stream_id=stream)
        if (value.resampler is None) != (session.resampler is None):
            raise StateError(f"stream {stream!r}: stored resampler state does not match the rate "
                             f"{value.sample_rate} Hz")
        if value.resampler is not None:
            session.resampler = StreamResampler.from_state(*value.resampler)
        session.carry, session.last_output, session.states = value.carry, value.last_output, dict(value.states)
        session.samples_seen, session.frames_seen, session.t, session.ended = (
            value.samples_seen, value.frames_seen, value.t, value.ended)
        return session


def _pack_session(v: SessionValue) -> tuple[Any, ...]:
    rs = None if v.resampler is None else (v.resampler[0], tuple(sorted(v.resampler[1].items())))
    return (v.token, v.model, v.sample_rate, v.samples_seen, v.frames_seen, v.t, v.ended, v.carry, v.last_output,
            tuple(v.states.items()), rs)


def _unpack_session(t: tuple[Any, ...]) -> SessionValue:
    token, model, rate, samples, frames, time_s, ended, carry, last, states, rs = t
    resampler = None if rs is None else (rs[0], dict(rs[1]))
    return SessionValue(tuple(token), model, rate, samples, frames, time_s, ended, carry, last,
                        dict(states), resampler)


class StreamStateCoder(Coder):
    """Beam coder of the stateful ``DoFn``'s value (``StreamState.to_value()`` plus the adapter's ``timers``):
    one pickle (protocol 5) of flat tuples (the fields in a fixed order, the counters as ints, the session as
    :class:`SessionValue`'s numbers and raw arrays), led by a layout version."""

    def encode(self, value: dict[str, Any]) -> bytes:
        snap = value.get("snapshot")
        session = ("v", _pack_session(snap)) if isinstance(snap, SessionValue) else ("b", snap)
        counters = value.get("counters") or {}
        body = (CODER_VERSION, tuple(value.get(k) for k in _FIELDS), tuple(counters.get(c, 0) for c in COUNTERS),
                session, value.get("timers"))
        return pickle.dumps(body, protocol=5)

    def decode(self, encoded: bytes) -> dict[str, Any]:
        version, fields, counters, (kind, snap), timers = pickle.loads(encoded)
        if version != CODER_VERSION:
            raise StateError(f"stream state written with coder layout {version}; this job reads {CODER_VERSION}")
        out = dict(zip(_FIELDS, fields))
        out["counters"] = dict(zip(COUNTERS, counters))
        out["snapshot"] = _unpack_session(snap) if kind == "v" else snap
        out["timers"] = timers
        return out

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> Any:
        return dict


__all__ = ["CODER_VERSION", "CompactSessions", "SessionValue", "StreamStateCoder"]

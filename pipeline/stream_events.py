"""The events of the stream core (:class:`rnnstream.pipeline.stream_core.StreamCore`): gaps and their policy
(``fill``: zeros queued before what follows; ``reset``: a fresh session) and the end of a stream."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from rnnstream.pipeline.errors import OrderingError, RnnstreamError
from rnnstream.pipeline.stream_checks import ChunkMessage
from rnnstream.pipeline.stream_state import Record, StreamState, finite
from rnnstream.pipeline.streaming import prediction_fields

if TYPE_CHECKING:
    from rnnstream.pipeline.stream_state import CoreConfig
    from rnnstream.pipeline.streaming import StreamSession


class _Core(Protocol):
    """What the mixin's methods use of ``StreamCore`` (their ``self`` type, for type checkers)."""

    config: CoreConfig
    info: Any
    _cache: OrderedDict[str, tuple[Any, StreamSession]]

    def _count(self, state: StreamState, name: str, n: int = 1) -> None: ...

    def _dead(self, state: StreamState, error: Exception, msg: ChunkMessage | None,
              seq: int | None = None) -> Record: ...

    def _session(self, state: StreamState, msg: ChunkMessage | None) -> StreamSession: ...

    def _queue_fill(self, state: StreamState, missing: list[int], reason: str, fields: dict[str, Any]) -> str: ...


class EventsMixin:
    """Gap and end records (mixed into ``StreamCore``)."""

    def _gap(self: _Core, state: StreamState, missing: list[int], reason: str) -> list[Record]:
        self._count(state, "gaps")
        self._count(state, "missing", len(missing))
        fields: dict[str, Any] = {"missing": missing, "policy": self.config.gap_policy}
        if self.config.gap_policy == "reset":
            self._cache.pop(state.stream, None)
            state.session, state.snapshot, state.dirty = None, None, False
        elif self.info.feature_config.kind == "audio":
            reason = self._queue_fill(state, missing, reason, fields)
        else:
            fields["filled_samples"] = 0  # the hole is in the timestamps; the sensor featurizer handles it
        return [Record("event", state.stream, kind="gap", reason=reason, fields=fields)]

    def _queue_fill(self: _Core, state: StreamState, missing: list[int], reason: str, fields: dict[str, Any]) -> str:
        """The fill policy: zeros of the chunk length for each missing seq, stepped before what follows. A stream
        not opened yet opens at the rate of the chunk after the hole; without one nothing is filled."""
        following = next((item[1] for item in state.ready if item[0] == "chunk"), None)
        try:
            self._session(state, following)
        except RnnstreamError as exc:
            fields["filled_samples"] = 0
            return f"{reason}; nothing filled, the stream cannot open ({exc})"
        length = self.config.chunk_size or state.chunk_len or (following.size if following is not None else 0)
        fields["filled_samples"] = length
        state.ready[:0] = [("fill", seq, length) for seq in missing]
        return reason

    def _end(self: _Core, state: StreamState, msg: ChunkMessage | None) -> list[Record]:
        session = self._session(state, None) if state.opened else None  # None: the stream never opened
        if session is not None and not session.ended:
            ended = copy.copy(session)
            if finite(ended.end(), ended):
                session = ended
        self._count(state, "ends")
        record = Record("event", state.stream, None if msg is None else msg.seq, kind="end", fields={
            "event_time": None if msg is None else msg.event_time, "t": 0.0 if session is None else session.t,
            "sample_rate": state.rate, **prediction_fields(None if session is None else session.final()),
            "counters": dict(state.counters)})
        if msg is None:  # an end of no message (:meth:`end`)
            record.fields.update(next_seq=state.next, frames=0 if session is None else session.frames_seen)
        state.ended, state.next = True, state.next if msg is None else msg.seq + 1
        self._cache.pop(state.stream, None)
        state.session, state.snapshot, state.dirty = None, None, False
        out = [record]
        for seq in sorted(state.buffer):  # cannot happen (seqs > end are refused), kept for safety
            late, _ = state.buffer.pop(seq)
            out.append(self._dead(state, OrderingError(f"{late.describe()}: after end-of-stream"), late))
        return out


__all__ = ["EventsMixin"]

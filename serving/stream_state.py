"""The end of a stream's life: ``end``, eviction, release at disconnect or shutdown, and snapshot saves.

A stream leaves the server's table the moment it ends, is evicted or released, so its id and slot are free
at once, whatever happens to its snapshot write. Writes run in a worker thread, are retried
(``snapshot_retries`` attempts, backing off), logged and counted (``snapshot_writes_total{result}``); a write
that still fails is reported to the client as ``saved: null`` with ``save_error``. The eviction task logs
and survives any error of one round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from rnnstream.pipeline.stream_state import Record
from rnnstream.serving import protocol as P
from rnnstream.serving.connection import Connection
from rnnstream.serving.streams import Stream

if TYPE_CHECKING:
    from rnnstream.serving.server import StreamServer

log = logging.getLogger("rnnstream.serve")
#: Fields of the core's end event that are not the final prediction.
_END_EXTRAS = ("event_time", "t", "sample_rate", "counters", "next_seq", "frames")


class StateMixin:
    """Stream endings and snapshot saves (see module doc)."""

    def _end(self: StreamServer, conn: Connection, msg: P.End) -> None:
        stream = conn.streams.get(msg.channel)
        if stream is None and msg.channel in conn.failed:
            raise P.ProtocolError("stream_closed", f"end: the stream on channel {msg.channel} was already closed "
                                  f"({conn.failed[msg.channel]})", fatal=False, channel=msg.channel)
        if stream is None:
            raise P.ProtocolError("unknown_stream", f"end: no stream is open on channel {msg.channel} of this "
                                  f"connection (open: {sorted(conn.streams)})", channel=msg.channel)
        if stream.ending is not None:
            raise P.ProtocolError("bad_message", f"end: stream {stream.id!r} is already ending", **stream.where())
        if msg.save and self.store is None:
            raise P.ProtocolError("no_snapshot_dir", "end: 'save' needs a server started with --snapshot-dir; ask "
                                  "for the bytes with 'snapshot': true instead", **stream.where())
        stream.ending = msg
        self.core.end(stream.state, time.monotonic())  # a chunk after this is the core's ordering error (bad_seq)
        if not stream.busy:
            self._finish(stream)

    def _finish(self: StreamServer, stream: Stream) -> None:
        """End the stream and send ``ended``. A snapshot asked for is taken first, so a resume continues the
        stream; then the stream core's end flushes the resampler, so the final prediction equals offline."""
        session, end = stream.session, stream.ending
        if end is None:  # only called for a stream whose 'end' was accepted
            return
        extra: dict[str, Any] = {}
        blob = session.snapshot() if (end.snapshot or end.save) else b""
        if end.snapshot:
            extra["snapshot"] = P.b64(blob)
        records: list[Record] = []
        try:
            self.core.next_step(stream.state, records)  # nothing is left to step: this is the end event
        except Exception as exc:  # noqa: BLE001 -- the model failed flushing this stream: its error only
            self._chunk_failed(stream, stream.done_seq, exc)
            return
        fields = next(r.fields for r in records if r.type == "event" and r.kind == "end")
        scores = {k: v for k, v in fields.items() if k not in _END_EXTRAS}
        msg: dict[str, Any] = {"type": "ended", **stream.where(), "seq": stream.done_seq, "t": round(fields["t"], 6),
                               **scores, "frames": fields["frames"], **extra}
        meta = {**self._meta(stream, "end"), "t": fields["t"]}
        self._remove(stream)
        if not end.save:
            self._send(stream.conn, msg)
            return
        self._background(self._save_then_send(stream, blob, meta, msg))

    async def _save_then_send(self: StreamServer, stream: Stream, blob: bytes, meta: dict[str, Any],
                              msg: dict[str, Any]) -> None:
        saved, error = await self._save(stream.id, blob, meta)
        self._send(stream.conn, {**msg, "saved": saved, **({"save_error": error} if error else {})})

    def _remove(self: StreamServer, stream: Stream) -> None:
        self.batcher.discard(stream)
        if stream.conn.streams.get(stream.channel) is stream:
            del stream.conn.streams[stream.channel]
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            self.metrics.streams_open.dec()

    def _meta(self, stream: Stream, reason: str) -> dict[str, Any]:
        return {"seq": stream.done_seq, "t": stream.session.t, "sample_rate": stream.session.sample_rate,
                "reason": reason}

    async def _release(self: StreamServer, stream: Stream, reason: str) -> str | None:
        """Free a stream left open (disconnect, shutdown) at once; then save its snapshot where configured."""
        if self.streams.get(stream.id) is not stream:
            return None
        blob, problem = self._snapshot_of(stream)
        meta = self._meta(stream, reason)
        self._remove(stream)
        if self.store is None or problem is not None:
            return None
        return (await self._save(stream.id, blob, meta))[0]

    async def _save(self: StreamServer, stream_id: str, blob: bytes, meta: dict[str, Any]) -> tuple[str | None, str | None]:
        """``(snapshot id, None)``, or ``(None, why)`` after ``snapshot_retries`` failed attempts."""
        store, m = self.store, self.metrics
        if store is None:
            return None, None
        attempts = self.config.snapshot_retries
        error = ""
        for attempt in range(attempts):
            try:
                token = await asyncio.to_thread(store.save, stream_id, blob, meta)
            except (OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning("saving stream %r (attempt %d of %d) failed: %s", stream_id, attempt + 1, attempts, error)
                m.snapshot_writes.labels("retry" if attempt + 1 < attempts else "failed").inc()
                if attempt + 1 < attempts:
                    await asyncio.sleep(0.05 * 4**attempt)
                continue
            m.snapshot_writes.labels("ok").inc()
            return token, None
        log.error("stream %r was not saved after %d attempts: %s", stream_id, attempts, error)
        return None, f"the snapshot could not be written ({error})"

    def _background(self: StreamServer, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg_done)

    def _bg_done(self: StreamServer, task: asyncio.Task[Any]) -> None:
        self._bg.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a background task failed", exc_info=task.exception())

    # -- eviction ---------------------------------------------------------------------------------------
    async def _sweep(self: StreamServer) -> None:
        """Evict idle streams and purge expired snapshots, forever; one round's error is logged, never fatal."""
        idle = self.config.idle_timeout_s
        period = min(1.0, idle / 4) if idle > 0 else 1.0
        last_purge = 0.0
        while True:
            await asyncio.sleep(period)
            try:
                if idle > 0:
                    self.evict_idle()
                if self.store is not None and time.monotonic() - last_purge > min(60.0, self.config.snapshot_ttl_s / 4):
                    last_purge = time.monotonic()
                    self.metrics.snapshots_expired.inc(await asyncio.to_thread(self.store.purge))
            except Exception:  # a bug or a store failure must not end eviction for good
                log.exception("an eviction round failed; the next one runs in %.1f s", period)

    def evict_idle(self: StreamServer, now: float | None = None) -> int:
        """Evict every stream idle (nothing queued or in flight) longer than ``idle_timeout_s``: it leaves the
        table at once; its ``evicted`` message follows its snapshot write."""
        now = time.monotonic() if now is None else now
        idle = self.config.idle_timeout_s
        count = 0
        for stream in list(self.streams.values()):
            if stream.busy or stream.ending is not None or now - stream.last_activity <= idle:
                continue
            blob, problem = self._snapshot_of(stream)
            meta = self._meta(stream, "idle")
            self._remove(stream)
            stream.conn.failed[stream.channel] = "evicted"
            self.metrics.evictions.inc()
            count += 1
            msg = {"type": "evicted", **stream.where(), "seq": stream.done_seq,
                   "reason": f"idle for {now - stream.last_activity:.1f} s (limit {idle:g} s)"}
            if problem is not None:
                self._send(stream.conn, {**msg, "saved": None, "save_error": problem})
            else:
                self._background(self._save_then_send(stream, blob, meta, msg))
        return count

    def _snapshot_of(self: StreamServer, stream: Stream) -> tuple[bytes, str | None]:
        """The stream's snapshot bytes for the store (``b""`` without one), or why it could not be taken."""
        if self.store is None:
            return b"", None
        try:
            return stream.session.snapshot(), None
        except Exception as exc:  # one stream's broken state must not stop the eviction of the others
            log.exception("taking the snapshot of stream %r failed", stream.id)
            self.metrics.snapshot_writes.labels("failed").inc()
            return b"", f"the snapshot could not be taken ({type(exc).__name__}: {exc})"


__all__ = ["StateMixin"]

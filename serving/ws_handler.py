"""The WebSocket side of the server: one task per connection reading messages, replies, batch results.

Mixed into :class:`rnnstream.serving.server.StreamServer` (it uses the server's config, metrics, batcher,
stream table and the stream lifecycle of :mod:`rnnstream.serving.stream_state`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import WSMsgType, web
from rnnstream.pipeline.errors import StateError
from rnnstream.pipeline.stream_checks import ChunkMessage
from rnnstream.pipeline.stream_state import Record, Step
from rnnstream.pipeline.batching import step_streams_contained
from rnnstream.pipeline.streaming import SensorChunk
from rnnstream.serving import protocol as P
from rnnstream.serving import replies as R
from rnnstream.serving.batcher import QueueFull, Results
from rnnstream.serving.connection import Connection
from rnnstream.serving.metrics import observe_many
from rnnstream.serving.streams import Stream, chunk_bytes, decode_chunk

if TYPE_CHECKING:
    from rnnstream.serving.server import StreamServer

log = logging.getLogger("rnnstream.serve")


class WsMixin:
    """Connection handling (see module doc)."""

    async def _ws_route(self: StreamServer, request: web.Request) -> web.StreamResponse:
        """``GET /`` with an upgrade: a protocol connection (503 while not ready, 1013-style refusal when full)."""
        cfg = self.config
        if not self.ready:
            return self._json_response(503, {"error": "not_ready", "message": "the server is not serving streams now "
                                             "(starting or shutting down)"})
        if len(self._connections) >= cfg.max_connections:
            self.metrics.errors.labels("too_many_connections").inc()
            return self._json_response(503, {"error": "too_many_connections", "message": f"{len(self._connections)} "
                                             f"connections are open (limit {cfg.max_connections}); try again later"})
        ws = web.WebSocketResponse(max_msg_size=cfg.max_frame_bytes, heartbeat=cfg.ping_interval_s, compress=False,
                                   timeout=cfg.close_timeout_s, autoping=True)
        if not ws.can_prepare(request).ok:
            return self._json_response(400, {"error": "not_websocket", "message": "GET / is the WebSocket endpoint; "
                                             "HTTP: /health, /livez, /readyz, /metrics, POST /predict"})
        await ws.prepare(request)
        await self._serve_connection(Connection(ws, request, cfg))
        return ws

    async def _serve_connection(self: StreamServer, conn: Connection) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._connections.add(conn)
        self.metrics.connections_open.inc()
        sender = asyncio.create_task(conn.run_sender())
        self._send(conn, self.hello())
        try:
            await self._read_loop(conn)
        finally:
            await self._cleanup(conn, sender)
            if task is not None:
                self._handlers.discard(task)

    async def _read_loop(self: StreamServer, conn: Connection) -> None:
        async for msg in conn.ws:
            if conn.closing:
                return
            try:
                if msg.type is WSMsgType.TEXT:
                    await self._control(conn, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    self._chunk(conn, msg.data)
                else:  # ERROR: aiohttp has closed the connection (1009: a message over max_frame_bytes)
                    code = getattr(msg.data, "code", None)
                    self.metrics.errors.labels("frame_too_big" if code == 1009 else "ws_error").inc()
                    log.info("connection closed by the WebSocket layer: %s", msg.data)
                    return
            except P.ProtocolError as err:
                if err.fatal:
                    self._fail(conn, err)
                    return
                self._stream_error(conn, err)

    async def _cleanup(self: StreamServer, conn: Connection, sender: asyncio.Task[None]) -> None:
        """Free the connection's streams (saving them where a store is configured), then end the sender."""
        for stream in list(conn.streams.values()):
            self._discard(stream, "disconnect")
        for stream in list(conn.streams.values()):
            await stream.settled.wait()
            await self._release(stream, "disconnect")
        if not conn.closing:
            conn.closing = True
            sender.cancel()
        try:
            await asyncio.wait_for(sender, self.config.shutdown_timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        self._connections.discard(conn)
        self.metrics.connections_open.dec()

    # -- replies ---------------------------------------------------------------------------------------
    def _send(self: StreamServer, conn: Connection, msg: dict[str, Any]) -> None:
        overflow = conn.send(P.dumps(msg))
        if overflow is not None:
            self._fail(conn, overflow, drop_pending=True)

    def _fail(self: StreamServer, conn: Connection, err: P.ProtocolError, *, drop_pending: bool = False) -> None:
        """Send the error, then close with its code; the connection's queued chunks are dropped."""
        if conn.closing:
            return
        self.metrics.errors.labels(err.code).inc()
        log.info("closing a connection (%d): %s: %s", err.close_code, err.code, err.message)
        for stream in list(conn.streams.values()):
            self._discard(stream, err.code)
        conn.close(err.close_code, f"{err.code}: {err.message}", P.dumps(err.to_message()), drop_pending=drop_pending)

    def _stream_error(self: StreamServer, conn: Connection, err: P.ProtocolError) -> None:
        """An error of one stream (or one refused start): that stream ends, the connection goes on."""
        self.metrics.errors.labels(err.code).inc()
        log.info("stream error: %s: %s", err.code, err.message)
        stream = conn.streams.get(err.channel) if err.channel is not None else None
        if stream is not None and stream.id == err.stream:
            self._discard(stream, err.code)
            self._remove(stream)
            conn.failed[stream.channel] = err.code
        self._send(conn, err.to_message())

    def _discard(self: StreamServer, stream: Stream, reason: str) -> None:
        """Drop a stream's queued chunks (counted by reason) and never schedule it again."""
        if stream.pending:
            self.metrics.chunks_dropped.labels(reason).inc(len(stream.pending))
            for seq, _, _ in stream.pending:
                stream.conn.queued_bytes -= stream.sizes.pop(seq, 0)
                stream.steps.pop(seq, None)
        self.batcher.discard(stream)

    # -- chunks ------------------------------------------------------------------------------------------
    def _chunk(self: StreamServer, conn: Connection, frame: bytes) -> None:
        channel, seq, payload = P.split_frame(frame)
        stream = conn.streams.get(channel)
        if stream is None and channel in conn.failed:
            return  # the server closed this stream (evicted, or its error); the client was told so
        if stream is None:
            raise P.ProtocolError("unknown_stream", f"chunk for channel {channel}, where no stream is open on this "
                                  f"connection (open: {sorted(conn.streams)}); send 'start' first", channel=channel)
        if self._closing:
            return  # not processed; the shutdown message names each stream's next unprocessed seq
        verdict = self.core.order(stream.state, seq)  # before decoding: a duplicate is answered as such
        if verdict is not None:
            self._out_of_order(stream, seq, verdict)
            return
        where = f"stream {stream.id!r} seq {seq}"
        chunk = decode_chunk(stream, payload, self._sensor_channels, self.config.max_chunk_s, seq)
        size = chunk_bytes(chunk)
        limit = self.config.max_queue_bytes
        if conn.queued_bytes + size > limit:
            raise P.ProtocolError("queue_full", f"{where}: this connection has {conn.queued_bytes} bytes of chunks "
                                  f"waiting and this one adds {size} (limit {limit} bytes); wait for predictions",
                                  P.CLOSE_TRY_LATER, **stream.where())
        now = time.monotonic()
        step = self._core_step(stream, seq, chunk, now)
        try:
            self.batcher.submit(stream, seq, step, now)
        except QueueFull as exc:
            raise P.ProtocolError("queue_full", f"{where}: {exc}; wait for predictions before sending more",
                                  P.CLOSE_TRY_LATER, **stream.where()) from None
        stream.steps[seq] = step
        stream.sizes[seq] = size
        conn.queued_bytes += size
        if self._sensor_channels and chunk.timestamps.size:
            stream.last_t = float(chunk.timestamps[-1])
        stream.last_activity = now
        self.metrics.chunks.inc()

    def _out_of_order(self: StreamServer, stream: Stream, seq: int, records: list[Record]) -> None:
        """The core's verdict on a seq that is not the next: a ``duplicate`` reply, or ``bad_seq``."""
        for record in records:
            if record.type == "duplicate":
                self.metrics.duplicates.inc()
                self._send(stream.conn, {"type": "duplicate", **stream.where(), "seq": seq,
                                         "expected": record.fields["expected"]})
            else:
                raise P.ProtocolError("bad_seq", record.reason or "out of order", **stream.where())

    def _core_step(self: StreamServer, stream: Stream, seq: int, chunk: Any, now: float) -> Step:
        """The decoded chunk accepted by the stream core; its step, to queue in the batcher."""
        sensor = isinstance(chunk, SensorChunk)
        msg = ChunkMessage(stream.id, seq, 0.0, audio=None if sensor else chunk,
                           timestamps=chunk.timestamps if sensor else None, values=chunk.values if sensor else None)
        records = self.core.accept(stream.state, msg, now)
        step = self.core.next_step(stream.state, records)
        if step is None or records:  # cannot happen: the chunk passed decode_chunk's checks and the order check
            reason = "; ".join(r.reason or r.type for r in records) or "the stream core took no step"
            raise P.ProtocolError("bad_frame", reason, P.CLOSE_BAD_DATA, **stream.where())
        return step

    def _step_batch(self: StreamServer, sessions: list[Any], steps: list[Step], max_batch: int,
                    on_split: Callable[[], None] | None) -> list[Any]:
        """The batcher's stepping (on the event loop for a small batch, else a worker thread): the core's steps with
        ``step_streams_contained`` (bisection, non-finite outputs), each rolled back to its session as it was right
        before should it fail."""
        return self.core.step_batch(steps, max_batch, stepper=functools.partial(step_streams_contained,
                                                                                on_split=on_split))

    def _small_batch(self: StreamServer, steps: list[Step]) -> bool:
        """Whether a batch is small enough to step on the event loop (``ServerConfig.inline_batch_samples``)."""
        limit = self.config.inline_batch_samples
        total = 0
        for step in steps:
            total += np.size(getattr(step.payload, "values", step.payload))
            if total > limit:
                return False
        return True

    def _on_results(self: StreamServer, results: Results) -> None:
        now = time.monotonic()
        m = self.metrics
        binary: list[tuple[Stream, int, Any]] = []
        latencies = []
        finishing = []
        frames = 0
        for bs, seq, outcome, received in results:
            stream: Stream = bs  # type: ignore[assignment]
            stream.conn.queued_bytes -= stream.sizes.pop(seq, 0)
            step = stream.steps.pop(seq, None)
            if stream.closed or step is None:
                m.chunks_dropped.labels("closed").inc()
                continue
            stream.done_seq = seq + 1
            stream.last_activity = now
            # finite_checked: _step_batch's step_streams_contained refused non-finite outputs and states already
            failed = [r for r in self.core.commit(stream.state, step, outcome, finite_checked=True)
                      if r.type == "dead_letter"]
            if failed or isinstance(outcome, Exception):
                self._chunk_failed(stream, seq, outcome if isinstance(outcome, Exception)
                                   else StateError(failed[0].reason or "the stream core refused the result"))
                continue
            if stream.binary:
                binary.append((stream, seq, outcome))
            else:
                msg = {"type": "prediction", **stream.where(), "seq": seq, **outcome.to_dict()}
                if stream.outputs:
                    msg["outputs"] = outcome.outputs.tolist()
                self._send_finite(stream.conn, msg)
            latencies.append(now - received)
            frames += outcome.n_frames
            if stream.ending is not None and not stream.busy:
                finishing.append(stream)
        if binary:
            self._send_rows(binary)
        for stream in finishing:  # "ended" after the stream's last prediction, binary ones included
            self._finish(stream)
        observe_many(m.latency, latencies)
        m.predictions.inc(len(latencies))
        m.frames.inc(frames)

    def _send_finite(self: StreamServer, conn: Connection, msg: dict[str, Any]) -> None:
        """:meth:`_send` of a message whose numbers are all finite (a prediction): the fast encoder."""
        overflow = conn.send(P.dumps_finite(msg))
        if overflow is not None:
            self._fail(conn, overflow, drop_pending=True)

    def _send_rows(self: StreamServer, items: list[tuple[Stream, int, Any]]) -> None:
        """The binary predictions of a batch: its rows built at once, one frame per connection with its rows
        (:mod:`rnnstream.serving.replies`)."""
        mc = self.info.model_config
        rows = R.prediction_rows([s.channel for s, _, _ in items], [seq for _, seq, _ in items],
                                 [o for _, _, o in items], mc.output_dim, probabilities=mc.outputs_logits)
        by_conn: dict[Connection, list[int]] = {}
        for k, (stream, _, _) in enumerate(items):
            by_conn.setdefault(stream.conn, []).append(k)
        for conn, idx in by_conn.items():
            overflow = conn.send(R.encode_predictions(rows if len(idx) == len(rows) else rows[idx]))
            if overflow is not None:
                self._fail(conn, overflow, drop_pending=True)

    def _chunk_failed(self: StreamServer, stream: Stream, seq: int, exc: Exception) -> None:
        log.error("stream %r seq %d failed in the model: %s: %s", stream.id, seq, type(exc).__name__, exc)
        self.metrics.chunk_errors.inc()
        err = P.ProtocolError("server_error", f"stream {stream.id!r} seq {seq}: the model failed on this chunk "
                              f"({type(exc).__name__}: {exc}); this stream is closed, the others go on",
                              P.CLOSE_SERVER_ERROR, fatal=False, **stream.where())
        self._stream_error(stream.conn, err)

    def _on_failure(self: StreamServer, items: Any, exc: BaseException) -> None:
        """The batch could not even be scheduled (a bug): each chunk still gets an answer, an error."""
        log.error("a batch of %d streams failed outside the model: %s: %s", len(items), type(exc).__name__, exc)
        for bs, seq in items:
            stream: Stream = bs
            stream.conn.queued_bytes -= stream.sizes.pop(seq, 0)
            stream.steps.pop(seq, None)
            if stream.closed:
                self.metrics.chunks_dropped.labels("closed").inc()
                continue
            self._chunk_failed(stream, seq, exc if isinstance(exc, Exception) else RuntimeError(str(exc)))


__all__ = ["WsMixin"]

"""The online streaming server: WebSocket streams with server-side state, cross-stream batching, HTTP.

::

    rnnstream serve --model model.onnx [--host 127.0.0.1] [--port 8765] [--http-port 8766]
                    [--max-batch 64] [--max-wait-ms 5] [--max-streams 1024] [--idle-timeout 60]
                    [--snapshot-dir DIR]

* WebSocket (``ws://HOST:PORT/``): the protocol of :mod:`rnnstream.serving.protocol`. Each stream is a
  :class:`~rnnstream.pipeline.streaming.StreamSession` held here; chunks from all streams are batched by
  :class:`~rnnstream.serving.batcher.Batcher` into ``step_streams`` calls in a worker thread.
  ``GET /health`` and ``GET /metrics`` are answered on the same port too.
* HTTP (``http://HOST:HTTP_PORT``): ``GET /health``, ``GET /metrics`` (Prometheus text) and
  ``POST /predict`` with a whole file as the body (audio models: an audio file at its own rate, or raw
  samples with ``?dtype=float32|int16&sample_rate=HZ``; sensor models: a table with
  ``?format=csv|parquet``, CSV by default); answers ``{"predicted", "scores"|"values", "frames", "t"}`` or
  ``{"error", "message"}`` with status 400/404/405/411/413.

Every audio stream declares the rate of its samples (``start``'s ``sample_rate``); another rate than the
model's is resampled per stream, and ``end`` flushes the resampler so the final prediction equals offline.

Idle streams are evicted after ``idle_timeout_s``: the client gets an ``evicted`` message, and with a
``snapshot_dir`` the stream's state is saved there as ``<stream>.snap`` (+ ``<stream>.json`` holding the
next sequence number) so a ``start`` with ``"resume": "<stream>"`` continues it, on this server or
another one serving the same model. Streams left open by a disconnect or a shutdown are saved too.

Shutdown (SIGINT/SIGTERM, or :meth:`StreamServer.shutdown`) stops accepting connections and chunks,
finishes every chunk already received and sends its prediction, then sends each connection a
``shutdown`` message naming each open stream's next unprocessed ``seq`` (and saved snapshot) and
closes it with 1001.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from rnnstream.pipeline.errors import ConfigError, RnnstreamError, SampleRateError
from rnnstream.pipeline.model_info import Backend
from rnnstream.pipeline.streaming import SensorChunk, StreamSession, predict_signal
from rnnstream.serving import protocol as P
from rnnstream.serving.batcher import Batcher, BatchStream, QueueFull, Results
from rnnstream.serving.metrics import ServerMetrics

log = logging.getLogger("rnnstream.serve")


@dataclass(frozen=True)
class ServerConfig:
    """Settings of a :class:`StreamServer` (ports 0 pick free ports; ``http_port=None`` disables HTTP)."""

    host: str = "127.0.0.1"
    port: int = 8765
    http_port: int | None = 8766
    max_streams: int = 1024
    max_frame_bytes: int = 1 << 20
    max_queue: int = 32
    max_outbound: int = 4096
    max_batch: int = 64
    max_wait_ms: float = 5.0
    workers: int = 1
    idle_timeout_s: float = 60.0
    snapshot_dir: str | None = None
    shutdown_timeout_s: float = 10.0
    max_body_bytes: int = 64 << 20
    http_timeout_s: float = 30.0
    ping_interval_s: float | None = 20.0

    def __post_init__(self) -> None:
        for name in ("max_streams", "max_frame_bytes", "max_queue", "max_outbound", "max_batch", "workers",
                     "max_body_bytes"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_frame_bytes <= P.HEADER.size:
            raise ConfigError(f"ServerConfig.max_frame_bytes must exceed the {P.HEADER.size}-byte header")
        if self.max_wait_ms < 0 or self.idle_timeout_s < 0 or self.shutdown_timeout_s <= 0:
            raise ConfigError(
                f"ServerConfig: max_wait_ms ({self.max_wait_ms}) and idle_timeout_s ({self.idle_timeout_s}) must be "
                f">= 0, shutdown_timeout_s ({self.shutdown_timeout_s}) > 0"
            )
        for name in ("port", "http_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"ServerConfig.{name} must be in 0..65535, got {value}")


class _Close:
    def __init__(self, code: int, reason: str):
        self.code = code
        self.reason = reason


def _close_reason(text: str) -> str:
    """A close reason fits in 123 UTF-8 bytes."""
    data = text.encode("utf-8")[:120]
    return data.decode("utf-8", errors="ignore")


class _Connection:
    def __init__(self, ws: ServerConnection):
        self.ws = ws
        self.streams: dict[int, _Stream] = {}
        self.out: asyncio.Queue[str | _Close] = asyncio.Queue()
        self.closing = False


class _Stream(BatchStream):
    def __init__(self, session: StreamSession, conn: _Connection, channel: int, start: P.Start, seq: int):
        super().__init__(session)
        self.id = session.stream_id
        self.conn = conn
        self.channel = channel
        self.dtype = start.dtype
        self.outputs = start.outputs
        self.next_seq = seq  # next seq expected from the client
        self.done_seq = seq  # next seq whose prediction has not been sent
        self.last_activity = time.monotonic()
        self.ending: P.End | None = None
        self.last_t: float | None = None
        carry = session.carry
        if session.info.feature_config.kind == "sensor" and carry[0] != 0.0:
            self.last_t = float(carry[1])


class StreamServer:
    """One model served over WebSocket (+ HTTP); see the module doc. Use ``async with`` or start/shutdown."""

    def __init__(self, backend: Backend, config: ServerConfig | None = None):
        self.backend = backend
        self.config = config or ServerConfig()
        self.info = backend.info
        self.metrics = ServerMetrics()
        self.streams: dict[str, _Stream] = {}
        self._connections: set[_Connection] = set()
        self._closing = False
        self._ws_server: Server | None = None
        self._http_server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self.batcher = Batcher(
            max_batch=self.config.max_batch,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            max_queue=self.config.max_queue,
            workers=self.config.workers,
            metrics=self.metrics,
            on_results=self._on_results,
            on_failure=self._on_failure,
        )
        fc = self.info.feature_config
        self._sensor_channels = len(fc.sensor.columns) if fc.kind == "sensor" and fc.sensor is not None else 0
        self.port: int | None = None
        self.http_port: int | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/"

    @property
    def http_url(self) -> str | None:
        return None if self.http_port is None else f"http://{self.config.host}:{self.http_port}"

    async def start(self) -> "StreamServer":
        cfg = self.config
        if cfg.snapshot_dir is not None:
            Path(cfg.snapshot_dir).mkdir(parents=True, exist_ok=True)
        self._ws_server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            compression=None,
            max_size=cfg.max_frame_bytes,
            max_queue=64,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_interval_s,
            server_header=None,
        )
        self.port = self._ws_server.sockets[0].getsockname()[1]
        if cfg.http_port is not None:
            self._http_server = await asyncio.start_server(self._http_handle, cfg.host, cfg.http_port)
            self.http_port = self._http_server.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self.batcher.run(), name="rnnstream-batcher"))
        if cfg.idle_timeout_s > 0:
            self._tasks.append(asyncio.create_task(self._sweep(), name="rnnstream-evictor"))
        return self

    async def __aenter__(self) -> "StreamServer":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        """Graceful: stop accepting, finish every chunk received, tell each client, close with 1001."""
        if self._closing:
            return
        self._closing = True
        cfg = self.config
        if self._ws_server is not None:
            self._ws_server.close(close_connections=False)
        if self._http_server is not None:
            self._http_server.close()
        finished = await self.batcher.drain(list(self.streams.values()), cfg.shutdown_timeout_s)
        if not finished:
            log.warning("shutdown: chunks still queued after %.1f s; dropping them", cfg.shutdown_timeout_s)
        for conn in list(self._connections):
            if conn.closing:
                continue
            open_streams = []
            for stream in list(conn.streams.values()):
                saved = self._release(stream, "shutdown")
                open_streams.append({"stream": stream.id, "channel": stream.channel, "seq": stream.done_seq,
                                     "saved": saved})
            self._send(conn, {"type": "shutdown", "reason": "server shutting down", "streams": open_streams},
                       force=True)
            self._close(conn, P.CLOSE_GOING_AWAY, "server shutting down")
        self.batcher.stop()
        for task in self._tasks:
            if task.get_name() != "rnnstream-batcher":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=cfg.shutdown_timeout_s)
        if self._ws_server is not None:
            self._ws_server.close(close_connections=True)
            try:
                await asyncio.wait_for(self._ws_server.wait_closed(), cfg.shutdown_timeout_s)
            except TimeoutError:
                log.warning("shutdown: connections did not close within %.1f s", cfg.shutdown_timeout_s)
        if self._http_server is not None:
            await self._http_server.wait_closed()
        await asyncio.to_thread(self.batcher.close)

    async def serve_until(self, stop: asyncio.Event) -> None:
        await stop.wait()
        await self.shutdown()

    # -- model description ------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        info, cfg = self.info, self.config
        fc = info.feature_config
        model: dict[str, Any] = {
            "task": info.task,
            "labels": list(info.labels),
            "input_kind": info.input_kind,
            "weights_hash": info.weights_hash,
            "feature_config": fc.to_dict(),
            "output_dim": info.model_config.output_dim,
        }
        if fc.kind == "audio":
            model.update(kind="audio", sample_rate=fc.audio.sample_rate, dtypes=["float32", "int16"])  # type: ignore[union-attr]
        else:
            model.update(kind="sensor", columns=list(fc.sensor.columns), dtypes=[P.SENSOR_DTYPE])  # type: ignore[union-attr]
        limits = {
            "max_streams": cfg.max_streams,
            "max_frame_bytes": cfg.max_frame_bytes,
            "max_queue": cfg.max_queue,
            "max_batch": cfg.max_batch,
            "max_wait_ms": cfg.max_wait_ms,
            "idle_timeout_s": cfg.idle_timeout_s,
        }
        return {"type": "hello", "protocol": P.PROTOCOL, "model": model, "limits": limits,
                "snapshots": cfg.snapshot_dir is not None}

    def health(self) -> dict[str, Any]:
        return {"status": "shutting_down" if self._closing else "ok", "protocol": P.PROTOCOL,
                "streams": len(self.streams), "connections": len(self._connections),
                "weights_hash": self.info.weights_hash, "task": self.info.task}

    # -- WebSocket ----------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/health":
            return self._http_response(200 if not self._closing else 503, json.dumps(self.health()),
                                       "application/json")
        if path == "/metrics":
            return self._http_response(200, self.metrics.render().decode(), self.metrics.content_type)
        if self._closing:
            return self._http_response(503, "server shutting down\n", "text/plain")
        return None

    @staticmethod
    def _http_response(status: int, body: str, content_type: str) -> Response:
        data = body.encode()
        reason = {200: "OK", 503: "Service Unavailable"}.get(status, "")
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))),
                           ("Connection", "close")])
        return Response(status, reason, headers, data)

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Connection(ws)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._connections.add(conn)
        self.metrics.connections_open.inc()
        sender = asyncio.create_task(self._sender(conn))
        self._send(conn, self.hello())
        try:
            async for message in ws:
                if conn.closing:
                    break
                try:
                    if isinstance(message, str):
                        self._control(conn, message)
                    else:
                        self._chunk(conn, message)
                except P.ProtocolError as err:
                    self._fail(conn, err)
                    break
        except ConnectionClosed:
            pass
        finally:
            for stream in list(conn.streams.values()):
                self.batcher.discard(stream)
            for stream in list(conn.streams.values()):
                await stream.settled.wait()
                self._release(stream, "disconnect")
            if conn.closing:
                try:
                    await asyncio.wait_for(sender, self.config.shutdown_timeout_s)
                except (TimeoutError, ConnectionClosed):
                    sender.cancel()
            else:
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self._connections.discard(conn)
            self.metrics.connections_open.dec()
            if task is not None:
                self._handlers.discard(task)

    async def _sender(self, conn: _Connection) -> None:
        ws = conn.ws
        try:
            while True:
                item = await conn.out.get()
                if isinstance(item, _Close):
                    await ws.close(item.code, item.reason)
                    return
                await ws.send(item)
        except ConnectionClosed:
            return

    def _send(self, conn: _Connection, msg: dict[str, Any], *, force: bool = False) -> None:
        if conn.closing and not force:
            return
        if conn.out.qsize() >= self.config.max_outbound and not force:
            self._fail(conn, P.ProtocolError(
                "slow_consumer",
                f"{conn.out.qsize()} messages are waiting to be sent to this client (limit "
                f"{self.config.max_outbound}); read the predictions as they come",
                P.CLOSE_POLICY,
            ))
            return
        conn.out.put_nowait(P.dumps(msg))

    def _close(self, conn: _Connection, code: int, reason: str) -> None:
        conn.closing = True
        conn.out.put_nowait(_Close(code, _close_reason(reason)))

    def _fail(self, conn: _Connection, err: P.ProtocolError) -> None:
        """Send the error, then close with its code; the connection's streams are released."""
        if conn.closing:
            return
        self.metrics.errors.labels(err.code).inc()
        log.info("closing a connection (%d): %s: %s", err.close_code, err.code, err.message)
        self._send(conn, err.to_message(), force=True)
        self._close(conn, err.close_code, f"{err.code}: {err.message}")
        for stream in conn.streams.values():
            self.batcher.discard(stream)

    # -- control messages ---------------------------------------------------------------------------
    def _control(self, conn: _Connection, text: str) -> None:
        msg = P.parse_control(text)
        if isinstance(msg, P.Ping):
            self._send(conn, {"type": "pong"})
        elif isinstance(msg, P.Start):
            self._start(conn, msg)
        else:
            self._end(conn, msg)

    def _start(self, conn: _Connection, msg: P.Start) -> None:
        cfg = self.config
        where = dict(channel=msg.channel, stream=msg.stream or msg.resume)
        if self._closing:
            raise P.ProtocolError("shutting_down", "the server is shutting down; start the stream elsewhere",
                                  P.CLOSE_TRY_LATER, **where)
        if msg.channel in conn.streams:
            raise P.ProtocolError("channel_busy", f"channel {msg.channel} already carries stream "
                                  f"{conn.streams[msg.channel].id!r} on this connection; end it or pick another channel",
                                  **where)
        if len(self.streams) >= cfg.max_streams:
            raise P.ProtocolError("too_many_streams", f"the server holds {len(self.streams)} streams (limit "
                                  f"{cfg.max_streams}); try again later", P.CLOSE_TRY_LATER, **where)
        kind = self.info.feature_config.kind
        if kind == "sensor" and msg.dtype != P.SENSOR_DTYPE:
            raise P.ProtocolError("bad_dtype", f"this is a sensor model: chunks are float64 rows (timestamp + "
                                  f"{self._sensor_channels} channels); start with dtype 'float64', not {msg.dtype!r}",
                                  **where)
        if kind == "audio" and msg.dtype not in P.AUDIO_DTYPES:
            raise P.ProtocolError("bad_dtype", f"this is an audio model: dtype must be 'float32' or 'int16', "
                                  f"not {msg.dtype!r}", **where)
        stream_id = msg.stream or msg.resume or uuid.uuid4().hex[:16]
        if stream_id in self.streams:
            raise P.ProtocolError("stream_busy", f"stream {stream_id!r} is already open on this server", **where)
        seq = msg.seq or 0
        resumed = False
        if msg.resume is not None:
            blob, saved_seq = self._load_snapshot(msg.resume, where)
            session = self._restore(blob, stream_id, msg.sample_rate, where)
            seq = saved_seq if msg.seq is None else msg.seq
            resumed = True
        elif msg.snapshot is not None:
            session = self._restore(msg.snapshot, stream_id, msg.sample_rate, where)
            resumed = True
        else:
            session = self._open(stream_id, msg.sample_rate, where)
        stream = _Stream(session, conn, msg.channel, msg, seq)
        conn.streams[msg.channel] = stream
        self.streams[stream_id] = stream
        self.metrics.streams_open.inc()
        self.metrics.streams_started.inc()
        self._send(conn, {"type": "started", "stream": stream_id, "channel": msg.channel, "seq": seq,
                          "t": session.t, "resumed": resumed, "sample_rate": session.sample_rate})

    def _rate_error(self, problem: str, where: dict[str, Any]) -> P.ProtocolError:
        return P.ProtocolError("bad_sample_rate", f"start: {problem}", P.CLOSE_POLICY, **where)

    def _open(self, stream_id: str, rate: int | None, where: dict[str, Any]) -> StreamSession:
        """A new session at the client's declared rate (audio: required; sensor: none)."""
        audio = self.info.feature_config.audio
        if audio is None and rate is not None:
            raise self._rate_error(f"'sample_rate' ({rate}) was given for a sensor model; sensor rows carry their "
                                   "own timestamps (leave it out)", where)
        if audio is not None and rate is None:
            raise self._rate_error(f"an audio stream must declare 'sample_rate', the rate (Hz) of the samples it "
                                   f"will send; this model runs at {audio.sample_rate} Hz (other rates are "
                                   "resampled)", where)
        try:
            return StreamSession(self.backend, sample_rate=rate, stream_id=stream_id)
        except RnnstreamError as exc:  # e.g. a rate ratio too extreme to resample
            raise self._rate_error(f"'sample_rate' {rate}: {exc}", where) from None

    def _restore(self, blob: bytes, stream_id: str, rate: int | None, where: dict[str, Any]) -> StreamSession:
        """The snapshot's session; an audio stream's resume must declare the snapshot's rate."""
        try:
            session = StreamSession.restore(self.backend, blob, stream_id=stream_id)
        except RnnstreamError as exc:
            raise P.ProtocolError("bad_snapshot", f"cannot resume from this snapshot: {exc}", **where) from None
        if session.sample_rate is None and rate is not None:
            raise self._rate_error(f"'sample_rate' ({rate}) was given for a sensor stream's resume; leave it out",
                                   where)
        if session.sample_rate is not None and rate is None:
            raise self._rate_error(f"a resumed audio stream must declare 'sample_rate': the snapshot's stream runs "
                                   f"at {session.sample_rate} Hz (the model at "
                                   f"{self.info.feature_config.audio.sample_rate} Hz)", where)  # type: ignore[union-attr]
        if rate != session.sample_rate:
            raise self._rate_error(f"'sample_rate' {rate} Hz differs from the snapshot's stream rate "
                                   f"{session.sample_rate} Hz; a stream keeps one rate", where)
        return session

    def _snapshot_paths(self, stream_id: str) -> tuple[Path, Path]:
        assert self.config.snapshot_dir is not None
        base = Path(self.config.snapshot_dir)
        return base / f"{stream_id}.snap", base / f"{stream_id}.json"

    def _load_snapshot(self, stream_id: str, where: dict[str, Any]) -> tuple[bytes, int]:
        if self.config.snapshot_dir is None:
            raise P.ProtocolError("unknown_stream", f"cannot resume {stream_id!r}: this server keeps no snapshots "
                                  "(no --snapshot-dir); send the snapshot bytes in 'snapshot' instead", **where)
        snap, meta = self._snapshot_paths(stream_id)
        try:
            blob = snap.read_bytes()
        except FileNotFoundError:
            raise P.ProtocolError("unknown_stream", f"no saved snapshot for stream {stream_id!r}; expected one "
                                  "written at its eviction, disconnect or end (save)", **where) from None
        try:
            saved_seq = int(json.loads(meta.read_text(encoding="utf-8")).get("seq", 0))
        except (OSError, ValueError):
            saved_seq = 0
        return blob, saved_seq

    def _save_snapshot(self, stream: _Stream, reason: str) -> str | None:
        if self.config.snapshot_dir is None:
            return None
        snap, meta = self._snapshot_paths(stream.id)
        for path, data in ((snap, stream.session.snapshot()),
                           (meta, json.dumps({"stream": stream.id, "seq": stream.done_seq, "t": stream.session.t,
                                              "sample_rate": stream.session.sample_rate, "reason": reason,
                                              "saved_at": time.time()}).encode())):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return stream.id

    def _end(self, conn: _Connection, msg: P.End) -> None:
        stream = conn.streams.get(msg.channel)
        if stream is None:
            raise P.ProtocolError("unknown_stream", f"end: no stream is open on channel {msg.channel} of this "
                                  f"connection (open: {sorted(conn.streams)})", channel=msg.channel)
        if stream.ending is not None:
            raise P.ProtocolError("bad_message", f"end: stream {stream.id!r} is already ending", stream=stream.id,
                                  channel=msg.channel)
        if msg.save and self.config.snapshot_dir is None:
            raise P.ProtocolError("no_snapshot_dir", "end: 'save' needs a server started with --snapshot-dir; ask "
                                  "for the bytes with 'snapshot': true instead", stream=stream.id, channel=msg.channel)
        stream.ending = msg
        if not stream.busy:
            self._finish(stream)

    def _finish(self, stream: _Stream) -> None:
        """End the stream and send ``ended``. A snapshot asked for (``snapshot``/``save``) is taken first, so a
        resume continues the stream; then ``session.end()`` flushes the resampler's tail, so the final
        prediction equals offline prediction over the whole signal."""
        session, end = stream.session, stream.ending
        assert end is not None
        extra: dict[str, Any] = {}
        if end.snapshot:
            extra["snapshot"] = P.b64(session.snapshot())
        if end.save:
            extra["saved"] = self._save_snapshot(stream, "end")
        if not session.ended:
            session.end()
        msg: dict[str, Any] = {"type": "ended", "stream": stream.id, "channel": stream.channel,
                               "seq": stream.done_seq, "t": round(session.t, 6), **_prediction_fields(session.final()),
                               "frames": session.frames_seen, **extra}
        self._remove(stream)
        self._send(stream.conn, msg)

    def _remove(self, stream: _Stream) -> None:
        self.batcher.discard(stream)
        if stream.conn.streams.get(stream.channel) is stream:
            del stream.conn.streams[stream.channel]
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            self.metrics.streams_open.dec()

    def _release(self, stream: _Stream, reason: str) -> str | None:
        """Free a stream left open (disconnect, shutdown); saves its snapshot where configured."""
        if self.streams.get(stream.id) is not stream:
            return None
        saved = self._save_snapshot(stream, reason)
        self._remove(stream)
        return saved

    # -- chunks ---------------------------------------------------------------------------------------
    def _chunk(self, conn: _Connection, frame: bytes) -> None:
        channel, seq, payload = P.split_frame(frame)
        stream = conn.streams.get(channel)
        if stream is None:
            raise P.ProtocolError("unknown_stream", f"chunk for channel {channel}, where no stream is open on this "
                                  f"connection (open: {sorted(conn.streams)}); send 'start' first", channel=channel)
        if self._closing:
            return  # not processed; the shutdown message names each stream's next unprocessed seq
        where = f"stream {stream.id!r} seq {seq}"
        if stream.ending is not None:
            raise P.ProtocolError("bad_seq", f"{where}: chunk after 'end'", stream=stream.id, channel=channel)
        if seq != stream.next_seq:
            raise P.ProtocolError("bad_seq", f"{where}: expected seq {stream.next_seq} (chunks are numbered "
                                  "0, 1, 2, ... in order, continuing after a resume)", stream=stream.id, channel=channel)
        try:
            if self._sensor_channels:
                ts, vals = P.decode_sensor_payload(payload, self._sensor_channels, where=where)
                from rnnstream.pipeline.sensors import validate_chunk

                ts, vals = validate_chunk(ts, vals, self._sensor_channels, stream.last_t, where=where)
                chunk: Any = SensorChunk(ts, vals)
            else:
                chunk = P.decode_audio_payload(payload, stream.dtype, where=where)
        except P.ProtocolError as err:
            err.stream, err.channel = stream.id, channel
            raise
        except RnnstreamError as exc:
            raise P.ProtocolError("bad_frame", str(exc), P.CLOSE_BAD_DATA, stream=stream.id, channel=channel) from None
        now = time.monotonic()
        try:
            self.batcher.submit(stream, seq, chunk, now)
        except QueueFull as exc:
            raise P.ProtocolError("queue_full", f"{where}: {exc}; wait for predictions before sending more",
                                  P.CLOSE_TRY_LATER, stream=stream.id, channel=channel) from None
        if self._sensor_channels and ts.size:
            stream.last_t = float(ts[-1])
        stream.next_seq += 1
        stream.last_activity = now
        self.metrics.chunks.inc()

    def _on_results(self, results: Results) -> None:
        now = time.monotonic()
        m = self.metrics
        frames = 0
        for bs, seq, result, received in results:
            stream: _Stream = bs  # type: ignore[assignment]
            if stream.closed:
                continue
            stream.done_seq = seq + 1
            stream.last_activity = now
            msg = {"type": "prediction", "stream": stream.id, "channel": stream.channel, "seq": seq,
                   **result.to_dict()}
            if stream.outputs:
                msg["outputs"] = result.outputs.tolist()
            self._send(stream.conn, msg)
            m.latency.observe(now - received)
            frames += result.n_frames
            if stream.ending is not None and not stream.busy:
                self._finish(stream)
        m.predictions.inc(len(results))
        m.frames.inc(frames)

    def _on_failure(self, items: Any, exc: BaseException) -> None:
        log.error("backend failed on a batch of %d streams: %s: %s", len(items), type(exc).__name__, exc)
        for bs, seq in items:
            stream: _Stream = bs  # type: ignore[assignment]
            if stream.closed:
                continue
            self._fail(stream.conn, P.ProtocolError(
                "server_error", f"stream {stream.id!r} seq {seq}: the model failed on this chunk's batch "
                f"({type(exc).__name__}: {exc})", P.CLOSE_SERVER_ERROR, stream=stream.id, channel=stream.channel))

    # -- eviction ---------------------------------------------------------------------------------------
    async def _sweep(self) -> None:
        idle = self.config.idle_timeout_s
        period = min(1.0, idle / 4)
        while True:
            await asyncio.sleep(period)
            self.evict_idle()

    def evict_idle(self, now: float | None = None) -> int:
        """Evict every stream idle (nothing queued or in flight) for longer than ``idle_timeout_s``."""
        now = time.monotonic() if now is None else now
        idle = self.config.idle_timeout_s
        count = 0
        for stream in list(self.streams.values()):
            if stream.busy or stream.ending is not None or now - stream.last_activity <= idle:
                continue
            saved = self._save_snapshot(stream, "idle")
            self._remove(stream)
            self.metrics.evictions.inc()
            count += 1
            self._send(stream.conn, {"type": "evicted", "stream": stream.id, "channel": stream.channel,
                                     "seq": stream.done_seq, "saved": saved,
                                     "reason": f"idle for {now - stream.last_activity:.1f} s (limit {idle:g} s)"})
        return count

    # -- HTTP ---------------------------------------------------------------------------------------------
    async def _http_handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, body, ctype, path = 500, b"", "application/json", "?"
        try:
            status, body, ctype, path = await asyncio.wait_for(self._http_request(reader), self.config.http_timeout_s)
        except TimeoutError:
            status, body = 408, self._json_error("timeout", f"request not received within {self.config.http_timeout_s} s")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as exc:
            status, body = 400, self._json_error("bad_request", f"malformed HTTP request ({type(exc).__name__}: {exc})")
        self.metrics.http_requests.labels(path, str(status)).inc()
        reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
                   411: "Length Required", 413: "Payload Too Large", 500: "Internal Server Error",
                   503: "Service Unavailable"}
        head = (f"HTTP/1.1 {status} {reasons.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            writer.write(head + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    @staticmethod
    def _json_error(code: str, message: str) -> bytes:
        return json.dumps({"error": code, "message": message}).encode()

    async def _http_request(self, reader: asyncio.StreamReader) -> tuple[int, bytes, str, str]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ValueError(f"request line {lines[0][:80]!r} is not 'METHOD PATH HTTP/1.x'")
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ValueError(f"header line {line[:80]!r} has no ':'")
                headers[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        path = url.path
        if path == "/health":
            if method != "GET":
                return 405, self._json_error("method", "GET /health"), "application/json", path
            return (200 if not self._closing else 503), json.dumps(self.health()).encode(), "application/json", path
        if path == "/metrics":
            if method != "GET":
                return 405, self._json_error("method", "GET /metrics"), "application/json", path
            return 200, self.metrics.render(), self.metrics.content_type, path
        if path != "/predict":
            return 404, self._json_error("not_found", f"no such path {path!r}; expected /health, /metrics or POST "
                                         "/predict"), "application/json", "other"
        if method != "POST":
            return 405, self._json_error("method", f"/predict takes POST with the file as body, not {method}"), \
                "application/json", path
        if "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" not in headers:
            return 411, self._json_error("length_required", "POST /predict needs a Content-Length body (no chunked "
                                         "transfer encoding)"), "application/json", path
        length = int(headers["content-length"])
        if not 0 <= length <= self.config.max_body_bytes:
            return 413, self._json_error("too_large", f"body of {length} bytes exceeds the limit of "
                                         f"{self.config.max_body_bytes} bytes"), "application/json", path
        body = await reader.readexactly(length)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            result = await asyncio.to_thread(self._predict_body, body, query)
        except RnnstreamError as exc:
            return 400, self._json_error(type(exc).__name__, str(exc)), "application/json", path
        return 200, json.dumps(result).encode(), "application/json", path

    def _predict_body(self, body: bytes, query: dict[str, str]) -> dict[str, Any]:
        """One-shot prediction of a whole file (runs in a thread): offline, ``rnnstream.api.Model.predict``."""
        from rnnstream.api import Model

        if self.info.feature_config.kind == "audio":
            samples, rate = self._audio_body(body, query)
            pred = Model(self.backend).predict(samples, sample_rate=rate)
            t = samples.shape[0] / rate
        else:
            if "sample_rate" in query:
                raise ConfigError("sample_rate does not apply to a sensor model: its table carries timestamps")
            signal = self._sensor_body(body, query)
            pred = predict_signal(self.backend, signal)
            t = float(signal.timestamps[-1]) if signal.timestamps.size else 0.0
        return {**_prediction_fields(pred), "frames": 0 if pred is None else pred.frames, "t": round(t, 6)}

    def _audio_body(self, body: bytes, query: dict[str, str]) -> tuple[Any, int]:
        """``(samples, rate)``: an audio file at its own rate (``sample_rate``, if given, must match it), or raw
        ``float32``/``int16`` samples whose ``sample_rate`` the query must give."""
        audio = self.info.feature_config.audio
        assert audio is not None
        declared = _query_rate(query)
        dtype = query.get("dtype", "file")
        if dtype == "file":
            from rnnstream.pipeline.audio_io import decode_native

            name = query.get("name", "<request body>")
            samples, rate = decode_native(body, name=name, channel=audio.channel)
            if declared is not None and declared != rate:
                raise SampleRateError(f"{name}: the file's sample rate is {rate} Hz, not the declared "
                                      f"sample_rate={declared} Hz")
            return samples, rate
        if dtype not in P.AUDIO_DTYPES:
            raise ConfigError(f"dtype must be 'file' (an audio file), 'float32' or 'int16', got {dtype!r}")
        if declared is None:
            raise ConfigError(f"raw {dtype} samples need the sample_rate query parameter (Hz of the samples, e.g. "
                              f"/predict?dtype={dtype}&sample_rate={audio.sample_rate}); this model runs at "
                              f"{audio.sample_rate} Hz (other rates are resampled)")
        try:
            return P.decode_audio_payload(body, dtype, where="request body"), declared
        except P.ProtocolError as err:
            raise ConfigError(err.message) from None

    def _sensor_body(self, body: bytes, query: dict[str, str]) -> SensorChunk:
        from rnnstream.pipeline.sensors import read_sensor_table

        fmt = query.get("format", "csv")
        if fmt not in ("csv", "parquet"):
            raise ConfigError(f"format must be 'csv' or 'parquet' for a sensor model, got {fmt!r}")
        with tempfile.TemporaryDirectory(prefix="rnnstream-predict-") as tmp:
            path = os.path.join(tmp, f"body.{fmt}")
            with open(path, "wb") as fh:
                fh.write(body)
            ts, vals = read_sensor_table(path, self.info.feature_config)
        return SensorChunk(ts, vals)


def _query_rate(query: dict[str, str]) -> int | None:
    """The ``sample_rate`` query parameter as a positive integer (Hz), or None when absent."""
    text = query.get("sample_rate")
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise ConfigError(f"sample_rate must be a positive integer (Hz), got {text!r}")
    return int(text)


def _prediction_fields(pred: Any) -> dict[str, Any]:
    """``predicted`` (null before the first frame) and ``scores`` by label (classify/tag) or ``values``."""
    if pred is None:
        return {"predicted": None}
    d = pred.to_dict()
    d.pop("frames")
    return d


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def load_model(path: str, provider: str = "auto", threads: int | None = None, raw_audio: bool = False) -> Backend:
    """A backend for ``path``: ``rnnstream.api.load_backend`` (ONNX or checkpoint) when available."""
    try:
        from rnnstream.api import load_backend
    except ImportError:
        load_backend = None
    if load_backend is not None:
        return load_backend(path, provider=provider, threads=threads, raw_audio=raw_audio)
    if path.endswith(".onnx"):
        raise ConfigError(f"{path}: serving an ONNX model needs rnnstream.pipeline.onnx_backend, which this installation lacks")
    from rnnstream.models.backend import TorchBackend

    if threads:
        import torch

        torch.set_num_threads(threads)
    return TorchBackend.from_checkpoint(path, raw_audio=raw_audio)


def build_parser() -> argparse.ArgumentParser:
    """The ``rnnstream serve`` parser (declared in the light :mod:`rnnstream.serving.cli`)."""
    from rnnstream.serving.cli import build_serve_parser

    return build_serve_parser()


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, http_port=None if args.http_port < 0 else args.http_port,
        max_streams=args.max_streams, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, max_frame_bytes=args.max_frame_bytes, workers=args.workers,
        idle_timeout_s=args.idle_timeout, snapshot_dir=args.snapshot_dir,
    )


async def _serve(backend: Backend, config: ServerConfig, ready: Any = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass
    server = await StreamServer(backend, config).start()
    http = f" and {server.http_url}" if server.http_url else ""
    print(f"rnnstream serve: {server.url}{http} (task {backend.info.task}, max batch {config.max_batch}); "
          "Ctrl-C to stop", file=sys.stderr, flush=True)
    if ready is not None:
        ready(server)
    await server.serve_until(stop)
    print("rnnstream serve: stopped", file=sys.stderr, flush=True)


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM as the parsed command line asks. Errors (a bad model, a busy port) propagate
    to the CLI's handler, which prints one line without a traceback."""
    if args.log_level:
        logging.getLogger("rnnstream").setLevel(args.log_level)
    config = config_from_args(args)
    backend = load_model(args.model, args.provider, args.threads, args.raw_audio)
    asyncio.run(_serve(backend, config))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``rnnstream serve``: parsing, logging and exit status are :data:`rnnstream.serving.cli.SERVE`'s."""
    from rnnstream.serving.cli import SERVE

    return SERVE.main(argv)


__all__ = ["ServerConfig", "StreamServer", "load_model", "main"]

"""The online streaming server: WebSocket streams with server-side state, cross-stream batching, HTTP.

::

    rnnstream serve --model model.onnx [--host 127.0.0.1] [--port 8765]
                    [--max-batch 64] [--max-wait-ms 10] [--max-streams 1024] [--idle-timeout 60]
                    [--snapshot-dir DIR]

One aiohttp application on one port serves

* the WebSocket protocol of :mod:`rnnstream.serving.protocol` at ``ws://HOST:PORT/``
  (:mod:`rnnstream.serving.ws_handler`). Each stream is a
  :class:`~rnnstream.pipeline.streaming.StreamSession` held here; chunks from all streams are batched by
  :class:`~rnnstream.serving.batcher.Batcher` in a worker thread, failures contained per stream
  (:func:`rnnstream.pipeline.batching.step_streams_contained`);
* HTTP: ``/health``, ``/livez``, ``/readyz``, ``/metrics``, ``POST /predict`` (:mod:`rnnstream.serving.http_app`).

Streams start (and resume from snapshots, validated off the event loop) in
:mod:`rnnstream.serving.stream_start`; end, eviction, release and snapshot saves are
:mod:`rnnstream.serving.stream_state`; the snapshot store is :mod:`rnnstream.serving.snapshots`.

Shutdown (SIGINT/SIGTERM, or :meth:`StreamServer.shutdown`) makes ``/readyz`` answer 503 and stops
accepting connections and chunks, finishes every chunk already received and sends its prediction, saves
open streams where a store is configured, then sends each connection a ``shutdown`` message naming each
open stream's next unprocessed ``seq`` (and saved snapshot id) and closes it with 1001.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import platform
import signal
import sys
from typing import Any

from aiohttp import web
from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.model_info import Backend
from rnnstream.pipeline.stream_core import CoreConfig, StreamCore
from rnnstream.serving import protocol as P
from rnnstream.serving.batcher import Batcher
from rnnstream.serving.config import ServerConfig
from rnnstream.serving.connection import Connection
from rnnstream.serving.handoff import HandoffReceiver
from rnnstream.serving.http_app import HttpMixin
from rnnstream.serving.metrics import ServerMetrics
from rnnstream.serving.snapshots import SnapshotStore
from rnnstream.serving.stream_start import StartMixin
from rnnstream.serving.stream_state import StateMixin
from rnnstream.serving.streams import Stream
from rnnstream.serving.ws_handler import WsMixin

log = logging.getLogger("rnnstream.serve")


class StreamServer(WsMixin, StartMixin, StateMixin, HttpMixin):
    """One model served over WebSocket + HTTP on one port; see the module doc. ``async with`` or start/shutdown."""

    def __init__(self, backend: Backend, config: ServerConfig | None = None):
        self.backend = backend
        self.config = config or ServerConfig()
        self.info = backend.info
        self.metrics = ServerMetrics()
        self.metrics.set_model(self.info)
        #: the stream core in the server's mode: strict order, duplicate records (its gaps never happen), no
        #: prediction records (the replies are built from each ChunkResult)
        self.core = StreamCore(backend, CoreConfig(strict_order=True, duplicate_records=True,
                                                   prediction_records=False))
        self.streams: dict[str, Stream] = {}
        self.store: SnapshotStore | None = None
        self._connections: set[Connection] = set()
        self._closing = False
        self._started = False
        self._starting = 0  # starts awaiting a snapshot (they hold a slot)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self._bg: set[asyncio.Task[Any]] = set()
        self._predict_slots = asyncio.Semaphore(max(1, self.config.batch_threads))
        self.batcher = Batcher(
            max_batch=self.config.max_batch,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            max_queue=self.config.max_queue,
            workers=self.config.batch_threads,
            metrics=self.metrics,
            on_results=self._on_results,
            on_failure=self._on_failure,
            step=self._step_batch,
            inline=self._small_batch,
        )
        fc = self.info.feature_config
        self._sensor_channels = len(fc.sensor.columns) if fc.kind == "sensor" and fc.sensor is not None else 0
        self.port: int | None = None
        self.http_port: int | None = None
        self._handoff: HandoffReceiver | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.http_port or self.port}"

    @property
    def ready(self) -> bool:
        """The model is loaded, the server started and not shutting down (``/readyz``)."""
        return self._started and not self._closing

    async def start(self, handoff: HandoffReceiver | None = None) -> StreamServer:
        """Listen on ``config.port`` (and ``config.http_port``), or, under ``rnnstream serve --workers N``, serve
        the connections the supervisor hands over (``handoff``)."""
        cfg = self.config
        if cfg.snapshot_dir is not None:
            self.store = await asyncio.to_thread(SnapshotStore, cfg.snapshot_dir, ttl_s=cfg.snapshot_ttl_s,
                                                 max_bytes=cfg.max_snapshot_bytes)
        self._runner = web.AppRunner(self._make_app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=cfg.shutdown_timeout_s)
        await self._runner.setup()
        if handoff is not None:
            server = self._runner.server
            assert server is not None, "AppRunner.setup() makes the server"  # aiohttp's invariant, not input
            handoff.attach(server, lambda: len(self.streams))
            self._handoff = handoff
            self.port, self.http_port = handoff.port, handoff.http_port
        else:
            site = web.TCPSite(self._runner, cfg.host, cfg.port)
            await site.start()
            self.port = _bound_port(site)
            if cfg.http_port is not None:
                extra = web.TCPSite(self._runner, cfg.host, cfg.http_port)
                await extra.start()
                self.http_port = _bound_port(extra)
        self._tasks.append(asyncio.create_task(self.batcher.run(), name="rnnstream-batcher"))
        if cfg.idle_timeout_s > 0 or self.store is not None:
            self._tasks.append(asyncio.create_task(self._sweep(), name="rnnstream-evictor"))
        self._started = True
        return self

    async def __aenter__(self) -> StreamServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        """Graceful: not ready, finish every chunk received, save and tell each client, close with 1001."""
        if self._closing:
            return
        self._closing = True
        if self._handoff is not None:
            self._handoff.detach()
        cfg = self.config
        finished = await self.batcher.drain(list(self.streams.values()), cfg.shutdown_timeout_s)
        if not finished:
            log.warning("shutdown: chunks still queued after %.1f s; dropping them", cfg.shutdown_timeout_s)
        await asyncio.gather(*(self._say_goodbye(conn) for conn in list(self._connections)))
        self.batcher.stop()
        for task in self._tasks:
            if task.get_name() != "rnnstream-batcher":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._bg:
            await asyncio.wait(list(self._bg), timeout=cfg.shutdown_timeout_s)
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=cfg.shutdown_timeout_s)
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.to_thread(self.batcher.close)

    async def _say_goodbye(self, conn: Connection) -> None:
        if conn.closing:
            return
        open_streams = []
        for stream in list(conn.streams.values()):
            self._discard(stream, "shutdown")
            saved = await self._release(stream, "shutdown")
            open_streams.append({"stream": stream.id, "channel": stream.channel, "seq": stream.done_seq,
                                 "saved": saved})
        msg = {"type": "shutdown", "reason": "server shutting down", "streams": open_streams}
        conn.close(P.CLOSE_GOING_AWAY, "server shutting down", P.dumps(msg))

    async def serve_until(self, stop: asyncio.Event) -> None:
        await stop.wait()
        await self.shutdown()

    # -- model description ------------------------------------------------------------------------
    def model_description(self) -> dict[str, Any]:
        info = self.info
        fc = info.feature_config
        model: dict[str, Any] = {
            "task": info.task,
            "labels": list(info.labels),
            "input_kind": info.input_kind,
            "weights_hash": info.weights_hash,
            "version": info.version,
            "backend": type(self.backend).__name__,
            "feature_config": fc.to_dict(),
            "output_dim": info.model_config.output_dim,
        }
        for attr in ("provider", "quantization"):
            value = getattr(self.backend, attr, None)
            if isinstance(value, str):
                model[attr] = value
        step_width = info.model_config.kind.step_width(info.model_config)
        if step_width is not None:
            model["forecast_dims"] = step_width
        if fc.kind == "audio":
            model.update(kind="audio", sample_rate=fc.audio.sample_rate, dtypes=["float32", "int16"])  # type: ignore[union-attr]
        else:
            model.update(kind="sensor", columns=list(fc.sensor.columns), dtypes=[P.SENSOR_DTYPE])  # type: ignore[union-attr]
        return model

    def hello(self) -> dict[str, Any]:
        cfg = self.config
        limits = {
            "max_streams": cfg.max_streams,
            "max_streams_per_connection": cfg.per_connection_streams,
            "max_frame_bytes": cfg.max_frame_bytes,
            "max_queue": cfg.max_queue,
            "max_queue_bytes": cfg.max_queue_bytes,
            "max_outbound_bytes": cfg.max_outbound_bytes,
            "max_chunk_s": cfg.max_chunk_s,
            "max_snapshot_bytes": cfg.max_snapshot_bytes,
            "max_batch": cfg.max_batch,
            "max_wait_ms": cfg.max_wait_ms,
            "idle_timeout_s": cfg.idle_timeout_s,
        }
        return {"type": "hello", "protocol": P.PROTOCOL, "model": self.model_description(), "limits": limits,
                "snapshots": self.store is not None, "worker": self.worker_description()}

    def worker_description(self) -> dict[str, Any]:
        """Which process answers: its index among ``rnnstream serve --workers N`` (0 when alone) and its pid."""
        return {"index": self.config.worker or 0, "pid": os.getpid()}

    def health(self) -> dict[str, Any]:
        info = self.info
        return {"status": "shutting_down" if self._closing else "ok", "protocol": P.PROTOCOL,
                "streams": len(self.streams), "connections": len(self._connections),
                "worker": self.worker_description(),
                "weights_hash": info.weights_hash, "task": info.task, "model": self.model_description()}


def _bound_port(site: web.TCPSite) -> int:
    # aiohttp keeps the asyncio server in site._server; its socket names the port picked for 0
    sockets = getattr(site._server, "sockets", None)
    if not sockets:
        raise ConfigError("the HTTP site did not bind a socket")
    return int(sockets[0].getsockname()[1])


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def load_model(path: str, provider: str = "auto", threads: int | None = None, raw_audio: bool = False) -> Backend:
    """The backend for ``path``: the one model loader, ``rnnstream.api.load_backend`` (ONNX or checkpoint)."""
    from rnnstream.api import load_backend

    return load_backend(path, provider=provider, threads=threads, raw_audio=raw_audio)


def build_parser() -> argparse.ArgumentParser:
    """The ``rnnstream serve`` parser (declared in the light :mod:`rnnstream.serving.cli`)."""
    from rnnstream.serving.cli import build_serve_parser

    return build_serve_parser()


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, http_port=None if args.http_port is None or args.http_port < 0 else args.http_port,
        max_connections=args.max_connections,
        max_streams=args.max_streams, max_streams_per_connection=args.max_streams_per_connection,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_queue_bytes=args.max_queue_bytes, max_outbound_bytes=args.max_outbound_bytes,
        max_frame_bytes=args.max_frame_bytes, max_chunk_s=args.max_chunk_seconds,
        max_predict_s=args.max_predict_seconds, batch_threads=args.batch_threads,
        inline_batch_samples=args.inline_batch_samples, idle_timeout_s=args.idle_timeout,
        snapshot_dir=args.snapshot_dir, snapshot_ttl_s=args.snapshot_ttl,
    )


async def _serve(backend: Backend, config: ServerConfig, ready: Any = None, announce: bool = True,
                 handoff: HandoffReceiver | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass
    server = await StreamServer(backend, config).start(handoff)
    if announce:
        http = f" and {server.http_url}" if server.http_port else ""
        print(f"rnnstream serve: {server.url}{http} (task {backend.info.task}, max batch {config.max_batch}); "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
    if ready is not None:
        ready(server)
    await server.serve_until(stop)
    if announce:
        print("rnnstream serve: stopped", file=sys.stderr, flush=True)


def run_server(backend: Backend, config: ServerConfig, *, ready: Any = None, announce: bool = True,
               handoff: HandoffReceiver | None = None) -> None:
    """Serve in this process until SIGINT/SIGTERM: on uvloop when it is installed, with BLAS pinned to one
    thread (NumPy's featurizing runs in the batch thread; OpenBLAS's own threads would spin against it).
    ``handoff``: a worker of ``rnnstream serve --workers N`` (:mod:`rnnstream.serving.workers`)."""
    _pin_blas_threads()
    _keep_freed_memory()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(backend, config, ready, announce, handoff))


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


#: glibc's mallopt parameters (malloc.h) and the values the server sets (see :func:`_keep_freed_memory`).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD_BYTES = 32 << 20
MMAP_THRESHOLD_BYTES = 4 << 20


def _keep_freed_memory() -> None:
    """Keep freed heap memory for reuse instead of handing it back to the kernel after every batch (glibc only).

    A batch's featurizing allocates arrays of up to ~1 MB and frees them at once; glibc returned those pages to
    the kernel (mmap/munmap, heap trimming), so every batch faulted them in again: 4-5 page faults per chunk,
    about 5 us of server CPU per chunk measured at 1,000 streams, none left with these bounds (at most
    ``TRIM_THRESHOLD_BYTES`` of free heap kept per arena; arrays over ``MMAP_THRESHOLD_BYTES`` still get their own
    mapping). Left alone when the environment sets glibc's malloc tunables itself."""
    if any(k in os.environ for k in ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _pin_blas_threads() -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=1, user_api="blas")


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM as the parsed command line asks: one process, or ``--workers`` processes
    under :mod:`rnnstream.serving.workers`. Errors (a bad model, a busy port) propagate to the CLI's handler,
    which prints one line without a traceback."""
    from rnnstream.serving.workers import WorkerPoolConfig, default_workers, run_workers

    if args.log_level:
        logging.getLogger("rnnstream").setLevel(args.log_level)
    config = config_from_args(args)
    pool = WorkerPoolConfig(workers=default_workers() if args.workers is None else args.workers)
    if pool.workers > 1:
        return run_workers(args, pool, config.shutdown_timeout_s)
    backend = load_model(args.model, args.provider, args.threads, args.raw_audio)
    run_server(backend, config)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``rnnstream serve``: parsing, logging and exit status are :data:`rnnstream.serving.cli.SERVE`'s."""
    from rnnstream.serving.cli import SERVE

    return SERVE.main(argv)


__all__ = ["ServerConfig", "StreamServer", "load_model", "main", "run_server"]

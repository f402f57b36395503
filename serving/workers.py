"""``rnnstream serve --workers N``: N server processes sharing one port, under a small supervisor.

Each worker is a whole :class:`~rnnstream.serving.server.StreamServer` in its own process (spawned, not
forked): its own event loop, batcher and backend session (one intra-op thread by default), so N workers use
N cores where one process is bound by its GIL. The port is shared with ``SO_REUSEPORT``: the supervisor binds
it first (port 0 picks a free one) and keeps that socket, never listening on it, so the port stays reserved
while workers start and restart; the kernel spreads new connections over the workers' listening sockets. A
connection stays with its worker for its whole life, and so do its streams.

What the workers share:

* **metrics**: ``prometheus_client``'s multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a temporary directory
  of this supervisor): ``/metrics`` on any worker sums the counters and histograms of all of them, and the
  gauges of the live ones (``rnnstream_serve_workers_up`` counts them);
* **snapshots**: ``--snapshot-dir`` is one directory for all, so a stream saved by one worker resumes on any
  other (inline snapshots in ``start`` are portable anyway).

Shutdown: SIGINT/SIGTERM to the supervisor is passed to every worker as SIGTERM; each shuts down gracefully
(finishes queued chunks, saves and tells its clients, closes with 1001). A worker still running after
``shutdown_timeout_s`` + 10 s is killed. A worker that dies on its own is restarted (at most
:data:`MAX_RESTARTS` times in :data:`RESTART_WINDOW_S`; past that the supervisor shuts everything down and exits 1).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from rnnstream.pipeline.errors import ConfigError

log = logging.getLogger("rnnstream.serve")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
READY_TIMEOUT_S = 300.0


def default_workers() -> int:
    """The number of cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class WorkerPoolConfig:
    """How many server processes run, and how the supervisor treats them."""

    workers: int
    ready_timeout_s: float = READY_TIMEOUT_S
    max_restarts: int = MAX_RESTARTS
    restart_window_s: float = RESTART_WINDOW_S

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if not hasattr(socket, "SO_REUSEPORT") and self.workers > 1:
            raise ConfigError(f"--workers {self.workers} needs SO_REUSEPORT, which this platform lacks; use --workers 1")


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` (not listening): it keeps the port for the workers.
    Port 0 binds a free port (read it from ``getsockname()``). Raises ``OSError`` when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _worker_main(args: argparse.Namespace, index: int, port: int, http_port: int | None, conn: Any,
                 log_level: int) -> None:
    """One worker process: load the model, serve on the shared port, report ``("ready", pid)`` or an error."""
    import dataclasses

    from rnnstream.serving import server as S

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"rnnstream serve[{index}]: %(message)s"))
    logger = logging.getLogger("rnnstream")
    logger.addHandler(handler)
    logger.setLevel(log_level)
    try:
        config = dataclasses.replace(S.config_from_args(args), port=port, http_port=http_port, reuse_port=True,
                                     worker=index)
        backend = S.load_model(args.model, args.provider, args.threads, args.raw_audio)
    except Exception as exc:  # noqa: BLE001 -- reported to the supervisor, which names it and exits
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    S.run_server(backend, config, ready=lambda server: conn.send(("ready", os.getpid())), announce=False)


class Supervisor:
    """Starts, watches and stops the worker processes (see the module doc)."""

    def __init__(self, args: argparse.Namespace, pool: WorkerPoolConfig):
        self.args = args
        self.pool = pool
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = [None] * pool.workers
        self.restarts: list[float] = []
        self.stopping = False
        self.metrics_dir = tempfile.mkdtemp(prefix="rnnstream-metrics-")
        self._holders: list[socket.socket] = []
        self.port = 0
        self.http_port: int | None = None

    def reserve(self) -> None:
        args = self.args
        main = reserve_port(args.host, args.port)
        self._holders.append(main)
        self.port = main.getsockname()[1]
        if args.http_port is not None and args.http_port >= 0:
            extra = reserve_port(args.host, args.http_port)
            self._holders.append(extra)
            self.http_port = extra.getsockname()[1]

    def start_worker(self, index: int) -> tuple[Any, Any]:
        """Spawn worker ``index``; returns (process, the parent's end of its pipe)."""
        parent, child = self.ctx.Pipe(duplex=False)
        level = logging.getLogger("rnnstream").getEffectiveLevel()
        proc = self.ctx.Process(target=_worker_main, name=f"rnnstream-serve-{index}", daemon=False,
                                args=(self.args, index, self.port, self.http_port, child, level))
        proc.start()
        child.close()
        self.procs[index] = proc
        return proc, parent

    def wait_ready(self, pipes: list[tuple[int, Any]]) -> None:
        """Wait for every worker's ``ready``; a worker's error (or its exit) stops all and raises ConfigError."""
        deadline = time.monotonic() + self.pool.ready_timeout_s
        waiting = dict(pipes)
        while waiting:
            left = deadline - time.monotonic()
            if self.stopping:
                raise KeyboardInterrupt  # a stop signal while starting: the CLI exits 130
            if left <= 0:
                raise ConfigError(f"{len(waiting)} worker(s) did not start within {self.pool.ready_timeout_s:.0f} s")
            sentinels = {self.procs[i].sentinel: i for i in waiting}
            ready = multiprocessing.connection.wait([*waiting.values(), *sentinels], timeout=min(left, 0.5))
            for obj in ready:
                index = sentinels.get(obj)
                if index is None:
                    index = next(i for i, p in waiting.items() if p is obj)
                    try:
                        kind, detail = obj.recv()
                    except EOFError:
                        kind, detail = "error", "it exited before it was ready"
                else:
                    kind, detail = "error", f"it exited with status {self.procs[index].exitcode}"
                if kind != "ready":
                    raise ConfigError(f"worker {index} failed to start: {detail}")
                waiting.pop(index).close()

    def watch(self) -> int:
        """Until a stop signal: restart workers that die; returns the exit status."""
        while not self.stopping:
            sentinels = {p.sentinel: i for i, p in enumerate(self.procs)}
            for obj in multiprocessing.connection.wait(list(sentinels), timeout=0.5):
                index = sentinels[obj]
                if self.stopping:
                    break
                code = self.procs[index].exitcode
                self._mark_dead(self.procs[index].pid)
                if not self._may_restart():
                    log.error("worker %d exited (status %s) and workers have restarted %d times in %.0f s; "
                              "stopping", index, code, len(self.restarts), self.pool.restart_window_s)
                    return 1
                log.warning("worker %d exited (status %s); restarting it", index, code)
                _, pipe = self.start_worker(index)
                try:
                    self.wait_ready([(index, pipe)])
                except ConfigError as exc:
                    log.error("%s; stopping", exc)
                    return 1
        return 0

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.pool.restart_window_s] + [now]
        return len(self.restarts) <= self.pool.max_restarts

    def _mark_dead(self, pid: int | None) -> None:
        if pid is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.metrics_dir)

    def stop(self, timeout: float) -> None:
        """SIGTERM to every live worker; kill those still running after ``timeout`` seconds."""
        self.stopping = True
        live = [p for p in self.procs if p is not None and p.is_alive()]
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in live:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker pid %d did not stop within %.0f s; killing it", proc.pid, timeout)
                proc.kill()
                proc.join()

    def close(self) -> None:
        for sock in self._holders:
            sock.close()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


def run_workers(args: argparse.Namespace, pool: WorkerPoolConfig, shutdown_timeout_s: float) -> int:
    """Run ``pool.workers`` server processes until SIGINT/SIGTERM; returns the exit status."""
    sup = Supervisor(args, pool)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: Any) -> None:
        sup.stopping = True

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sup.metrics_dir  # the spawned workers inherit it
    try:
        for sig in previous:
            signal.signal(sig, on_signal)
        sup.reserve()
        pipes = [(i, sup.start_worker(i)[1]) for i in range(pool.workers)]
        sup.wait_ready(pipes)
        host = args.host if ":" not in args.host else f"[{args.host}]"
        http = f" and http://{host}:{sup.http_port}" if sup.http_port else ""
        print(f"rnnstream serve: ws://{host}:{sup.port}/{http} ({pool.workers} worker processes, max batch "
              f"{args.max_batch} each); Ctrl-C to stop", file=sys.stderr, flush=True)
        status = sup.watch()
    finally:
        sup.stop(shutdown_timeout_s + 10.0)
        sup.close()
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("rnnstream serve: stopped", file=sys.stderr, flush=True)
    return status


__all__ = ["Supervisor", "WorkerPoolConfig", "default_workers", "reserve_port", "run_workers"]

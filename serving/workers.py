"""``rnnstream serve --workers N``: N server processes behind one port, under a small supervisor.

Each worker is a whole :class:`~rnnstream.serving.server.StreamServer` in its own process (spawned, not
forked): its own event loop, batcher and backend session (one intra-op thread by default), so N workers use
N cores where one process is bound by its GIL. The supervisor listens on the port (port 0 picks a free one)
and hands every accepted connection to the least-loaded worker (:mod:`rnnstream.serving.handoff`: streams
plus open connections, passed as a file descriptor); a connection stays with its worker for its whole life,
and so do its streams.

What the workers share:

* **metrics**: ``prometheus_client``'s multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a temporary directory
  of this supervisor): ``/metrics`` on any worker sums the counters and histograms of all of them, and the
  gauges of the live ones (``rnnstream_serve_workers_up`` counts them);
* **snapshots**: ``--snapshot-dir`` is one directory for all, so a stream saved by one worker resumes on any
  other (inline snapshots in ``start`` are portable anyway).

Shutdown: SIGINT/SIGTERM to the supervisor stops accepting, then goes to every worker as SIGTERM; each shuts
down gracefully (finishes queued chunks, saves and tells its clients, closes with 1001). A worker still
running after ``shutdown_timeout_s`` + 10 s is killed. A worker that dies on its own is restarted (at most
:data:`MAX_RESTARTS` times in :data:`RESTART_WINDOW_S`; past that the supervisor shuts everything down and
exits 1); meanwhile new connections go to the others.
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
from rnnstream.serving.handoff import ConnectionBalancer, listen, shared_loads

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
        if not hasattr(socket, "send_fds") and self.workers > 1:
            raise ConfigError(f"--workers {self.workers} needs socket.send_fds (Unix), which this platform lacks; "
                              "use --workers 1")


def _worker_main(args: argparse.Namespace, index: int, port: int, http_port: int | None, conn: Any,
                 log_level: int, channel: socket.socket, loads: Any) -> None:
    """One worker process: load the model, serve the connections the supervisor hands over on ``channel``,
    report ``("ready", pid)`` or an error."""
    from rnnstream.serving.handoff import HandoffReceiver

    import dataclasses

    from rnnstream.serving import server as S

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"rnnstream serve[{index}]: %(message)s"))
    logger = logging.getLogger("rnnstream")
    logger.addHandler(handler)
    logger.setLevel(log_level)
    try:
        config = dataclasses.replace(S.config_from_args(args), port=port, http_port=http_port, worker=index)
        backend = S.load_model(args.model, args.provider, args.threads, args.raw_audio)
    except Exception as exc:  # noqa: BLE001 -- reported to the supervisor, which names it and exits
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    handoff = HandoffReceiver(channel, loads, index, port, http_port)
    S.run_server(backend, config, ready=lambda server: conn.send(("ready", os.getpid())), announce=False,
                 handoff=handoff)


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
        self.loads = shared_loads(self.ctx, pool.workers)
        self.balancer: ConnectionBalancer | None = None
        self.port = 0
        self.http_port: int | None = None

    def listen(self) -> None:
        """Listen on the port (and ``--http-port``) and start handing connections to the workers as they become
        ready (until then they wait in the backlog). Raises ``OSError`` when a port is taken."""
        args = self.args
        listeners = [listen(args.host, args.port)]
        self.port = listeners[0].getsockname()[1]
        if args.http_port is not None and args.http_port >= 0:
            try:
                listeners.append(listen(args.host, args.http_port))
            except OSError:
                listeners[0].close()
                raise
            self.http_port = listeners[1].getsockname()[1]
        self.balancer = ConnectionBalancer(listeners, self.loads, self.pool.workers)
        self.balancer.start()

    def start_worker(self, index: int) -> tuple[Any, Any]:
        """Spawn worker ``index``; returns (process, the parent's end of its pipe)."""
        assert self.balancer is not None, "listen() first"
        parent, child = self.ctx.Pipe(duplex=False)
        channel = self.balancer.new_channel(index)
        level = logging.getLogger("rnnstream").getEffectiveLevel()
        proc = self.ctx.Process(target=_worker_main, name=f"rnnstream-serve-{index}", daemon=False,
                                args=(self.args, index, self.port, self.http_port, child, level, channel, self.loads))
        proc.start()
        child.close()
        channel.close()
        self.procs[index] = proc
        return proc, parent

    def wait_ready(self, pipes: list[tuple[int, Any]]) -> bool:
        """Wait for every worker's ``ready``: True, or False when a stop signal came first; a worker's error (or its
        exit) stops all and raises ConfigError."""
        deadline = time.monotonic() + self.pool.ready_timeout_s
        waiting = dict(pipes)
        while waiting:
            left = deadline - time.monotonic()
            if self.stopping:
                return False
            if left <= 0:
                raise ConfigError(f"{len(waiting)} worker(s) did not start within {self.pool.ready_timeout_s:.0f} s")
            sentinels = {self.procs[i].sentinel: i for i in waiting}
            ready = multiprocessing.connection.wait([*waiting.values(), *sentinels], timeout=min(left, 0.5))
            for obj in ready:
                index = sentinels.get(obj)
                if index is None:
                    index = next(i for i, p in waiting.items() if p is obj)
                    try:
                        kind, detail = waiting[index].recv()
                    except EOFError:
                        kind, detail = "error", "it exited before it was ready"
                else:
                    kind, detail = "error", f"it exited with status {self.procs[index].exitcode}"
                if kind != "ready":
                    raise ConfigError(f"worker {index} failed to start: {detail}")
                waiting.pop(index).close()
                if self.balancer is not None:
                    self.balancer.set_alive(index, True)
        return True

    def watch(self) -> int:
        """Until a stop signal: restart workers that die; returns the exit status."""
        while not self.stopping:
            sentinels = {p.sentinel: i for i, p in enumerate(self.procs)}
            for obj in multiprocessing.connection.wait(list(sentinels), timeout=0.5):
                index = sentinels[obj]
                if self.stopping:
                    break
                self.procs[index].join(1.0)  # its sentinel can fire before it is reaped (exitcode None until then)
                code = self.procs[index].exitcode
                if self.balancer is not None:
                    self.balancer.set_alive(index, False)
                self._mark_dead(self.procs[index].pid)
                if not self._may_restart():
                    log.error("worker %d exited (status %s) and workers have restarted %d times in %.0f s; "
                              "stopping", index, code, len(self.restarts), self.pool.restart_window_s)
                    return 1
                log.warning("worker %d exited (status %s); restarting it", index, code)
                _, pipe = self.start_worker(index)
                try:
                    if not self.wait_ready([(index, pipe)]):
                        return 0  # a stop signal during the restart: the graceful stop, as at any other time
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
        """Stop accepting, then SIGTERM to every live worker; kill those still running after ``timeout`` seconds."""
        self.stopping = True
        if self.balancer is not None:
            self.balancer.stop()
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
        sup.listen()
        pipes = [(i, sup.start_worker(i)[1]) for i in range(pool.workers)]
        if not sup.wait_ready(pipes):
            raise KeyboardInterrupt  # a stop signal while starting: the CLI exits 130
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


__all__ = ["Supervisor", "WorkerPoolConfig", "default_workers", "run_workers"]

"""Connections handed to the least-loaded worker: the accept side of ``rnnstream serve --workers N``.

The supervisor listens on the port and accepts; each accepted socket goes, as a file descriptor over a Unix
socket pair (``socket.send_fds``), to the worker with the least load, which serves it on its own event loop
as if it had accepted it. A worker's load is the number of streams it holds plus its open connections:

* **connections** are counted exactly: the supervisor counts the sockets it sent to worker *i*, the worker
  counts (in shared memory) those that have since closed;
* **streams** are published by each worker a few times a second (:data:`PUBLISH_S`).

Ties go round-robin, so a burst of new connections (no streams yet) alternates between the workers. With
``SO_REUSEPORT`` the kernel hashes connections to workers at random: 63 connections of 16 streams each split
28/35 in one benchmark run, and two clients multiplexing many streams each share one worker half the time.

A worker acknowledges each descriptor (one byte back) before it serves it, and the supervisor keeps its copy of the
connection until then: a worker that dies (or stops) with a connection unread in its socket pair closes its end
without the acknowledgement, and the connection goes to another worker instead of being lost with it (a send to a
dying worker can succeed: seen when a worker was killed while a client connected). A worker that does not
acknowledge within :data:`ACK_WAIT_S` (its loop busy) is taken to have the connection, which it serves when it
gets to it (its late acknowledgement is counted then); a connection is never given to two workers.

The supervisor's part is one thread (:class:`ConnectionBalancer`); a worker's is :class:`HandoffReceiver`,
attached to its aiohttp server. Connections stay with their worker for their whole life.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("rnnstream.serve")

#: How often a worker publishes its stream count and its closed connections (seconds).
PUBLISH_S = 0.1
#: How long the supervisor waits for a worker to take a connection before it tries another (seconds).
SEND_TIMEOUT_S = 2.0
#: How long the supervisor waits for a worker's acknowledgement of a connection before it takes it as handed.
ACK_WAIT_S = 0.25
_CLOSED, _STREAMS = 0, 1  # the two shared counters of each worker


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one); ``OSError`` when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def shared_loads(ctx: Any, workers: int) -> Any:
    """The counters workers publish, two per worker (closed connections, open streams), in shared memory."""
    return ctx.RawArray("q", 2 * workers)


@dataclass
class WorkerChannel:
    """The supervisor's end of one worker's socket pair, and what it has sent there."""

    sock: socket.socket
    sent: int = 0
    alive: bool = False
    unacked: int = 0  # connections sent and not yet acknowledged (acknowledgements come in order)

    def await_ack(self, wait_s: float) -> bool | None:
        """After a send: True when the worker has acknowledged every connection sent so far, False when its end
        closed first (the last connection was not taken), None when ``wait_s`` passed (busy; it will take it)."""
        self.unacked += 1
        deadline = time.monotonic() + wait_s
        while self.unacked > 0:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            try:
                got = self.sock.recv(64)
            except OSError:
                got = b""
            if not got:
                self.unacked -= 1  # the one just sent; those before it were taken as handed
                return False
            self.unacked -= len(got)
        return True


class ConnectionBalancer:
    """Accepts on the listening sockets and hands each connection to the least-loaded live worker (one thread).

    ``loads`` is :func:`shared_loads`; :meth:`new_channel` zeroes a worker's counters before it starts.
    """

    def __init__(self, listeners: list[socket.socket], loads: Any, workers: int, ack_wait_s: float = ACK_WAIT_S):
        self.listeners = listeners
        self.ack_wait_s = ack_wait_s
        self.loads = loads
        self.channels: list[WorkerChannel | None] = [None] * workers
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.handed = 0

    # -- worker lifecycle (supervisor thread) ---------------------------------------------------
    def new_channel(self, index: int) -> socket.socket:
        """A fresh socket pair for worker ``index``: returns the worker's end (give it to the process)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.settimeout(SEND_TIMEOUT_S)
        with self._lock:
            old = self.channels[index]
            if old is not None:
                old.sock.close()
            self.channels[index] = WorkerChannel(ours)
            self.loads[2 * index + _CLOSED] = 0
            self.loads[2 * index + _STREAMS] = 0
        return theirs

    def set_alive(self, index: int, alive: bool) -> None:
        with self._lock:
            channel = self.channels[index]
            if channel is not None:
                channel.alive = alive

    # -- the accept thread ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rnnstream-accept", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close the listening sockets (new connections are refused from now on)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        for sock in self.listeners:
            sock.close()
        with self._lock:
            for channel in self.channels:
                if channel is not None:
                    channel.sock.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            for sock in self.listeners:
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not self._any_alive():  # leave connections in the backlog until a worker is ready
                    self._stop.wait(0.05)
                    continue
                for key, _ in sel.select(timeout=0.2):
                    self._accept(key.fileobj)  # type: ignore[arg-type]

    def _any_alive(self) -> bool:
        with self._lock:
            return any(c is not None and c.alive for c in self.channels)

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. EMFILE: say so, keep serving the connections already open
            log.warning("accepting a connection failed: %s", exc)
            self._stop.wait(0.05)
            return
        with conn:
            self.hand_over(conn)

    def hand_over(self, conn: socket.socket) -> int | None:
        """Send ``conn`` to the least-loaded live worker; its index, or None when no worker took it (then the
        connection is closed). A worker whose end does not take it within :data:`SEND_TIMEOUT_S` (its loop
        stuck, thousands of connections unread) is skipped for this connection; one whose end is gone, or closes
        before it acknowledges the connection, is marked dead (the supervisor restarts it). The caller keeps
        ``conn`` open until this returns."""
        with self._lock:
            for index in self.candidates():
                channel = self.channels[index]
                assert channel is not None
                try:
                    socket.send_fds(channel.sock, [b"c"], [conn.fileno()])
                except TimeoutError:
                    log.warning("worker %d did not take a connection within %.0f s; trying another", index,
                                SEND_TIMEOUT_S)
                    continue
                except OSError as exc:  # the worker is gone; the supervisor restarts it
                    log.warning("handing a connection to worker %d failed (%s); trying another", index, exc)
                    channel.alive = False
                    continue
                if channel.await_ack(self.ack_wait_s) is False:
                    log.warning("worker %d closed its end before it took a connection (it is exiting); trying "
                                "another", index)
                    channel.alive = False
                    continue
                channel.sent += 1
                self.handed += 1
                return index
        log.warning("no worker took a new connection; it is closed")
        return None

    def load(self, index: int) -> int:
        """Worker ``index``'s load: its streams plus its open connections."""
        channel = self.channels[index]
        assert channel is not None
        open_conns = channel.sent - self.loads[2 * index + _CLOSED]
        return self.loads[2 * index + _STREAMS] + max(0, open_conns)

    def candidates(self) -> list[int]:
        """The live workers, least load first, ties in turn (call under the lock)."""
        live = [i for i, c in enumerate(self.channels) if c is not None and c.alive]
        if not live:
            return []
        turn = next(self._turn) % len(live)
        order = {i: k for k, i in enumerate(live[turn:] + live[:turn])}
        return sorted(live, key=lambda i: (self.load(i), order[i]))


class HandoffReceiver:
    """A worker's end: serves the connections the supervisor sends, and publishes this worker's load.

    Made in the worker process from its end of the socket pair, the shared counters and its index; the server
    calls :meth:`attach` with its aiohttp protocol factory and a function counting its streams.
    """

    def __init__(self, sock: socket.socket, loads: Any, index: int, port: int, http_port: int | None = None):
        self.sock = sock
        self.loads = loads
        self.index = index
        self.port = port  # the supervisor's port, for the server's URL and logs
        self.http_port = http_port
        self._transports: set[Any] = set()
        self._closed = 0
        self._task: asyncio.Task[None] | None = None
        self._factory: Callable[[], Any] | None = None
        self._streams: Callable[[], int] = lambda: 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, protocol_factory: Callable[[], Any], streams: Callable[[], int]) -> None:
        """Start serving handed-over connections with ``protocol_factory`` (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._factory = protocol_factory
        self._streams = streams
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._receive)
        self._task = self._loop.create_task(self._publish(), name="rnnstream-handoff-load")

    def detach(self) -> None:
        """Take no more connections (shutdown, or the supervisor gone); the open ones stay with the server until
        it closes them. Idempotent."""
        if self.sock.fileno() < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        if self._task is not None:
            self._task.cancel()
        self.sock.close()

    def _receive(self) -> None:
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(self.sock, 16, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("receiving connections from the supervisor failed: %s", exc)
                self.detach()
                return
            if not msg and not fds:  # the supervisor closed its end: it is stopping
                self.detach()
                return
            try:  # acknowledged before serving: the supervisor gives a connection to another worker only
                self.sock.send(b"a" * len(fds))  # when this end closes without acknowledging it
            except OSError as exc:  # the supervisor is gone or not reading: it takes them as handed; serve them
                log.info("acknowledging %d connection(s) to the supervisor failed: %s", len(fds), exc)
            for fd in fds:
                conn = socket.socket(fileno=fd)
                conn.setblocking(False)
                assert self._loop is not None
                self._loop.create_task(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        assert self._loop is not None and self._factory is not None
        try:
            transport, _ = await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError as exc:
            log.info("a handed-over connection failed before it was served: %s", exc)
            conn.close()
            self._closed += 1
            return
        self._transports.add(transport)

    async def _publish(self) -> None:
        while True:
            closed = [t for t in self._transports if t.is_closing()]
            self._transports.difference_update(closed)
            self._closed += len(closed)
            self.loads[2 * self.index + _CLOSED] = self._closed
            self.loads[2 * self.index + _STREAMS] = self._streams()
            await asyncio.sleep(PUBLISH_S)


__all__ = ["ACK_WAIT_S", "ConnectionBalancer", "HandoffReceiver", "PUBLISH_S", "SEND_TIMEOUT_S", "listen",
           "shared_loads"]

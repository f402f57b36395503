"""The supervisor's connection hand-off (:mod:`rnnstream.serving.handoff`): each accepted connection goes, as a
file descriptor, to the least-loaded live worker; a worker serves what it receives and publishes its load."""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import select
import socket
import threading
import time

import pytest
from rnnstream.serving.handoff import ConnectionBalancer, HandoffReceiver, PUBLISH_S, listen, shared_loads


def _balancer(workers: int = 2, ack_wait_s: float = 0.01) -> tuple[ConnectionBalancer, list[socket.socket]]:
    """A balancer and its workers' ends; these ends never acknowledge, so each hand-over waits ``ack_wait_s``
    and takes the connection as handed (a busy worker)."""
    loads = shared_loads(multiprocessing.get_context("spawn"), workers)
    bal = ConnectionBalancer([listen("127.0.0.1", 0)], loads, workers, ack_wait_s=ack_wait_s)
    ends = [bal.new_channel(i) for i in range(workers)]
    for i in range(workers):
        bal.set_alive(i, True)
    return bal, ends


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def test_connections_alternate_then_follow_the_published_streams() -> None:
    bal, ends = _balancer(2)
    try:
        order = []
        for _ in range(6):
            a, b = _pair()
            with a, b:
                order.append(bal.hand_over(a))
        assert sorted(order) == [0, 0, 0, 1, 1, 1] and order[:2] in ([0, 1], [1, 0])
        # worker 0 now holds 40 streams, worker 1 none: the next connections all go to worker 1 ...
        bal.loads[1] = 40
        picked = []
        for _ in range(5):
            a, b = _pair()
            with a, b:
                picked.append(bal.hand_over(a))
        assert picked == [1] * 5
        # ... and once worker 1's connections close (published), its load is what it holds
        assert bal.load(0) == 43 and bal.load(1) == 8
        bal.loads[2] = 8
        assert bal.load(1) == 0
    finally:
        bal.stop()
        for end in ends:
            end.close()


def test_a_dead_worker_gets_nothing_and_none_alive_refuses() -> None:
    bal, ends = _balancer(2)
    try:
        bal.set_alive(0, False)
        a, b = _pair()
        with a, b:
            assert [bal.hand_over(a) for _ in range(3)] == [1, 1, 1]
        ends[1].close()  # the worker's end is gone: the send fails, the worker is marked dead
        a, b = _pair()
        with a, b:
            assert bal.hand_over(a) is None
        assert not bal.channels[1].alive  # type: ignore[union-attr]
    finally:
        bal.stop()
        ends[0].close()


def test_the_handed_over_descriptor_is_the_client_connection() -> None:
    bal, ends = _balancer(1)
    try:
        bal.start()
        port = bal.listeners[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            ends[0].settimeout(5)
            msg, fds, _, _ = socket.recv_fds(ends[0], 16, 4)
            assert msg == b"c" and len(fds) == 1
            with socket.socket(fileno=fds[0]) as served:
                client.sendall(b"ping")
                assert served.recv(4) == b"ping"
                served.sendall(b"pong")
                assert client.recv(4) == b"pong"
        deadline = time.monotonic() + 5  # the accept thread counts after send_fds returns, which may be later
        while bal.handed == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bal.handed == 1
    finally:
        bal.stop()
        ends[0].close()


def test_a_worker_that_closes_before_acknowledging_loses_no_connection() -> None:
    """A worker killed while a client connects: the send into its socket pair succeeds, then its end closes with
    the connection unread. The supervisor still holds the connection and gives it to the next worker."""
    bal, ends = _balancer(2, ack_wait_s=5.0)
    taken: list[socket.socket] = []

    def dying() -> None:  # worker 1: the connection arrives, the process dies before reading it
        select.select([ends[1]], [], [], 5)
        ends[1].close()

    def serving() -> None:  # worker 0: takes it and acknowledges, as HandoffReceiver does
        ends[0].settimeout(5)
        _, fds, _, _ = socket.recv_fds(ends[0], 16, 4)
        ends[0].send(b"a" * len(fds))
        taken.extend(socket.socket(fileno=fd) for fd in fds)

    threads = [threading.Thread(target=dying), threading.Thread(target=serving)]
    for t in threads:
        t.start()
    try:
        bal.loads[1] = 5  # worker 0 holds streams: worker 1 is tried first
        client, conn = _pair()
        with client:
            with conn:
                assert bal.hand_over(conn) == 0
            for t in threads:
                t.join(5)
            assert not bal.channels[1].alive and bal.channels[0].alive  # type: ignore[union-attr]
            assert bal.channels[0].sent == 1 and bal.channels[1].sent == 0  # type: ignore[union-attr]
            with taken[0] as served:  # the client's connection, alive, with worker 0
                client.sendall(b"ping")
                assert served.recv(4) == b"ping"
    finally:
        bal.stop()
        ends[0].close()


def test_an_acknowledgement_that_is_late_counts_for_its_connection_not_the_next() -> None:
    bal, ends = _balancer(1, ack_wait_s=0.05)
    try:
        client, conn = _pair()
        with client, conn:
            assert bal.hand_over(conn) == 0  # no acknowledgement in time: taken as handed
            channel = bal.channels[0]
            assert channel is not None and channel.unacked == 1
            ends[0].send(b"a")  # the late one
            assert bal.hand_over(conn) == 0 and channel.unacked == 1  # the second waits for its own
            ends[0].send(b"a")
            assert channel.await_ack(1.0) is None  # a third, never acknowledged
            ends[0].send(b"aa")
            assert channel.await_ack(1.0) is True and channel.unacked == 0
        assert bal.handed == 2
    finally:
        bal.stop()
        ends[0].close()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def test_a_worker_serves_what_it_receives_and_publishes_its_load() -> None:
    loads = (ctypes.c_longlong * 2)()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    listener = listen("127.0.0.1", 0)

    async def main() -> None:
        receiver = HandoffReceiver(theirs, loads, 0, port=listener.getsockname()[1])
        receiver.attach(_Echo, lambda: 7)
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        accepted, _ = await loop.sock_accept(listener)
        with accepted:
            socket.send_fds(ours, [b"c"], [accepted.fileno()])
            ours.setblocking(False)
            assert await asyncio.wait_for(loop.sock_recv(ours, 1), 5) == b"a"  # acknowledged
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        writer.close()
        await writer.wait_closed()
        deadline = time.monotonic() + 5
        while loads[0] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(PUBLISH_S)
        assert list(loads) == [1, 7]  # one connection closed; 7 streams
        receiver.detach()
        receiver.detach()  # idempotent: the supervisor's end closing, then shutdown

    try:
        asyncio.run(main())
    finally:
        ours.close()
        listener.close()


def test_listen_refuses_a_taken_port() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(OSError):
            listen("127.0.0.1", other.getsockname()[1])


def test_a_worker_that_does_not_take_a_connection_in_time_is_skipped_not_dropped(monkeypatch) -> None:
    bal, ends = _balancer(2)
    real = socket.send_fds
    stuck = bal.channels[0].sock  # type: ignore[union-attr]

    def send_fds(sock, buffers, fds):  # type: ignore[no-untyped-def]
        if sock is stuck:
            raise TimeoutError("timed out")
        return real(sock, buffers, fds)

    monkeypatch.setattr(socket, "send_fds", send_fds)
    try:
        a, b = _pair()
        with a, b:
            assert [bal.hand_over(a) for _ in range(3)] == [1, 1, 1]
        assert bal.channels[0].alive  # type: ignore[union-attr]  # busy, not dead: it gets connections again later
        monkeypatch.setattr(socket, "send_fds", real)
        a, b = _pair()
        with a, b:
            assert bal.hand_over(a) == 0  # now the least loaded
    finally:
        bal.stop()
        for end in ends:
            end.close()

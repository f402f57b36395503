"""The supervisor's connection hand-off (:mod:`rnnstream.serving.handoff`): each accepted connection goes, as a
file descriptor, to the least-loaded live worker; a worker serves what it receives and publishes its load."""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import socket
import time

import pytest
from rnnstream.serving.handoff import ConnectionBalancer, HandoffReceiver, PUBLISH_S, listen, shared_loads


def _balancer(workers: int = 2) -> tuple[ConnectionBalancer, list[socket.socket]]:
    loads = shared_loads(multiprocessing.get_context("spawn"), workers)
    bal = ConnectionBalancer([listen("127.0.0.1", 0)], loads, workers)
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

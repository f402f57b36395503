"""The load generator of ``bench_serve``: a separate process streaming audio to a server over loopback.

``python -m bench._serve_loadgen '<json options>'`` prints one JSON line of results. Modes:

* ``realtime``: N streams each send a 100 ms chunk (1600 float32 samples at 16 kHz) every 100 ms, start times
  spread over the first 100 ms; latency = chunk sent -> its prediction received;
* ``saturate``: N streams each keep ``window`` chunks outstanding (the next is sent when a prediction arrives);
* ``idle``: N streams are started and held open without chunks for ``seconds`` (the server's memory per stream).

Streams are spread over connections of ``streams_per_connection`` each. ``replies``: ``binary`` (the packed
frames of :mod:`rnnstream.serving.replies`, decoded with one NumPy call each) or ``json``. On uvloop when installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time
from typing import Any

import numpy as np

CHUNK_SAMPLES = 1600
RATE = 16000


class _Load:
    """The connections and bookkeeping of one run."""

    def __init__(self, opts: dict[str, Any]):
        self.opts = opts
        self.n = opts["streams"]
        self.per_conn = opts["streams_per_connection"]
        self.n_conns = (self.n + self.per_conn - 1) // self.per_conn
        rng = np.random.default_rng(0)
        self.payloads = [(0.1 * rng.standard_normal(CHUNK_SAMPLES)).astype("<f4").tobytes() for _ in range(8)]
        self.header = struct.Struct("<II")
        self.conns: list[Any] = []
        self.sent: list[dict[tuple[int, int], float]] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.next_seq = [0] * self.n
        self.received = 0
        self.measure_from = 0.0
        self.stop_sending = asyncio.Event()
        self.dead: set[int] = set()

    async def connect(self) -> None:
        from websockets.asyncio.client import connect

        url = self.opts["url"]
        for _ in range(self.n_conns):
            ws = await connect(url, compression=None, max_size=None, open_timeout=60, ping_interval=None,
                               max_queue=None)
            json.loads(await ws.recv())  # hello
            self.conns.append(ws)
        self.sent = [{} for _ in self.conns]

    async def start_streams(self) -> None:
        replies = self.opts["replies"]
        for i in range(self.n):
            msg = {"type": "start", "channel": i, "stream": f"lg-{os.getpid()}-{i}", "sample_rate": RATE}
            if replies != "json":
                msg["replies"] = replies
            await self.conns[i // self.per_conn].send(json.dumps(msg))
        for c, ws in enumerate(self.conns):
            count = min(self.per_conn, self.n - c * self.per_conn)
            while count:
                msg = json.loads(await ws.recv())
                if msg.get("type") == "started":
                    count -= 1
                elif msg.get("type") == "error":
                    raise RuntimeError(f"start refused: {msg}")

    async def send(self, i: int) -> None:
        from websockets.exceptions import ConnectionClosed

        c = i // self.per_conn
        if c in self.dead:
            return
        seq = self.next_seq[i]
        self.next_seq[i] += 1
        self.sent[c][(i, seq)] = time.perf_counter()
        try:
            await self.conns[c].send(self.header.pack(i, seq) + self.payloads[(i + seq) % len(self.payloads)])
        except ConnectionClosed as exc:  # the server refused (e.g. queue_full 1013): counted, not fatal
            self.dead.add(c)
            self.errors.append(f"connection {c} closed: {exc}")

    def _got(self, c: int, channel: int, seq: int, now: float, resend: list[int]) -> None:
        t_sent = self.sent[c].pop((channel, seq), None)
        if t_sent is not None and t_sent >= self.measure_from:
            self.latencies.append(now - t_sent)
            self.received += 1
        if self.opts["mode"] == "saturate" and not self.stop_sending.is_set():
            resend.append(channel)

    async def reader(self, c: int) -> None:
        from websockets.exceptions import ConnectionClosed

        from rnnstream.serving.replies import decode_predictions

        try:
            async for raw in self.conns[c]:
                now = time.perf_counter()
                resend: list[int] = []
                if isinstance(raw, bytes):
                    rows = decode_predictions(raw)
                    for channel, seq in zip(rows["channel"].tolist(), rows["seq"].tolist()):
                        self._got(c, channel, seq, now, resend)
                else:
                    msg = json.loads(raw)
                    if msg.get("type") == "prediction":
                        self._got(c, msg["channel"], msg["seq"], now, resend)
                    elif msg.get("type") == "error":
                        self.errors.append(f"{msg.get('code')}: {msg.get('message')}")
                for channel in resend:
                    await self.send(channel)
        except ConnectionClosed as exc:
            if not self.stop_sending.is_set():
                self.errors.append(f"connection closed: {exc}")


async def _drive(load: _Load, mode: str, seconds: float, window: int) -> float:
    """Send for ``seconds``; returns the measured time span."""
    chunk_s = CHUNK_SAMPLES / RATE
    t0 = time.perf_counter()
    load.measure_from = t0 + min(1.0, seconds / 5)
    if mode == "realtime":
        due = t0 + np.linspace(0, chunk_s, load.n, endpoint=False)
        end = t0 + seconds
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            for i in np.flatnonzero(due <= now).tolist():
                await load.send(i)
                due[i] += chunk_s
            await asyncio.sleep(max(0.0, min(float(due.min()), end) - time.perf_counter(), 0.002))
    elif mode == "saturate":
        for i in range(load.n):
            for _ in range(window):
                await load.send(i)
        await asyncio.sleep(seconds)
    else:  # idle: hold the streams open
        await asyncio.sleep(seconds)
    load.stop_sending.set()
    t_stop = time.perf_counter()
    deadline = t_stop + 5.0
    while any(s for c, s in enumerate(load.sent) if c not in load.dead) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    return (t_stop if mode == "saturate" else time.perf_counter()) - load.measure_from


async def run_load(opts: dict[str, Any]) -> dict[str, Any]:
    load = _Load(opts)
    await load.connect()
    await load.start_streams()
    print(json.dumps({"event": "started"}), flush=True)  # the idle measurement reads the server's memory now
    readers = [asyncio.create_task(load.reader(c)) for c in range(load.n_conns)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    measured = await _drive(load, opts["mode"], opts["seconds"], opts["window"])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    for ws in load.conns:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)
    lat = np.sort(np.asarray(load.latencies)) * 1000.0
    q = (lambda p: float(np.percentile(lat, p))) if lat.size else (lambda p: float("nan"))
    return {
        "streams": load.n, "connections": load.n_conns, "sent": sum(load.next_seq), "received": load.received,
        "lost": sum(len(s) for s in load.sent), "errors": load.errors[:5], "n_errors": len(load.errors),
        "throughput": load.received / max(measured, 1e-9),
        "offered": load.n / (CHUNK_SAMPLES / RATE) if opts["mode"] == "realtime" else None,
        "p50_ms": q(50), "p99_ms": q(99), "max_ms": float(lat.max()) if lat.size else float("nan"),
        "cpu_s": cpu, "wall_s": wall, "cpu_share": cpu / wall,
    }


def main(argv: list[str]) -> int:
    opts = json.loads(argv[0])
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(run_load(opts))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Soak: good streams beside random abuse of every attack family, for a bounded time.

The good streams' predictions equal a session's, the server's RSS grows by less than ``RSS_BOUND_MB``, every
accepted chunk ends as a prediction, an error or a counted drop, and the server still serves at the end.
``RNNSTREAM_SOAK_S`` sets the duration (default 20 s).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import struct
import time

import numpy as np
import pytest
from rnnstream.pipeline.streaming import StreamSession
from rnnstream.serving.client import StreamClient
from rnnstream.serving.server import ServerConfig, StreamServer
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.serving._helpers import (
    RATE,
    assert_matches,
    audio_backend,
    run,
    session_results,
    signal,
)

RSS_BOUND_MB = 150.0
SOAK_S = float(os.environ.get("RNNSTREAM_SOAK_S", "20"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _forged(backend) -> bytes:
    blob = StreamSession(backend, sample_rate=RATE).snapshot()
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["carry"] = np.zeros((2, 7), np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _frame(channel: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("<II", channel, seq) + payload


def _start(**kw) -> str:
    return json.dumps({"type": "start", "channel": 0, "sample_rate": RATE, **kw})


async def _raw(url: str, messages: list, abort: bool = False) -> None:
    try:
        async with connect(url, compression=None, max_size=None, open_timeout=5) as ws:
            for m in messages:
                await ws.send(m)
            if abort:
                ws.transport.abort()
                return
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 2)
            except (ConnectionClosed, TimeoutError):
                pass
    except (ConnectionClosed, InvalidStatus, OSError, TimeoutError):
        pass


async def _http(port: int, raw: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def _abuses(url: str, port: int, forged: bytes) -> list:
    good = np.zeros(1600, np.float32).tobytes()
    b64 = __import__("base64").b64encode(forged).decode()
    return [
        lambda: _raw(url, [_start(stream=f"f{random.random()}", snapshot=b64)]),
        lambda: _raw(url, ["{nope"]),
        lambda: _raw(url, [_start(stream="bad\x07id")]),
        lambda: _raw(url, [_start(), _frame(0, 0, np.array([np.nan], np.float32).tobytes())]),
        lambda: _raw(url, [_start(), _frame(0, 0, b"\0" * (300 * 1024))]),
        lambda: _raw(url, [_start(), _frame(0, 0, good), _frame(0, 5, good)]),
        lambda: _raw(url, [_start(), _frame(0, 0, good), _frame(0, 0, good)]),
        lambda: _raw(url, [_start(), *[_frame(0, k, good) for k in range(5)]], abort=True),
        lambda: _raw(url, [_start(), _frame(0, 0, np.zeros(RATE * 3, np.float32).tobytes())]),
        lambda: _raw(url, [_start(seq=True)]),
        lambda: _http(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\nConnection: close\r\n\r\n"),
        lambda: _http(port, b"GARBAGE\r\n\r\n"),
        lambda: _http(port, b"POST /predict?dtype=float32&sample_rate=100 HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: 4000\r\nConnection: close\r\n\r\n" + b"\0" * 4000),
    ]


async def _good(url: str, seed: int, deadline: float, results: list) -> None:
    chunks = np.split(signal(seed, 1.0), 10)
    while time.monotonic() < deadline:
        async with StreamClient(url) as client:
            s = await client.start(f"good-{seed}-{len(results)}", sample_rate=RATE)
            for c in chunks:
                await s.send(c)
                await asyncio.sleep(0.01)
            await s.end()
            results.append((seed, chunks, s.predictions))


async def _abuser(abuses: list, deadline: float, count: list) -> None:
    rng = random.Random(13)
    while time.monotonic() < deadline:
        await asyncio.wait_for(rng.choice(abuses)(), 15)
        count.append(1)


@pytest.mark.slow
def test_soak_good_streams_beside_random_abuse():
    backend = audio_backend()

    async def main():
        cfg = ServerConfig(port=0, max_frame_bytes=256 * 1024, max_chunk_s=2.0, max_predict_s=1.0,
                           max_wait_ms=10.0, idle_timeout_s=5.0)
        async with StreamServer(backend, cfg) as server:
            forged = _forged(backend)
            rss0 = _rss_mb()
            deadline = time.monotonic() + SOAK_S
            results: list = []
            count: list = []
            peak = [rss0]

            async def watch():
                while time.monotonic() < deadline:
                    peak[0] = max(peak[0], _rss_mb())
                    await asyncio.sleep(0.25)

            abuses = _abuses(server.url, server.port, forged)
            await asyncio.gather(*(_good(server.url, i, deadline, results) for i in range(4)),
                                 *(_abuser(abuses, deadline, count) for _ in range(2)), watch())
            async with StreamClient(server.url) as client:  # still serving
                s = await client.start("after", sample_rate=RATE)
                await s.send(signal(9, 0.2))
                final = await s.end()
            await asyncio.sleep(0.3)
            return results, len(count), rss0, peak[0], final, server.metrics, len(server.streams)

    results, abuses, rss0, peak, final, m, open_streams = run(main(), timeout=SOAK_S + 120)
    refs = {}
    for seed, chunks, preds in results:
        ref = refs.setdefault(seed, session_results(backend, chunks))
        for msg, r in zip(preds, ref, strict=True):
            assert_matches(msg, r)
    print(f"soak {SOAK_S:g} s: {len(results)} good streams, {abuses} abuses, RSS {rss0:.0f} -> peak {peak:.0f} MiB")
    assert len(results) >= 8 and abuses >= 20 and final["frames"] == 20
    assert peak - rss0 < RSS_BOUND_MB
    assert m.value("rnnstream_serve_chunks_total") == (m.value("rnnstream_serve_predictions_total")
                                                       + m.value("rnnstream_serve_chunk_errors_total") + m.dropped())
    assert open_streams == 0 and m.value("rnnstream_serve_streams_open") == 0
    assert m.value("rnnstream_serve_connections_open") == 0

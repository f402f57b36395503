"""The server runs its streams through the stream core (issue 13): order, duplicates, end and every commit
are the core's (``CoreConfig(strict_order=True, duplicate_records=True)``), the wire protocol unchanged."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from rnnstream.pipeline.streaming import StreamSession
from rnnstream.serving.server import ServerConfig, StreamServer
from websockets.asyncio.client import connect

from tests.serving._helpers import RATE, audio_backend, run
from tests.serving.test_errors import _frame, _raw, _start


async def _until_ended(url: str, messages: list) -> list[dict]:
    got: list[dict] = []
    async with connect(url, compression=None, max_size=None) as ws:
        await ws.recv()  # hello
        for m in messages:
            await ws.send(m)
        while not got or got[-1]["type"] not in ("ended", "error"):
            got.append(json.loads(await asyncio.wait_for(ws.recv(), 5.0)))
    return got


def test_a_stream_goes_through_the_core_and_ends_as_offline() -> None:
    backend = audio_backend()
    x = [np.full(1600, 0.1 * (k + 1), np.float32) for k in range(3)]
    seen: dict[str, object] = {}

    async def main() -> list[dict]:
        async with StreamServer(backend, ServerConfig(port=0, http_port=None, max_wait_ms=0)) as server:
            commit = server.core.commit

            def spy(state, step, outcome, **kw):  # type: ignore[no-untyped-def]
                seen["counters"] = state.counters
                return commit(state, step, outcome, **kw)

            server.core.commit = spy  # type: ignore[method-assign]
            msgs = [_start(stream="c"), *[_frame(0, k, c.tobytes()) for k, c in enumerate(x)], _frame(0, 1, b""),
                    json.dumps({"type": "end", "channel": 0})]
            return await _until_ended(server.url, msgs)

    got = run(main())
    kinds = [m["type"] for m in got]
    assert sorted(kinds) == sorted(["started", "prediction", "prediction", "prediction", "duplicate", "ended"])
    dup = next(m for m in got if m["type"] == "duplicate")
    assert dup == {"type": "duplicate", "stream": "c", "channel": 0, "seq": 1, "expected": 3}
    ref = StreamSession(backend, sample_rate=RATE)
    for c in x:
        ref.push(c)
    ref.end()
    ended = next(m for m in got if m["type"] == "ended")
    assert ended["seq"] == 3 and ended["frames"] == ref.frames_seen
    np.testing.assert_allclose(list(ended["scores"].values()), list(ref.final().to_dict()["scores"].values()),
                               atol=1e-6)
    assert seen["counters"]["chunks"] == 3 and seen["counters"]["duplicates"] == 1  # type: ignore[index]


def test_a_gap_is_the_cores_ordering_error_sent_as_bad_seq() -> None:
    backend = audio_backend()

    async def main() -> tuple[list[dict], int | None, str]:
        async with StreamServer(backend, ServerConfig(port=0, http_port=None)) as server:
            good = np.zeros(1600, np.float32).tobytes()
            return await _raw(server.url, _start(), _frame(0, 0, good), _frame(0, 5, good), timeout=2.0)

    got, code, _ = run(main())
    err = got[-1]
    assert err["type"] == "error" and err["code"] == "bad_seq" and code == 1008
    assert "expected seq 1" in err["message"]

"""Bad input and limits: each bad client gets an error message and a close code; the others go on."""

from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest
from rnnstream.pipeline.streaming import predict_signal
from rnnstream.serving.client import StreamClient
from rnnstream.serving.protocol import ServerError
from rnnstream.serving.server import ServerConfig, StreamServer
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.serving._helpers import (
    RATE,
    RecordingBackend,
    assert_matches,
    assert_scores,
    audio_backend,
    run,
    sensor_backend,
    session_results,
    signal,
    wait_until,
)


async def _raw(url: str, *messages: str | bytes, timeout: float = 5.0) -> tuple[list[dict], int | None, str]:
    """Send messages on a raw connection; return the server's messages (after hello) and its close code/reason."""
    got = []
    async with connect(url, compression=None, max_size=None) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        for m in messages:
            try:
                await ws.send(m)
            except ConnectionClosed:
                break
        try:
            while True:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
        except ConnectionClosed:
            pass
        return got, ws.close_code, ws.close_reason or ""


def _start(channel: int = 0, **kw: object) -> str:
    """A start message; audio starts declare the model's rate unless ``sample_rate=None`` leaves it out."""
    if kw.get("dtype") != "float64":
        kw.setdefault("sample_rate", RATE)
    return json.dumps({"type": "start", "channel": channel, **{k: v for k, v in kw.items() if v is not None}})


def _frame(channel: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("<II", channel, seq) + payload


GOOD = np.zeros(1600, np.float32).tobytes()

# (name, messages, expected error code, expected close code, a fragment of the message)
CASES = [
    ("not json", ["{nope"], "bad_message", 1008, "not valid JSON"),
    ("json array", ["[1, 2]"], "bad_message", 1008, "JSON object"),
    ("unknown type", ['{"type": "launch"}'], "bad_message", 1008, "'launch'"),
    ("unknown field", [_start(color="red")], "bad_message", 1008, "color"),
    ("path in stream id", [_start(stream="../etc/passwd")], "bad_message", 1008, "../etc/passwd"),
    ("bad channel", [_start(channel=-1)], "bad_message", 1008, "channel"),
    ("wrong dtype name", [_start(dtype="float16")], "bad_message", 1008, "float16"),
    ("sensor dtype on audio model", [_start(dtype="float64")], "bad_dtype", 1008, "audio model"),
    ("short binary frame", [_start(), b"\x00\x01"], "bad_frame", 1007, "shorter than the 8-byte header"),
    ("float32 length", [_start(), _frame(0, 0, b"\x00" * 10)], "bad_frame", 1007, "10 bytes"),
    ("int16 length", [_start(dtype="int16"), _frame(0, 0, b"\x00" * 7)], "bad_frame", 1007, "int16"),
    ("nan samples", [_start(), _frame(0, 0, np.array([0, np.nan, 1], np.float32).tobytes())], "bad_frame", 1007,
     "NaN"),
    ("unknown stream", [_start(), _frame(5, 0, GOOD)], "unknown_stream", 1008, "channel 5"),
    ("chunk before start", [_frame(0, 0, GOOD)], "unknown_stream", 1008, "send 'start' first"),
    ("end unknown", ['{"type": "end", "channel": 3}'], "unknown_stream", 1008, "channel 3"),
    ("seq gap", [_start(), _frame(0, 0, GOOD), _frame(0, 2, GOOD)], "bad_seq", 1008, "expected seq 1"),
    ("chunk after end", [_start(), '{"type": "end", "channel": 0}', _frame(0, 0, GOOD)], "unknown_stream", 1008,
     "channel 0"),
    ("channel reused", [_start(stream="a"), _start(stream="b")], "channel_busy", 1008, "'a'"),
    ("control char in stream id", [_start(stream="a\nb")], "bad_message", 1008, "control character U+000A"),
    ("trailing newline in stream id", [_start(stream="abc\n")], "bad_message", 1008, "'abc\\n'"),
    ("boolean seq", [_start(seq=True)], "bad_message", 1008, "'seq'"),
    ("boolean sample rate", [_start(sample_rate=True)], "bad_sample_rate", 1008, "positive integer"),
    ("boolean channel", [_start(channel=False)], "bad_message", 1008, "'channel'"),
    ("no sample rate", [_start(sample_rate=None), _frame(0, 0, GOOD)], "bad_sample_rate", 1008,
     "must declare 'sample_rate'"),
    ("bad sample rate", [_start(sample_rate=0)], "bad_sample_rate", 1008, "positive integer"),
]


def test_bad_inputs_get_error_and_close_code_while_a_good_stream_goes_on():
    backend = audio_backend()

    async def good_stream(url: str, stop: asyncio.Event):
        x = signal(7, 3.0)
        chunks = np.split(x, 30)
        async with StreamClient(url) as client:
            stream = await client.start("good", sample_rate=RATE)
            for c in chunks:
                await stream.send(c)
                await asyncio.sleep(0.01)
            await stop.wait()
            ended = await stream.end()
        return stream.predictions, ended, chunks, x

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None, max_frame_bytes=64 * 1024)) as server:
            stop = asyncio.Event()
            good = asyncio.create_task(good_stream(server.url, stop))
            outcomes = {}
            for name, messages, *_ in CASES:
                outcomes[name] = await _raw(server.url, *messages)
            # an oversized frame: refused by the WebSocket layer (aiohttp) with 1009
            outcomes["oversized"] = await _raw(server.url, _start(), _frame(0, 0, b"\x00" * (80 * 1024)))
            assert await wait_until(lambda: len(server.streams) == 1)  # only the good stream is held
            stop.set()
            result = await good
            assert await wait_until(lambda: len(server.streams) == 0)
            return outcomes, result, server.metrics

    outcomes, (preds, ended, chunks, x), metrics = run(main())
    for name, _, code, close_code, fragment in CASES:
        got, closed_with, reason = outcomes[name]
        errors = [m for m in got if m["type"] == "error"]
        assert len(errors) == 1, (name, got)
        assert errors[0]["code"] == code, (name, errors[0])
        assert errors[0]["close_code"] == close_code and closed_with == close_code, (name, closed_with)
        assert fragment in errors[0]["message"], (name, errors[0]["message"])
        assert reason.startswith(code)
    got, closed_with, reason = outcomes["oversized"]
    assert closed_with == 1009, (closed_with, reason)
    # the good stream was served throughout, exactly
    for msg, ref in zip(preds, session_results(backend, chunks), strict=True):
        assert_matches(msg, ref)
    assert_scores(ended["scores"], predict_signal(backend, x, sample_rate=RATE).scores, 1e-4)
    assert metrics.value("rnnstream_serve_errors_total", {"code": "bad_frame"}) == 4
    assert metrics.value("rnnstream_serve_errors_total", {"code": "frame_too_big"}) == 1
    # the refused stream's reason names the missing field and the model's rate
    refused = next(m for m in outcomes["no sample rate"][0] if m["type"] == "error")
    assert "this model runs at 16000 Hz" in refused["message"]
    assert metrics.value("rnnstream_serve_streams_open") == 0


def test_sensor_model_rejects_audio_dtype_and_bad_rows():
    backend = sensor_backend()
    rows_bad_len = _frame(0, 0, np.zeros(7, np.float64).tobytes())  # 7 values: not a multiple of 1 + 3
    back_in_time = _frame(0, 1, np.array([[1.0, 0, 0, 0], [0.5, 0, 0, 0]]).tobytes())
    ok = _frame(0, 0, np.array([[2.0, 0, 0, 0]]).tobytes())
    nan_row = _frame(0, 0, np.array([[1.0, 0, np.nan, 0]]).tobytes())

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None)) as server:
            a = await _raw(server.url, _start(dtype="float32"))
            b = await _raw(server.url, _start(dtype="float64"), rows_bad_len)
            c = await _raw(server.url, _start(dtype="float64"), ok, back_in_time)
            d = await _raw(server.url, _start(dtype="float64", sample_rate=100))
            e = await _raw(server.url, _start(dtype="float64"), nan_row)
            return a, b, c, d, e

    a, b, c, d, e = run(main())
    # the stream core's payload check (stream_checks.check_payload), as in the Beam stream job
    assert e[0][-1]["code"] == "bad_frame" and "sensor.values: 1 of 3 values are NaN or Inf" in e[0][-1]["message"]
    assert e[1] == 1007
    assert d[0][0]["code"] == "bad_sample_rate" and "sensor model" in d[0][0]["message"] and d[1] == 1008
    assert a[0][0]["code"] == "bad_dtype" and "float64" in a[0][0]["message"] and a[1] == 1008
    assert b[0][-1]["code"] == "bad_frame" and "32 bytes per row" in b[0][-1]["message"] and b[1] == 1007
    errs = [m for m in c[0] if m["type"] == "error"]
    assert errs[0]["code"] == "bad_frame" and "not after the previous chunk's last timestamp" in errs[0]["message"]
    assert c[1] == 1007


def test_too_many_streams_is_refused_with_1013_and_others_continue():
    backend = audio_backend()

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None, max_streams=2)) as server:
            async with StreamClient(server.url) as c1, StreamClient(server.url) as c2:
                s1 = await c1.start("one", sample_rate=RATE)
                s2 = await c2.start("two", sample_rate=RATE)
                with pytest.raises(ServerError) as info:
                    async with StreamClient(server.url) as c3:
                        await c3.start("three", sample_rate=RATE)
                await s1.send(signal(1, 0.1))
                await s2.send(signal(2, 0.1))
                e1, e2 = await s1.end(), await s2.end()
            return info.value, e1, e2

    err, e1, e2 = run(main())
    assert err.code == "too_many_streams" and err.close_code == 1013 and "limit 2" in err.message
    assert len(e1["scores"]) == 4 and len(e2["scores"]) == 4 and e1["frames"] == 10
    assert list(e1["scores"]) == ["yes", "no", "up", "down"] and e1["predicted"] in e1["scores"]


def test_queue_limit_gives_1013_not_a_silent_drop():
    backend = RecordingBackend(audio_backend(), delay=0.2)

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None, max_queue=2)) as server:
            frames = [_frame(0, i, signal(i, 0.1).tobytes()) for i in range(6)]
            return await _raw(server.url, _start(), *frames)

    got, code, _ = run(main())
    errors = [m for m in got if m["type"] == "error"]
    assert errors and errors[0]["code"] == "queue_full" and "limit 2" in errors[0]["message"] and code == 1013


def test_client_disconnect_mid_stream_frees_its_state():
    backend = RecordingBackend(audio_backend(), delay=0.05)

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None)) as server:
            client = await StreamClient(server.url).connect()
            streams = [await client.start(f"d{i}", sample_rate=RATE) for i in range(3)]
            for s in streams:
                for k in range(4):
                    await s.send(signal(k, 0.1))
            assert len(server.streams) == 3
            client.ws.transport.abort()  # vanish without a close frame
            freed = await wait_until(lambda: len(server.streams) == 0 and not server._connections)
            return freed, server.metrics

    freed, metrics = run(main())
    assert freed
    assert metrics.value("rnnstream_serve_streams_open") == 0
    assert metrics.value("rnnstream_serve_connections_open") == 0


def test_backend_failure_is_that_streams_error_and_server_recovers():
    backend = RecordingBackend(audio_backend())

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None)) as server:
            backend.fail = True
            async with StreamClient(server.url) as client:
                s = await client.start(sample_rate=RATE)
                await s.send(signal(0, 0.1))
                with pytest.raises(ServerError) as info:
                    await s.recv(timeout=5)
            backend.fail = False
            async with StreamClient(server.url) as client:
                s = await client.start(sample_rate=RATE)
                await s.send(signal(0, 0.1))
                ended = await s.end()
            return info.value, ended

    err, ended = run(main())
    # a stream error (close_code null): the stream is closed, the connection is not
    assert err.code == "server_error" and err.close_code is None and "injected backend failure" in err.message
    assert ended["frames"] == 10

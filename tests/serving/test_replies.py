"""Binary prediction replies: the same predictions as JSON, in packed frames, in order, before ``ended``."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from rnnstream.pipeline.streaming import StreamSession
from rnnstream.serving import replies as R
from rnnstream.serving.client import StreamClient
from rnnstream.serving.protocol import ProtocolError, parse_control
from rnnstream.serving.server import ServerConfig, StreamServer
from websockets.asyncio.client import connect

from tests.serving._helpers import RATE, audio_backend, run, signal


def test_binary_replies_carry_the_json_predictions() -> None:
    backend = audio_backend(2)
    x = signal(3, 1.0)
    chunks = np.array_split(x, 10)

    async def main() -> tuple[list[dict], list[dict], dict, dict]:
        async with StreamServer(backend, ServerConfig(port=0, http_port=None, max_wait_ms=20)) as server:
            async with StreamClient(server.url) as client:
                as_json = await client.start("j", sample_rate=RATE)
                as_rows = await client.start("b", sample_rate=RATE, replies="binary")
                for c in chunks:
                    await as_json.send(c)
                    await as_rows.send(c)
                ended_json, ended_rows = await as_json.end(), await as_rows.end()
                return as_json.predictions, as_rows.predictions, ended_json, ended_rows

    want, got, ended_json, ended_rows = run(main())
    assert [p["seq"] for p in got] == list(range(10))  # every prediction came before "ended"
    for w, g in zip(want, got):
        assert {k: w[k] for k in ("type", "channel", "seq", "t", "frames", "predicted")} | {"channel": g["channel"]} \
            == {k: g[k] for k in ("type", "channel", "seq", "t", "frames", "predicted")}
        assert g["stream"] == "b" and w["stream"] == "j"
        if w["predicted"] is not None:
            np.testing.assert_allclose([g["scores"][k] for k in backend.info.labels],
                                       [w["scores"][k] for k in backend.info.labels], rtol=0, atol=1e-6)
    labels = backend.info.labels  # the two streams may be batched apart: equal to float rounding
    np.testing.assert_allclose([ended_rows["scores"][k] for k in labels], [ended_json["scores"][k] for k in labels],
                               rtol=0, atol=1e-6)


def test_a_batch_of_binary_streams_comes_in_one_frame() -> None:
    backend = audio_backend(1)
    chunk = signal(4, 0.1)

    async def main() -> list[np.ndarray]:
        cfg = ServerConfig(port=0, http_port=None, max_wait_ms=200, max_batch=8)
        async with StreamServer(backend, cfg) as server:
            async with connect(server.url) as ws:
                json.loads(await ws.recv())  # hello
                for ch in range(8):
                    await ws.send(json.dumps({"type": "start", "channel": ch, "stream": f"s{ch}", "sample_rate": RATE,
                                              "replies": "binary"}))
                    assert json.loads(await ws.recv())["type"] == "started"
                for ch in range(8):
                    await ws.send(np.array([ch, 0], "<u4").tobytes() + chunk.astype("<f4").tobytes())
                frame = await asyncio.wait_for(ws.recv(), 10)
                return [R.decode_predictions(frame)]

    (rows,) = run(main())
    assert sorted(rows["channel"].tolist()) == list(range(8)) and set(rows["seq"].tolist()) == {0}
    np.testing.assert_allclose(rows["values"].sum(axis=1), 1.0, rtol=0, atol=1e-5)  # probabilities
    assert (rows["predicted"] == rows["values"].argmax(axis=1)).all()


def test_replies_option_is_checked() -> None:
    with pytest.raises(ProtocolError, match="'replies' must be 'json' or 'binary', got 'xml'"):
        parse_control(json.dumps({"type": "start", "channel": 0, "sample_rate": RATE, "replies": "xml"}))
    with pytest.raises(ProtocolError, match="'outputs'.*JSON replies only"):
        parse_control(json.dumps({"type": "start", "channel": 0, "sample_rate": RATE, "replies": "binary",
                                  "outputs": True}))


def test_frames_are_decoded_strictly_and_rows_become_messages() -> None:
    rows = np.zeros(2, R.prediction_row(4))
    rows["channel"], rows["seq"], rows["frames_total"] = [3, 4], [7, 8], [0, 12]
    rows["values"][1] = [0.5, 1.0, 1.5, 2.0]
    frame = R.encode_predictions(rows)
    back = R.decode_predictions(frame)
    assert back.tobytes() == rows.tobytes()
    with pytest.raises(ValueError, match="of 2 rows of 44 bytes must be 100 bytes long, got 99"):
        R.decode_predictions(frame[:-1])
    with pytest.raises(ValueError, match="must start with b'RSP1'"):
        R.decode_predictions(b"JSON" + frame[4:])
    assert R.row_to_message(back[0], "s", ["a"], "classify")["predicted"] is None
    forecast = R.row_to_message(back[1], "s", [], "forecast", forecast_dims=2)
    assert forecast["predicted"] == [[0.5, 1.0], [1.5, 2.0]] and forecast["values"] == [0.5, 1.0, 1.5, 2.0]


def test_one_batch_over_two_connections_gives_each_its_own_rows() -> None:
    backend = audio_backend(1)
    chunks = [signal(k, 0.1) for k in range(8)]

    async def main() -> list[np.ndarray]:
        cfg = ServerConfig(port=0, http_port=None, max_wait_ms=300, max_batch=8)
        async with StreamServer(backend, cfg) as server:
            async with connect(server.url) as a, connect(server.url) as b:
                for ws in (a, b):
                    json.loads(await ws.recv())  # hello
                    for ch in range(4):
                        await ws.send(json.dumps({"type": "start", "channel": ch, "stream": f"{id(ws)}-{ch}",
                                                  "sample_rate": RATE, "replies": "binary"}))
                        assert json.loads(await ws.recv())["type"] == "started"
                for k, ws in enumerate((a, a, a, a, b, b, b, b)):
                    await ws.send(np.array([k % 4, 0], "<u4").tobytes() + chunks[k].astype("<f4").tobytes())
                return [R.decode_predictions(await asyncio.wait_for(ws.recv(), 10)) for ws in (a, b)]

    rows_a, rows_b = run(main())
    for rows in (rows_a, rows_b):  # one batch of 8: each connection one frame, with its own 4 streams only
        assert sorted(rows["channel"].tolist()) == [0, 1, 2, 3] and set(rows["seq"].tolist()) == {0}
    want = {}  # the same chunks pushed alone give the same probabilities, row by row
    for k in range(8):
        want[k] = StreamSession(backend, sample_rate=RATE).push(chunks[k]).prediction.values
    for base, rows in ((0, rows_a), (4, rows_b)):
        for row in rows:
            np.testing.assert_allclose(row["values"], want[base + int(row["channel"])], rtol=0, atol=1e-5)


def test_prediction_rows_fill_every_field() -> None:
    class Result:
        def __init__(self, last: list[float] | None, frames: int, seen: int, t: float):
            self.last_output = None if last is None else np.array(last, np.float32)
            self.n_frames, self.frames_seen, self.t = frames, seen, t

    results = [Result(None, 0, 0, 0.05), Result([0.0, 2.0, 1.0], 3, 13, 0.15)]
    probs = R.prediction_rows([5, 6], [1, 2], results, 3, probabilities=True)
    assert probs["channel"].tolist() == [5, 6] and probs["seq"].tolist() == [1, 2]
    assert probs["frames"].tolist() == [0, 3] and probs["frames_total"].tolist() == [0, 13]
    assert probs["t"].tolist() == [0.05, 0.15] and probs["predicted"].tolist() == [-1, 1]
    assert probs["values"][0].tolist() == [0.0, 0.0, 0.0]
    e = np.exp([0.0, 2.0, 1.0])
    np.testing.assert_allclose(probs["values"][1], e / e.sum(), rtol=1e-6)
    raw = R.prediction_rows([5, 6], [1, 2], results, 3, probabilities=False)  # forecast/generate: outputs as is
    assert raw["predicted"].tolist() == [-1, -1] and raw["values"][1].tolist() == [0.0, 2.0, 1.0]

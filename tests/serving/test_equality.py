"""Many concurrent streams over loopback, batched, each equal to its own offline/session inference."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from rnnstream.pipeline.streaming import SensorChunk, predict_signal
from rnnstream.serving.client import StreamClient
from rnnstream.serving.protocol import audio_payload
from rnnstream.serving.server import ServerConfig, StreamServer

from tests.serving._helpers import (
    RATE,
    RecordingBackend,
    assert_matches,
    assert_scores,
    audio_backend,
    chunk_sizes,
    run,
    sensor_backend,
    sensor_series,
    session_results,
    signal,
    split_sensor,
)


async def _stream_audio(client: StreamClient, i: int, backend: object) -> tuple[list, dict, list, np.ndarray]:
    dtype = "int16" if i % 4 == 3 else "float32"
    x = signal(i, 0.4 + 0.05 * i)
    sizes = chunk_sizes(i, x.size)
    chunks = np.split(x, np.cumsum(sizes)[:-1])
    if dtype == "int16":  # what the server decodes: int16 / 32768
        chunks = [audio_payload(c, "int16").astype(np.float32) / 32768.0 for c in chunks]
    stream = await client.start(f"s{i}", sample_rate=RATE, dtype=dtype)
    for c in chunks:
        await stream.send(c)
        await asyncio.sleep(0)
    ended = await stream.end()
    return stream.predictions, ended, chunks, np.concatenate(chunks)


@pytest.mark.parametrize("inline_samples", [ServerConfig.inline_batch_samples, 0])
def test_many_audio_streams_batched_equal_offline_and_session(inline_samples: int):
    """Batches stepped on the event loop (the default for small batches) or all in the worker thread (0)."""
    inner = audio_backend()
    backend = RecordingBackend(inner)
    n = 24

    async def main():
        cfg = ServerConfig(port=0, http_port=None, max_batch=16, max_wait_ms=20.0, inline_batch_samples=inline_samples)
        async with StreamServer(backend, cfg) as server:
            clients = [await StreamClient(server.url).connect() for _ in range(6)]  # 4 streams per connection
            try:
                out = await asyncio.gather(*(_stream_audio(clients[i % 6], i, inner) for i in range(n)))
            finally:
                for c in clients:
                    await c.close()
            metrics = server.metrics
            await asyncio.sleep(0.05)
            return out, metrics, len(server.streams), server.batcher

    out, metrics, left, batcher = run(main())
    assert (batcher.inline_batches == batcher.batches) if inline_samples else batcher.inline_batches == 0
    for i, (preds, ended, chunks, whole) in enumerate(out):
        refs = session_results(inner, chunks)
        assert [p["seq"] for p in preds] == list(range(len(chunks)))
        for msg, ref in zip(preds, refs, strict=True):
            assert msg["stream"] == f"s{i}"
            assert_matches(msg, ref)
        offline = predict_signal(inner, whole, sample_rate=RATE)
        assert ended["predicted"] == offline.label and ended["frames"] == offline.frames
        assert_scores(ended["scores"], offline.scores, 1e-4)
    # batching really happened, within the limit, and the metric says so too
    assert max(backend.batch_sizes) > 1 and max(backend.batch_sizes) <= 16
    count = metrics.value("rnnstream_serve_batch_size_count")
    singles = metrics.value("rnnstream_serve_batch_size_bucket", {"le": "1.0"})
    assert count > 0 and count - singles > 0, (count, singles)
    assert metrics.value("rnnstream_serve_batch_size_bucket", {"le": "16.0"}) == count
    assert metrics.value("rnnstream_serve_chunks_total") == sum(len(o[2]) for o in out)
    assert left == 0 and metrics.value("rnnstream_serve_streams_open") == 0


def test_max_batch_one_still_equal_and_never_batches():
    inner = audio_backend(1)
    backend = RecordingBackend(inner)

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None, max_batch=1)) as server:
            async with StreamClient(server.url) as client:
                return await asyncio.gather(*(_stream_audio(client, i, inner) for i in range(4))), server.metrics

    out, metrics = run(main())
    for preds, ended, chunks, whole in out:
        for msg, ref in zip(preds, session_results(inner, chunks), strict=True):
            assert_matches(msg, ref)
        assert_scores(ended["scores"], predict_signal(inner, whole, sample_rate=RATE).scores, 1e-4)
    assert set(backend.batch_sizes) == {1}
    assert metrics.value("rnnstream_serve_batch_size_bucket", {"le": "1.0"}) == metrics.value(
        "rnnstream_serve_batch_size_count")


def test_many_sensor_streams_batched_equal_offline_and_session():
    inner = sensor_backend()
    backend = RecordingBackend(inner)
    n = 16

    async def one(client: StreamClient, i: int):
        ts, vals = sensor_series(i, n=100 + 5 * i, gap_at=40 + i)
        chunks = split_sensor(ts, vals, chunk_sizes(i, ts.size, lo=3, hi=15))
        stream = await client.start(f"sensor-{i}", outputs=True)
        for c in chunks:
            await stream.send(c)
        ended = await stream.end()
        return stream.predictions, ended, chunks, (ts, vals)

    async def main():
        cfg = ServerConfig(port=0, http_port=None, max_batch=8, max_wait_ms=20.0)
        async with StreamServer(backend, cfg) as server:
            assert server.hello()["model"]["columns"] == ["ax", "ay", "az"]
            clients = [await StreamClient(server.url).connect() for _ in range(4)]
            try:
                return await asyncio.gather(*(one(clients[i % 4], i) for i in range(n))), server.metrics
            finally:
                for c in clients:
                    await c.close()

    out, metrics = run(main())
    gaps_seen = 0
    for preds, ended, chunks, (ts, vals) in out:
        refs = session_results(inner, chunks)
        for msg, ref in zip(preds, refs, strict=True):
            assert_matches(msg, ref)
            np.testing.assert_allclose(np.asarray(msg["outputs"]).reshape(ref.outputs.shape), ref.outputs, atol=1e-5)
            gaps_seen += bool(msg.get("segment_starts")) or 0
        offline = predict_signal(inner, SensorChunk(ts, vals))
        assert ended["frames"] == offline.frames
        assert_scores(ended["scores"], offline.scores, 1e-4)
        assert abs(ended["t"] - ts[-1]) < 1e-6
    assert max(backend.batch_sizes) > 1
    assert metrics.value("rnnstream_serve_batch_size_count") > metrics.value(
        "rnnstream_serve_batch_size_bucket", {"le": "1.0"})


def test_an_ensemble_graph_serves_batched_streams_equal_to_their_sessions(tmp_path):
    """A 2-member ensemble exported to ONNX: the server batches its per-member states like any others."""
    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.models.ensemble import ensemble_of
    from rnnstream.pipeline.onnx_backend import OnnxBackend

    first, second = audio_backend(0), audio_backend(1)  # other weights, the same (default) normalisation
    path = export_onnx(ensemble_of([first.model, second.model]), tmp_path / "ens.onnx", first.info.feature_config,
                       list(first.info.labels))
    onnx = OnnxBackend(path, provider="cpu", threads=1)
    assert [s.name for s in onnx.info.state_specs] == ["m0_h", "m1_h"]
    backend = RecordingBackend(onnx)

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None, max_batch=8, max_wait_ms=20.0)) as server:
            async with StreamClient(server.url) as client:
                return await asyncio.gather(*(_stream_audio(client, i, onnx) for i in range(6)))

    for preds, ended, chunks, whole in run(main()):
        for msg, ref in zip(preds, session_results(onnx, chunks), strict=True):
            assert_matches(msg, ref)
        assert_scores(ended["scores"], predict_signal(onnx, whole, sample_rate=RATE).scores, 1e-4)
    assert max(backend.batch_sizes) > 1

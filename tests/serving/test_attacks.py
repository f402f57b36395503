"""Issue 13, "streams that cannot be broken": each attack gets its precise answer, the other streams are exact."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from rnnstream.pipeline.streaming import StreamSession
from rnnstream.serving import protocol as P
from rnnstream.serving.client import StreamClient
from rnnstream.serving.protocol import ServerError
from rnnstream.serving.server import ServerConfig, StreamServer
from rnnstream.serving.snapshots import SnapshotMissing, SnapshotStore

from tests.serving._helpers import (
    RATE,
    RecordingBackend,
    assert_matches,
    audio_backend,
    run,
    session_results,
    signal,
)


def _repack(blob: bytes, **changes: np.ndarray) -> bytes:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip_bomb(blob: bytes) -> bytes:
    """A small compressed npz (~32 KB) that unpacks to 32 MB."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["carry"] = np.zeros(8 << 20, np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


async def _victim(url: str, name: str, chunks: list[np.ndarray]) -> list[dict]:
    async with StreamClient(url) as client:
        s = await client.start(name, sample_rate=RATE)
        for c in chunks:
            await s.send(c)
            await asyncio.sleep(0.005)
        await s.end()
        return s.predictions


def test_forged_snapshots_are_that_streams_bad_snapshot_and_others_stay_exact():
    backend = audio_backend()
    good = StreamSession(backend, sample_rate=RATE, stream_id="orig")
    good.push(signal(1, 0.3))
    blob = good.snapshot()
    forged = {
        "carry 2-D": _repack(blob, carry=np.zeros((3, 400), np.float32)),
        "carry ints": _repack(blob, carry=np.zeros(400, np.int64)),
        "last_output too long": _repack(blob, last_output=np.zeros(99, np.float32)),
        "last_output strings": _repack(blob, last_output=np.array(["x"] * 4)),
        "state NaN": _repack(blob, **{f"state.{backend.info.state_specs[0].name}": np.full(
            backend.info.state_specs[0].shape, np.nan, np.float32)}),
        "zip bomb": _zip_bomb(blob),
    }
    chunks = np.split(signal(2, 2.0), 20)

    async def main():
        cfg = ServerConfig(port=0, max_wait_ms=20.0, max_snapshot_bytes=64 * 1024)
        async with StreamServer(backend, cfg) as server:
            victim = asyncio.create_task(_victim(server.url, "victim", chunks))
            errors = {}
            async with StreamClient(server.url) as attacker:
                for name, data in forged.items():
                    with pytest.raises(ServerError) as info:
                        await attacker.start(f"a-{len(errors)}", sample_rate=RATE, snapshot=data)
                    errors[name] = info.value
                t0 = time.monotonic()
                with pytest.raises(ServerError) as info:  # 100 KB over a 64 KB limit: refused from its length
                    await attacker.start("big", sample_rate=RATE, snapshot=b"\0" * 100_000)
                errors["oversize"], refused_in = info.value, time.monotonic() - t0
                ok = await attacker.start("fine", sample_rate=RATE, snapshot=blob)  # the connection goes on
                await ok.send(signal(3, 0.1))
                ended = await ok.end()
            preds = await victim
            return errors, refused_in, preds, ended, server.metrics

    errors, refused_in, preds, ended, metrics = run(main())
    for name, err in errors.items():
        assert err.code == "bad_snapshot" and err.close_code is None, (name, err)
    assert "carry" in errors["carry 2-D"].message and "last_output" in errors["last_output too long"].message
    assert "NaN" in errors["state NaN"].message and "over the limit" in errors["zip bomb"].message
    assert "exceeds the limit of 65536 bytes" in errors["oversize"].message and refused_in < 1.0
    assert ended["frames"] > 0
    for msg, ref in zip(preds, session_results(backend, chunks), strict=True):
        assert_matches(msg, ref)
    assert metrics.value("rnnstream_serve_errors_total", {"code": "bad_snapshot"}) == len(errors)


class PoisonBackend(RecordingBackend):
    """Fails any batch holding a state row with a huge value (a snapshot finite enough to pass validation)."""

    def step(self, x, states):
        for v in states.values():
            if np.abs(v).max() > 1e20:
                raise FloatingPointError("poisoned state in this batch")
        return super().step(x, states)


def test_a_failing_stream_is_bisected_out_of_its_batch_and_every_other_stream_is_exact():
    backend = PoisonBackend(audio_backend())
    spec = backend.info.state_specs[0]
    seed = StreamSession(backend, sample_rate=RATE)
    poison = _repack(seed.snapshot(), **{f"state.{spec.name}": np.full(spec.shape, 1e30, np.float32)})
    chunks = {i: np.split(signal(10 + i, 1.0), 10) for i in range(7)}

    async def main():
        cfg = ServerConfig(port=0, max_batch=8, max_wait_ms=30.0)
        async with StreamServer(backend, cfg) as server:
            async with StreamClient(server.url) as a, StreamClient(server.url) as b:
                streams = [await (a if i % 2 else b).start(f"s{i}", sample_rate=RATE) for i in range(7)]
                bad = await a.start("bad", sample_rate=RATE, snapshot=poison)
                await bad.send(chunks[0][0])
                for k in range(10):
                    for i, s in enumerate(streams):
                        await s.send(chunks[i][k])
                    await asyncio.sleep(0.01)
                with pytest.raises(ServerError) as info:
                    await bad.recv(timeout=10)
                ends = [await s.end() for s in streams]
            return info.value, streams, ends, server.metrics

    err, streams, ends, metrics = run(main())
    assert err.code == "server_error" and err.close_code is None and "poisoned state" in err.message
    for i, s in enumerate(streams):
        for msg, ref in zip(s.predictions, session_results(backend.inner, chunks[i]), strict=True):
            assert_matches(msg, ref)
        assert ends[i]["seq"] == 10
    assert metrics.value("rnnstream_serve_batch_splits_total") >= 1
    assert metrics.value("rnnstream_serve_chunk_errors_total") == 1
    assert metrics.value("rnnstream_serve_chunks_total") == (metrics.value("rnnstream_serve_predictions_total")
                                                             + metrics.value("rnnstream_serve_chunk_errors_total")
                                                             + metrics.dropped())


class NaNBackend(RecordingBackend):
    def step(self, x, states):
        y, new = super().step(x, states)
        return np.full_like(y, np.nan), new


def test_non_finite_model_output_is_a_stream_error_and_replies_stay_strict_json():
    backend = NaNBackend(audio_backend())

    async def main():
        async with StreamServer(backend, ServerConfig(port=0)) as server:
            async with StreamClient(server.url) as client:
                s = await client.start("n", sample_rate=RATE)
                await s.send(signal(0, 0.2))
                with pytest.raises(ServerError) as info:
                    await s.recv(timeout=5)
                return info.value

    err = run(main())
    assert err.code == "server_error" and "NaN" in err.message and err.close_code is None
    text = P.dumps({"scores": {"a": float("nan"), "b": float("inf")}, "x": [1.0, float("-inf")]})
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON token {c}"))
    assert strict == {"scores": {"a": None, "b": None}, "x": [1.0, None], "non_finite": True}


def test_snapshot_write_failures_are_retried_counted_and_eviction_and_shutdown_go_on(tmp_path, caplog):
    backend = audio_backend()

    async def main():
        cfg = ServerConfig(port=0, idle_timeout_s=0.2, snapshot_dir=str(tmp_path), snapshot_retries=2)
        server = await StreamServer(backend, cfg).start()
        real_save = server.store.save
        calls = {"n": 0}

        def flaky(stream_id, blob, meta):
            calls["n"] += 1
            if stream_id == "doomed" or (stream_id == "lucky" and calls["n"] % 2):
                raise OSError(28, "No space left on device")
            return real_save(stream_id, blob, meta)

        server.store.save = flaky
        client = await StreamClient(server.url).connect()
        msgs = {}
        for name in ("doomed", "lucky"):
            s = await client.start(name, sample_rate=RATE)
            await s.send(signal(1, 0.1))
            await s.recv(timeout=5)
            msgs[name] = await s.recv(timeout=10)  # evicted
        again = await client.start("doomed", sample_rate=RATE)  # the id is free at once
        await again.send(signal(2, 0.1))
        await again.recv(timeout=5)
        later = await again.recv(timeout=10)  # eviction goes on after the failures
        await server.shutdown()  # graceful
        await client.close()
        return msgs, later, server

    with caplog.at_level(logging.WARNING, logger="rnnstream.serve"):
        msgs, later, server = run(main())
    assert msgs["doomed"]["type"] == "evicted" and msgs["doomed"]["saved"] is None
    assert "No space left on device" in msgs["doomed"]["save_error"]
    assert msgs["lucky"]["type"] == "evicted" and len(msgs["lucky"]["saved"]) == 32
    assert later["type"] == "evicted" and later["saved"] is None
    m = server.metrics
    assert m.value("rnnstream_serve_snapshot_writes_total", {"result": "failed"}) == 2
    assert m.value("rnnstream_serve_snapshot_writes_total", {"result": "retry"}) == 3
    assert m.value("rnnstream_serve_snapshot_writes_total", {"result": "ok"}) == 1
    assert m.value("rnnstream_serve_evictions_total") == 3 and server.streams == {}
    assert any("was not saved after 2 attempts" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("beam", [False, True])
def test_snapshot_store_ids_are_unguessable_single_use_expiring_and_never_overwritten(tmp_path, beam):
    if beam:
        pytest.importorskip("apache_beam")
    store = SnapshotStore(str(tmp_path), ttl_s=60.0, max_bytes=1024, beam=beam)
    a = store.save("mic", b"first client", {"seq": 3})
    b = store.save("mic", b"second client", {"seq": 9})  # same stream name: another id, nothing overwritten
    assert a != b and len(a) == len(b) == 32
    blob_b, meta_b = store.claim(b)
    assert blob_b == b"second client" and meta_b["stream"] == "mic" and meta_b["seq"] == 9
    blob, meta = store.claim(a)
    assert blob == b"first client" and meta["stream"] == "mic" and meta["seq"] == 3
    with pytest.raises(SnapshotMissing, match="already resumed"):
        store.claim(a)
    with pytest.raises(SnapshotMissing, match="not a snapshot id"):
        store.claim("../../etc/passwd")
    short = SnapshotStore(str(tmp_path), ttl_s=0.01, max_bytes=1024, beam=beam)
    old = short.save("x", b"x", {})
    time.sleep(0.05)
    with pytest.raises(SnapshotMissing, match="expired"):
        short.claim(old)
    kept = store.save("y", b"y", {})
    short.save("z", b"z", {})
    time.sleep(0.05)
    assert store.purge() == 1 and store.claim(kept)[0] == b"y"


def _post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_bounds_per_connection_share_queue_bytes_chunk_and_request_duration(tmp_path):
    from rnnstream.pipeline.audio_io import write_audio

    backend = RecordingBackend(audio_backend(), delay=0.2)
    wav = tmp_path / "long.wav"
    write_audio(wav, signal(0, 1.0), RATE, subtype="FLOAT")

    async def main():
        cfg = ServerConfig(port=0, max_streams=4, max_streams_per_connection=2, max_queue_bytes=20_000,
                           max_chunk_s=0.5, max_predict_s=0.5, max_connections=3)
        async with StreamServer(backend, cfg) as server:
            out = {}
            async with StreamClient(server.url) as a, StreamClient(server.url) as b:
                await a.start("a0", sample_rate=RATE)
                await a.start("a1", sample_rate=RATE)
                with pytest.raises(ServerError) as info:
                    await a.start("a2", sample_rate=RATE)
                out["share"] = info.value
                s = await b.start("b0", sample_rate=RATE)  # another connection still gets a slot
                with pytest.raises(ServerError) as info:
                    for _ in range(6):  # 6400 bytes each; the model takes 0.2 s per batch
                        await s.send(signal(1, 0.1))
                    await s.recv(timeout=5)
                    await s.recv(timeout=5)
                out["queue"] = info.value
            async with StreamClient(server.url) as c:
                s = await c.start("c0", sample_rate=RATE)
                await s.send(signal(1, 0.6))
                with pytest.raises(ServerError) as info:
                    await s.recv(timeout=5)
                out["chunk"] = info.value
            base = server.http_url
            out["raw"] = await asyncio.to_thread(_post, f"{base}/predict?dtype=float32&sample_rate={RATE}",
                                                 signal(0, 1.0).tobytes())
            out["wav"] = await asyncio.to_thread(_post, f"{base}/predict?name=long.wav", wav.read_bytes())
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n")
            await writer.drain()
            out["negative"] = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return out

    out = run(main())
    share = out["share"]
    assert share.code == "too_many_streams" and share.close_code == 1013 and "limit 2 per connection" in share.message
    q = out["queue"]
    assert q.code == "queue_full" and q.close_code == 1013 and "limit 20000 bytes" in q.message
    ch = out["chunk"]
    assert ch.code == "chunk_too_long" and ch.close_code == 1009 and "limit of 0.5 s" in ch.message
    assert out["raw"][0] == 413 and out["raw"][1]["error"] == "too_long"
    assert out["wav"][0] == 413 and out["wav"][1]["error"] == "AudioTooLongError"
    status_line = out["negative"].split(b"\r\n", 1)[0]
    assert b" 400 " in status_line and b"Content-Length" in out["negative"], out["negative"][:200]


def test_max_connections_refuses_the_handshake_and_readyz_follows_shutdown():
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async def main():
        server = await StreamServer(audio_backend(), ServerConfig(port=0, max_connections=1)).start()
        ready = await asyncio.to_thread(_get, server.http_url + "/readyz")
        async with StreamClient(server.url):
            with pytest.raises(InvalidStatus) as info:
                async with connect(server.url):
                    pass
        closing = asyncio.create_task(server.shutdown())
        await asyncio.sleep(0)
        assert not server.ready
        await closing
        return ready, info.value.response.status_code

    ready, refused = run(main())
    assert ready == 200 and refused == 503


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_duplicate_chunks_are_answered_duplicate_and_counts_balance():
    backend = audio_backend()

    async def main():
        async with StreamServer(backend, ServerConfig(port=0)) as server:
            async with StreamClient(server.url) as client:
                s = await client.start("d", sample_rate=RATE)
                c = signal(0, 0.1)
                await s.send(c)
                first = await s.recv(timeout=5)
                await client.ws.send(P.encode_chunk(s.channel, 0, P.audio_payload(c)))  # resent
                dup = await s.recv(timeout=5)
                ended = await s.end()
            return first, dup, ended, server.metrics

    first, dup, ended, m = run(main())
    assert first["type"] == "prediction" and dup == {"type": "duplicate", "stream": "d", "channel": 0, "seq": 0,
                                                       "expected": 1}
    assert ended["seq"] == 1 and m.value("rnnstream_serve_duplicates_total") == 1
    assert m.value("rnnstream_serve_chunks_total") == m.value("rnnstream_serve_predictions_total") == 1

"""Eviction and resume, HTTP endpoints, graceful shutdown, the CLI client and server config."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from rnnstream.pipeline.audio_io import write_audio
from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.streaming import predict_signal
from rnnstream.serving import client as client_cli
from rnnstream.serving.client import StreamClient
from rnnstream.serving.protocol import ServerError
from rnnstream.serving.server import ServerConfig, StreamServer
from tests.serving._helpers import (
    RATE,
    RecordingBackend,
    assert_scores,
    audio_backend,
    run,
    sensor_backend,
    sensor_series,
    signal,
)


def _http(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def test_idle_eviction_saves_snapshot_and_resume_continues_exactly(tmp_path):
    backend = audio_backend()
    x = signal(3, 1.2)
    chunks = np.split(x, 12)

    async def main():
        cfg = ServerConfig(port=0, http_port=None, idle_timeout_s=0.3, snapshot_dir=str(tmp_path))
        async with StreamServer(backend, cfg) as server:
            async with StreamClient(server.url) as client:
                s = await client.start("mic-1", sample_rate=RATE)
                for c in chunks[:5]:
                    await s.send(c)
                msgs = [await s.recv(timeout=5) for _ in range(6)]  # 5 predictions, then the eviction
                assert server.streams == {}
                token = msgs[-1]["saved"]
                saved_meta = json.loads((tmp_path / f"{token}.json").read_text())
                r = await client.start(resume=token, sample_rate=RATE)
                assert r.id == "mic-1" and r.seq == 5 and r.started["resumed"]
                for c in chunks[5:8]:
                    await r.send(c)
                ended = await r.end(snapshot=True)
                # resume once more from the snapshot bytes the client got back
                blob = __import__("base64").b64decode(ended["snapshot"])
                q = await client.start("mic-1b", sample_rate=RATE, snapshot=blob, seq=ended["seq"])
                for c in chunks[8:]:
                    await q.send(c)
                final = await q.end()
                errors = []
                for ghost in ("never-seen", token):  # unknown; and already resumed (single use)
                    with pytest.raises(ServerError) as info:
                        await client.start(resume=ghost, sample_rate=RATE)
                    errors.append(info.value)
                await client.ping()  # stream errors leave the connection open
            return msgs, saved_meta, r.predictions, ended, final, errors, server.metrics

    msgs, meta, preds, ended, final, errors, metrics = run(main())
    evicted = msgs[-1]
    assert [m["type"] for m in msgs] == ["prediction"] * 5 + ["evicted"]
    assert len(evicted["saved"]) == 32 and evicted["seq"] == 5 and "limit 0.3 s" in evicted["reason"]
    assert meta["seq"] == 5 and meta["sample_rate"] == RATE and meta["stream"] == "mic-1"
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.snap"))  # claimed: gone
    assert [p["seq"] for p in preds] == [5, 6, 7] and ended["seq"] == 8
    assert final["seq"] == 12 and final["frames"] == x.size // 160
    assert_scores(final["scores"], predict_signal(backend, x, sample_rate=RATE).scores, 1e-4)
    for err in errors:
        assert err.code == "unknown_snapshot" and err.close_code is None
    assert "never-seen" in errors[0].message and "already resumed" in errors[1].message
    assert metrics.value("rnnstream_serve_evictions_total") == 1
    assert metrics.value("rnnstream_serve_snapshot_writes_total", {"result": "ok"}) == 1


def test_http_health_metrics_and_one_shot_predict(tmp_path):
    backend = audio_backend()
    x = signal(5, 1.0)
    wav = tmp_path / "clip.wav"
    write_audio(wav, x, 16000, subtype="FLOAT")

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=0)) as server:
            base, ws_base = server.http_url, server.url.replace("ws://", "http://").rstrip("/")
            calls = {
                "health": (base + "/health", None, None),
                "ws_health": (ws_base + "/health", None, None),
                "ws_metrics": (ws_base + "/metrics", None, None),
                "predict": (base + "/predict?name=clip.wav", wav.read_bytes(), "POST"),
                "predict_raw": (base + f"/predict?dtype=float32&sample_rate={RATE}", x.tobytes(), "POST"),
                "predict_bad": (base + "/predict?name=clip.wav", b"RIFF....not audio", "POST"),
                "predict_get": (base + "/predict", None, None),
                "livez": (ws_base + "/livez", None, None),
                "readyz": (ws_base + "/readyz", None, None),
                "nowhere": (base + "/nowhere", None, None),
            }
            out = {k: await asyncio.to_thread(_http, *v) for k, v in calls.items()}
            out["metrics"] = await asyncio.to_thread(_http, base + "/metrics")
            reader, writer = await asyncio.open_connection(server.config.host, server.http_port)
            writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            out["no_length"] = await reader.read()
            writer.close()
            return out

    out = run(main())
    for key in ("health", "ws_health"):
        status, body, ctype = out[key]
        assert status == 200 and json.loads(body)["status"] == "ok" and ctype.startswith("application/json")
    status, body, ctype = out["metrics"]
    assert status == 200 and ctype.startswith("text/plain")
    assert b"rnnstream_serve_batch_size_bucket" in body and b'rnnstream_serve_http_requests_total{path="/predict"' in body
    assert out["ws_metrics"][0] == 200 and b"rnnstream_serve_latency_seconds" in out["ws_metrics"][1]
    offline = predict_signal(backend, x, sample_rate=RATE)
    for key in ("predict", "predict_raw"):
        status, body, _ = out[key]
        res = json.loads(body)
        assert status == 200 and res["predicted"] == offline.label and res["frames"] == offline.frames
        assert_scores(res["scores"], offline.scores, 1e-5)
    status, body, _ = out["predict_bad"]
    assert status == 400 and "clip.wav" in json.loads(body)["message"]
    assert out["predict_get"][0] == 405 and out["nowhere"][0] == 404
    assert out["no_length"].startswith(b"HTTP/1.1 411")
    assert out["livez"][0] == 200 and out["readyz"][0] == 200 and json.loads(out["readyz"][1])["status"] == "ready"
    _, body, _ = out["metrics"]
    assert b"process_resident_memory_bytes" in body and b"python_info" in body and b"_created" not in body
    assert b'rnnstream_serve_model_info{' in body and b'task="classify"' in body
    assert json.loads(out["health"][1])["model"]["weights_hash"] == backend.info.weights_hash


def test_http_predict_sensor_csv(tmp_path):
    backend = sensor_backend()
    ts, vals = sensor_series(4)
    lines = ["timestamp,ax,ay,az"] + [f"{t!r},{a!r},{b!r},{c!r}" for t, (a, b, c) in zip(ts.tolist(), vals.tolist())]
    body = ("\n".join(lines) + "\n").encode()

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=0)) as server:
            good = await asyncio.to_thread(_http, server.http_url + "/predict", body, "POST")
            bad = await asyncio.to_thread(_http, server.http_url + "/predict", b"timestamp,ax\n1,2\n", "POST")
            return good, bad

    (status, data, _), (bad_status, bad_body, _) = run(main())
    from rnnstream.pipeline.streaming import SensorChunk

    offline = predict_signal(backend, SensorChunk(ts, vals))
    assert status == 200
    assert_scores(json.loads(data)["scores"], offline.scores, 1e-5)
    assert bad_status == 400 and "ay" in json.loads(bad_body)["message"]


def test_graceful_shutdown_finishes_received_chunks_then_closes_1001(tmp_path):
    backend = RecordingBackend(audio_backend(), delay=0.05)

    async def main():
        cfg = ServerConfig(port=0, http_port=None, max_batch=1, snapshot_dir=str(tmp_path))
        server = await StreamServer(backend, cfg).start()
        client = await StreamClient(server.url).connect()
        s = await client.start("busy", sample_rate=RATE)
        for k in range(6):
            await s.send(signal(k, 0.1))
        await client.ping()  # the server has read all six chunks
        await server.shutdown()
        msgs = []
        with pytest.raises(ServerError) as info:
            while True:
                msgs.append(await s.recv(timeout=5))
        await client.close()
        return msgs, info.value

    msgs, closed = run(main())
    assert [m["seq"] for m in msgs if m["type"] == "prediction"] == list(range(6))
    assert msgs[-1]["type"] == "shutdown"
    [held] = msgs[-1]["streams"]
    token = held.pop("saved")
    assert held == {"stream": "busy", "channel": 0, "seq": 6} and len(token) == 32
    assert closed.close_code == 1001
    assert (tmp_path / f"{token}.snap").exists()


def test_cli_client_streams_a_file_as_n_streams(tmp_path, capsys):
    backend = audio_backend()
    x = signal(9, 0.75)
    wav = tmp_path / "clip.wav"
    write_audio(wav, x, 16000, subtype="FLOAT")

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None)) as server:
            start = time.monotonic()
            rc = await asyncio.to_thread(client_cli.main, ["--url", server.url, "--input", str(wav), "--streams", "3",
                                                           "--chunk-ms", "100", "--connections", "2", "--realtime"])
            return rc, time.monotonic() - start

    rc, elapsed = run(main())
    assert elapsed >= 0.7  # --realtime: 0.75 s of audio takes 0.75 s to send
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    ended = [m for m in lines if m["type"] == "ended"]
    preds = [m for m in lines if m["type"] == "prediction"]
    assert len(ended) == 3 and len({m["stream"] for m in ended}) == 3
    assert len(preds) == 3 * 8  # 0.75 s in 100 ms chunks
    offline = predict_signal(backend, x, sample_rate=RATE)
    for m in ended:
        assert_scores(m["scores"], offline.scores, 1e-4)


def test_cli_client_streams_a_sensor_table(tmp_path, capsys):
    backend = sensor_backend()
    ts, vals = sensor_series(6)
    csv = tmp_path / "imu.csv"
    rows = ["timestamp,ax,ay,az"] + [f"{t!r},{a!r},{b!r},{c!r}" for t, (a, b, c) in zip(ts.tolist(), vals.tolist())]
    csv.write_text("\n".join(rows) + "\n")

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None)) as server:
            return await asyncio.to_thread(client_cli.main, ["--url", server.url, "--input", str(csv), "--streams", "2",
                                                             "--chunk-ms", "250"])

    rc = run(main())
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    from rnnstream.pipeline.streaming import SensorChunk

    offline = predict_signal(backend, SensorChunk(ts, vals.astype(np.float32)))
    ended = [m for m in lines if m["type"] == "ended"]
    assert len(ended) == 2
    for m in ended:
        assert m["frames"] == offline.frames
        assert_scores(m["scores"], offline.scores, 1e-4)
    assert len([m for m in lines if m["type"] == "prediction"]) > 2 * 10  # ~4 s of rows in 250 ms windows


def test_cli_reports_unreachable_server_and_bad_arguments(tmp_path, capsys):
    assert client_cli.main(["--url", "ws://127.0.0.1:9/", "--input", str(tmp_path / "x.wav")]) == 1
    assert "rnnstream client" in capsys.readouterr().err
    assert client_cli.main(["--input", "x.wav", "--streams", "0"]) == 2


@pytest.mark.parametrize("bad", [dict(max_batch=0), dict(port=70000), dict(max_wait_ms=-1), dict(max_frame_bytes=4),
                                 {"batch_threads": -1}, {"inline_batch_samples": -1}])
def test_server_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ServerConfig(**bad)


def test_serve_loop_stops_on_sigterm():
    """The command's serving loop installs SIGTERM/SIGINT handlers that shut the server down gracefully."""
    import signal as sig
    import threading

    from rnnstream.serving import server as server_mod

    seen = {}

    def ready(server: StreamServer) -> None:
        def poke() -> None:
            seen["health"] = _http(server.url.replace("ws://", "http://").rstrip("/") + "/health")[0]
            os.kill(os.getpid(), sig.SIGTERM)

        threading.Thread(target=poke, daemon=True).start()

    asyncio.run(asyncio.wait_for(server_mod._serve(audio_backend(), ServerConfig(port=0, http_port=None), ready), 30))
    assert seen["health"] == 200


@pytest.mark.slow
def test_serve_command_runs_and_stops_on_sigterm(tmp_path):
    """`rnnstream serve` from a checkpoint: health answers, SIGTERM stops it cleanly (exit 0)."""
    import signal as sig
    import socket
    import time

    from rnnstream.models.checkpoint import save_checkpoint

    backend = audio_backend()
    ckpt = tmp_path / "model.pt"
    save_checkpoint(str(ckpt), backend.model, backend.info.feature_config, labels=list(backend.info.labels))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "rnnstream", "serve", "--model", str(ckpt), "--port", str(port),
                             "--http-port", "-1"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                status, body, _ = _http(f"http://127.0.0.1:{port}/health")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert status == 200 and json.loads(body)["task"] == "classify"
        proc.send_signal(sig.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_onnx_model_served_equals_torch_offline(tmp_path):
    """`serve --model x.onnx` path: load_model gives an OnnxBackend; streams equal offline PyTorch within 1e-4."""
    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.serving.server import load_model

    torch_backend = audio_backend(3)
    path = export_onnx(torch_backend.model, tmp_path / "m.onnx", feature_config=torch_backend.info.feature_config,
                       labels=list(torch_backend.info.labels))
    backend = load_model(str(path), "cpu", 1)
    assert type(backend).__name__ == "OnnxBackend"
    x = signal(11, 0.8)

    async def main():
        async with StreamServer(backend, ServerConfig(port=0, http_port=None)) as server:
            async with StreamClient(server.url) as client:
                streams = [await client.start(f"o{i}", sample_rate=RATE) for i in range(4)]
                for c in np.split(x, 8):
                    for s in streams:
                        await s.send(c)
                return [await s.end() for s in streams]

    offline = predict_signal(torch_backend, x, sample_rate=RATE)
    for ended in run(main()):
        assert ended["predicted"] == offline.label
        assert_scores(ended["scores"], offline.scores, 1e-4)


def test_client_that_does_not_keep_up_gets_slow_consumer_1008():
    backend = RecordingBackend(audio_backend(), delay=0.05)

    async def main():
        cfg = ServerConfig(port=0, http_port=None, max_outbound=3, max_wait_ms=50.0)
        async with StreamServer(backend, cfg) as server:
            async with StreamClient(server.url) as client:
                streams = [await client.start(f"c{i}", sample_rate=RATE) for i in range(8)]
                for s in streams:  # one batch of 8 results lands at once: more than 3 messages waiting
                    await s.send(signal(1, 0.1))
                with pytest.raises(ServerError) as info:
                    while True:
                        await streams[0].recv(timeout=5)
            return info.value

    err = run(main())
    assert err.code == "slow_consumer" and err.close_code == 1008 and "limits 3 messages" in err.message

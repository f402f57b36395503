"""``rnnstream serve --workers 2``: two processes on one port, metrics summed over both, snapshots saved by one
worker resumed on the other, a graceful stop of all on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from rnnstream.pipeline.streaming import StreamSession
from rnnstream.serving.client import StreamClient
from rnnstream.serving.workers import WorkerPoolConfig

from tests.serving._helpers import RATE, audio_backend, signal as make_signal

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    from rnnstream.api import load_backend
    from rnnstream.export.onnx_export import export_onnx

    torch_backend = audio_backend(5)
    path = export_onnx(torch_backend.model, tmp_path_factory.mktemp("workers") / "m.onnx",
                       feature_config=torch_backend.info.feature_config, labels=list(torch_backend.info.labels))
    return str(path), load_backend(str(path), provider="cpu", threads=1)


def _start(model: str, snapshot_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "rnnstream", "serve", "--model", model, "--port", "0",
                             "--workers", "2", "--snapshot-dir", str(snapshot_dir), *extra],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    deadline = time.monotonic() + 90
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        found = re.search(r"rnnstream serve: ws://127\.0\.0\.1:(\d+)/ \(2 worker processes", line)
        if found:
            return proc, int(found.group(1))
    proc.kill()
    raise AssertionError(f"the server did not start: {proc.stderr.read()}")


async def _client_on(url: str, worker: int, tries: int = 60) -> StreamClient:
    """A connection that the supervisor gave to worker ``worker`` (ties between workers go in turn)."""
    for _ in range(tries):
        client = await StreamClient(url).connect()
        if client.hello["worker"]["index"] == worker:
            return client
        await client.close()
    raise AssertionError(f"no connection reached worker {worker} in {tries} tries")


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the supervisor: it must stop every worker and exit 0 within 40 s (killed otherwise)."""
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_two_workers_share_the_port_metrics_and_snapshots(onnx_model, tmp_path: Path) -> None:
    model, backend = onnx_model
    x = make_signal(21, 1.2)
    chunks = np.array_split(x, 12)
    offline = StreamSession(backend, sample_rate=RATE)
    for c in chunks:
        offline.push(c)
    proc, port = _start(model, tmp_path / "snaps")
    url = f"ws://127.0.0.1:{port}/"
    try:
        async def main() -> tuple[dict, list[dict], set[int]]:
            held = [await StreamClient(url).connect() for _ in range(4)]  # least-loaded first: 2 and 2
            assert sorted(c.hello["worker"]["index"] for c in held) == [0, 0, 1, 1]
            for client in held:
                await client.close()
            first, second = await _client_on(url, 0), await _client_on(url, 1)
            pids = {first.hello["worker"]["pid"], second.hello["worker"]["pid"]}
            stream = await first.start("moving", sample_rate=RATE)
            for c in chunks[:5]:
                await stream.send(c)
            saved = await stream.end(save=True)
            resumed = await second.start("moving", sample_rate=RATE, resume=saved["saved"])
            for c in chunks[5:]:
                await resumed.send(c)
            ended = await resumed.end()
            await first.close()
            await second.close()
            return ended, stream.predictions + resumed.predictions, pids

        ended, predictions, pids = asyncio.run(asyncio.wait_for(main(), 60))
        assert len(pids) == 2 and proc.pid not in pids
        assert [p["seq"] for p in predictions] == list(range(12))
        np.testing.assert_allclose([ended["scores"][k] for k in backend.info.labels],
                                   offline.final().values, rtol=0, atol=1e-5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert _metric(text, "rnnstream_serve_predictions_total") == 12  # 5 on one worker + 7 on the other
        assert _metric(text, "rnnstream_serve_workers_up") == 2
        assert _metric(text, "rnnstream_serve_streams_started_total") == 2
        assert "rnnstream_serve_model_info" in text
    finally:
        _stop(proc)
    assert "stopped" in proc.stderr.read()  # type: ignore[union-attr]


def test_a_bad_model_and_a_taken_port_are_one_line_errors(tmp_path: Path) -> None:
    import socket

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    done = subprocess.run([sys.executable, "-m", "rnnstream", "serve", "--model", str(bad), "--port", "0",
                           "--workers", "2"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "failed to start" in done.stderr and "Traceback" not in done.stderr
    with socket.socket() as other:  # another program's listener
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "rnnstream", "serve", "--model", str(bad), "--port", str(port),
                               "--workers", "2"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "in use" in done.stderr.lower(), done.stderr


def test_pool_config_refuses_zero_workers() -> None:
    from rnnstream.pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="--workers must be >= 1, got 0"):
        WorkerPoolConfig(workers=0)


def test_a_killed_worker_is_restarted_and_new_connections_avoid_it_meanwhile(onnx_model, tmp_path: Path) -> None:
    model, _ = onnx_model
    proc, port = _start(model, tmp_path / "snaps")
    url = f"ws://127.0.0.1:{port}/"
    try:
        async def main() -> tuple[int, list[int], int]:
            victim = await _client_on(url, 1)
            old_pid = victim.hello["worker"]["pid"]
            os.kill(old_pid, signal.SIGKILL)
            with pytest.raises(Exception):  # its connection dies with it
                await victim.start("gone", sample_rate=RATE)
            seen = []
            for _ in range(4):  # at once: the supervisor has not restarted it yet, or it is starting
                client = await StreamClient(url).connect()
                seen.append(client.hello["worker"]["index"])
                await client.close()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # back after the restart, a new process
                client = await StreamClient(url).connect()
                hello = client.hello["worker"]
                await client.close()
                if hello["index"] == 1:
                    return old_pid, seen, hello["pid"]
                await asyncio.sleep(0.1)
            raise AssertionError("worker 1 did not come back within 60 s")

        old_pid, seen, new_pid = asyncio.run(asyncio.wait_for(main(), 90))
        assert seen == [0, 0, 0, 0] and new_pid != old_pid
    finally:
        _stop(proc)
    assert "worker 1 exited (status -9)" in proc.stderr.read()  # type: ignore[union-attr]  # SIGKILL's status


def test_a_stop_signal_while_a_worker_restarts_is_a_graceful_stop(onnx_model, tmp_path: Path) -> None:
    """SIGTERM while the supervisor waits for a restarted worker: exit 0, as at any other time (not 130, the
    status of a start interrupted before the server was up)."""
    model, _ = onnx_model
    proc, port = _start(model, tmp_path / "snaps")
    try:
        async def pid_of_worker_1() -> int:
            client = await _client_on(f"ws://127.0.0.1:{port}/", 1)
            await client.close()
            return int(client.hello["worker"]["pid"])

        os.kill(asyncio.run(pid_of_worker_1()), signal.SIGKILL)
        assert proc.stderr is not None
        deadline, said = time.monotonic() + 30, ""
        while "restarting it" not in said and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                said += proc.stderr.readline()
        assert "worker 1 exited (status -9); restarting it" in said
    finally:
        _stop(proc)  # exit 0 within 40 s

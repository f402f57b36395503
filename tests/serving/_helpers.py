"""Shared helpers for the serving tests: tiny models, signals, a recording backend, an asyncio runner."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import torch
from rnnstream.models.backend import TorchBackend
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.streaming import ChunkResult, SensorChunk, StreamSession

LABELS = ["yes", "no", "up", "down"]
SENSOR_COLUMNS = ["ax", "ay", "az"]
RATE = 16000  # the audio test models' rate (FeatureConfig.audio_default())


def run(coro: Any, timeout: float = 60.0) -> Any:
    """Run a coroutine to completion in a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _one_thread() -> None:
    """Tiny models: torch's intra-op threads only contend with the other test processes."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def audio_backend(seed: int = 0) -> TorchBackend:
    _one_thread()
    torch.manual_seed(seed)
    fc = FeatureConfig.audio_default()
    model = rnn_classifier(input_dim=fc.dim, num_classes=len(LABELS), hidden_size=16, num_layers=2)
    return TorchBackend(model, fc, LABELS)


def sensor_backend(seed: int = 0) -> TorchBackend:
    _one_thread()
    torch.manual_seed(seed)
    fc = FeatureConfig.sensor_default(columns=SENSOR_COLUMNS, rate_hz=20.0, max_gap_s=0.5)
    model = rnn_classifier(input_dim=fc.dim, num_classes=3, hidden_size=16, num_layers=1, cell="lstm")
    return TorchBackend(model, fc, ["walk", "run", "sit"])


def signal(seed: int, seconds: float, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    return (0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + rng.normal(0, 0.05, n)).astype(np.float32)


def chunk_sizes(seed: int, total: int, lo: int = 700, hi: int = 2600) -> list[int]:
    rng = np.random.default_rng(seed + 1000)
    sizes, pos = [], 0
    while pos < total:
        size = min(int(rng.integers(lo, hi)), total - pos)
        sizes.append(size)
        pos += size
    return sizes


def sensor_series(seed: int, n: int = 120, gap_at: int | None = 60) -> tuple[np.ndarray, np.ndarray]:
    """Irregular timestamps (~25 Hz) with one long gap (> max_gap_s) at ``gap_at``."""
    rng = np.random.default_rng(seed)
    dt = rng.uniform(0.02, 0.06, n)
    if gap_at is not None:
        dt[gap_at] = 1.5
    ts = 100.0 + np.cumsum(dt)
    vals = rng.normal(0, 1, (n, len(SENSOR_COLUMNS))).astype(np.float32)
    return ts, vals


def rate_of(backend: Any) -> int | None:
    """The model's own rate (audio), or None (sensor): what a stream at the model's rate declares."""
    audio = backend.info.feature_config.audio
    return None if audio is None else audio.sample_rate


def session_results(backend: Any, chunks: list[Any], sample_rate: int | None = None) -> list[ChunkResult]:
    """A session's results for ``chunks`` (audio at ``sample_rate``, default the model's rate)."""
    session = StreamSession(backend, sample_rate=sample_rate or rate_of(backend))
    return [session.push(c) for c in chunks]


def assert_scores(got: dict[str, float], want: dict[str, float], atol: float = 1e-4) -> None:
    """Score dicts (keyed by label) equal within ``atol``."""
    assert list(got) == list(want), (list(got), list(want))
    np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=0, atol=atol)


def split_sensor(ts: np.ndarray, vals: np.ndarray, sizes: list[int]) -> list[SensorChunk]:
    out, pos = [], 0
    for s in sizes:
        out.append(SensorChunk(ts[pos : pos + s], vals[pos : pos + s]))
        pos += s
    return out


def assert_matches(msg: dict[str, Any], ref: ChunkResult, tol: float = 1e-5) -> None:
    """A prediction message equals a session's ChunkResult for the same chunk."""
    d = ref.to_dict()
    assert msg["frames"] == d["frames"]
    assert abs(msg["t"] - d["t"]) < 1e-6
    assert msg["predicted"] == d["predicted"]
    assert_scores(msg.get("scores", {}), d.get("scores", {}), tol)


class RecordingBackend:
    """Wraps a backend: records each call's batch size, optionally sleeps (a slow model), optionally fails."""

    def __init__(self, inner: Any, delay: float = 0.0):
        self.inner = inner
        self.info = inner.info
        self.delay = delay
        self.batch_sizes: list[int] = []
        self.fail = False
        self._lock = threading.Lock()

    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with self._lock:
            self.batch_sizes.append(int(x.shape[0]))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("injected backend failure")
        return self.inner.step(x, states)


async def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())

"""onnxruntime on CUDA with IOBinding: the same numbers as the CPU session, streaming equal to offline, a batch
of streams equal to each stream alone. Skipped (with the reason) where this onnxruntime has no CUDA provider:
run them on a GPU machine with ``pip install 'rnnstream[gpu]'`` (``python -m pytest tests/export/test_cuda.py``)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from rnnstream.pipeline.onnx_backend import OnnxBackend
from rnnstream.pipeline.batching import step_streams
from rnnstream.pipeline.streaming import StreamSession

from tests.export.conftest import RATE, noise

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason=f"no CUDAExecutionProvider in this onnxruntime (providers: {ort.get_available_providers()}); "
           "install rnnstream[gpu] on a machine with a GPU",
)

#: CUDA kernels (cuDNN GRU/LSTM, TF32 off by default in onnxruntime) against the CPU's, float32.
TOL = 1e-4


@pytest.mark.parametrize("cell,head", [("gru", "classify_last"), ("lstm", "classify_mean"), ("gru", "forecast")])
def test_cuda_with_io_binding_equals_cpu(exported, cell: str, head: str) -> None:
    _, path = exported(cell, head)
    gpu = OnnxBackend(path, provider="cuda")
    cpu = OnnxBackend(path, provider="cpu", threads=1)
    assert gpu.provider == "CUDAExecutionProvider" and gpu.io_binding
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (5, 13, cpu.info.feature_config.dim)).astype(np.float32)
    states = {k: rng.normal(0, 0.5, v.shape).astype(np.float32) for k, v in cpu.info.initial_states(5).items()}
    yg, sg = gpu.step(x, states)
    yc, sc = cpu.step(x, states)
    np.testing.assert_allclose(yg, yc, rtol=0, atol=TOL)
    for k in sc:
        np.testing.assert_allclose(sg[k], sc[k], rtol=0, atol=TOL)


@pytest.mark.parametrize("raw_audio", [False, True])
def test_cuda_streams_equal_offline_and_batched_equal_alone(exported, raw_audio: bool) -> None:
    _, path = exported("gru", "classify_last", raw_audio=raw_audio)
    gpu = OnnxBackend(path, provider="cuda")
    signals = [noise(0.5, seed=s) for s in range(4)]
    offline = [StreamSession(gpu, sample_rate=RATE) for _ in signals]
    for session, x in zip(offline, signals):
        session.push(x)
    streamed = [StreamSession(gpu, sample_rate=RATE) for _ in signals]
    for cut in np.array_split(np.arange(signals[0].shape[0]), 7):
        step_streams(streamed, [x[cut] for x in signals])
    for a, b in zip(streamed, offline):
        np.testing.assert_allclose(a.final().values, b.final().values, rtol=0, atol=TOL)

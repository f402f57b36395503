"""Low frame rate (``AudioConfig.stack``): a model reading 3 stacked frames streams exactly like its offline run,
in PyTorch and onnxruntime, features and raw-audio graphs, batched with streams at other phases, and through a
snapshot taken while a partial model frame is pending."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rnnstream.export.onnx_export import export_onnx
from rnnstream.models.backend import TorchBackend
from rnnstream.models.rnn import rnn_tagger
from rnnstream.pipeline.batching import step_streams
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.features import AudioFeaturizer
from rnnstream.pipeline.onnx_backend import OnnxBackend
from rnnstream.pipeline.streaming import StreamSession

from tests.export.conftest import LABELS, RATE, noise

FC3 = FeatureConfig.audio_default(sample_rate=8000, n_mels=8, stack=3)  # one model frame per 30 ms (240 samples)
SIGNAL = noise(0.5, seed=7)  # 4000 samples: 16 model frames and 160 samples pending
TOL = 1e-4


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, dict[str, object]]:
    torch.manual_seed(0)
    model = rnn_tagger(input_dim=FC3.dim, num_classes=len(LABELS), cell="gru", hidden_size=12, num_layers=2).eval()
    feats = AudioFeaturizer(FC3).featurize(noise(1.0, seed=1))
    with torch.no_grad():
        model.feat_mean.copy_(torch.from_numpy(feats.mean(0)))
        model.feat_std.copy_(torch.from_numpy(feats.std(0) + 0.1))
    root = tmp_path_factory.mktemp("stacked")
    return model, {
        "torch": TorchBackend(model, FC3, LABELS),
        "onnx": OnnxBackend(export_onnx(model, root / "f.onnx", FC3, LABELS), threads=1),
        "onnx_raw": OnnxBackend(export_onnx(model, root / "r.onnx", FC3, LABELS, raw_audio=True), threads=1),
    }


def _offline(model: torch.nn.Module, signal: np.ndarray) -> np.ndarray:
    feats = AudioFeaturizer(FC3).featurize(signal)
    assert feats.shape == (signal.size // 240, 24)
    with torch.no_grad():
        return model(torch.from_numpy(feats)[None])[0].numpy()


@pytest.mark.parametrize("kind", ["torch", "onnx", "onnx_raw"])
def test_streaming_equals_offline_under_random_chunkings(backends, kind: str) -> None:
    model, bks = backends
    want = _offline(model, SIGNAL)
    assert want.shape[0] == 16

    @settings(max_examples=6, deadline=None, derandomize=True)
    @given(cuts=st.lists(st.integers(0, SIGNAL.size), max_size=10).map(sorted))
    def check(cuts: list[int]) -> None:
        session = StreamSession(bks[kind], sample_rate=RATE)
        got = np.concatenate([session.push(c).outputs for c in np.split(SIGNAL, cuts)])
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
        assert session.frames_seen == 16 and session.carry.size == FC3.audio.context + 160

    check()


@pytest.mark.parametrize("kind", ["onnx", "onnx_raw"])
def test_batched_streams_at_different_phases_equal_each_alone(backends, kind: str) -> None:
    """Chunks of 100 ms (2 hops short of a whole number of model frames) leave each stream at its own phase;
    step_streams groups those whose inputs match and equals pushing each alone."""
    _, bks = backends
    signals = [noise(0.6, seed=s) for s in range(4)]
    batched = [StreamSession(bks[kind], sample_rate=RATE) for _ in signals]
    alone = [StreamSession(bks[kind], sample_rate=RATE) for _ in signals]
    offsets = [0, 80, 160, 800]  # first chunks of different lengths: different phases from then on
    pos = [0] * 4
    for step in range(6):
        chunks = []
        for i, x in enumerate(signals):
            n = offsets[i] if step == 0 else 800
            chunks.append(x[pos[i] : pos[i] + n])
            pos[i] += n
        got = step_streams(batched, chunks)
        for g, s, c in zip(got, alone, chunks):
            w = s.push(c)
            assert g.outputs.shape == w.outputs.shape
            np.testing.assert_allclose(g.outputs, w.outputs, rtol=0, atol=1e-5)


def test_snapshot_with_a_partial_model_frame_pending_resumes_exactly(backends) -> None:
    model, bks = backends
    backend = bks["onnx_raw"]
    session = StreamSession(backend, sample_rate=RATE)
    first = session.push(SIGNAL[:1100]).outputs  # 4 model frames (960 samples), 140 pending (> one hop of 80)
    assert session.carry.size == FC3.audio.context + 140
    resumed = StreamSession.restore(backend, session.snapshot())
    rest = resumed.push(SIGNAL[1100:]).outputs
    np.testing.assert_allclose(np.concatenate([first, rest]), _offline(model, SIGNAL), rtol=0, atol=TOL)

"""A PCEN model (``input_norm="pcen"``) exported to ONNX, features and raw-audio graphs: streamed through
onnxruntime under random cuts, it equals PyTorch offline (its smoothed level carried as state ``pcen_m``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.export.onnx_export import export_onnx
from rnnstream.models.rnn import ModelConfig, StreamingRNN
from rnnstream.pipeline.features import AudioFeaturizer
from rnnstream.pipeline.onnx_backend import OnnxBackend
from rnnstream.pipeline.streaming import StreamSession
from tests.export.conftest import DIM, FC, LABELS, RATE, noise

SIGNAL = noise(0.37, seed=11)


@pytest.fixture(scope="module", params=[False, True], ids=["features", "raw-audio"])
def pcen(request, tmp_path_factory):
    torch.manual_seed(5)
    cfg = ModelConfig(input_dim=DIM, output_dim=len(LABELS), hidden_size=10, num_layers=2, pooling="mean",
                      input_norm="pcen", norm_decay=0.95, conv_channels=(4,), conv_kernel=(3, 3), conv_pool=1)
    feats = AudioFeaturizer(FC).featurize(SIGNAL)
    model = StreamingRNN(cfg, feat_mean=feats.mean(0), feat_std=feats.std(0) + 1e-3).eval()
    with torch.no_grad():
        model.pcen.log_r.add_(0.1 * torch.randn(DIM))
    path = export_onnx(model, tmp_path_factory.mktemp("pcen") / "m.onnx", FC, LABELS, raw_audio=request.param)
    return model, OnnxBackend(path, provider="cpu", threads=1)


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(0, SIGNAL.size), max_size=8).map(sorted))
def test_pcen_onnx_streaming_equals_torch_offline(pcen, cuts):
    model, backend = pcen
    assert "pcen_m" in {s.name for s in backend.info.state_specs}
    with torch.no_grad():
        want = model(torch.from_numpy(AudioFeaturizer(FC).featurize(SIGNAL))[None])[0].numpy()
    session = StreamSession(backend, sample_rate=RATE)
    got = np.concatenate([session.push(part).outputs for part in np.split(SIGNAL, cuts)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

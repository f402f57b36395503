"""New state-carrying layers in ONNX: the CRNN front end, the seasonal residual head, input deltas and ensembles
stream == PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.export.onnx_export import export_onnx
from rnnstream.models.rnn import crnn_classifier
from rnnstream.pipeline.onnx_backend import OnnxBackend
from rnnstream.pipeline.streaming import StreamSession
from tests.export.conftest import DIM, FC, LABELS, RATE, assert_streams_like_offline, noise, onnx_pair

SIGNAL = noise(0.41, seed=8)


@pytest.fixture(scope="module", params=[False, True], ids=["features", "raw-audio"])
def crnn(request, tmp_path_factory):
    torch.manual_seed(3)
    model = crnn_classifier(input_dim=DIM, num_classes=len(LABELS), conv_channels=(4, 6), conv_kernel=(3, 3),
                            conv_pool=2, hidden_size=10, pooling="mean").eval()
    with torch.no_grad():
        model.feat_mean.fill_(-5.0)
        model.feat_std.fill_(2.0)
    return onnx_pair(model, tmp_path_factory.mktemp("crnn"), raw_audio=request.param)


def test_graph_carries_the_conv_states(crnn):
    _, backend = crnn
    names = [i.name for i in backend.session.get_inputs()]
    assert {"conv0_in", "conv1_in"} <= set(names)
    assert {s.name: s.shape for s in backend.info.state_specs}["conv1"] == (2, 4, DIM // 2)


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(0, SIGNAL.size), max_size=8).map(sorted))
def test_onnx_streaming_equals_torch_offline(crnn, cuts):
    model, backend = crnn
    assert_streams_like_offline(model, backend, SIGNAL, cuts)


@pytest.fixture(scope="module")
def temporal_conv(tmp_path_factory):
    """A full-width (FCN-style) causal conv front end: kernel (4, 0) spans every feature."""
    torch.manual_seed(4)
    model = crnn_classifier(input_dim=DIM, num_classes=len(LABELS), conv_channels=(5, 7), conv_kernel=(4, 0),
                            conv_pool=1, hidden_size=10, pooling="mean").eval()
    return onnx_pair(model, tmp_path_factory.mktemp("fcn"))


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(0, SIGNAL.size), max_size=8).map(sorted))
def test_temporal_conv_onnx_streaming_equals_torch_offline(temporal_conv, cuts):
    model, backend = temporal_conv
    assert {s.name: s.shape for s in backend.info.state_specs}["conv1"] == (3, 5, 1)
    assert_streams_like_offline(model, backend, SIGNAL, cuts)


def test_seasonal_forecaster_exports_and_streams(tmp_path):
    """The seasonal-naive residual head carries its ``season`` buffer through the ONNX graph."""
    from rnnstream.models.rnn import rnn_forecaster
    from rnnstream.pipeline.config import FeatureConfig
    from rnnstream.pipeline.streaming import SensorChunk

    torch.manual_seed(5)
    fc = FeatureConfig.sensor_default(["a", "b"], rate_hz=1.0, time_features=("hour_of_day",))
    model = rnn_forecaster(input_dim=fc.dim, horizon=5, target_dims=(1,), hidden_size=8, num_layers=1,
                           residual=True, seasonal_period=6).eval()
    backend = OnnxBackend(export_onnx(model, tmp_path / "s.onnx", fc), provider="cpu", threads=1)
    assert "season_in" in [i.name for i in backend.session.get_inputs()]
    ts = np.arange(50, dtype=np.float64) * 1.0 + 3600.0
    vals = np.stack([np.sin(ts / 5), np.cos(ts / 7)], axis=1).astype(np.float32)
    from rnnstream.pipeline.sensors import SensorFeaturizer

    with torch.no_grad():
        want = model(torch.from_numpy(SensorFeaturizer(fc).featurize(ts, vals).values)[None])[0].numpy()
    session = StreamSession(backend)
    got = np.concatenate([session.push(SensorChunk(ts[a:b], vals[a:b])).outputs
                          for a, b in ((0, 7), (7, 8), (8, 31), (31, 50))])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kernel,pool,pooling", [((3, 3), 2, "attention"), ((4, 0), 1, "mean")])
def test_int8_export_of_the_new_layers_streams_close_to_float(tmp_path, kernel, pool, pooling):
    """int8 quantisation handles the conv front ends and attention pooling: the graph streams, close to float."""
    from rnnstream.export.onnx_export import export_with_report

    torch.manual_seed(6)
    model = crnn_classifier(input_dim=DIM, num_classes=len(LABELS), conv_channels=(4, 6), conv_kernel=kernel,
                            conv_pool=pool, hidden_size=16, pooling=pooling).eval()
    float_path = export_onnx(model, tmp_path / "f.onnx", FC, LABELS)
    rep = export_with_report(model, tmp_path / "q.onnx", FC, LABELS, quantize="int8")
    assert rep.quantization is not None and rep.quantization.agreement >= 0.9
    assert rep.quantization.quantized_ops.get("GRU (int8 weights)") == 1
    fb, qb = OnnxBackend(float_path, provider="cpu", threads=1), OnnxBackend(rep.path, provider="cpu", threads=1)
    assert qb.quantization == "int8" and qb.info.state_specs == fb.info.state_specs
    pf, pq = StreamSession(fb, sample_rate=RATE), StreamSession(qb, sample_rate=RATE)
    for chunk in np.array_split(SIGNAL, 4):
        rf, rq = pf.push(chunk), pq.push(chunk)
        np.testing.assert_allclose(rq.prediction.values, rf.prediction.values, atol=0.1)


@pytest.fixture(scope="module", params=[False, True], ids=["features", "raw-audio"])
def ensemble(request, tmp_path_factory):
    """Three GRU classifiers (mean pooling) of one normalisation as one streaming graph."""
    from rnnstream.models.ensemble import ensemble_of
    from rnnstream.models.rnn import rnn_classifier

    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = rnn_classifier(input_dim=DIM, num_classes=len(LABELS), hidden_size=10, num_layers=2, pooling="mean")
        with torch.no_grad():
            m.feat_mean.fill_(-5.0)
            m.feat_std.fill_(2.0)
        members.append(m.eval())
    model = ensemble_of(members).eval()
    return onnx_pair(model, tmp_path_factory.mktemp("ens"), raw_audio=request.param)


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(0, SIGNAL.size), max_size=8).map(sorted))
def test_ensemble_onnx_streaming_equals_torch_offline(ensemble, cuts):
    model, backend = ensemble
    assert [s.name for s in backend.info.state_specs][:3] == ["m0_h", "m0_pool_sum", "m0_pool_count"]
    assert backend.info.model_config.ensemble == 3
    assert_streams_like_offline(model, backend, SIGNAL, cuts)


def test_ensemble_exports_to_int8(ensemble, tmp_path):
    from rnnstream.export.onnx_export import export_with_report

    model, _ = ensemble
    rep = export_with_report(model, tmp_path / "int8.onnx", FC, LABELS, quantize="int8")
    assert rep.quantization is not None and rep.quantization.agreement is not None
    assert rep.quantization.agreement >= 0.9
    assert "an ensemble of 3" in rep.text()


@pytest.fixture(scope="module", params=[(False, ()), (True, ()), (False, (4, 6)), (True, (4, 6))],
                ids=["features", "raw-audio", "crnn-features", "crnn-raw-audio"])
def deltas(request, tmp_path_factory):
    """A GRU classifier reading the features and their deltas (``input_delta``; with a conv front end, as its second
    input channel), causal mean normalisation."""
    from rnnstream.models.rnn import ModelConfig, StreamingRNN

    raw_audio, conv = request.param
    torch.manual_seed(7)
    cfg = ModelConfig(input_dim=DIM, output_dim=len(LABELS), hidden_size=10, num_layers=2, pooling="mean",
                      input_norm="causal_mean", input_delta=True, conv_channels=conv, conv_kernel=(3, 3))
    model = StreamingRNN(cfg, feat_mean=torch.full((DIM,), -5.0), feat_std=torch.full((DIM,), 2.0)).eval()
    return onnx_pair(model, tmp_path_factory.mktemp("delta"), raw_audio=raw_audio)


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(0, SIGNAL.size), max_size=8).map(sorted))
def test_input_delta_onnx_streaming_equals_torch_offline(deltas, cuts):
    model, backend = deltas
    assert {"prev_input", "prev_seen"} <= {s.name for s in backend.info.state_specs}
    assert_streams_like_offline(model, backend, SIGNAL, cuts)

"""Residual forecasts (``ModelConfig.residual``): head(out_t) + z_t[target_dims] over the horizon.

Streaming still equals offline, the config round-trips, non-forecast tasks refuse it, and the exported
ONNX graph (self-verified by ``export_onnx``) streams the same forecasts through onnxruntime.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.models.rnn import ModelConfig, StreamingRNN, build_model
from rnnstream.pipeline.errors import ConfigError

D, H, TARGETS = 4, 3, (0, 2)


def _model(cell: str, residual: bool, seed: int = 0) -> StreamingRNN:
    cfg = ModelConfig(input_dim=D, output_dim=H * len(TARGETS), task="forecast", cell=cell, hidden_size=8,
                      num_layers=2, horizon=H, target_dims=TARGETS, residual=residual)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    return StreamingRNN(cfg, feat_mean=torch.randn(D, generator=g), feat_std=torch.rand(D, generator=g) + 0.5).eval()


def test_residual_adds_the_current_normalised_targets_to_every_horizon_step() -> None:
    res = _model("gru", residual=True)
    plain = build_model(dataclasses.replace(res.config, residual=False))
    plain.load_state_dict(res.state_dict())
    x = torch.randn(2, 7, D) * 3 + 1
    with torch.no_grad():
        diff = res.forecast_view(res(x)) - res.forecast_view(plain(x))  # [B, T, H, Dt]
    z = (x - res.feat_mean) / res.feat_std
    want = z[..., list(TARGETS)].unsqueeze(2).expand(-1, -1, H, -1)
    torch.testing.assert_close(diff, want, rtol=0, atol=1e-5)


@st.composite
def chunkings(draw):
    total = draw(st.integers(min_value=1, max_value=20))
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=total), max_size=5)))
    return total, [b - a for a, b in zip([0, *cuts], [*cuts, total])]


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
@settings(max_examples=15, deadline=None)
@given(chunks=chunkings(), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_residual_step_over_any_chunking_equals_forward(cell: str, chunks, batch: int, seed: int) -> None:
    model = _model(cell, residual=True, seed=seed)
    total, sizes = chunks
    x = torch.randn(batch, total, D, generator=torch.Generator().manual_seed(seed)) * 2
    with torch.no_grad():
        want = model(x)
        state, outs, t = model.initial_state(batch), [], 0
        for n in sizes:
            y, state = model.step(x[:, t:t + n], state)
            outs.append(y)
            t += n
    torch.testing.assert_close(torch.cat(outs, dim=1), want, rtol=0, atol=1e-5)


def test_residual_config_round_trips_and_is_forecast_only() -> None:
    cfg = _model("gru", residual=True).config
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    back = ModelConfig.from_dict(json.loads(cfg.to_json()))
    assert back.residual is True and back == cfg
    assert ModelConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "residual"}).residual is False
    for task, out in (("classify", 3), ("tag", 2), ("generate", D)):
        with pytest.raises(ConfigError, match="residual"):
            ModelConfig(input_dim=D, output_dim=out, task=task, residual=True)


def test_trainconfig_passes_residual_to_the_model_config() -> None:
    from rnnstream.models.train import TrainConfig

    class _Data:
        input_dim, output_dim, task, horizon, target_dims = D, H * len(TARGETS), "forecast", H, TARGETS

    assert TrainConfig(residual=True).model_config(_Data()).residual is True  # type: ignore[arg-type]
    assert TrainConfig().model_config(_Data()).residual is False  # type: ignore[arg-type]


def test_residual_forecaster_exports_and_streams_through_onnx(tmp_path) -> None:
    from rnnstream.export.onnx_export import export_with_report
    from rnnstream.pipeline.onnx_backend import OnnxBackend
    from rnnstream.pipeline.config import FeatureConfig

    fc = FeatureConfig.audio_default(sample_rate=8000, n_mels=8)
    dim = fc.dim
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    cfg = ModelConfig(input_dim=dim, output_dim=H * 2, task="forecast", cell="gru", hidden_size=12, num_layers=2,
                      horizon=H, target_dims=(0, 5), residual=True)
    model = StreamingRNN(cfg, feat_mean=rng.normal(-4.0, 1.0, dim).astype(np.float32),
                         feat_std=rng.uniform(1.0, 3.0, dim).astype(np.float32)).eval()
    rep = export_with_report(model, tmp_path / "res.onnx", fc)  # raises unless ONNX matches PyTorch
    assert rep.info.model_config.residual is True
    assert rep.checks and all(d <= rep.tolerance for _, d in rep.checks)

    backend = OnnxBackend(rep.path, threads=1)
    x = rng.normal(-4.0, 2.0, (2, 23, dim)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    states = {s.name: np.zeros((2, *s.shape), np.float32) for s in model.state_spec()}
    outs = []
    for a, b in ((0, 5), (5, 6), (6, 23)):
        y, states = backend.step(x[:, a:b], states)
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want, rtol=0, atol=1e-4)


def test_cli_options_parse() -> None:
    from experiments.etth1 import build_parser as etth1_parser
    from rnnstream.models.train import build_parser

    assert build_parser().parse_args(["--data", "d", "--out", "o", "--residual"]).residual is True
    assert build_parser().parse_args(["--data", "d", "--out", "o"]).residual is False
    args = etth1_parser().parse_args(["--residual", "--level-shift", "0.5"])
    assert args.residual is True and args.level_shift == 0.5

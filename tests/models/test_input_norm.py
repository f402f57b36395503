"""``input_norm="causal_mean"``: a running (causal) mean of the normalised features is subtracted, carried as
state, so chunked streaming equals offline and the ONNX graph carries it too."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import Tensor
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.models.backend import TorchBackend
from rnnstream.models.rnn import ModelConfig, StreamingRNN, rnn_classifier
from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.features import AudioFeaturizer
from rnnstream.pipeline.streaming import StreamSession
from tests.export.conftest import FC, LABELS, noise

DIM = FC.dim


def cmn_model(*, cell: str = "gru", pooling: str = "last", bidirectional: bool = False, seed: int = 0) -> StreamingRNN:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = rnn_classifier(input_dim=DIM, num_classes=len(LABELS), cell=cell, hidden_size=10, num_layers=2,
                          pooling=pooling, bidirectional=bidirectional)  # type: ignore[arg-type]
    model = StreamingRNN(dataclasses.replace(base.config, input_norm="causal_mean"),
                         feat_mean=rng.normal(-4.0, 1.0, DIM).astype(np.float32),
                         feat_std=rng.uniform(1.0, 3.0, DIM).astype(np.float32))
    return model.eval()


def reference_forward(model: StreamingRNN, x: Tensor) -> Tensor:
    """The definition, written out frame by frame: z_t - mean(z_1..z_t), then the plain (no-norm) model."""
    z = (x - model.feat_mean) / model.feat_std
    counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
    centred = z - torch.cumsum(z, 1) / counts
    plain = StreamingRNN(dataclasses.replace(model.config, input_norm="none"))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k not in ("feat_mean", "feat_std")},
                          strict=False)
    return plain.eval()(centred)  # plain has mean 0 / std 1, so it sees ``centred`` unchanged


def test_config_round_trip_and_validation() -> None:
    cfg = cmn_model().config
    assert cfg.input_norm == "causal_mean"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert ModelConfig(input_dim=3, output_dim=2).input_norm == "none"
    with pytest.raises(ConfigError, match="input_norm"):
        ModelConfig(input_dim=3, output_dim=2, input_norm="global")  # type: ignore[arg-type]


def test_state_spec_and_matches_definition() -> None:
    model = cmn_model(cell="lstm", pooling="mean")
    names = [s.name for s in model.state_spec()]
    assert names == ["h", "c", "norm_sum", "norm_count", "pool_sum", "pool_count"]
    assert dict((s.name, s.shape) for s in model.state_spec())["norm_sum"] == (DIM,)
    x = torch.randn(3, 17, DIM) * 2.0 - 3.0
    with torch.no_grad():
        y = model(x)
        np.testing.assert_allclose(y.numpy(), reference_forward(model, x).numpy(), rtol=0, atol=1e-5)
        # a constant per-band offset (gain / microphone EQ in log-mel) no longer changes the output
        y_shift = model(x + torch.linspace(-3.0, 5.0, DIM))
    np.testing.assert_allclose(y_shift.numpy(), y.numpy(), rtol=0, atol=1e-4)
    plain = StreamingRNN(dataclasses.replace(model.config, input_norm="none"), feat_mean=model.feat_mean,
                         feat_std=model.feat_std)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (plain.eval()(x + torch.linspace(-3.0, 5.0, DIM)) - plain(x)).abs().max() > 1e-2


@pytest.mark.parametrize("cell,pooling", [("gru", "last"), ("lstm", "mean"), ("rnn_tanh", "last")])
def test_step_over_any_chunking_equals_forward(cell: str, pooling: str) -> None:
    model = cmn_model(cell=cell, pooling=pooling)
    x = torch.randn(2, 23, DIM) * 1.5 - 4.0
    with torch.no_grad():
        want = model(x)

    @settings(max_examples=8, deadline=None, derandomize=True)
    @given(cuts=st.lists(st.integers(0, x.shape[1]), max_size=6).map(sorted))
    def check(cuts: list[int]) -> None:
        state = model.initial_state(2)
        outs = []
        with torch.no_grad():
            for a, b in zip([0, *cuts], [*cuts, x.shape[1]]):
                y, state = model.step(x[:, a:b], state)
                outs.append(y)
        np.testing.assert_allclose(torch.cat(outs, 1).numpy(), want.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(state["norm_count"].numpy(), np.full((2, 1), x.shape[1]))

    check()


def test_bidirectional_forward_masks_padding() -> None:
    model = cmn_model(bidirectional=True)
    a, b = torch.randn(1, 9, DIM) - 4.0, torch.randn(1, 14, DIM) - 4.0
    batch = torch.cat([torch.cat([a, torch.full((1, 5, DIM), 50.0)], 1), b])  # padding far from the data
    with torch.no_grad():
        y = model(batch, torch.tensor([9, 14]))
        np.testing.assert_allclose(y[0, :9].numpy(), model(a)[0].numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(y[1].numpy(), model(b)[0].numpy(), rtol=0, atol=1e-5)


def _offline(model: StreamingRNN, signal: np.ndarray) -> np.ndarray:
    feats = AudioFeaturizer(FC).featurize(signal)
    with torch.no_grad():
        return model(torch.from_numpy(feats)[None])[0].numpy()


def test_snapshot_restore_continues_identically() -> None:
    model = cmn_model(cell="lstm", pooling="mean")
    backend = TorchBackend(model, FC, LABELS)
    assert [s.name for s in backend.info.state_specs] == [s.name for s in model.state_spec()]
    signal = noise(0.41, seed=5)
    chunks = np.split(signal, [700, 1500, 2300, 2900])
    ref = StreamSession(backend, sample_rate=FC.audio.sample_rate)
    ref_out = [ref.push(c).outputs for c in chunks]
    first = StreamSession(backend, sample_rate=FC.audio.sample_rate)
    for c in chunks[:2]:
        first.push(c)
    assert float(first.states["norm_count"][0, 0]) == first.frames_seen > 0
    resumed = StreamSession.restore(backend, first.snapshot())
    got = [resumed.push(c).outputs for c in chunks[2:]]
    for g, w in zip(got, ref_out[2:]):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_allclose(np.concatenate(ref_out), _offline(model, signal), rtol=0, atol=1e-5)


def test_onnx_export_streams_like_torch(tmp_path) -> None:
    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.api import load_backend

    model = cmn_model(cell="gru", pooling="mean")
    path = export_onnx(model, tmp_path / "cmn.onnx", feature_config=FC, labels=LABELS)  # self-verifies
    backend = load_backend(path, provider="cpu", threads=1)
    assert backend.info.model_config.input_norm == "causal_mean"
    assert {"norm_sum", "norm_count"} <= {s.name for s in backend.info.state_specs}
    signal = noise(0.37, seed=3)
    want = _offline(model, signal)
    for cuts in ([], [1], [81, 82, 1000], [333, 2000, 2100]):
        session = StreamSession(backend, sample_rate=FC.audio.sample_rate)
        got = np.concatenate([session.push(c).outputs for c in np.split(signal, cuts)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

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


# ---------------------------------------------------------------------------------------------------
# Decay (exponential moving mean) and the training-mean prior (norm_decay, norm_prior)
# ---------------------------------------------------------------------------------------------------
def prior_model(decay: float, prior: float, *, cell: str = "gru", pooling: str = "last", seed: int = 0,
                bidirectional: bool = False) -> StreamingRNN:
    base = cmn_model(cell=cell, pooling=pooling, seed=seed, bidirectional=bidirectional)
    model = StreamingRNN(dataclasses.replace(base.config, norm_decay=decay, norm_prior=prior),
                         feat_mean=base.feat_mean, feat_std=base.feat_std)
    model.load_state_dict(base.state_dict())
    return model.eval()


def prior_reference(model: StreamingRNN, x: Tensor) -> Tensor:
    """The definition, frame by frame: S_t = a S_{t-1} + z_t, N_t = a N_{t-1} + 1, mean S_t / (N_t + prior a^t)."""
    a, prior = model.config.norm_decay, model.config.norm_prior
    z = (x - model.feat_mean) / model.feat_std
    s, n, out = torch.zeros_like(z[:, 0]), 0.0, []
    for t in range(z.shape[1]):
        s, n = a * s + z[:, t], a * n + 1.0
        out.append(z[:, t] - s / (n + prior * a ** (t + 1)))
    plain = StreamingRNN(dataclasses.replace(model.config, input_norm="none", norm_decay=1.0, norm_prior=0.0))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k not in ("feat_mean", "feat_std")},
                          strict=False)
    return plain.eval()(torch.stack(out, 1))


PRIORS = [(1.0, 25.0), (0.97, 0.0), (0.95, 40.0)]


def test_prior_config_round_trip_validation_and_unchanged_json() -> None:
    cfg = prior_model(0.95, 40.0).config
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert cfg.to_dict()["norm_decay"] == 0.95 and cfg.to_dict()["norm_prior"] == 40.0
    plain = cmn_model().config  # defaults: the JSON of configs from before these fields existed
    assert "norm_decay" not in plain.to_dict() and "norm_prior" not in plain.to_dict()
    assert ModelConfig.from_dict(plain.to_dict()) == plain
    assert [s.name for s in prior_model(0.9, 5.0).state_spec()] == [s.name for s in cmn_model().state_spec()]
    for bad in (dict(norm_decay=0.0), dict(norm_decay=1.5), dict(norm_prior=-1.0), dict(norm_prior=float("inf"))):
        with pytest.raises(ConfigError, match="norm_"):
            ModelConfig(input_dim=3, output_dim=2, input_norm="causal_mean", **bad)
    with pytest.raises(ConfigError, match="causal_mean"):
        ModelConfig(input_dim=3, output_dim=2, norm_prior=10.0)


@pytest.mark.parametrize("decay,prior", PRIORS)
def test_prior_matches_definition(decay: float, prior: float) -> None:
    model = prior_model(decay, prior, cell="lstm", pooling="mean")
    x = torch.randn(2, 31, DIM) * 1.5 - 4.0
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), prior_reference(model, x).numpy(), rtol=0, atol=1e-5)
        # the prior: a stream that sits at the training mean is left unchanged (nothing to subtract)
        at_mean = model.feat_mean.expand(1, 6, DIM)
        plain = StreamingRNN(dataclasses.replace(model.config, input_norm="none", norm_decay=1.0, norm_prior=0.0),
                             feat_mean=model.feat_mean, feat_std=model.feat_std)
        plain.load_state_dict(model.state_dict())
        np.testing.assert_allclose(model(at_mean).numpy(), plain.eval()(at_mean).numpy(), rtol=0, atol=1e-6)


def test_long_offline_sequences_match_chunked_blocks() -> None:
    model = prior_model(0.99, 30.0)  # > 256 frames: the offline path runs in blocks
    x = torch.randn(1, 700, DIM) - 4.0
    with torch.no_grad():
        want = model(x)
        got, state = [], model.initial_state(1)
        for a in range(0, 700, 97):
            y, state = model.step(x[:, a:a + 97], state)
            got.append(y)
    np.testing.assert_allclose(torch.cat(got, 1).numpy(), want.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("decay,prior", PRIORS)
@pytest.mark.parametrize("cell,pooling", [("gru", "last"), ("lstm", "mean")])
@settings(max_examples=10, deadline=None)
@given(total=st.integers(1, 30), cuts=st.lists(st.integers(0, 30), max_size=6), batch=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_prior_streaming_equals_offline_under_random_chunkings(decay, prior, cell, pooling, total, cuts, batch,
                                                               seed) -> None:
    model = prior_model(decay, prior, cell=cell, pooling=pooling)
    x = torch.randn(batch, total, DIM, generator=torch.Generator().manual_seed(seed)) * 2.0 - 4.0
    edges = [0, *sorted(min(c, total) for c in cuts), total]
    with torch.no_grad():
        want = model(x)
        state, outs = model.initial_state(batch), []
        for a, b in zip(edges[:-1], edges[1:]):
            y, state = model.step(x[:, a:b], state)
            outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), want, rtol=1e-5, atol=1e-5)


def test_prior_bidirectional_forward_ignores_padding() -> None:
    model = prior_model(0.95, 20.0, bidirectional=True)
    a, b = torch.randn(1, 9, DIM) - 4.0, torch.randn(1, 14, DIM) - 4.0
    batch = torch.cat([torch.cat([a, torch.full((1, 5, DIM), 50.0)], 1), b])
    with torch.no_grad():
        y = model(batch, torch.tensor([9, 14]))
        np.testing.assert_allclose(y[0, :9].numpy(), model(a)[0].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("decay,prior", [(1.0, 25.0), (0.95, 40.0)])
def test_prior_onnx_streams_like_torch(tmp_path, decay: float, prior: float) -> None:
    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.api import load_backend

    model = prior_model(decay, prior, pooling="mean")
    path = export_onnx(model, tmp_path / "prior.onnx", feature_config=FC, labels=LABELS)  # self-verifies
    backend = load_backend(path, provider="cpu", threads=1)
    assert (backend.info.model_config.norm_decay, backend.info.model_config.norm_prior) == (decay, prior)
    signal = noise(0.37, seed=4)
    want = _offline(model, signal)
    for cuts in ([], [1], [81, 82, 1000], [333, 2000, 2100]):
        session = StreamSession(backend, sample_rate=FC.audio.sample_rate)
        got = np.concatenate([session.push(c).outputs for c in np.split(signal, cuts)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

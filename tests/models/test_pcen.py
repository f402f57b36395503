"""``input_norm="pcen"``: per-channel energy normalisation of log-mel inputs, carried as state ``pcen_m``: the
formula frame by frame, streaming == offline under any chunking, and the config and training checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.models.input_norm import PCEN_EPS, decayed_sums
from rnnstream.models.rnn import ModelConfig, StreamingRNN
from rnnstream.pipeline.errors import ConfigError
from tests.models.test_streaming_property import _streamed, chunkings

D = 6


def _model(seed: int = 0, *, decay: float = 0.9, conv: tuple[int, ...] = (), pooling: str = "mean") -> StreamingRNN:
    torch.manual_seed(seed)
    cfg = ModelConfig(input_dim=D, output_dim=3, hidden_size=8, num_layers=1, pooling=pooling, input_norm="pcen",
                      norm_decay=decay, conv_channels=conv, conv_kernel=(3, 3), conv_pool=1)
    model = StreamingRNN(cfg, feat_mean=torch.linspace(-4.0, -1.0, D), feat_std=torch.full((D,), 2.0)).eval()
    with torch.no_grad():  # trained exponents differ per band
        model.pcen.log_alpha.add_(0.01 * torch.randn(D))
        model.pcen.log_r.add_(0.1 * torch.randn(D))
    return model


def test_decayed_sums_follow_the_recurrence_across_blocks():
    v, s0 = torch.randn(2, 600, 3), torch.randn(2, 3)
    got = decayed_sums(v, s0, 0.95)  # 600 frames: three blocks offline
    want, s = [], s0
    for t in range(v.shape[1]):
        s = 0.95 * s + v[:, t]
        want.append(s)
    torch.testing.assert_close(got, torch.stack(want, dim=1), rtol=1e-4, atol=1e-4)


def test_pcen_is_the_papers_formula_frame_by_frame():
    """``M_t = a M_{t-1} + (1 - a) E_t`` from ``M_{-1} = exp(feat_mean)``; ``(E / (eps + M)^alpha + delta)^r -
    delta^r`` with the trained per-band exponents; what the RNN reads."""
    model = _model(1, decay=0.8)
    pcen = model.pcen
    x = torch.randn(1, 9, D) - 3.0
    got, _ = pcen(x, torch.zeros(1, D), model.feat_mean)
    alpha, delta, r = (torch.exp(p).detach() for p in (pcen.log_alpha, pcen.log_delta, pcen.log_r))
    m = torch.exp(model.feat_mean)
    for t in range(9):
        e = torch.exp(x[0, t])
        m = 0.8 * m + 0.2 * e
        want = (e / (PCEN_EPS + m) ** alpha + delta) ** r - delta ** r
        torch.testing.assert_close(got[0, t], want, rtol=1e-5, atol=1e-6)


def test_pcen_removes_a_constant_gain_once_the_level_has_adapted():
    """A gain of g on the energies (``x + log g``) changes the output by ``g^(1 - alpha)`` only in the ratio: with
    alpha near 1 and the level adapted, the outputs of a quiet and a loud copy nearly agree."""
    model = _model(2, decay=0.5)
    x = torch.randn(1, 60, D) - 2.0
    with torch.no_grad():
        quiet, _ = model.pcen(x, torch.zeros(1, D), model.feat_mean)
        loud, _ = model.pcen(x + np.log(100.0), torch.zeros(1, D), model.feat_mean)  # 40 dB louder
    late = slice(20, None)
    assert float((quiet[:, late] - loud[:, late]).abs().max()) < 0.2 * float(quiet[:, late].abs().max())


@pytest.mark.parametrize("conv,pooling", [((), "mean"), ((4,), "last")])
@settings(max_examples=12, deadline=None)
@given(chunks=chunkings(), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_pcen_models_stream_like_offline(conv, pooling, chunks, batch, seed):
    total, sizes = chunks
    model = _model(seed % 7, conv=conv, pooling=pooling)
    x = torch.randn(batch, total, D, generator=torch.Generator().manual_seed(seed)) - 3.0
    with torch.no_grad():
        torch.testing.assert_close(_streamed(model, x, sizes), model(x), rtol=1e-5, atol=1e-5)


def test_pcen_state_and_parameters():
    model = _model()
    assert [s.name for s in model.state_spec()] == ["h", "pcen_m", "pool_sum", "pool_count"]
    assert {"pcen.log_alpha", "pcen.log_delta", "pcen.log_r"} <= set(dict(model.named_parameters()))
    plain = StreamingRNN(ModelConfig(input_dim=D, output_dim=3, hidden_size=8, num_layers=1))
    assert not any(name.startswith("pcen") for name, _ in plain.named_parameters())  # other models unchanged


@pytest.mark.parametrize("bad,match", [(dict(input_norm="pcen"), "norm_decay a .*got 1.0"),
                                       (dict(input_norm="pcen", norm_decay=0.9, norm_prior=5.0), "norm_prior"),
                                       (dict(norm_decay=0.9), "norm_decay applies"),
                                       (dict(input_norm="pcem"), "none, causal_mean, pcen.*'pcem'")])
def test_pcen_config_is_checked(bad, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(input_dim=D, output_dim=3, **bad)


def test_training_refuses_pcen_without_log_mel_features():
    from rnnstream.models.data import tensor_data
    from rnnstream.models.train import TrainConfig, train
    from rnnstream.pipeline.config import AudioConfig, FeatureConfig

    mfcc = FeatureConfig(kind="audio", audio=AudioConfig(sample_rate=8000, n_mels=8, feature="mfcc", n_mfcc=D))
    data = tensor_data("classify", [np.random.default_rng(0).normal(size=(5, D)).astype(np.float32)] * 4,
                       ["a", "b", "a", "b"])
    cfg = TrainConfig(epochs=1, hidden_size=4, input_norm="pcen", norm_decay=0.9)
    with pytest.raises(ConfigError, match="log-mel features .*'mfcc'"):
        train(data, cfg, feature_config=mfcc)
    with pytest.raises(ConfigError, match="sensor or unknown features"):
        train(data, cfg)

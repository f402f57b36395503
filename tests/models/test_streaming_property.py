"""Streaming equals offline: ``step`` over any chunking == ``forward`` over the whole sequence (float32, 1e-5)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.models.rnn import ModelConfig, StreamingRNN
from rnnstream.pipeline.errors import StateError

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
# (task, pooling): the task heads
HEADS = [("classify", "last"), ("classify", "mean"), ("classify", "attention"), ("tag", "last"),
         ("forecast", "last"), ("generate", "last")]
D = 3


def _model(cell: str, task: str, pooling: str, layers: int, seed: int) -> StreamingRNN:
    out = {"classify": 4, "tag": 2, "forecast": 2 * 2, "generate": D}[task]
    cfg = ModelConfig(input_dim=D, output_dim=out, task=task, cell=cell, hidden_size=8, num_layers=layers,
                      pooling=pooling, horizon=2 if task == "forecast" else 1,
                      target_dims=(0, 2) if task == "forecast" else ())
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = StreamingRNN(cfg, feat_mean=torch.randn(D, generator=g), feat_std=torch.rand(D, generator=g) + 0.5)
    return model.eval()


def _streamed(model: StreamingRNN, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """``model.step`` over ``x [B, T, D]`` cut into chunks of ``sizes`` (then the rest), outputs concatenated."""
    state, outs, t = model.initial_state(x.shape[0]), [], 0
    for n in [*sizes, x.shape[1] - sum(sizes)]:
        y, state = model.step(x[:, t: t + n], state)
        outs.append(y)
        t += n
    return torch.cat(outs, dim=1)


@st.composite
def chunkings(draw):
    total = draw(st.integers(min_value=1, max_value=24))
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=total), max_size=6)))
    return total, [b - a for a, b in zip([0, *cuts], [*cuts, total])]  # sizes may be 0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("task,pooling", HEADS)
@settings(max_examples=12)
@given(chunks=chunkings(), batch=st.integers(1, 3), layers=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_step_over_random_chunkings_equals_forward(cell, task, pooling, chunks, batch, layers, seed):
    total, sizes = chunks
    model = _model(cell, task, pooling, layers, seed)
    x = torch.randn(batch, total, D, generator=torch.Generator().manual_seed(seed)) * 2
    with torch.no_grad():
        full = model(x)
        state = model.initial_state(batch)
        outs, t = [], 0
        for n in sizes:
            y, state = model.step(x[:, t: t + n], state)
            assert y.shape == (batch, n, model.config.output_dim)
            outs.append(y)
            t += n
    streamed = torch.cat(outs, dim=1)
    assert streamed.shape == full.shape
    torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_forwards_but_refuses_to_stream(cell):
    cfg = ModelConfig(input_dim=D, output_dim=3, task="classify", cell=cell, hidden_size=8, num_layers=1,
                      bidirectional=True)
    model = StreamingRNN(cfg).eval()
    x = torch.randn(2, 7, D)
    lengths = torch.tensor([7, 4])
    y = model(x, lengths)
    assert y.shape == (2, 7, 3)
    # the backward direction starts at each sequence's own end: padding changes nothing at valid frames
    torch.testing.assert_close(model(x[1:, :4]), y[1:, :4], rtol=1e-5, atol=1e-5)
    with pytest.raises(StateError, match="bidirectional models are offline only.*future frames"):
        model.step(x, model.initial_state(2))


@pytest.mark.parametrize("kernel,pool,channels", [((3, 3), 2, (4, 6)), ((5, 1), 1, (3,)), ((1, 3), 2, (2, 2)),
                                                  ((2, 5), 3, (4,)),
                                                  ((4, 0), 1, (5, 6))])
@pytest.mark.parametrize("input_norm,pooling", [("none", "last"), ("causal_mean", "mean"), ("none", "attention")])
@settings(max_examples=10)
@given(chunks=chunkings(), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_crnn_front_end_streams_like_offline(kernel, pool, channels, input_norm, pooling, chunks, batch, seed):
    """The causal conv front end carries its left context as state: step over any chunking == forward."""
    total, sizes = chunks
    dim = 9
    cfg = ModelConfig(input_dim=dim, output_dim=3, cell="gru", hidden_size=8, num_layers=1, pooling=pooling,
                      input_norm=input_norm, conv_channels=channels, conv_kernel=kernel, conv_pool=pool)
    torch.manual_seed(seed)
    model = StreamingRNN(cfg).eval()
    conv_states = [s for s in model.state_spec() if s.name.startswith("conv")]
    assert len(conv_states) == (len(channels) if kernel[0] > 1 else 0)
    x = torch.randn(batch, total, dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = model(x)
        streamed = _streamed(model, x, sizes)
    torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_pooled_bidirectional_ignores_padding(pooling):
    """Offline bidirectional models pool only each sequence's own frames (padding weighs nothing)."""
    cfg = ModelConfig(input_dim=D, output_dim=3, cell="gru", hidden_size=8, num_layers=1, bidirectional=True,
                      pooling=pooling)
    torch.manual_seed(2)
    model = StreamingRNN(cfg).eval()
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        y = model(x, torch.tensor([9, 5]))
        torch.testing.assert_close(model(x[1:, :5]), y[1:, :5], rtol=1e-5, atol=1e-5)


def test_attention_pooling_weighs_frames_by_a_bounded_learned_score():
    """pooling='attention' is a weighted running mean; with a zero score it is exactly the mean pooling."""
    from rnnstream.pipeline.errors import ConfigError
    from rnnstream.pipeline.model_config import ATTENTION_BOUND

    cfg = ModelConfig(input_dim=D, output_dim=3, hidden_size=8, num_layers=1, pooling="attention")
    torch.manual_seed(1)
    att = StreamingRNN(cfg).eval()
    mean = StreamingRNN(dataclasses.replace(cfg, pooling="mean")).eval()
    mean.load_state_dict({k: v for k, v in att.state_dict().items() if not k.startswith("pool_score")})
    x = torch.randn(2, 11, D)
    with torch.no_grad():
        assert not torch.allclose(att(x), mean(x), atol=1e-4)  # a learned score changes the pooled output
        att.pool_score.weight.zero_()
        att.pool_score.bias.fill_(0.3)  # equal weights: the plain running mean
        torch.testing.assert_close(att(x), mean(x), rtol=1e-5, atol=1e-6)
        att.pool_score.bias.fill_(1e6)  # saturated scores stay finite
        w = att._frame_weights(torch.randn(1, 4, 8))
        assert torch.isfinite(w).all() and float(w.max()) <= float(torch.exp(torch.tensor(ATTENTION_BOUND))) * 1.0001
    assert [s.name for s in att.state_spec()][-2:] == ["pool_sum", "pool_count"]
    with pytest.raises(ConfigError, match="pooling='attention' applies to task 'classify' only"):
        ModelConfig(input_dim=D, output_dim=2, task="tag", pooling="attention")
    with pytest.raises(ConfigError, match="pooling must be one of"):
        ModelConfig(input_dim=D, output_dim=2, pooling="max")


def test_crnn_config_is_validated_and_round_trips():
    from rnnstream.pipeline.errors import ConfigError

    cfg = ModelConfig(input_dim=8, output_dim=2, conv_channels=(4, 8), conv_kernel=(3, 3), conv_pool=2)
    assert cfg.conv_bands() == [8, 4, 2] and cfg.rnn_input_size == 16
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert "conv_channels" not in ModelConfig(input_dim=8, output_dim=2).to_dict()  # old configs read the same
    fcn = ModelConfig(input_dim=8, output_dim=2, conv_channels=(4, 6), conv_kernel=(5, 0), conv_pool=1)
    assert fcn.conv_bands() == [8, 1, 1] and fcn.rnn_input_size == 6  # a temporal conv across all 8 features
    assert [s.shape for s in fcn.state_specs() if s.name.startswith("conv")] == [(4, 1, 8), (4, 4, 1)]
    assert ModelConfig.from_dict(fcn.to_dict()) == fcn
    for bad in (dict(conv_channels=(4,), conv_kernel=(3, 2)), dict(conv_channels=(0,)),
                dict(conv_channels=(4, 4, 4, 4), conv_pool=2), dict(conv_channels=(4,), conv_kernel=(3, -1)),
                dict(conv_channels=(4,), conv_kernel=(3, 0), conv_pool=2)):
        with pytest.raises(ConfigError):
            ModelConfig(input_dim=8, output_dim=2, **bad)


@settings(max_examples=15)
@given(chunks=chunkings(), period=st.integers(2, 7), seed=st.integers(0, 2**16))
def test_seasonal_residual_forecasts_stream_like_offline(chunks, period, seed):
    """Forecasts relative to seasonal-naive carry the last ``period`` frames as state: streaming == offline."""
    from rnnstream.models.rnn import rnn_forecaster

    total, sizes = chunks
    torch.manual_seed(seed)
    model = rnn_forecaster(input_dim=D, horizon=2, target_dims=(0, 2), hidden_size=6, num_layers=1, residual=True,
                           seasonal_period=period).eval()
    x = torch.randn(1, total, D, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = model(x)
        streamed = _streamed(model, x, sizes)
    torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)


def test_seasonal_residual_adds_the_value_one_period_before_each_step():
    from rnnstream.models.rnn import rnn_forecaster

    model = rnn_forecaster(input_dim=1, horizon=3, target_dims=(0,), hidden_size=4, num_layers=1, residual=True,
                           seasonal_period=4).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        y = model(torch.arange(1.0, 11.0).view(1, 10, 1))[0]  # frames 1..10, head outputs zero
    # frame t=5 (value 6): steps k=1..3 look at frames t+k-4 = 2, 3, 4 (values 3, 4, 5)
    assert y[5].tolist() == [3.0, 4.0, 5.0]
    assert y[0].tolist() == [0.0, 0.0, 0.0]  # before the stream began: zeros (the normalised mean)


@settings(max_examples=15)
@given(chunks=chunkings(), seed=st.integers(0, 2**16))
def test_input_differences_stream_like_offline(chunks, seed):
    """``input_diff`` carries the previous normalised frame as state: streaming == offline."""
    total, sizes = chunks
    torch.manual_seed(seed)
    cfg = ModelConfig(input_dim=D, output_dim=2 * 2, task="forecast", horizon=2, target_dims=(0, 1), hidden_size=6,
                      num_layers=1, residual=True, seasonal_period=3, input_diff=True)
    model = StreamingRNN(cfg).eval()
    x = torch.randn(2, total, D, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = model(x)
        streamed = _streamed(model, x, sizes)
    torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell,conv", [("gru", ()), ("lstm", ()), ("gru", (3, 4))])
@pytest.mark.parametrize("input_norm,pooling", [("none", "last"), ("causal_mean", "mean")])
@settings(max_examples=10)
@given(chunks=chunkings(), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_input_deltas_stream_like_offline(cell, conv, input_norm, pooling, chunks, batch, seed):
    """``input_delta`` appends the change since the previous frame (carried as state), or gives it to the conv
    front end as a second channel: streaming == offline."""
    total, sizes = chunks
    torch.manual_seed(seed)
    cfg = ModelConfig(input_dim=D, output_dim=4, cell=cell, hidden_size=6, num_layers=2, pooling=pooling,
                      input_norm=input_norm, input_delta=True, conv_channels=conv, conv_kernel=(3, 3), conv_pool=1)
    model = StreamingRNN(cfg).eval()
    assert model.rnn.input_size == (4 * D if conv else 2 * D)
    x = torch.randn(batch, total, D, generator=torch.Generator().manual_seed(seed)) * 2
    with torch.no_grad():
        full = model(x)
        streamed = _streamed(model, x, sizes)
    torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)


def test_input_deltas_are_the_change_since_the_previous_frame():
    """The RNN reads ``[z_t, z_t - z_{t-1}]`` (``z_{-1} = z_0``: the first change is zero): each half of its input
    weights acts as a plain model's input weights would on the features, or on their differences."""
    torch.manual_seed(0)
    delta = StreamingRNN(ModelConfig(input_dim=D, output_dim=4, hidden_size=5, num_layers=1, input_delta=True)).eval()
    plain = StreamingRNN(ModelConfig(input_dim=D, output_dim=4, hidden_size=5, num_layers=1)).eval()
    plain.load_state_dict({k: v for k, v in delta.state_dict().items() if k != "rnn.weight_ih_l0"}, strict=False)
    x = torch.randn(2, 9, D)
    prev = torch.cat((x[:, :1], x[:, :-1]), dim=1)
    w = delta.rnn.weight_ih_l0.detach().clone()  # [3H, 2D]: features, then deltas
    with torch.no_grad():
        delta.rnn.weight_ih_l0[:, D:].zero_()
        plain.rnn.weight_ih_l0.copy_(w[:, :D])
        torch.testing.assert_close(delta(x), plain(x))
        delta.rnn.weight_ih_l0.copy_(w)
        delta.rnn.weight_ih_l0[:, :D].zero_()
        plain.rnn.weight_ih_l0.copy_(w[:, D:])
        torch.testing.assert_close(delta(x), plain(x - prev))


def test_a_conv_front_end_reads_the_deltas_as_its_second_channel():
    torch.manual_seed(1)
    kw = dict(input_dim=6, output_dim=4, hidden_size=5, num_layers=1, conv_channels=(3,), conv_kernel=(2, 3),
              conv_pool=1)
    delta = StreamingRNN(ModelConfig(**kw, input_delta=True)).eval()
    plain = StreamingRNN(ModelConfig(**kw)).eval()
    conv_w = "frontend.convs.0.weight"  # [3, c_in, 2, 3]
    plain.load_state_dict({k: v for k, v in delta.state_dict().items() if k != conv_w}, strict=False)
    x = torch.randn(2, 7, 6)
    prev = torch.cat((x[:, :1], x[:, :-1]), dim=1)
    w = delta.state_dict()[conv_w].clone()
    with torch.no_grad():
        for channel, inputs in ((0, x), (1, x - prev)):
            delta.frontend.convs[0].weight.zero_()
            delta.frontend.convs[0].weight[:, channel] = w[:, channel]
            plain.frontend.convs[0].weight.copy_(w[:, channel: channel + 1])
            torch.testing.assert_close(delta(x), plain(inputs))


def test_input_delta_config_is_checked_and_round_trips():
    from rnnstream.pipeline.errors import ConfigError

    cfg = ModelConfig(input_dim=D, output_dim=4, input_delta=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert [s.name for s in cfg.state_specs()][-2:] == ["prev_input", "prev_seen"]
    assert "input_delta" not in ModelConfig(input_dim=D, output_dim=4).to_dict()  # old configs read as before
    crnn = ModelConfig(input_dim=8, output_dim=4, input_delta=True, conv_channels=(3,), conv_kernel=(2, 3))
    assert crnn.rnn_input_size == 3 * 4 and [s.shape for s in crnn.state_specs()][1] == (1, 2, 8)  # 2 channels in
    for bad, match in ((dict(input_diff=True), "exclude each other"), (dict(bidirectional=True), "streaming")):
        with pytest.raises(ConfigError, match=match):
            ModelConfig(input_dim=D, output_dim=4, input_delta=True, **bad)


def test_input_differences_make_persistence_residual_forecasts_level_free():
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=D, output_dim=2 * 2, task="forecast", horizon=2, target_dims=(0, 1), hidden_size=6,
                      num_layers=1, residual=True, input_diff=True)
    model = StreamingRNN(cfg).eval()
    x = torch.randn(2, 12, D)
    with torch.no_grad():
        full, shifted = model(x), model(x + 5.0)
    # A level shift changes only the first frame's difference; later forecasts move by exactly the shift.
    torch.testing.assert_close(shifted[:, 1:] - full[:, 1:], torch.full_like(full[:, 1:], 5.0), rtol=0, atol=1e-4)

"""Ensembles: the combination rule, streaming == offline over random chunkings, checkpoints, config, training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.models.checkpoint import load_checkpoint, save_checkpoint
from rnnstream.models.ensemble import StreamingEnsemble, combine_outputs, ensemble_of
from rnnstream.models.ensemble_train import member_seed
from rnnstream.models.rnn import ModelConfig, StreamingRNN, build_model
from rnnstream.models.train import TrainConfig, train
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ConfigError, StateError
from rnnstream.pipeline.model_config import base_state_name
from tests.models.test_streaming_property import _model, _streamed, chunkings
from tests.models.test_train import _classify

D = 3


@pytest.fixture(scope="module")
def tiny_classify():
    """Three classes told apart by which channel is raised; training and validation data."""
    train_d = _classify(40, 0, dim=D)
    return train_d, _classify(12, 1, labels=train_d.labels, dim=D)


def _ensemble(cell: str, task: str, pooling: str, seed: int, n: int = 3) -> StreamingEnsemble:
    first = _model(cell, task, pooling, 1, seed)
    members = [first]
    for i in range(1, n):  # other weights, the same normalisation
        torch.manual_seed(seed + i)
        m = StreamingRNN(first.config, feat_mean=first.feat_mean, feat_std=first.feat_std).eval()
        members.append(m)
    return ensemble_of(members).eval()


def test_logit_combination_is_the_log_of_the_mean_probability():
    ys = [torch.randn(2, 5, 4) * 3 for _ in range(3)]
    got = combine_outputs(ys, logits=True)
    want = torch.stack([torch.softmax(y, -1) for y in ys]).mean(0)
    torch.testing.assert_close(torch.softmax(got, -1), want)
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(2, 5))  # log probabilities already
    torch.testing.assert_close(combine_outputs(ys, logits=False), torch.stack(ys).mean(0))


def test_logit_combination_stays_finite_where_a_probability_underflows():
    ys = [torch.tensor([[[0.0, -1e4]]]), torch.tensor([[[0.0, -2e4]]])]
    out = combine_outputs(ys, logits=True)
    assert torch.isfinite(out).all()
    assert out[0, 0, 0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("task,pooling", [("classify", "last"), ("classify", "mean"), ("classify", "attention"),
                                          ("tag", "last"), ("forecast", "last")])
@settings(max_examples=8, deadline=None)
@given(chunks=chunkings(), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_ensemble_step_over_random_chunkings_equals_forward(cell, task, pooling, chunks, batch, seed):
    total, sizes = chunks
    ens = _ensemble(cell, task, pooling, seed)
    x = torch.randn(batch, total, D, generator=torch.Generator().manual_seed(seed)) * 2
    with torch.no_grad():
        full = ens(x)
        streamed = _streamed(ens, x, sizes)
    torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and each member's probabilities (or forecasts), averaged, are the ensemble's
        parts = [m(x) for m in ens.members]
    if ens.config.outputs_logits:
        torch.testing.assert_close(torch.softmax(full, -1), torch.stack([p.softmax(-1) for p in parts]).mean(0))
    else:
        torch.testing.assert_close(full, torch.stack(parts).mean(0))


def test_states_are_each_members_under_its_prefix():
    ens = _ensemble("lstm", "classify", "mean", seed=1, n=2)
    names = [s.name for s in ens.state_spec()]
    assert names == ["m0_h", "m0_c", "m0_pool_sum", "m0_pool_count", "m1_h", "m1_c", "m1_pool_sum", "m1_pool_count"]
    assert [base_state_name(n) for n in names[:4]] == ["h", "c", "pool_sum", "pool_count"]
    state = ens.initial_state(2)
    _, new = ens.step(torch.randn(2, 4, D), state)
    with torch.no_grad():
        _, own = ens.members[1].step(torch.randn(2, 0, D), ens.members[1].initial_state(2))
    assert set(new) == set(names) and set(own) == {"h", "c", "pool_sum", "pool_count"}
    del state["m1_c"]
    with pytest.raises(StateError, match="m1_c"):
        ens.step(torch.randn(2, 4, D), state)


def test_checkpoint_round_trip_rebuilds_the_ensemble(tmp_path):
    ens = _ensemble("gru", "classify", "mean", seed=2)
    path = str(tmp_path / "e.pt")
    save_checkpoint(path, ens, FeatureConfig.audio_default(), labels=["a", "b", "c", "d"])
    ck = load_checkpoint(path)
    assert isinstance(ck.model, StreamingEnsemble) and ck.model.config.ensemble == 3
    assert ck.model.weights_hash() == ens.weights_hash() and ck.model.stats_hash() == ens.stats_hash()
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), ens(x))


def test_config_ensemble_field():
    one = ModelConfig(input_dim=D, output_dim=4)
    assert "ensemble" not in one.to_dict()  # single models' configs and hashes read as before
    three = dataclasses.replace(one, ensemble=3)
    assert ModelConfig.from_dict(three.to_dict()) == three and three.member == one
    assert [s.name for s in three.state_specs()] == ["m0_h", "m1_h", "m2_h"]
    assert isinstance(build_model(three), StreamingEnsemble) and isinstance(build_model(one), StreamingRNN)
    with pytest.raises(ConfigError, match="ensemble"):
        ModelConfig(input_dim=D, output_dim=4, ensemble=0)
    with pytest.raises(ConfigError, match="generate"):
        ModelConfig(input_dim=D, output_dim=D, task="generate", ensemble=2)


def test_ensemble_of_refuses_what_cannot_be_joined():
    a = _model("gru", "classify", "last", 1, seed=0)
    with pytest.raises(ConfigError, match="at least 2"):
        ensemble_of([a])
    other = _model("gru", "classify", "mean", 1, seed=0)
    with pytest.raises(ConfigError, match="one single-model config"):
        ensemble_of([a, other])
    shifted = StreamingRNN(a.config, feat_mean=a.feat_mean + 1, feat_std=a.feat_std)
    with pytest.raises(ConfigError, match="normalisation"):
        ensemble_of([a, shifted])


def test_training_an_ensemble_trains_member_zero_as_the_single_run(tiny_classify, tmp_path):
    train_d, val_d = tiny_classify
    cfg = TrainConfig(hidden_size=8, num_layers=1, epochs=2, seed=5, device="cpu", progress=False)
    single = train(train_d, cfg, val_data=val_d)
    res = train(train_d, dataclasses.replace(cfg, ensemble=2), val_data=val_d,
                checkpoint=str(tmp_path / "model.pt"))
    assert isinstance(res.model, StreamingEnsemble) and len(res.members) == 2
    assert member_seed(5, 0) == 5 and member_seed(5, 1) == 1005
    assert res.members[0].model.weights_hash() == single.model.weights_hash()
    assert res.members[1].model.weights_hash() != single.model.weights_hash()
    assert set(res.metrics) == {"val"} and 0.0 <= res.metrics["val"]["accuracy"] <= 1.0
    assert (tmp_path / "member0" / "model.pt").exists() and (tmp_path / "member1" / "metrics.json").exists()
    loaded = load_checkpoint(str(tmp_path / "model.pt")).model
    assert loaded.weights_hash() == res.model.weights_hash()
    with pytest.raises(ConfigError, match="from scratch"):
        train(train_d, dataclasses.replace(cfg, ensemble=2), model=single.model)


def test_an_ensemble_costs_its_members_forward_passes():
    ens = _ensemble("gru", "tag", "last", seed=3, n=2)
    x = torch.randn(1, 6, D)
    calls = []
    for m in ens.members:
        m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        ens(x)
    assert len(calls) == 2
    assert np.isfinite(ens(x).detach().numpy()).all()

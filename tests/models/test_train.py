"""Training: it learns, checkpoints round-trip and resume, TBPTT, gradient warnings, and bad input is named."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from rnnstream.models.checkpoint import load_checkpoint
from rnnstream.models.data import SequenceData, forecast_data, tensor_data
from rnnstream.models.rnn import ModelConfig, StreamingRNN
from rnnstream.models.train import GradientWarning, TrainConfig, evaluate, train
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import Example
from rnnstream.pipeline.errors import CheckpointError, ConfigError, DatasetError, ShapeError, TrainingDivergedError

D = 4
FC = FeatureConfig.sensor_default([f"c{i}" for i in range(D)])
TINY = dict(hidden_size=16, num_layers=1, lr=1e-2, batch_size=16, progress=False)


def _classify(n: int, seed: int, labels=None, dim: int = D):
    """Label k <=> channel k carries an offset; sequences of 4..15 frames."""
    rng = np.random.default_rng(seed)
    seqs, ys = [], []
    for _ in range(n):
        k = int(rng.integers(0, 3))
        x = rng.normal(size=(int(rng.integers(4, 16)), dim)).astype(np.float32)
        x[:, k] += 1.5
        seqs.append(x)
        ys.append(f"k{k}")
    fc = FC if dim == D else FeatureConfig.sensor_default([f"c{i}" for i in range(dim)])
    return tensor_data("classify", seqs, ys, labels=labels, feature_config=fc)


@pytest.fixture(scope="module")
def cls_data():
    tr = _classify(96, 0)
    return tr, _classify(48, 1, labels=tr.labels)


def _weights(model: StreamingRNN) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_learns_a_tiny_classification_task_and_checkpoint_round_trips(cls_data, tmp_path):
    tr, va = cls_data
    ck = str(tmp_path / "run" / "model.pt")
    res = train(tr, TrainConfig(epochs=4, **TINY), val_data=va, checkpoint=ck)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert res.metrics["val"]["accuracy"] > 0.8  # chance is 1/3
    assert np.asarray(res.metrics["val"]["confusion"]).sum() == len(va)
    # the file loads without unpickling code, and the loaded model is the returned one
    raw = torch.load(ck, weights_only=True)
    assert raw["extra"]["epoch"] == 4
    loaded = load_checkpoint(ck)
    assert loaded.labels == ["k0", "k1", "k2"] and loaded.feature_config == FC
    torch.testing.assert_close(loaded.model.feat_mean, torch.from_numpy(tr.fit_stats().mean.astype(np.float32)))
    x = va.batch(torch.arange(8)).x
    torch.testing.assert_close(loaded.model(x), res.model(x))
    assert evaluate(loaded.model, va, labels=loaded.labels)["accuracy"] == res.metrics["val"]["accuracy"]
    # metrics.json and PNG plots beside the checkpoint
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3, 4] and "val" in m
    for name in ("curves.png", "confusion.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(cls_data, tmp_path):
    tr, va = cls_data
    straight = train(tr, TrainConfig(epochs=3, **TINY), val_data=va)
    ck = str(tmp_path / "m.pt")
    first = train(tr, TrainConfig(epochs=1, **TINY), val_data=va, checkpoint=ck)
    assert first.epochs_run == 1
    resumed = train(tr, TrainConfig(epochs=3, **TINY), val_data=va, checkpoint=ck, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == first.history[0]  # epoch 1 came from the checkpoint, not re-run
    assert load_checkpoint(ck).extra["epoch"] == 3
    for k, v in _weights(straight.model).items():
        torch.testing.assert_close(_weights(resumed.model)[k], v, msg=k)


def test_same_seed_same_weights_other_seed_other_weights(cls_data):
    tr, _ = cls_data
    a = train(tr, TrainConfig(epochs=1, seed=5, **TINY))
    b = train(tr, TrainConfig(epochs=1, seed=5, **TINY))
    c = train(tr, TrainConfig(epochs=1, seed=6, **TINY))
    assert torch.equal(a.model.head.weight, b.model.head.weight)
    assert not torch.equal(a.model.head.weight, c.model.head.weight)


def test_early_stopping_keeps_the_best_epoch(cls_data):
    tr, va = cls_data
    # an absurd learning rate for SGD makes validation worse after the first epoch
    res = train(tr, TrainConfig(epochs=8, patience=2, **{**TINY, "lr": 3.0, "optimizer": "sgd"}), val_data=va)
    if res.stopped_early:
        assert res.epochs_run == res.best_epoch + 2
    val_losses = [h["val_loss"] for h in res.history]
    assert res.best_epoch == 1 + int(np.argmin(val_losses))
    assert evaluate(res.model, va)["loss"] == pytest.approx(min(val_losses), rel=1e-5)


def test_tbptt_window_covering_the_batch_equals_full_bptt(cls_data):
    tr, _ = cls_data
    full = train(tr, TrainConfig(epochs=1, **TINY))
    win = train(tr, TrainConfig(epochs=1, tbptt=int(tr.lengths.max()), **TINY))
    for k, v in _weights(full.model).items():
        torch.testing.assert_close(_weights(win.model)[k], v, msg=k)


def _sine(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return Example("s", "", np.stack([np.sin(t / 6) + 0.05 * rng.normal(size=n), np.cos(t / 11)], 1).astype(np.float32))


def test_truncated_bptt_learns_a_forecast_over_long_windows():
    e = _sine()
    tr = forecast_data([e], window=48, horizon=3, target_dims=[0], rows=(0, 900), feature_config=FC)
    va = forecast_data([e], window=48, horizon=3, target_dims=[0], rows=(900, 1200), last_only=True)
    res = train(tr, TrainConfig(epochs=3, tbptt=8, steps_per_epoch=20, **{**TINY, "batch_size": 32}), val_data=va)
    val = res.metrics["val"]
    assert val["mse"] < 0.5 * val["persistence_mse"], val
    assert res.history[-1]["train_loss"] < 0.5 * res.history[0]["train_loss"]


def test_gradient_warnings_carry_the_measured_norms(cls_data):
    tr, _ = cls_data
    with pytest.warns(GradientWarning, match=r"exploding gradients in epoch 1: total gradient norm reached [0-9.e+-]+ "
                                             r"\(> explode_threshold 1e-06.*rnn\.l0=.*head="):
        res = train(tr, TrainConfig(epochs=1, explode_threshold=1e-6, vanish_threshold=0.0, **TINY))
    assert res.grad_warnings and res.history[0]["grad_norm_max"] > 1e-6
    with pytest.warns(GradientWarning, match=r"vanishing gradients in epoch 1: mean gradient norm of rnn\.l0.*"
                                             r"below vanish_threshold 100; per-layer means: rnn\.l0=[0-9.e+-]+"):
        train(tr, TrainConfig(epochs=1, vanish_threshold=100.0, explode_threshold=1e9, **TINY))


def test_bidirectional_trains_offline_but_refuses_tbptt(cls_data):
    tr, va = cls_data
    res = train(tr, TrainConfig(epochs=2, bidirectional=True, **TINY), val_data=va)
    assert res.model.config.bidirectional and res.metrics["val"]["accuracy"] > 0.5
    with pytest.raises(ConfigError, match="tbptt=5 needs a streaming.*bidirectional"):
        TrainConfig(bidirectional=True, tbptt=5)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_feature_dimension_mismatch_on_resume_and_fine_tune(cls_data, tmp_path):
    tr, _ = cls_data
    ck = str(tmp_path / "m.pt")
    res = train(tr, TrainConfig(epochs=1, **TINY), checkpoint=ck)
    other = _classify(20, 3, dim=5)
    with pytest.raises(ShapeError, match=r"checkpoint '.*m\.pt' takes 4 features per frame, but the data has feature dimension 5"):
        train(other, TrainConfig(epochs=2, **TINY), checkpoint=ck, resume=True)
    with pytest.raises(ShapeError, match="initial model takes 4 features per frame.*dimension 5"):
        train(other, TrainConfig(epochs=1, **TINY), model=res.model)
    with pytest.raises(ShapeError, match="takes 4 features per frame.*dimension 5"):
        evaluate(res.model, other)


def test_label_at_evaluation_never_seen_in_training(cls_data):
    tr, _ = cls_data
    model = train(tr, TrainConfig(epochs=1, **TINY)).model
    seqs = [np.zeros((3, D), np.float32)] * 2
    data = tensor_data("classify", seqs, ["k0", "k9"])
    with pytest.raises(DatasetError, match=r"label\(s\) \['k9'\] never seen in training.*\['k0', 'k1', 'k2'\]"):
        evaluate(model, data, labels=tr.labels)


def test_empty_data_is_refused():
    with pytest.raises(DatasetError, match="empty"):
        tensor_data("classify", [], [])


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(cls_data, tmp_path):
    tr, va = cls_data
    ck = str(tmp_path / "m.pt")
    relu = {**TINY, "cell": "rnn_relu"}
    train(tr, TrainConfig(epochs=1, **relu), val_data=va, checkpoint=ck)
    good = _weights(load_checkpoint(ck).model)
    # resumed from the good epoch with a huge learning rate, no clipping, on an unbounded ReLU RNN
    with pytest.raises(TrainingDivergedError, match=r"diverged in epoch 2, step \d+: loss = (nan|inf).*last good "
                                                    r"checkpoint '.*m\.pt' \(epoch 1\) was kept"):
        train(tr, TrainConfig(epochs=3, **{**relu, "lr": 1e30, "clip_norm": None}), val_data=va, checkpoint=ck,
              resume=True)
    kept = load_checkpoint(ck)
    assert kept.extra["epoch"] == 1
    for k, v in good.items():
        torch.testing.assert_close(kept.model.state_dict()[k], v)


def test_nan_in_training_tensors_stops_before_any_checkpoint(tmp_path):
    x = torch.randn(4, 5, D)
    x[2, 1, 0] = float("nan")
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, -1] = True
    data = SequenceData("classify", x, torch.full((4,), 5), torch.tensor([0, 1, 0, 1]), mask, labels=["a", "b"],
                        feature_config=FC)
    model = StreamingRNN(ModelConfig(input_dim=D, output_dim=2, hidden_size=4, num_layers=1))
    with pytest.raises(TrainingDivergedError, match="epoch 1, step 1: loss = nan.*no checkpoint had been written"):
        train(data, TrainConfig(epochs=1, **TINY), model=model, checkpoint=str(tmp_path / "m.pt"))
    assert not os.path.exists(tmp_path / "m.pt")


def test_corrupted_checkpoint_is_named(cls_data, tmp_path):
    tr, _ = cls_data
    ck = tmp_path / "m.pt"
    train(tr, TrainConfig(epochs=1, **TINY), checkpoint=str(ck))
    blob = ck.read_bytes()
    ck.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint '.*m\.pt' is corrupt"):
        train(tr, TrainConfig(epochs=2, **TINY), checkpoint=str(ck), resume=True)
    ck.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"m\.pt"):
        load_checkpoint(str(ck))


def test_tag_and_generate_tasks_learn():
    rng = np.random.default_rng(2)
    seqs = [rng.normal(size=(int(rng.integers(5, 15)), D)).astype(np.float32) for _ in range(64)]
    # per-frame label: was channel 0 positive one frame ago (needs the state, not just the current frame)
    tags = [["pos" if v > 0 else "neg" for v in np.r_[0.0, s[:-1, 0]]] for s in seqs]
    tag = tensor_data("tag", seqs, tags)
    before = evaluate(StreamingRNN(TrainConfig(**TINY).model_config(tag)), tag)["accuracy"]
    res = train(tag, TrainConfig(epochs=8, **{**TINY, "batch_size": 8}))
    assert res.model.config.task == "tag"
    assert evaluate(res.model, tag)["accuracy"] > max(0.85, before + 0.2)
    # generate: a rotating phasor; the next frame is predictable, repeating the last one is not
    waves = []
    for _ in range(32):
        ph = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(int(rng.integers(8, 20))) / 8
        waves.append(np.stack([np.sin(ph), np.cos(ph)], 1).astype(np.float32))
    gen = tensor_data("generate", waves)
    res = train(gen, TrainConfig(epochs=8, **{**TINY, "batch_size": 8}))
    m = evaluate(res.model, gen)
    assert m["mse"] < 0.25 * m["persistence_mse"], m


def test_level_shift_augmentation_moves_inputs_and_targets_together():
    from rnnstream.models.train import _shift_levels

    e = _sine(200)
    data = forecast_data([e], window=10, horizon=3, target_dims=[1], feature_config=FC)
    model = StreamingRNN(TrainConfig(**TINY).model_config(data), feat_std=torch.tensor([2.0, 3.0]))
    b = data.batch(torch.arange(6))
    torch.manual_seed(0)
    s = _shift_levels(model, b, 1.0)
    offset = s.x - b.x  # one constant per sequence and channel
    assert torch.allclose(offset, offset[:, :1].expand_as(offset)) and offset.abs().min() > 0
    # targets are still the input series' own future rows: y[t, h] == x[t + 1 + h] of channel 1
    for t in range(6):
        for h in range(3):
            torch.testing.assert_close(s.y[:, t, h, 0], s.x[:, t + 1 + h, 1])
    with pytest.raises(ConfigError, match="level_shift must be >= 0"):
        TrainConfig(level_shift=-1.0)


def test_tbptt_steps_windows_and_carries_the_detached_state(cls_data, monkeypatch):
    tr, _ = cls_data
    calls = []
    original = StreamingRNN.step

    def spy(self, x, state):
        calls.append((x.shape[1], float(state["h"].abs().sum()), state["h"].requires_grad))
        return original(self, x, state)

    monkeypatch.setattr(StreamingRNN, "step", spy)
    n = 4
    train(tr, TrainConfig(epochs=1, tbptt=n, steps_per_epoch=1, bucket=False, **{**TINY, "batch_size": len(tr)}))
    T = int(tr.lengths.max())
    assert [c[0] for c in calls] == [n] * (T // n) + ([T % n] if T % n else [])
    assert calls[0][1] == 0.0  # each batch starts from the initial state...
    assert all(h > 0 and not grad for _, h, grad in calls[1:])  # ...and later windows get the carried, detached one

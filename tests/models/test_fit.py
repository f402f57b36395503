"""The fit loop: callback hooks and their order, the stop flag, errors reach callbacks, progress output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnstream.models.callbacks import EarlyStopping, LRSchedule
from rnnstream.models.data import SequenceData, tensor_data
from rnnstream.models.fit import BatchLoader, Callback, FitState, fit
from rnnstream.models.rnn import ModelConfig, StreamingRNN
from rnnstream.models.train import TrainConfig, train
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import TrainingDivergedError

D = 3
FC = FeatureConfig.sensor_default([f"c{i}" for i in range(D)])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    seqs, ys = [], []
    for _ in range(40):
        k = int(rng.integers(0, 2))
        x = rng.normal(size=(int(rng.integers(3, 9)), D)).astype(np.float32)
        x[:, k] += 1.5
        seqs.append(x)
        ys.append(f"k{k}")
    return tensor_data("classify", seqs, ys, feature_config=FC)


def _model(seed: int = 0) -> StreamingRNN:
    torch.manual_seed(seed)
    return StreamingRNN(ModelConfig(input_dim=D, output_dim=2, hidden_size=8, num_layers=1))


class Recorder(Callback):
    def __init__(self, stop_after: int | None = None, stop_before: int | None = None):
        self.events: list[tuple[str, int]] = []
        self.stop_after, self.stop_before = stop_after, stop_before

    def on_train_start(self, state: FitState) -> None:
        self.events.append(("train_start", state.epoch))

    def on_epoch_start(self, state: FitState) -> None:
        self.events.append(("epoch_start", state.epoch))
        state.stop = state.epoch == self.stop_before

    def on_batch_end(self, state: FitState) -> None:
        self.events.append(("batch_end", state.step))

    def on_epoch_end(self, state: FitState) -> None:
        self.events.append(("epoch_end", state.epoch))
        assert state.history[-1] is state.row and state.row["epoch"] == state.epoch
        state.stop = state.epoch == self.stop_after

    def on_train_end(self, state: FitState) -> None:
        self.events.append(("train_end", state.epoch))

    def on_exception(self, state: FitState, error: BaseException) -> None:
        self.events.append((type(error).__name__, state.epoch))


def test_hooks_run_in_order_and_the_stop_flag_ends_training_after_the_epoch(data):
    model = _model()
    loader = BatchLoader(data, batch_size=16, seed=0)
    rec = Recorder(stop_after=2)
    state = fit(model, loader, data, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), epochs=5,
                callbacks=[rec])
    n = len(loader)
    assert n == 3
    per_epoch = lambda e: [("epoch_start", e), *[("batch_end", s) for s in range(1, n + 1)], ("epoch_end", e)]
    assert rec.events == [("train_start", 0), *per_epoch(1), *per_epoch(2), ("train_end", 2)]
    assert state.stopped_early and state.epoch == 2 and [h["epoch"] for h in state.history] == [1, 2]
    # the best weights are restored on the CPU in eval mode, and scored on the validation data
    assert not model.training and state.metrics["val"]["n"] == len(data)
    assert {"val_loss", "val_accuracy", "train_loss", "lr", "grad_norm_max"} <= set(state.history[0])


def test_stop_at_epoch_start_skips_that_epoch_and_the_last_epoch_is_not_early(data):
    model = _model()
    loader = BatchLoader(data, batch_size=16, seed=0, max_batches=1)
    state = fit(model, loader, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=4,
                callbacks=[Recorder(stop_before=3)])
    assert state.stopped_early and state.epoch == 2 and len(state.history) == 2 and state.metrics == {}
    state = fit(model, loader, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=2,
                callbacks=[Recorder(stop_after=2)])
    assert not state.stopped_early and state.epoch == 2


def test_training_errors_reach_the_callbacks_then_propagate(data):
    x = data.x.clone()
    x[:, 0, 0] = float("nan")
    bad = SequenceData("classify", x, data.lengths, data.y, data.mask, labels=data.labels)
    model = _model()
    rec = Recorder()
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 1: loss = nan.*no checkpoint had been written"):
        fit(model, BatchLoader(bad, 16), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=2,
            callbacks=[rec])
    assert rec.events == [("train_start", 0), ("epoch_start", 1), ("TrainingDivergedError", 1)]


def test_schedule_and_early_stopping_callbacks_keep_their_counters_for_resume():
    sched = LRSchedule(1.0, "plateau", epochs=10, step=2, gamma=0.5)
    stop = EarlyStopping(patience=3)
    state = type("S", (), {})()
    for improved in (False, False, True, False):
        state.improved = improved
        sched.on_epoch_end(state)  # type: ignore[arg-type]
        stop.on_epoch_end(state)  # type: ignore[arg-type]
    assert sched.state_dict() == {"plateau_scale": 0.5, "plateau_bad": 1} and stop.state_dict() == {"bad_epochs": 1}
    other = LRSchedule(1.0, "plateau", epochs=10)
    other.load_state_dict(sched.state_dict())
    assert other.factor(7) == 0.5
    assert LRSchedule(2.0, "cosine", epochs=4).factor(3) == pytest.approx(0.5)
    assert LRSchedule(2.0, "step", epochs=9, step=2, gamma=0.1).factor(5) == pytest.approx(0.01)


def test_progress_shows_only_on_a_terminal_or_when_asked(data, capsys):
    small = {"hidden_size": 4, "num_layers": 1, "epochs": 1, "steps_per_epoch": 1}
    train(data, TrainConfig(**small))  # progress=None and stderr is not a terminal under pytest
    assert "epoch=1" not in capsys.readouterr().err
    train(data, TrainConfig(progress=True, **small))
    assert "epoch=1 lr=0.001 train_loss=" in capsys.readouterr().err
    train(data, TrainConfig(progress=False, **small))
    assert capsys.readouterr().err == ""


class ParamLog(Callback):
    """The raw parameters after every batch, and what the model held at each epoch's start and validation."""

    def __init__(self) -> None:
        self.after_batch: list[dict[str, torch.Tensor]] = []
        self.at_epoch_start: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def _params(state: FitState) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in state.model.named_parameters()}

    def on_epoch_start(self, state: FitState) -> None:
        self.at_epoch_start.append(self._params(state))

    def on_batch_end(self, state: FitState) -> None:
        self.after_batch.append(self._params(state))

    def on_epoch_trained(self, state: FitState) -> None:  # runs after WeightAverage's: the weights validated
        self.validated.append(self._params(state))


def test_weight_average_validates_and_keeps_the_average_and_trains_on_the_raw_weights(data):
    from rnnstream.models.callbacks import WeightAverage

    model = _model()
    initial = {k: p.detach().clone() for k, p in model.named_parameters()}
    avg, log = WeightAverage(0.5), ParamLog()
    loader = BatchLoader(data, batch_size=8, seed=0)
    state = fit(model, loader, data, optimizer=torch.optim.Adam(model.parameters(), lr=0.05), epochs=3,
                callbacks=[avg, log])
    # the same average recomputed from the raw weights after each batch: weights keep ** age, normalised
    n = len(loader)
    keep = 0.5 ** (1 / (0.5 * n))  # half-life: half an epoch of batches
    for e in range(1, 4):  # each epoch's validation saw the average so far
        seen = log.after_batch[: e * n]
        w = [keep ** (len(seen) - 1 - i) for i in range(len(seen))]
        for k in initial:
            want = sum(wi * raw[k] for wi, raw in zip(w, seen)) / sum(w)
            torch.testing.assert_close(log.validated[e - 1][k], want, msg=k)
    assert not any(torch.equal(log.validated[0][k], initial[k]) for k in initial)  # the initial weights: no share
    for e in (1, 2):  # each next epoch trains on from the raw weights of the last batch, not the average
        for k, v in log.after_batch[e * n - 1].items():
            torch.testing.assert_close(log.at_epoch_start[e][k], v, msg=k)
    best = log.validated[state.best_epoch - 1]
    for k, p in state.model.named_parameters():  # the kept weights are the average at the best epoch
        torch.testing.assert_close(p.detach(), best[k], msg=k)
    assert not torch.equal(best["head.weight"], log.after_batch[state.best_epoch * n - 1]["head.weight"])


def test_weight_average_resumes_with_its_average(data, tmp_path):
    from rnnstream.models.callbacks import WeightAverage

    cfg = dict(hidden_size=8, num_layers=1, batch_size=8, lr=0.05, weight_average=1.0, seed=3, progress=False)
    straight = train(data, TrainConfig(epochs=3, **cfg), val_data=data)
    ck = str(tmp_path / "m.pt")
    train(data, TrainConfig(epochs=1, **cfg), val_data=data, checkpoint=ck)
    resumed = train(data, TrainConfig(epochs=3, **cfg), val_data=data, checkpoint=ck, resume=True)
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, msg=k)
    assert [h["val_loss"] for h in resumed.history] == pytest.approx([h["val_loss"] for h in straight.history])
    plain = str(tmp_path / "plain.pt")  # a checkpoint trained without averaging: resuming with it says so
    train(data, TrainConfig(epochs=1, **{**cfg, "weight_average": 0.0}), val_data=data, checkpoint=plain)
    with pytest.warns(UserWarning, match="resuming at epoch 2 from a checkpoint trained without weight averaging"):
        train(data, TrainConfig(epochs=2, **cfg), val_data=data, checkpoint=plain, resume=True)
    with pytest.raises(ValueError, match="half_life_epochs must be a positive number, got 0"):
        WeightAverage(0)
    from rnnstream.pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="weight_average must be 0 .off. or a half-life in epochs > 0, got -1"):
        TrainConfig(weight_average=-1)

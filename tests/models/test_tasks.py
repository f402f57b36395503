"""One object per task: lookup, targets and their shapes, head fields, and the CLI's task list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rnnstream.models.data import forecast_data, tensor_data
from rnnstream.models.rnn import ModelConfig, StreamingRNN
from rnnstream.models.tasks import TASKS, Classify, Forecast, Generate, Tag, task_for
from rnnstream.models.train import TrainConfig
from rnnstream.pipeline.dataset import Example
from rnnstream.pipeline.errors import ConfigError

D = 3


def _seqs(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(t, D)).astype(np.float32) for t in range(3, 3 + n)]


def test_task_for_looks_up_one_object_per_task_name():
    assert [type(t) for t in TASKS.values()] == [Classify, Tag, Forecast, Generate]
    cfg = ModelConfig(input_dim=D, output_dim=2, task="tag")
    assert task_for(cfg) is task_for("tag") is TASKS["tag"]
    assert task_for(tensor_data("generate", _seqs())) is TASKS["generate"]
    with pytest.raises(ConfigError, match="task must be classify, tag, forecast or generate; got 'rank'"):
        task_for("rank")


def test_cli_task_choices_are_the_registered_tasks():
    from rnnstream.models.train_cli import build_parser

    (task,) = [a for a in build_parser()._actions if a.dest == "task"]
    assert list(task.choices) == list(TASKS)


@pytest.mark.parametrize("name", ["classify", "tag", "generate", "forecast"])
def test_targets_have_the_documented_shapes(name):
    seqs = _seqs()
    if name == "forecast":
        data = forecast_data([Example("s", "", np.concatenate(seqs))], window=5, horizon=2, target_dims=[0, 2])
    else:
        targets = {"classify": ["a", "b", "a", "b"], "tag": [["a", "b"] * 5] * 4, "generate": None}[name]
        targets = [t[: len(s)] for t, s in zip(targets, seqs)] if name == "tag" else targets
        data = tensor_data(name, seqs, targets)
    task = task_for(data)
    model = StreamingRNN(TrainConfig(hidden_size=4, num_layers=1).model_config(data))
    batch = data.batch(torch.arange(4))
    out = model(batch.x)
    pred, target = task.targets(model, out, batch, 0, out.shape[1])
    K = int(batch.mask.sum())
    want = {"classify": ((K, 2), (K,)), "tag": ((K, 2), (K,)), "generate": ((K, D), (K, D)),
            "forecast": ((K, 2, 2), (K, 2, 2))}[name]
    assert (tuple(pred.shape), tuple(target.shape)) == want
    assert task.loss(pred, target).dim() == 0
    assert task.output_dim(data) == model.config.output_dim
    # a window without scored frames yields nothing
    if name == "classify":
        assert task.targets(model, out[:, :1], batch, 0, 1) is None


def test_only_classify_pools_and_only_forecast_has_a_horizon():
    seqs = _seqs()
    cls = tensor_data("classify", seqs, ["a", "b", "a", "b"])
    tag = tensor_data("tag", seqs, [["x"] * len(s) for s in seqs])
    assert TrainConfig(pooling="mean").model_config(cls).pooling == "mean"
    assert TrainConfig(pooling="mean").model_config(tag).pooling == "last"
    fc = forecast_data([Example("s", "", np.concatenate(seqs))], window=4, horizon=3, target_dims=[1])
    c = TrainConfig().model_config(fc)
    assert (c.horizon, c.target_dims, c.output_dim) == (3, (1,), 3)


def test_level_shift_leaves_class_labels_alone():
    data = tensor_data("classify", _seqs(), ["a", "b", "a", "b"])
    model = StreamingRNN(TrainConfig(hidden_size=4, num_layers=1).model_config(data))
    batch = data.batch(torch.arange(4))
    assert task_for(data).shift_levels(model, batch, 1.0) is batch


def test_label_smoothing_is_a_training_copy_of_the_classification_task() -> None:
    """eps spreads over every class: loss = (1 - eps) * CE(label) + eps * mean over classes of CE(class); the
    shared task (evaluation's) stays unsmoothed; regression tasks refuse it, and TrainConfig bounds it."""
    import torch.nn.functional as F

    pred, target = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1]]), torch.tensor([0, 2])
    plain = task_for("classify")
    smooth = plain.with_label_smoothing(0.1)
    logp = F.log_softmax(pred, dim=1)
    want = (0.9 * -logp[torch.arange(2), target] + 0.1 * -logp.mean(1)).mean()
    torch.testing.assert_close(smooth.loss(pred, target), want)
    torch.testing.assert_close(plain.loss(pred, target), F.cross_entropy(pred, target))
    assert task_for("classify").label_smoothing == 0.0 and task_for("tag").with_label_smoothing(0.2).per_frame
    with pytest.raises(ConfigError, match="label smoothing applies to classify and tag models, not to a 'forecast'"):
        task_for("forecast").with_label_smoothing(0.1)
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 1\), got 1.0"):
        TrainConfig(label_smoothing=1.0).validate()

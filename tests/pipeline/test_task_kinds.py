"""The runtime's task objects: one per task, looked up once, and what each one's outputs predict."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.model_config import TASK_NAMES, ModelConfig
from rnnstream.pipeline.streaming import interpret
from rnnstream.pipeline.task_kinds import CLASSIFY, FORECAST, GENERATE, TAG, TASK_KINDS, task_kind


def test_one_kind_per_task_name_in_the_config_order():
    assert tuple(TASK_KINDS) == TASK_NAMES
    assert [task_kind(n) for n in TASK_NAMES] == [CLASSIFY, TAG, FORECAST, GENERATE]
    assert ModelConfig(input_dim=3, output_dim=4, task="tag").kind is TAG


@pytest.mark.parametrize("bad", ["classfy", "", None, ["classify"]])
def test_an_unknown_task_is_refused_naming_the_tasks(bad):
    with pytest.raises(ConfigError, match=r"task must be one of classify, tag, forecast, generate; got"):
        task_kind(bad)


def test_what_each_task_allows():
    assert [k.name for k in TASK_KINDS.values() if k.outputs_logits] == ["classify", "tag"]
    assert [k.name for k in TASK_KINDS.values() if k.per_sequence] == ["classify"]
    assert [k.name for k in TASK_KINDS.values() if k.residual] == ["forecast"]
    assert [k.name for k in TASK_KINDS.values() if k.rolls_out] == ["generate"]


@pytest.mark.parametrize(("fields", "message"), [
    ({"task": "tag", "pooling": "mean"}, "pooling='mean' applies to task 'classify' only, not 'tag'"),
    ({"task": "classify", "residual": True}, "residual=True applies to task 'forecast' only"),
    ({"task": "generate", "output_dim": 3, "ensemble": 2}, "task 'generate' rolls out"),
    ({"task": "generate", "output_dim": 4}, "output_dim must equal input_dim=3"),
    ({"task": "forecast", "output_dim": 4}, "needs target_dims"),
    ({"task": "forecast", "output_dim": 4, "target_dims": (3,)}, r"target_dims \[3\] out of range"),
    ({"task": "forecast", "output_dim": 4, "horizon": 3, "target_dims": (0,)}, "horizon\\*len\\(target_dims\\) = 3"),
])
def test_config_validation_goes_through_the_task(fields, message):
    with pytest.raises(ConfigError, match=message):  # a config validates itself when made
        ModelConfig(**{"input_dim": 3, "output_dim": 4, **fields})


def test_predicted_per_task():
    assert CLASSIFY.predicted([0.1, 0.7, 0.7], ["a", "b", "c"], None) == "b"  # the first of equal tops
    assert TAG.predicted([0.9, 0.1], ["x", "y"], None) == "x"
    assert FORECAST.predicted([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [], 2) == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert GENERATE.predicted([1.0, 2.0], [], None) == [1.0, 2.0]
    config = ModelConfig(input_dim=3, output_dim=4, task="forecast", horizon=2, target_dims=(0, 2))
    assert FORECAST.step_width(config) == 2 and CLASSIFY.step_width(config) is None


def test_interpret_reads_outputs_through_the_task():
    # interpret reads a ModelInfo's model_config and labels only
    classify = SimpleNamespace(model_config=ModelConfig(input_dim=3, output_dim=3), labels=("yes", "no", "maybe"))
    pred = interpret(classify, np.array([0.0, 2.0, 1.0], dtype=np.float32), frames=5)
    assert pred.label == "no" and pred.frames == 5
    assert pred.scores["no"] == pytest.approx(np.exp(2) / (1 + np.exp(2) + np.exp(1)))
    assert sum(pred.values) == pytest.approx(1.0)

    forecast = SimpleNamespace(model_config=ModelConfig(input_dim=3, output_dim=4, task="forecast", horizon=2,
                                                        target_dims=(0, 1)), labels=())
    pred = interpret(forecast, np.array([1, 2, 3, 4], dtype=np.float32), frames=1)
    assert pred.label == [[1.0, 2.0], [3.0, 4.0]] and pred.scores == {} and pred.values == [1.0, 2.0, 3.0, 4.0]


def test_the_task_objects_import_no_torch():
    code = "import sys, rnnstream.pipeline.task_kinds; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

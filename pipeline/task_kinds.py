"""One object per task on the torch-free side: what a model's outputs mean and which options its task allows.

A model's task is stored as a string (``ModelConfig.task`` in checkpoints and ONNX metadata); the runtime looks
its behaviour up once, ``config.kind`` (or :func:`task_kind`), instead of comparing task names::

    kind = info.model_config.kind             # CLASSIFY / TAG / FORECAST / GENERATE
    if kind.outputs_logits: ...               # class scores, read through a softmax
    label = kind.predicted(values, names, kind.step_width(config))

The training side's behaviour (targets, losses, metrics, plots) is ``rnnstream.models.tasks.TaskSpec``, one
subclass per task as here.

========  ===================================  ==============================  =====================
task      one frame's outputs ``[O]``          ``predicted``                   options
========  ===================================  ==============================  =====================
classify  logits of ``O`` classes (sequence)   the top class's name            pooling, time warp, mixup
tag       logits of ``O`` classes (per frame)  the top class's name
forecast  ``H`` steps x ``D`` target channels  ``H`` lists of ``D`` values     residual (seasonal)
generate  the next frame, ``O == input_dim``   the ``O`` values                rollout; no ensemble
========  ===================================  ==============================  =====================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rnnstream.pipeline.errors import ConfigError

if TYPE_CHECKING:
    from rnnstream.pipeline.model_config import ModelConfig


class TaskKind:
    """What one task's outputs mean at run time. Instances are stateless singletons (:data:`TASK_KINDS`)."""

    name: ClassVar[str]
    #: Outputs are class logits (read as probabilities through a softmax), with a top class per frame.
    outputs_logits: ClassVar[bool] = False
    #: One label per sequence: the head may pool over time (``pooling``), and training may warp time or mix
    #: sequences (``--augment twarp``, ``mixup``), which per-frame targets would not survive.
    per_sequence: ClassVar[bool] = False
    #: ``residual`` (predict the change from a naive forecast) applies.
    residual: ClassVar[bool] = False
    #: The model feeds its own predictions back (``StreamingRNN.rollout``); an ensemble's mean could not.
    rolls_out: ClassVar[bool] = False

    def validate(self, config: "ModelConfig") -> None:
        """Raise :class:`ConfigError` unless ``config``'s sizes fit this task (called by ``ModelConfig.validate``)."""

    def step_width(self, config: "ModelConfig") -> int | None:
        """Values per forecast step (``len(target_dims)``) for tasks whose output is ``H`` steps; else ``None``."""
        return None

    def predicted(self, values: Sequence[float], names: Sequence[str], step_width: int | None) -> Any:
        """What one frame's outputs predict: ``values`` (probabilities for logits tasks) with the class ``names``
        (logits tasks) and the values per step (:meth:`step_width`, forecasts)."""
        return list(values)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class _Logits(TaskKind):
    outputs_logits = True

    def predicted(self, values, names, step_width):
        return names[max(range(len(values)), key=values.__getitem__)]


class Classify(_Logits):
    """One class per sequence (a recording, a gesture): read at the last frame, or pooled over time."""

    name = "classify"
    per_sequence = True


class Tag(_Logits):
    """One class per frame (voice activity, a keyword's frames)."""

    name = "tag"


class Forecast(TaskKind):
    """``horizon`` future values of ``target_dims`` from every frame: ``output_dim = horizon * len(target_dims)``."""

    name = "forecast"
    residual = True

    def validate(self, config):
        if not config.target_dims:
            raise ConfigError("task 'forecast' needs target_dims (indices of the input channels to forecast)")
        bad = [d for d in config.target_dims if not 0 <= d < config.input_dim]
        if bad:
            raise ConfigError(f"target_dims {bad} out of range for input_dim={config.input_dim}")
        if config.output_dim != config.horizon * len(config.target_dims):
            raise ConfigError(
                f"forecast output_dim must be horizon*len(target_dims) = "
                f"{config.horizon * len(config.target_dims)}, got {config.output_dim}"
            )

    def step_width(self, config):
        return len(config.target_dims)

    def predicted(self, values, names, step_width):
        d = max(1, int(step_width or 1))
        return [list(values[i : i + d]) for i in range(0, len(values), d)]


class Generate(TaskKind):
    """The next frame from every frame (``output_dim == input_dim``); rolls out its own predictions."""

    name = "generate"
    rolls_out = True

    def validate(self, config):
        if config.output_dim != config.input_dim:
            raise ConfigError(f"task 'generate' predicts the next frame: output_dim must equal "
                              f"input_dim={config.input_dim}")


CLASSIFY, TAG, FORECAST, GENERATE = Classify(), Tag(), Forecast(), Generate()

#: Every task by name, in the order of ``model_config.TASK_NAMES``.
TASK_KINDS: dict[str, TaskKind] = {k.name: k for k in (CLASSIFY, TAG, FORECAST, GENERATE)}


def task_kind(name: str) -> TaskKind:
    """The :class:`TaskKind` of task ``name``; :class:`ConfigError` naming the tasks for an unknown one."""
    try:
        return TASK_KINDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"task must be one of {', '.join(TASK_KINDS)}; got {name!r}") from None


__all__ = ["CLASSIFY", "FORECAST", "GENERATE", "TAG", "TASK_KINDS", "TaskKind", "task_kind"]

"""One object per task: what its targets, loss, metrics, output head and plots are.

The task's *name* stays a serialized string (``ModelConfig.task``, ``TaskData.task``); behaviour is
looked up from it once::

    task = task_for(model.config)                 # Classify() / Tag() / Forecast() / Generate()
    pred, target = task.targets(model, out, batch, t0, t1)
    loss = task.loss(pred, target)

Shapes (``B`` batch, ``T`` frames, ``O`` model outputs, ``K`` frames that carry a loss):

    ==========  ==================  ======================================  =============  ========
    task        pred                target                                  loss           metric
    ==========  ==================  ======================================  =============  ========
    classify    ``[K, C]`` logits   ``[K]`` class ids (last frame)          cross entropy  accuracy
    tag         ``[K, C]`` logits   ``[K]`` class ids (every frame)         cross entropy  accuracy
    forecast    ``[K, H, Dt]``      ``[K, H, Dt]`` next values, normalised  MSE            mse
    generate    ``[K, D]``          ``[K, D]`` next frame, normalised       MSE            mse
    ==========  ==================  ======================================  =============  ========
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnstream.models.data import (
    Batch,
    TaskData,
    classify_data,
    forecast_data,
    generate_data,
    resolve_channels,
    tag_data,
)
from rnnstream.models.metrics import ClassMeter, ForecastMeter, Meter, NextFrameMeter, seasonal_period_of
from rnnstream.models.ensemble import StreamingModel
from rnnstream.models.rnn import ModelConfig
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import Example
from rnnstream.pipeline.errors import ConfigError, DatasetError, ShapeError

if TYPE_CHECKING:
    from rnnstream.models.prepare import DataSpec


class TaskSpec:
    """Behaviour of one task. Subclasses override what differs; instances are stateless singletons."""

    name: ClassVar[str]
    primary_metric: ClassVar[str]  # the validation metric logged per epoch and plotted
    row_splits: ClassVar[bool] = False  # DataSpec.split_rows applies (row ranges within each series)

    # ---- the model ---------------------------------------------------------------------------
    def output_dim(self, data: TaskData) -> int:
        """Width ``O`` of the model's per-frame output for ``data``."""
        raise NotImplementedError

    def head_fields(self, data: TaskData, pooling: str) -> dict[str, Any]:
        """The task-dependent :class:`ModelConfig` fields (pooling, horizon, target_dims)."""
        return {"pooling": "last", "horizon": 1, "target_dims": ()}

    def check_compatible(self, config: ModelConfig, data: TaskData, where: str) -> None:
        """Raise a typed error unless a model of ``config`` can score ``data`` (beyond dims and task)."""

    # ---- training ----------------------------------------------------------------------------
    def targets(self, model: StreamingModel, out: Tensor, batch: Batch, t0: int,
                t1: int) -> tuple[Tensor, Tensor] | None:
        """``(pred, target)`` at the masked frames of window ``[t0, t1)`` (``out`` is ``[B, t1 - t0, O]``).

        ``None`` when no frame of the window carries a loss. Regression targets are normalised with the
        model's own statistics (the scale the head predicts in).
        """
        sel = batch.mask[:, t0:t1]
        pred = out[sel]
        if pred.shape[0] == 0:
            return None
        return self._select(model, pred, batch, sel, t0, t1)

    def _select(self, model: StreamingModel, pred: Tensor, batch: Batch, sel: Tensor, t0: int,
                t1: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean loss over the ``K`` scored frames (a 0-d tensor)."""
        raise NotImplementedError

    def with_label_smoothing(self, epsilon: float) -> "TaskSpec":
        """This task with its training loss's targets smoothed by ``epsilon`` (classification tasks only)."""
        raise ConfigError(f"label smoothing applies to classify and tag models, not to a {self.name!r} model")

    def shift_levels(self, model: StreamingModel, batch: Batch, sigma: float) -> Batch:
        """Level-shift augmentation (regression tasks); other tasks return ``batch`` unchanged."""
        return batch

    # ---- evaluation --------------------------------------------------------------------------
    def label_remap(self, data: TaskData, labels: Sequence[str] | None) -> Tensor | None:
        """Map ``data``'s label ids onto the model's ``labels`` (``None``: nothing to map)."""
        return None

    def meter(self, model: StreamingModel, labels: tuple[str, ...], data: TaskData | None = None) -> Meter:
        """A fresh accumulator of this task's metrics (see :mod:`rnnstream.models.metrics`) for ``data``."""
        raise NotImplementedError

    def plots(self, model: StreamingModel, metrics: dict[str, Any], data: TaskData | None, out_dir: str) -> list[str]:
        """Task-specific PNG plots of the final model (beside the loss curves); returns their paths."""
        return []

    # ---- data --------------------------------------------------------------------------------
    def target_channels(self, spec: DataSpec, names: Sequence[str]) -> list[int]:
        """Indices (into the selected channels ``names``) of the channels the task predicts, if it names any."""
        return []

    def make_data(self, examples: Sequence[Example], spec: DataSpec, *, labels: tuple[str, ...] | None,
                  last_only: bool, feature_config: FeatureConfig, target_dims: list[int],
                  rows: tuple[int, int] | None = None) -> TaskData:
        """Examples -> this task's :class:`TaskData`.

        ``labels``: the training label set (for val/test); ``last_only``: score each window's last frame only;
        ``rows``: a row range within each series (tasks with ``row_splits``).
        """
        raise NotImplementedError

    def from_sequences(self, sequences: Sequence[np.ndarray | Tensor], targets: Sequence[Any] | None, *,
                       labels: Sequence[str] | None, feature_config: FeatureConfig | None) -> TaskData:
        """Arrays ``[T_i, D]`` and per-sequence targets -> :class:`TaskData` (see ``data.tensor_data``)."""
        raise ConfigError(f"tensor_data supports classify, tag and generate; use forecast_data for {self.name!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _examples(sequences: Sequence[np.ndarray | Tensor], label: Any = None, frames: Any = None) -> list[Example]:
    """Wrap arrays as :class:`Example` s; ``label(i)`` / ``frames(i)`` give per-example targets."""
    return [Example(id=str(i), path="", features=np.asarray(s, dtype=np.float32),
                    label=None if label is None else label(i),
                    metadata={} if frames is None else {"frame_labels": frames(i)})
            for i, s in enumerate(sequences)]


# --------------------------------------------------------------------------------------------
# Classification: classify (one label per sequence), tag (one label per frame)
# --------------------------------------------------------------------------------------------


class _Classification(TaskSpec):
    primary_metric = "accuracy"
    per_frame: ClassVar[bool] = False  # metrics count frames (tag) rather than sequences

    def output_dim(self, data: TaskData) -> int:
        return len(data.labels)

    def check_compatible(self, config: ModelConfig, data: TaskData, where: str) -> None:
        if len(data.labels) > config.output_dim:
            raise ShapeError(
                f"{where} has {config.output_dim} classes, the data has {len(data.labels)} labels {list(data.labels)}"
            )

    label_smoothing = 0.0  # training only: evaluation scores with task_for's unsmoothed instance

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(pred, target, label_smoothing=self.label_smoothing)

    def with_label_smoothing(self, epsilon: float) -> TaskSpec:
        twin = copy.copy(self)
        twin.label_smoothing = float(epsilon)
        return twin

    def label_remap(self, data: TaskData, labels: Sequence[str] | None) -> Tensor | None:
        if not labels or tuple(labels) == tuple(data.labels):
            return None
        unseen = [name for name in data.labels if name not in labels]
        if unseen:
            raise DatasetError(
                f"evaluation data has label(s) {unseen} never seen in training (the model knows {list(labels)})"
            )
        return torch.tensor([list(labels).index(name) for name in data.labels], dtype=torch.long)

    def meter(self, model: StreamingModel, labels: tuple[str, ...], data: TaskData | None = None) -> Meter:
        return ClassMeter(model.config.output_dim, labels, per_frame=self.per_frame)

    def plots(self, model: StreamingModel, metrics: dict[str, Any], data: TaskData | None, out_dir: str) -> list[str]:
        scored = metrics.get("test") or metrics.get("val")
        if scored is None:
            return []
        from rnnstream.models import plots as P

        return [P.plot_confusion(np.asarray(scored["confusion"]), scored["labels"], os.path.join(out_dir, "confusion.png"))]


class Classify(_Classification):
    """Many-to-one: ``y [B]`` is scored at each sequence's last frame; ``pooling`` last or mean."""

    name = "classify"

    def head_fields(self, data: TaskData, pooling: str) -> dict[str, Any]:
        return {"pooling": pooling, "horizon": 1, "target_dims": ()}

    def _select(self, model, pred, batch, sel, t0, t1):
        return pred, batch.y[sel.any(1)]

    def make_data(self, examples, spec, *, labels, last_only, feature_config, target_dims, rows=None):
        return classify_data(examples, labels, feature_config=feature_config)

    def from_sequences(self, sequences, targets, *, labels, feature_config):
        ex = _examples(sequences, label=None if targets is None else (lambda i: str(targets[i])))
        return classify_data(ex, labels, feature_config=feature_config)


class Tag(_Classification):
    """Many-to-many: ``y [B, T]`` per-frame labels on every valid frame."""

    name = "tag"
    per_frame = True

    def _select(self, model, pred, batch, sel, t0, t1):
        return pred, batch.y[:, t0:t1][sel]

    def make_data(self, examples, spec, *, labels, last_only, feature_config, target_dims, rows=None):
        return tag_data(examples, spec.frame_labels, labels, feature_config=feature_config)

    def from_sequences(self, sequences, targets, *, labels, feature_config):
        ex = _examples(sequences, frames=None if targets is None else (lambda i: list(targets[i])))
        return tag_data(ex, "frame_labels", labels, feature_config=feature_config)


# --------------------------------------------------------------------------------------------
# Regression: forecast (next H values of some channels), generate (next frame)
# --------------------------------------------------------------------------------------------


class _Regression(TaskSpec):
    primary_metric = "mse"

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target)

    def shift_levels(self, model: StreamingModel, batch: Batch, sigma: float) -> Batch:
        """Add one random offset ``N(0, (sigma * std)^2)`` per sequence and channel to inputs and targets."""
        offset = torch.randn(batch.x.shape[0], 1, batch.x.shape[2], device=batch.x.device) * (sigma * model.feat_std)
        return Batch(batch.x + offset, batch.lengths, batch.y + self._target_offset(model, offset), batch.mask)

    def _target_offset(self, model: StreamingModel, offset: Tensor) -> Tensor:
        """The input offset ``[B, 1, D]`` as it moves the targets ``y``."""
        raise NotImplementedError


class Forecast(_Regression):
    """Seq2seq: ``y [B, T, H, Dt]``, the next ``H`` raw values of the target channels after each frame."""

    name = "forecast"
    row_splits = True

    def output_dim(self, data: TaskData) -> int:
        return data.horizon * len(data.target_dims)

    def head_fields(self, data: TaskData, pooling: str) -> dict[str, Any]:
        return {"pooling": "last", "horizon": data.horizon, "target_dims": data.target_dims}

    def check_compatible(self, config: ModelConfig, data: TaskData, where: str) -> None:
        if (data.horizon, tuple(data.target_dims)) != (config.horizon, tuple(config.target_dims)):
            raise ConfigError(
                f"{where} forecasts horizon {config.horizon} of channels {list(config.target_dims)}, the data has "
                f"horizon {data.horizon} of channels {list(data.target_dims)}"
            )

    def _select(self, model, pred, batch, sel, t0, t1):
        dims = list(model.config.target_dims)
        y = batch.y[:, t0:t1][sel]  # [K, H, Dt]
        target = (y - model.feat_mean[dims]) / model.feat_std[dims]
        return pred.view(pred.shape[0], model.config.horizon, len(dims)), target

    def _target_offset(self, model, offset):
        return offset[:, :, list(model.config.target_dims)].unsqueeze(2)  # [B, 1, 1, Dt]

    def meter(self, model: StreamingModel, labels: tuple[str, ...], data: TaskData | None = None) -> Meter:
        period = model.config.seasonal_period or seasonal_period_of(getattr(data, "feature_config", None))
        return ForecastMeter(period)

    def plots(self, model, metrics, data, out_dir):
        if data is None:
            return []
        from rnnstream.models import plots as P
        from rnnstream.models.evaluate import forecast_predictions

        pred, truth = forecast_predictions(model, data, limit=500)
        return [P.plot_forecast(pred, truth, os.path.join(out_dir, "forecast.png"))]

    def target_channels(self, spec, names):
        if not spec.targets:
            raise ConfigError("task 'forecast' needs target channels (--targets NAME[,NAME...])")
        return resolve_channels(list(spec.targets), names)

    def make_data(self, examples, spec, *, labels, last_only, feature_config, target_dims, rows=None):
        return forecast_data(examples, window=spec.window, horizon=spec.horizon, target_dims=target_dims, rows=rows,
                             last_only=last_only, feature_config=feature_config)


class Generate(_Regression):
    """One-to-many: ``y [B, T, D]``, the next raw frame (every valid frame but the last)."""

    name = "generate"

    def output_dim(self, data: TaskData) -> int:
        return data.input_dim

    def _select(self, model, pred, batch, sel, t0, t1):
        y = batch.y[:, t0:t1][sel]
        return pred, (y - model.feat_mean) / model.feat_std

    def _target_offset(self, model, offset):
        return offset

    def meter(self, model: StreamingModel, labels: tuple[str, ...], data: TaskData | None = None) -> Meter:
        return NextFrameMeter()

    def make_data(self, examples, spec, *, labels, last_only, feature_config, target_dims, rows=None):
        return generate_data(examples, feature_config=feature_config)

    def from_sequences(self, sequences, targets, *, labels, feature_config):
        return generate_data(_examples(sequences), feature_config=feature_config)


TASKS: dict[str, TaskSpec] = {t.name: t for t in (Classify(), Tag(), Forecast(), Generate())}


def task_for(source: ModelConfig | TaskData | str) -> TaskSpec:
    """The :class:`TaskSpec` of a model config, task data or task name."""
    name = source if isinstance(source, str) else source.task
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"task must be classify, tag, forecast or generate; got {name!r}") from None


__all__ = ["TASKS", "Classify", "Forecast", "Generate", "Tag", "TaskSpec", "task_for"]

"""Scoring a trained model: :func:`evaluate` (the task's loss and metrics) and :func:`forecast_predictions`.

::

    metrics = evaluate(model, val_data, labels=checkpoint.labels)   # {"loss", "n", "accuracy", ...}
    pred, truth = forecast_predictions(model, test_data, limit=500)  # [N, H, Dt] each, normalised
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnstream.models.data import Batch, TaskData, batch_order
from rnnstream.models.ensemble import StreamingModel
from rnnstream.models.rnn import StreamingRNN
from rnnstream.models.tasks import task_for
from rnnstream.pipeline.errors import ConfigError, DatasetError, ShapeError


def check_compatible(model: StreamingModel, data: TaskData, where: str = "model") -> None:
    """Raise a typed error unless ``model`` can train on / score ``data`` (dims, task, classes, horizon)."""
    c = model.config
    if data.input_dim != c.input_dim:
        raise ShapeError(
            f"{where} takes {c.input_dim} features per frame, but the data has feature dimension {data.input_dim}"
        )
    if data.task != c.task:
        raise ConfigError(f"{where} is a {c.task!r} model, but the data is for task {data.task!r}")
    task_for(c).check_compatible(c, data, where)


@torch.no_grad()
def predict_batches(model: StreamingModel, data: TaskData, batch_size: int,
                    device: torch.device) -> Iterator[tuple[Tensor, Batch, Tensor]]:
    """``(idx, batch, out)`` over ``data`` in order; ``out [B, T, O]`` is the model's per-frame output."""
    for idx in batch_order(data, batch_size, shuffle=False, bucket=False):
        batch = data.batch(idx).to(device)
        out = model(batch.x, batch.lengths) if model.config.bidirectional else model(batch.x)
        yield idx, batch, out


def _remapped(batch: Batch, remap: Tensor) -> Batch:
    """``batch`` with its label ids mapped through ``remap`` (padding ids ``< 0`` kept)."""
    y = batch.y.clone()
    valid = y >= 0
    y[valid] = remap.to(y.device)[y[valid]]
    return Batch(batch.x, batch.lengths, y, batch.mask)


@torch.no_grad()
def evaluate(model: StreamingModel, data: TaskData, *, labels: Sequence[str] | None = None,
             batch_size: int = 256, device: str | torch.device | None = None) -> dict[str, Any]:
    """Score ``model`` on ``data`` (JSON-ready dict).

    Always: ``loss`` (the training loss on the masked frames) and ``n`` (scored examples). Plus
    classify: ``accuracy``, ``confusion`` (``[C][C]`` counts, rows = truth), ``labels``;
    tag: the same per frame, and ``frames``; forecast: ``mse``/``mae`` of each sequence's last-frame forecast
    in the normalised scale (the window protocol), ``persistence_mse``/``persistence_mae`` of repeating
    the last input value and ``seasonal_naive_mse``/``seasonal_naive_mae`` of repeating the value one period
    earlier (:func:`~rnnstream.models.metrics.seasonal_period_of`; absent when the data has no period); generate: next-frame ``mse``/``mae`` (normalised) and the persistence baseline.

    ``labels``: the model's label names (a checkpoint's ``labels``); evaluation labels outside them raise
    :class:`DatasetError`.
    """
    check_compatible(model, data)
    task = task_for(model.config)
    remap = task.label_remap(data, labels)
    meter = task.meter(model, tuple(labels) if labels else tuple(data.labels), data)
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else model.feat_mean.device
    loss_sum, count = 0.0, 0
    for _, batch, out in predict_batches(model, data, batch_size, dev):
        if remap is not None:
            batch = _remapped(batch, remap)
        pt = task.targets(model, out, batch, 0, out.shape[1])
        if pt is None:
            continue
        pred, target = pt
        meter.update(model, batch, out, pred, target)
        loss_sum += float(task.loss(pred, target)) * pred.shape[0]
        count += pred.shape[0]
    model.train(was_training)
    if count == 0:
        raise DatasetError("evaluation data has no scored frames (empty dataset or split)")
    return {"loss": loss_sum / count, "n": len(data), **meter.result()}


@torch.no_grad()
def forecast_predictions(model: StreamingModel, data: TaskData, limit: int | None = None,
                         batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Last-frame forecasts and truth, both ``[N, H, Dt]`` in the normalised scale (first ``limit`` windows)."""
    preds, truths = [], []
    dims = list(model.config.target_dims)
    model.eval()
    seen = 0
    for _, batch, out in predict_batches(model, data, batch_size, model.feat_mean.device):
        p = model.forecast_view(StreamingRNN.last_output(out, batch.lengths))
        t = StreamingRNN.last_output(batch.y.flatten(2), batch.lengths).view_as(p)
        preds.append(p.cpu().numpy())
        truths.append(((t - model.feat_mean[dims]) / model.feat_std[dims]).cpu().numpy())
        seen += p.shape[0]
        if limit is not None and seen >= limit:
            break
    p, t = np.concatenate(preds), np.concatenate(truths)
    return (p[:limit], t[:limit]) if limit is not None else (p, t)


__all__ = ["check_compatible", "evaluate", "forecast_predictions", "predict_batches"]

"""Training: the ``rnnstream train`` command and the Python API it wraps.

::

    data = classify_data(train_examples)                       # rnnstream.models.data builds per-task tensors
    val = classify_data(val_examples, labels=data.labels)
    result = train(data, TrainConfig(cell="gru", hidden_size=64, epochs=10), val_data=val, checkpoint="m.pt")
    metrics = evaluate(result.model, val)                      # accuracy + confusion / MSE + MAE

What one epoch does: batches (bucketed by length, seeded order), forward over the padded batch (or
truncated BPTT: windows of ``tbptt`` frames through ``model.step`` with the state detached between
windows, as streaming inference carries it), the task loss on the masked frames only, gradient-norm
clipping, per-layer gradient norms (a :class:`GradientWarning` with the measured numbers when they
explode or vanish). After each epoch: validation, learning-rate schedule, early stopping, and a checkpoint
whose weights are the best so far and whose ``extra["resume"]`` holds the last epoch's weights, the
optimizer, the RNG state and the history, so ``--resume`` continues exactly where it stopped. A non-finite
loss stops training with :class:`TrainingDivergedError`; the checkpoint on disk stays the last good one.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnstream.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rnnstream.models.data import (
    Batch,
    TaskData,
    batch_order,
    channel_names,
    classify_data,
    forecast_data,
    generate_data,
    resolve_channels,
    select_channels,
    split_by,
    split_fraction,
    sub_config,
    tag_data,
)
from rnnstream.models.rnn import Cell, InputNorm, ModelConfig, Pooling, StreamingRNN
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    RnnstreamError,
    ShapeError,
    StateError,
    TrainingDivergedError,
)
from rnnstream.pipeline.stats import RunningStats

METRICS_FILE = "metrics.json"


class GradientWarning(UserWarning):
    """Gradient norms exploded or vanished during an epoch (the message has the measured norms)."""


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and optimisation of one training run (the task and dimensions come from the data).

    Attributes:
        cell, hidden_size, num_layers, dropout, bidirectional, pooling, input_norm: the :class:`ModelConfig` fields.
        epochs: total epochs (a resumed run continues up to this number).
        batch_size, lr, weight_decay, optimizer: optimisation (``adam``, ``adamw`` or ``sgd`` with momentum 0.9).
        lr_schedule: ``none``; ``cosine`` (to 0 over ``epochs``); ``step`` (x ``lr_gamma`` every ``lr_step``
            epochs); ``plateau`` (x ``lr_gamma`` after ``lr_step`` epochs without a better monitored loss).
        clip_norm: clip the total gradient norm to this (``None`` or 0: no clipping).
        tbptt: truncated BPTT window in frames (``None``: full BPTT over each padded batch).
        patience: early stopping after this many epochs without a better validation loss (``None``: off).
        seed: seeds weight init, batch order and dropout.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``...
        explode_threshold, vanish_threshold: gradient-norm warnings (total norm above; a layer's mean below).
        steps_per_epoch: cap on batches per epoch (``None``: all).
        bucket: batch sequences of similar length together (less padding).
        progress: show a tqdm progress bar.
        level_shift: forecast/generate augmentation: add a random constant ``N(0, level_shift^2)`` (in units of
            each channel's normalisation std) to a training window's inputs and targets alike, so the model
            learns to forecast relative to the recent level (helps on drifting series such as ETTh1's OT).
        residual: forecast only: the head predicts the change from the current frame's target values
            (:class:`ModelConfig` ``residual``).
        num_threads: torch intra-op threads while training (``None``: leave torch's setting). Small RNNs on a
            busy CPU often run fastest on 1.
    """

    cell: Cell = "gru"
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.0
    bidirectional: bool = False
    pooling: Pooling = "last"
    input_norm: InputNorm = "none"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr_schedule: Literal["none", "cosine", "step", "plateau"] = "none"
    lr_step: int = 10
    lr_gamma: float = 0.5
    clip_norm: float | None = 1.0
    tbptt: int | None = None
    patience: int | None = None
    seed: int = 0
    device: str = "auto"
    explode_threshold: float = 1e3
    vanish_threshold: float = 1e-7
    steps_per_epoch: int | None = None
    bucket: bool = True
    progress: bool = True
    num_threads: int | None = None
    level_shift: float = 0.0
    residual: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "lr_step"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("tbptt", "patience", "steps_per_epoch", "num_threads"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ConfigError(f"{name} must be >= 1 or None, got {v}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not (self.level_shift >= 0 and math.isfinite(self.level_shift)):
            raise ConfigError(f"level_shift must be >= 0, got {self.level_shift}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"optimizer must be adam, adamw or sgd; got {self.optimizer!r}")
        if self.lr_schedule not in ("none", "cosine", "step", "plateau"):
            raise ConfigError(f"lr_schedule must be none, cosine, step or plateau; got {self.lr_schedule!r}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if self.clip_norm is not None and self.clip_norm < 0:
            raise ConfigError(f"clip_norm must be >= 0 or None, got {self.clip_norm}")
        if self.bidirectional and self.tbptt:
            raise ConfigError(
                f"tbptt={self.tbptt} needs a streaming (unidirectional) model: truncated BPTT carries the state "
                "from window to window with model.step, which a bidirectional RNN cannot do"
            )
        if not 0 <= self.vanish_threshold < self.explode_threshold:
            raise ConfigError(
                f"need 0 <= vanish_threshold < explode_threshold, got {self.vanish_threshold} and {self.explode_threshold}"
            )

    def model_config(self, data: TaskData) -> ModelConfig:
        """The :class:`ModelConfig` for ``data``'s task and dimensions."""
        return ModelConfig(
            input_dim=data.input_dim, output_dim=data.output_dim, task=data.task, cell=self.cell,
            hidden_size=self.hidden_size, num_layers=self.num_layers, dropout=self.dropout,
            bidirectional=self.bidirectional, pooling=self.pooling if data.task == "classify" else "last",
            horizon=data.horizon if data.task == "forecast" else 1,
            target_dims=data.target_dims if data.task == "forecast" else (), input_norm=self.input_norm,
            residual=self.residual,
        )


@dataclass
class TrainResult:
    """What :func:`train` returns: the best model (eval mode, CPU) and the run's record."""

    model: StreamingRNN
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    checkpoint: str | None = None
    plots: list[str] = field(default_factory=list)
    labels: tuple[str, ...] = ()
    grad_warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def _targets(model: StreamingRNN, out: Tensor, batch: Batch, t0: int, t1: int) -> tuple[Tensor, Tensor] | None:
    """Predictions and targets at the masked frames of window ``[t0, t1)``; ``out`` is ``[B, t1 - t0, O]``.

    Returns ``(pred [K, O'], target [K, ...])`` or ``None`` when no frame of the window carries a loss.
    Regression targets are normalised with the model's own statistics (the scale the head predicts in).
    """
    sel = batch.mask[:, t0:t1]
    pred = out[sel]
    if pred.shape[0] == 0:
        return None
    task = model.config.task
    if task == "classify":
        return pred, batch.y[sel.any(1)]
    if task == "tag":
        return pred, batch.y[:, t0:t1][sel]
    if task == "forecast":
        dims = list(model.config.target_dims)
        y = batch.y[:, t0:t1][sel]  # [K, H, Dt]
        target = (y - model.feat_mean[dims]) / model.feat_std[dims]
        return pred.view(pred.shape[0], model.config.horizon, len(dims)), target
    y = batch.y[:, t0:t1][sel]
    return pred, (y - model.feat_mean) / model.feat_std


def _loss(model: StreamingRNN, pred: Tensor, target: Tensor) -> Tensor:
    if model.config.task in ("classify", "tag"):
        return F.cross_entropy(pred, target)
    return F.mse_loss(pred, target)


# --------------------------------------------------------------------------------------------
# Gradient norms
# --------------------------------------------------------------------------------------------


class _GradTracker:
    """Per-layer gradient norms, clipping, and the epoch's explode/vanish check."""

    def __init__(self, model: StreamingRNN, clip: float | None):
        self.params = [p for p in model.parameters() if p.requires_grad]
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        keys = [f"rnn.l{m.group(1)}" if (m := re.search(r"_l(\d+)", n)) else n.split(".")[0] for n in names]
        self.groups = list(dict.fromkeys(keys))
        device = self.params[0].device
        self.index = torch.tensor([self.groups.index(k) for k in keys], device=device)
        self.clip = clip or None
        self.device = device
        self.reset()

    def reset(self) -> None:
        g = len(self.groups)
        self.sum = torch.zeros(g, device=self.device)
        self.max = torch.zeros(g, device=self.device)
        self.total_max = torch.zeros((), device=self.device)
        self.total_sum = torch.zeros((), device=self.device)
        self.steps = 0

    def __call__(self) -> Tensor:
        """Measure (and clip); returns the total norm before clipping (a 0-d tensor)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        sq = torch.stack(torch._foreach_norm(grads)) ** 2
        layer = torch.zeros_like(self.sum).index_add_(0, self.index, sq).sqrt()
        total = sq.sum().sqrt()
        if self.clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.clip, total)
        self.sum += layer
        torch.maximum(self.max, layer, out=self.max)
        torch.maximum(self.total_max, total, out=self.total_max)
        self.total_sum += total
        self.steps += 1
        return total

    def summary(self) -> dict[str, Any]:
        n = max(self.steps, 1)
        mean = (self.sum / n).tolist()
        return {
            "grad_norm_mean": float(self.total_sum) / n,
            "grad_norm_max": float(self.total_max),
            "grad_norm_layers_mean": dict(zip(self.groups, mean)),
            "grad_norm_layers_max": dict(zip(self.groups, self.max.tolist())),
        }

    def check(self, epoch: int, summary: dict[str, Any], explode: float, vanish: float) -> list[str]:
        msgs = []
        if self.steps == 0:
            return msgs
        layers_max = ", ".join(f"{k}={v:.3g}" for k, v in summary["grad_norm_layers_max"].items())
        if summary["grad_norm_max"] > explode:
            clip = f"clipped to {self.clip:g}" if self.clip else "not clipped (set clip_norm / --clip)"
            msgs.append(
                f"exploding gradients in epoch {epoch}: total gradient norm reached {summary['grad_norm_max']:.4g} "
                f"(> explode_threshold {explode:g}; epoch mean {summary['grad_norm_mean']:.4g}); per-layer max: "
                f"{layers_max}; {clip}"
            )
        small = {k: v for k, v in summary["grad_norm_layers_mean"].items() if v < vanish}
        if small:
            means = ", ".join(f"{k}={v:.3g}" for k, v in summary["grad_norm_layers_mean"].items())
            msgs.append(
                f"vanishing gradients in epoch {epoch}: mean gradient norm of {', '.join(small)} below "
                f"vanish_threshold {vanish:g}; per-layer means: {means}"
            )
        for m in msgs:
            warnings.warn(m, GradientWarning, stacklevel=3)
        return msgs


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {spec!r}: {exc}") from None


def check_compatible(model: StreamingRNN, data: TaskData, where: str = "model") -> None:
    """Raise a typed error unless ``model`` can train on / score ``data`` (dims, task, classes)."""
    c = model.config
    if data.input_dim != c.input_dim:
        raise ShapeError(
            f"{where} takes {c.input_dim} features per frame, but the data has feature dimension {data.input_dim}"
        )
    if data.task != c.task:
        raise ConfigError(f"{where} is a {c.task!r} model, but the data is for task {data.task!r}")
    if data.task == "forecast" and (data.horizon, tuple(data.target_dims)) != (c.horizon, tuple(c.target_dims)):
        raise ConfigError(
            f"{where} forecasts horizon {c.horizon} of channels {list(c.target_dims)}, the data has horizon "
            f"{data.horizon} of channels {list(data.target_dims)}"
        )
    if data.task in ("classify", "tag") and len(data.labels) > c.output_dim:
        raise ShapeError(f"{where} has {c.output_dim} classes, the data has {len(data.labels)} labels {list(data.labels)}")


def _remap_labels(data: TaskData, labels: tuple[str, ...] | list[str] | None) -> Tensor | None:
    """Map the data's label ids onto ``labels`` (the model's); unseen labels raise :class:`DatasetError`."""
    if data.task not in ("classify", "tag") or not labels or tuple(labels) == tuple(data.labels):
        return None
    unseen = [name for name in data.labels if name not in labels]
    if unseen:
        raise DatasetError(
            f"evaluation data has label(s) {unseen} never seen in training (the model knows {list(labels)})"
        )
    return torch.tensor([list(labels).index(name) for name in data.labels], dtype=torch.long)


@torch.no_grad()
def _predict_batches(model: StreamingRNN, data: TaskData, batch_size: int, device: torch.device):
    for idx in batch_order(data, batch_size, shuffle=False, bucket=False):
        batch = data.batch(idx).to(device)
        if model.config.bidirectional:
            out = model(batch.x, batch.lengths)
        else:
            out = model(batch.x)
        yield idx, batch, out


@torch.no_grad()
def evaluate(model: StreamingRNN, data: TaskData, *, labels: tuple[str, ...] | list[str] | None = None,
             batch_size: int = 256, device: str | torch.device | None = None) -> dict[str, Any]:
    """Score ``model`` on ``data`` (JSON-ready dict).

    Always: ``loss`` (the training loss on the masked frames) and ``n`` (scored examples). Plus
    classify: ``accuracy``, ``confusion`` (``[C][C]`` counts, rows = truth), ``labels``;
    tag: the same per frame; forecast: ``mse``/``mae`` of each sequence's last-frame forecast in the
    normalised scale (the window protocol), and ``persistence_mse``/``persistence_mae`` of repeating the last
    input value; generate: next-frame ``mse``/``mae`` (normalised) and the persistence baseline.

    ``labels``: the model's label names (a checkpoint's ``labels``); evaluation labels outside them raise
    :class:`DatasetError`.
    """
    check_compatible(model, data)
    remap = _remap_labels(data, labels)
    names = tuple(labels) if labels else tuple(data.labels)
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else model.feat_mean.device
    task = model.config.task
    loss_sum, count = 0.0, 0
    correct = 0
    confusion = torch.zeros((model.config.output_dim, model.config.output_dim), dtype=torch.long)
    se = ae = pse = pae = 0.0
    n_values = 0
    for _, batch, out in _predict_batches(model, data, batch_size, dev):
        if remap is not None:
            y = batch.y.clone()
            valid = y >= 0
            y[valid] = remap.to(y.device)[y[valid]]
            batch = Batch(batch.x, batch.lengths, y, batch.mask)
        pt = _targets(model, out, batch, 0, out.shape[1])
        if pt is None:
            continue
        pred, target = pt
        if task in ("classify", "tag") and int(target.max()) >= model.config.output_dim:
            raise DatasetError(f"label id {int(target.max())} out of range for a model with {model.config.output_dim} classes")
        loss_sum += float(_loss(model, pred, target)) * pred.shape[0]
        count += pred.shape[0]
        if task in ("classify", "tag"):
            guess = pred.argmax(-1)
            correct += int((guess == target).sum())
            c = model.config.output_dim
            confusion += torch.bincount((target * c + guess).cpu(), minlength=c * c).view(c, c)
        elif task == "forecast":
            dims = list(model.config.target_dims)
            last = StreamingRNN.last_output(out, batch.lengths)  # [B, H*Dt]
            pred_l = model.forecast_view(last)
            ly = StreamingRNN.last_output(batch.y.flatten(2), batch.lengths).view_as(pred_l)
            truth = (ly - model.feat_mean[dims]) / model.feat_std[dims]
            lx = StreamingRNN.last_output(batch.x, batch.lengths)[:, dims]
            persist = ((lx - model.feat_mean[dims]) / model.feat_std[dims]).unsqueeze(1).expand_as(truth)
            se += float(((pred_l - truth) ** 2).sum())
            ae += float((pred_l - truth).abs().sum())
            pse += float(((persist - truth) ** 2).sum())
            pae += float((persist - truth).abs().sum())
            n_values += truth.numel()
        else:
            se += float(((pred - target) ** 2).sum())
            ae += float((pred - target).abs().sum())
            z = (batch.x - model.feat_mean) / model.feat_std
            persist = z[:, : out.shape[1]][batch.mask]
            pse += float(((persist - target) ** 2).sum())
            pae += float((persist - target).abs().sum())
            n_values += target.numel()
    model.train(was_training)
    if count == 0:
        raise DatasetError("evaluation data has no scored frames (empty dataset or split)")
    metrics: dict[str, Any] = {"loss": loss_sum / count, "n": len(data)}
    if task in ("classify", "tag"):
        metrics.update(accuracy=correct / count, confusion=confusion.tolist(), labels=list(names))
        if task == "tag":
            metrics["frames"] = count
    else:
        metrics.update(mse=se / n_values, mae=ae / n_values, persistence_mse=pse / n_values,
                       persistence_mae=pae / n_values)
    return metrics


@torch.no_grad()
def forecast_predictions(model: StreamingRNN, data: TaskData, limit: int | None = None,
                         batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Last-frame forecasts and truth, both ``[N, H, Dt]`` in the normalised scale (first ``limit`` windows)."""
    preds, truths = [], []
    dims = list(model.config.target_dims)
    model.eval()
    seen = 0
    for _, batch, out in _predict_batches(model, data, batch_size, model.feat_mean.device):
        p = model.forecast_view(StreamingRNN.last_output(out, batch.lengths))
        t = StreamingRNN.last_output(batch.y.flatten(2), batch.lengths).view_as(p)
        preds.append(p.cpu().numpy())
        truths.append(((t - model.feat_mean[dims]) / model.feat_std[dims]).cpu().numpy())
        seen += p.shape[0]
        if limit is not None and seen >= limit:
            break
    p, t = np.concatenate(preds), np.concatenate(truths)
    return (p[:limit], t[:limit]) if limit is not None else (p, t)


def _primary(task: str) -> str:
    return "accuracy" if task in ("classify", "tag") else "mse"


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _shift_levels(model: StreamingRNN, batch: Batch, sigma: float) -> Batch:
    """Level-shift augmentation: one random offset per sequence and channel, added to inputs and targets."""
    offset = torch.randn(batch.x.shape[0], 1, batch.x.shape[2], device=batch.x.device) * (sigma * model.feat_std)
    x = batch.x + offset
    if model.config.task == "forecast":
        y = batch.y + offset[:, :, list(model.config.target_dims)].unsqueeze(2)  # [B, 1, 1, Dt]
    else:
        y = batch.y + offset
    return Batch(x, batch.lengths, y, batch.mask)


def _lr_factor(cfg: TrainConfig, epoch: int, plateau_scale: float) -> float:
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** ((epoch - 1) // cfg.lr_step)
    if cfg.lr_schedule == "plateau":
        return plateau_scale
    return 1.0


def _optimizer(cfg: TrainConfig, model: StreamingRNN) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _cpu_state(model: StreamingRNN) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _stats_of(stats: RunningStats | None, data: TaskData) -> RunningStats:
    s = data.fit_stats() if stats is None else stats
    if s.dim != data.input_dim:
        raise ShapeError(f"normalisation statistics have dimension {s.dim}, the data has {data.input_dim}")
    if s.count == 0:
        raise DatasetError("cannot fit normalisation statistics: the training data has no frames")
    return s


def _divergence(epoch: int, step: int, loss: float, norm: float, ckpt: str | None, saved: int | None) -> TrainingDivergedError:
    kept = (f"the last good checkpoint {ckpt!r} (epoch {saved}) was kept" if ckpt and saved
            else "no checkpoint had been written yet")
    return TrainingDivergedError(
        f"training diverged in epoch {epoch}, step {step}: loss = {loss}, total gradient norm = {norm:.4g}; {kept}. "
        "Lower the learning rate, clip gradients (--clip), or check the data for extreme values"
    )


def train(train_data: TaskData, config: TrainConfig = TrainConfig(), *, val_data: TaskData | None = None,
          test_data: TaskData | None = None, model: StreamingRNN | None = None,
          stats: RunningStats | None = None, feature_config: FeatureConfig | None = None,
          checkpoint: str | None = None, resume: bool = False, plots_dir: str | None = None,
          metrics_path: str | None = None) -> TrainResult:
    """Train a :class:`StreamingRNN` on ``train_data``; see the module docstring for what an epoch does.

    Args:
        train_data, val_data, test_data: :class:`TaskData` of one task (val/test built with the training labels).
        config: architecture and optimisation.
        model: start from these weights (fine-tuning); its config must fit the data. Default: a new model
            from ``config`` whose normalisation is ``stats``, or the training data's own statistics.
        feature_config: stored in the checkpoint (default: ``train_data.feature_config``).
        checkpoint: path written after every epoch (best weights + resume state); ``None``: none written.
        resume: continue from ``checkpoint``'s saved epoch (its weights, optimizer, history, RNG).
        plots_dir: write PNG plots there (default: beside the checkpoint; none without either).
        metrics_path: ``metrics.json`` path (default: beside the checkpoint).

    Raises:
        ShapeError / ConfigError / DatasetError: data and model disagree (feature dimension, task, labels).
        CheckpointError: ``resume`` from a missing, corrupt or resume-less checkpoint.
        TrainingDivergedError: the loss or gradient became NaN/Inf (the last good checkpoint is kept).
    """
    if config.num_threads is None:
        return _train(train_data, config, val_data=val_data, test_data=test_data, model=model, stats=stats,
                      feature_config=feature_config, checkpoint=checkpoint, resume=resume, plots_dir=plots_dir,
                      metrics_path=metrics_path)
    before = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train(train_data, config, val_data=val_data, test_data=test_data, model=model, stats=stats,
                      feature_config=feature_config, checkpoint=checkpoint, resume=resume, plots_dir=plots_dir,
                      metrics_path=metrics_path)
    finally:
        torch.set_num_threads(before)


def _train(train_data: TaskData, config: TrainConfig, *, val_data: TaskData | None, test_data: TaskData | None,
           model: StreamingRNN | None, stats: RunningStats | None, feature_config: FeatureConfig | None,
           checkpoint: str | None, resume: bool, plots_dir: str | None, metrics_path: str | None) -> TrainResult:
    from tqdm.auto import tqdm

    cfg = config
    if len(train_data) == 0:
        raise DatasetError("training data is empty")
    feature_config = feature_config or train_data.feature_config
    if checkpoint is not None and feature_config is None:
        raise ConfigError("writing a checkpoint needs the feature config (pass feature_config= or data built with one)")
    device = _device(cfg.device)
    labels = tuple(train_data.labels)
    for name, d in (("validation", val_data), ("test", test_data)):
        if d is not None and d.input_dim != train_data.input_dim:
            raise ShapeError(f"{name} data has feature dimension {d.input_dim}, training data {train_data.input_dim}")

    if checkpoint is not None:
        os.makedirs(os.path.dirname(os.path.abspath(checkpoint)), exist_ok=True)
    torch.manual_seed(cfg.seed)
    resume_state: dict[str, Any] | None = None
    if resume:
        if checkpoint is None:
            raise ConfigError("resume needs the checkpoint path to continue from")
        ck = load_checkpoint(checkpoint)
        resume_state = ck.extra.get("resume")
        if not isinstance(resume_state, dict):
            raise CheckpointError(f"checkpoint {checkpoint!r} holds no resume state (extra['resume'])")
        check_compatible(ck.model, train_data, where=f"checkpoint {checkpoint!r}")
        if ck.labels and tuple(ck.labels) != labels:
            raise DatasetError(f"checkpoint {checkpoint!r} was trained on labels {ck.labels}, the data has {list(labels)}")
        model = ck.model
        best_state = _cpu_state(model)  # the checkpoint's top-level weights are the best so far
        model.load_state_dict(resume_state["model"])
        stats_dict = ck.stats
    elif model is not None:
        check_compatible(model, train_data, where="the initial model")
        model = copy.deepcopy(model)
        stats_dict = stats.to_dict() if stats is not None else {
            "mean": model.feat_mean.tolist(), "std": model.feat_std.tolist()}
    else:
        fitted = _stats_of(stats, train_data)
        model = StreamingRNN(cfg.model_config(train_data), feat_mean=fitted.mean.astype(np.float32),
                             feat_std=fitted.std.astype(np.float32))
        stats_dict = fitted.to_dict()
    if cfg.tbptt and model.config.bidirectional:
        raise StateError("truncated BPTT carries state with model.step; a bidirectional model cannot stream")
    model.to(device).train()
    optimizer = _optimizer(cfg, model)
    history: list[dict[str, Any]] = []
    best_val, best_epoch, bad_epochs, plateau_scale, plateau_bad = math.inf, 0, 0, 1.0, 0
    start_epoch, saved_epoch = 1, None
    if resume_state is None:
        best_state = _cpu_state(model)
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        history = list(resume_state["history"])
        best_val = float(resume_state["best_val"])
        best_epoch = int(resume_state["best_epoch"])
        bad_epochs = int(resume_state["bad_epochs"])
        plateau_scale = float(resume_state["plateau_scale"])
        plateau_bad = int(resume_state["plateau_bad"])
        start_epoch = int(resume_state["epoch"]) + 1
        saved_epoch = start_epoch - 1
        torch.set_rng_state(resume_state["rng"])
    tracker = _GradTracker(model, cfg.clip_norm)
    grad_warnings: list[str] = []
    stopped_early = False
    epoch = start_epoch - 1
    task = model.config.task

    for epoch in range(start_epoch, cfg.epochs + 1):
        if cfg.patience is not None and val_data is not None and bad_epochs >= cfg.patience:
            stopped_early = True
            epoch -= 1
            break
        lr = cfg.lr * _lr_factor(cfg, epoch, plateau_scale)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        batches = batch_order(train_data, cfg.batch_size, shuffle=True, generator=gen, bucket=cfg.bucket)
        if cfg.steps_per_epoch is not None:
            batches = batches[: cfg.steps_per_epoch]
        tracker.reset()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        count = frames = step = 0
        t_start = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, leave=False,
                   dynamic_ncols=True, file=sys.stderr)
        for step, idx in enumerate(bar, 1):
            batch = train_data.batch(idx).to(device)
            if cfg.level_shift and task in ("forecast", "generate"):
                batch = _shift_levels(model, batch, cfg.level_shift)
            frames += batch.frames
            T = batch.x.shape[1]
            window = cfg.tbptt or T
            state = model.initial_state(batch.x.shape[0]) if not model.config.bidirectional else None
            for t0 in range(0, T, window):
                t1 = min(t0 + window, T)
                if state is None:
                    out = model(batch.x, batch.lengths)
                elif cfg.tbptt:
                    out, state = model.step(batch.x[:, t0:t1], state)
                    state = {k: v.detach() for k, v in state.items()}
                else:
                    out = model(batch.x)
                pt = _targets(model, out, batch, t0, t1)
                if pt is None:
                    continue
                loss = _loss(model, pt[0], pt[1])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = tracker()
                lv, nv = float(loss.detach()), float(norm)
                if not (math.isfinite(lv) and math.isfinite(nv)):
                    bar.close()
                    raise _divergence(epoch, step, lv, nv, checkpoint, saved_epoch)
                optimizer.step()
                k = pt[0].shape[0]
                loss_sum += lv * k
                count += k
            if cfg.progress and step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / max(count, 1):.4f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - t_start
        train_loss = float(loss_sum) / max(count, 1)
        summary = tracker.summary()
        msgs = tracker.check(epoch, summary, cfg.explode_threshold, cfg.vanish_threshold)
        grad_warnings += msgs
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "seconds": seconds,
                               "frames_per_s": frames / seconds if seconds > 0 else 0.0, **summary}
        monitored = train_loss
        if val_data is not None:
            vm = evaluate(model, val_data, labels=labels or None)
            row["val_loss"] = vm["loss"]
            row[f"val_{_primary(task)}"] = vm[_primary(task)]
            monitored = vm["loss"]
            model.train()
        history.append(row)
        if monitored < best_val:
            best_val, best_epoch, bad_epochs, plateau_bad = monitored, epoch, 0, 0
            best_state = _cpu_state(model)
        else:
            bad_epochs += 1
            plateau_bad += 1
            if cfg.lr_schedule == "plateau" and plateau_bad >= cfg.lr_step:
                plateau_scale *= cfg.lr_gamma
                plateau_bad = 0
        if cfg.progress:
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()
                     if k in ("epoch", "train_loss", "val_loss", f"val_{_primary(task)}", "lr")}
            tqdm.write(" ".join(f"{k}={v}" for k, v in shown.items()), file=sys.stderr)
        if checkpoint is not None:
            resume_out = {
                "epoch": epoch, "model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                "history": history, "best_val": best_val, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "plateau_scale": plateau_scale, "plateau_bad": plateau_bad, "rng": torch.get_rng_state(),
                "train_config": json.dumps(dataclasses.asdict(cfg)),
            }
            best_model = copy.deepcopy(model).cpu()
            best_model.load_state_dict(best_state)
            save_checkpoint(checkpoint, best_model, feature_config, labels=list(labels), stats=stats_dict,  # type: ignore[arg-type]
                            extra={"epoch": epoch, "best_epoch": best_epoch, "resume": resume_out})
            saved_epoch = epoch

    model.load_state_dict(best_state)
    model.cpu().eval()
    metrics: dict[str, Any] = {}
    for name, d in (("val", val_data), ("test", test_data)):
        if d is not None:
            metrics[name] = evaluate(model, d, labels=labels or None)
    plots: list[str] = []
    out_dir = plots_dir or (os.path.dirname(os.path.abspath(checkpoint)) if checkpoint else None)
    if out_dir is not None and history:
        from rnnstream.models import plots as P

        os.makedirs(out_dir, exist_ok=True)
        plots.append(P.plot_curves(history, os.path.join(out_dir, "curves.png"), metric=f"val_{_primary(task)}"))
        scored = metrics.get("test") or metrics.get("val")
        if scored is not None and task in ("classify", "tag"):
            plots.append(P.plot_confusion(np.asarray(scored["confusion"]), scored["labels"],
                                          os.path.join(out_dir, "confusion.png")))
        scored_data = test_data or val_data
        if scored_data is not None and task == "forecast":
            pred, truth = forecast_predictions(model, scored_data, limit=500)
            plots.append(P.plot_forecast(pred, truth, os.path.join(out_dir, "forecast.png")))
    result = TrainResult(model=model, history=history, metrics=metrics, best_epoch=best_epoch, epochs_run=epoch,
                         stopped_early=stopped_early, checkpoint=checkpoint, plots=plots, labels=labels,
                         grad_warnings=grad_warnings)
    if metrics_path is None and checkpoint is not None:
        metrics_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), METRICS_FILE)
    if metrics_path is not None:
        with open(metrics_path, "w", encoding="utf-8") as fh:
            json.dump({
                "task": task, "model_config": model.config.to_dict(), "train_config": dataclasses.asdict(cfg),
                "epochs_run": epoch, "best_epoch": best_epoch, "stopped_early": stopped_early,
                "checkpoint": checkpoint, "plots": plots, "grad_warnings": grad_warnings,
                "history": history, **metrics,
            }, fh, indent=2)
    return result


# --------------------------------------------------------------------------------------------
# Dataset -> task data (what the CLI does)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """How to turn a featurized dataset into training/validation/test data.

    Attributes:
        task: classify (``Example.label``), tag (per-frame labels in metadata ``frame_labels``),
            forecast (windows: ``window`` input frames, ``horizon``, ``targets``), generate (next frame).
        val_fraction: random share of examples held out for validation (when ``val_by`` is not set).
        val_by, val_match: validation = examples whose field ``val_by`` fully matches regex ``val_match``.
        test_by, test_match: a held-out test split, the same way (taken out first).
        channels: input channels (names or indices; forecast/generate on sensor data), default all.
        targets: forecast target channels (names or indices of the data's channels, included in ``channels``).
        split_rows: forecast row ranges ``((a, b), (c, d)[, (e, f)])`` for train/val[/test] within each series.
        forecast_loss: ``all`` frames of a training window or its ``last`` frame only.
        stats: ``train`` (fit on the training split) or ``dataset`` (the dataset's stats.json).
    """

    task: str = "classify"
    val_fraction: float = 0.1
    val_by: str | None = None
    val_match: str | None = None
    test_by: str | None = None
    test_match: str | None = None
    frame_labels: str = "frame_labels"
    channels: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    window: int = 96
    horizon: int = 24
    split_rows: tuple[tuple[int, int], ...] = ()
    forecast_loss: Literal["all", "last"] = "all"
    stats: Literal["train", "dataset"] = "train"
    seed: int = 0


@dataclass
class PreparedData:
    train: TaskData
    val: TaskData | None
    test: TaskData | None
    feature_config: FeatureConfig
    stats: RunningStats


def prepare_data(root: str, spec: DataSpec) -> PreparedData:
    """Read the dataset at ``root`` and split/shape it per ``spec`` (see :class:`DataSpec`)."""
    from rnnstream.pipeline.dataset import read_dataset

    ds = read_dataset(root)
    examples = list(ds.examples)
    fc = ds.config
    names = channel_names(fc)
    dims = resolve_channels(list(spec.channels), names) if spec.channels else list(range(fc.dim))
    if dims != list(range(fc.dim)):
        fc = sub_config(fc, dims)
        examples = select_channels(examples, dims)
    picked = [names[d] for d in dims]

    def by_rows(rows: tuple[int, int], last_only: bool) -> TaskData:
        return forecast_data(examples, window=spec.window, horizon=spec.horizon, target_dims=target_dims,
                             rows=rows, last_only=last_only, feature_config=fc)

    target_dims: list[int] = []
    if spec.task == "forecast":
        if not spec.targets:
            raise ConfigError("task 'forecast' needs target channels (--targets NAME[,NAME...])")
        target_dims = resolve_channels(list(spec.targets), picked)
    if spec.task == "forecast" and spec.split_rows:
        if len(spec.split_rows) not in (2, 3):
            raise ConfigError(f"split_rows needs 2 or 3 row ranges (train, val[, test]), got {len(spec.split_rows)}")
        train_d = by_rows(spec.split_rows[0], spec.forecast_loss == "last")
        val_d = by_rows(spec.split_rows[1], True)
        test_d = by_rows(spec.split_rows[2], True) if len(spec.split_rows) == 3 else None
    else:
        rest, test_ex = examples, []
        if spec.test_by or spec.test_match:
            if not (spec.test_by and spec.test_match):
                raise ConfigError("a test split needs both test_by (a metadata key) and test_match (a regex)")
            rest, test_ex = split_by(examples, spec.test_by, spec.test_match)
            if not test_ex:
                raise DatasetError(f"test split {spec.test_by}={spec.test_match!r} matched no example in {root!r}")
        if spec.val_by or spec.val_match:
            if not (spec.val_by and spec.val_match):
                raise ConfigError("a validation split needs both val_by (a metadata key) and val_match (a regex)")
            train_ex, val_ex = split_by(rest, spec.val_by, spec.val_match)
            if not val_ex:
                raise DatasetError(f"validation split {spec.val_by}={spec.val_match!r} matched no example in {root!r}")
        else:
            train_ex, val_ex = split_fraction(rest, spec.val_fraction, spec.seed)
        if not train_ex:
            raise DatasetError(f"no training examples left in {root!r} after the validation/test splits")

        def build(ex: list, labels: tuple[str, ...] | None, last_only: bool) -> TaskData:
            if spec.task == "classify":
                return classify_data(ex, labels, feature_config=fc)
            if spec.task == "tag":
                return tag_data(ex, spec.frame_labels, labels, feature_config=fc)
            if spec.task == "generate":
                return generate_data(ex, feature_config=fc)
            if spec.task == "forecast":
                return forecast_data(ex, window=spec.window, horizon=spec.horizon, target_dims=target_dims,
                                     last_only=last_only, feature_config=fc)
            raise ConfigError(f"task must be classify, tag, forecast or generate; got {spec.task!r}")

        train_d = build(train_ex, None, spec.forecast_loss == "last")
        labels = train_d.labels or None
        val_d = build(val_ex, labels, True) if val_ex else None
        test_d = build(test_ex, labels, True) if test_ex else None
    if spec.stats == "dataset":
        stats = RunningStats(ds.stats.count, ds.stats.mean[dims], ds.stats.m2[dims])
    else:
        stats = train_d.fit_stats()
    return PreparedData(train_d, val_d, test_d, fc, stats)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _rows(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", part)
        if not m:
            raise ConfigError(f"--split-rows expects START:STOP[,START:STOP...], got {text!r}")
        out.append((int(m.group(1)), int(m.group(2))))
    return tuple(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnnstream train", description="Train a stateful RNN on a featurized dataset.")
    p.add_argument("--data", required=True, help="featurized dataset directory (rnnstream featurize output)")
    p.add_argument("--out", required=True, help="checkpoint path (best weights + resume state)")
    p.add_argument("--task", default="classify", choices=["classify", "tag", "forecast", "generate"])
    a = p.add_argument_group("architecture")
    a.add_argument("--cell", default="gru", choices=["rnn_tanh", "rnn_relu", "lstm", "gru"])
    a.add_argument("--layers", type=int, default=2)
    a.add_argument("--hidden", type=int, default=128)
    a.add_argument("--dropout", type=float, default=0.0)
    a.add_argument("--bidirectional", action="store_true", help="offline only: cannot stream or use --tbptt")
    a.add_argument("--residual", action="store_true", help="forecast: predict the change from the current value")
    a.add_argument("--pooling", default="last", choices=["last", "mean"], help="classify: last frame or running mean")
    a.add_argument("--input-norm", default="none", choices=["none", "causal_mean"],
                   help="causal_mean: subtract the running mean of the normalised features so far (streamable CMN)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=10)
    o.add_argument("--batch-size", type=int, default=32)
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    o.add_argument("--lr-schedule", default="none", choices=["none", "cosine", "step", "plateau"])
    o.add_argument("--lr-step", type=int, default=10)
    o.add_argument("--lr-gamma", type=float, default=0.5)
    o.add_argument("--clip", type=float, default=1.0, help="max total gradient norm (0: no clipping)")
    o.add_argument("--tbptt", type=int, default=None, help="truncated BPTT window in frames")
    o.add_argument("--patience", type=int, default=None, help="early stopping patience in epochs")
    o.add_argument("--steps-per-epoch", type=int, default=None)
    o.add_argument("--explode-threshold", type=float, default=1e3)
    o.add_argument("--vanish-threshold", type=float, default=1e-7)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1...")
    o.add_argument("--level-shift", type=float, default=0.0,
                   help="forecast/generate: random level-offset augmentation, in normalisation stds")
    o.add_argument("--threads", type=int, default=None, help="torch CPU threads while training (default: torch's)")
    d = p.add_argument_group("data")
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument("--val-by", help="metadata key (or id/path/label) for the validation split")
    d.add_argument("--val-match", help="regex: examples whose --val-by field fully matches are validation")
    d.add_argument("--test-by", help="metadata key for a held-out test split")
    d.add_argument("--test-match", help="regex for the test split (e.g. --test-by index --test-match '[0-4]')")
    d.add_argument("--frame-labels", default="frame_labels", help="tag: metadata key of the per-frame label list")
    d.add_argument("--channels", default="", help="input channels (names or indices, comma-separated)")
    d.add_argument("--targets", default="", help="forecast target channels (names or indices)")
    d.add_argument("--window", type=int, default=96, help="forecast input window (frames)")
    d.add_argument("--horizon", type=int, default=24, help="forecast horizon (frames)")
    d.add_argument("--split-rows", type=_rows, default=(), help="forecast train,val[,test] rows, e.g. 0:8640,8640:11520,11520:14400")
    d.add_argument("--forecast-loss", default="all", choices=["all", "last"])
    d.add_argument("--stats", default="train", choices=["train", "dataset"], help="normalisation statistics source")
    r = p.add_argument_group("output")
    r.add_argument("--plots", default=None, help="directory for PNG plots (default: beside the checkpoint)")
    r.add_argument("--resume", action="store_true", help="continue from --out's saved epoch")
    r.add_argument("--init", default=None, help="fine-tune: start from this checkpoint's weights")
    r.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = DataSpec(
            task=args.task, val_fraction=args.val_fraction, val_by=args.val_by, val_match=args.val_match,
            test_by=args.test_by, test_match=args.test_match, frame_labels=args.frame_labels,
            channels=tuple(c for c in args.channels.split(",") if c), targets=tuple(c for c in args.targets.split(",") if c),
            window=args.window, horizon=args.horizon, split_rows=args.split_rows, forecast_loss=args.forecast_loss,
            stats=args.stats, seed=args.seed,
        )
        cfg = TrainConfig(
            cell=args.cell, hidden_size=args.hidden, num_layers=args.layers, dropout=args.dropout,
            bidirectional=args.bidirectional, pooling=args.pooling, input_norm=args.input_norm,
            epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer, lr_schedule=args.lr_schedule,
            lr_step=args.lr_step, lr_gamma=args.lr_gamma, clip_norm=args.clip or None, tbptt=args.tbptt,
            patience=args.patience, seed=args.seed, device=args.device, explode_threshold=args.explode_threshold,
            vanish_threshold=args.vanish_threshold, steps_per_epoch=args.steps_per_epoch,
            progress=not args.no_progress, num_threads=args.threads, level_shift=args.level_shift,
            residual=args.residual,
        )
        data = prepare_data(args.data, spec)
        init: Checkpoint | None = load_checkpoint(args.init) if args.init else None
        stats = data.stats
        if init is not None:
            check_compatible(init.model, data.train, where=f"checkpoint {args.init!r}")
            if init.labels and tuple(init.labels) != tuple(data.train.labels):
                raise DatasetError(
                    f"checkpoint {args.init!r} was trained on labels {init.labels}, the training data has "
                    f"{list(data.train.labels)}"
                )
            stats = RunningStats.from_dict(init.stats, where=f"checkpoint {args.init!r} stats") if init.stats else None
        out_dir = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(out_dir, exist_ok=True)
        result = train(
            data.train, cfg, val_data=data.val, test_data=data.test, model=init.model if init else None,
            stats=stats, feature_config=data.feature_config, checkpoint=args.out, resume=args.resume,
            plots_dir=args.plots,
        )
    except RnnstreamError as exc:
        print(f"rnnstream train: error: {exc}", file=sys.stderr)
        return 1
    summary = {"checkpoint": args.out, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "stopped_early": result.stopped_early}
    for split, m in result.metrics.items():
        summary[split] = {k: v for k, v in m.items() if k not in ("confusion", "labels")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training: the Python API behind ``rnnstream train`` (the command itself is :mod:`rnnstream.models.train_cli`).

::

    data = classify_data(train_examples)                       # rnnstream.models.data builds per-task tensors
    val = classify_data(val_examples, labels=data.labels)
    result = train(data, TrainConfig(cell="gru", hidden_size=64, epochs=10), val_data=val, checkpoint="m.pt")
    metrics = evaluate(result.model, val)                      # accuracy + confusion / MSE + MAE

:func:`train` builds (or resumes, or fine-tunes) the model and runs :func:`rnnstream.models.fit.fit` with the
callbacks of :mod:`rnnstream.models.callbacks`. What one epoch does: batches (bucketed by length, seeded
order), forward over the padded batch (or truncated BPTT: windows of ``tbptt`` frames through ``model.step``
with the state detached between windows, as streaming inference carries it), the task's loss
(:mod:`rnnstream.models.tasks`) on the masked frames only, gradient-norm clipping, per-layer gradient norms (a
:class:`GradientWarning` with the measured numbers when they explode or vanish). After each epoch:
validation, learning-rate schedule, early stopping, and a checkpoint whose weights are the best so far and
whose ``extra["resume"]`` holds the last epoch's weights, the optimizer, the RNG state and the history, so
``--resume`` continues exactly where it stopped. A non-finite loss stops training with
:class:`TrainingDivergedError`; the checkpoint on disk stays the last good one.

Also here for existing importers: :func:`evaluate`, :func:`forecast_predictions`, :func:`check_compatible`
(:mod:`~rnnstream.models.evaluate`), :class:`DataSpec` / :func:`prepare_data` (:mod:`~rnnstream.models.prepare`),
``build_parser`` / ``main`` (:mod:`~rnnstream.models.train_cli`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from rnnstream.models.augment import BatchAugment, batch_transform, check_bend
from rnnstream.models.callbacks import (
    METRICS_FILE,
    Callback,
    EarlyStopping,
    GradientWatch,
    LRSchedule,
    MetricsFile,
    ModelCheckpoint,
    Plots,
    Progress,
    Resumed,
    WeightAverage,
    load_resume,
)
from rnnstream.models.data import Batch, TaskData
from rnnstream.models.ensemble import StreamingModel
from rnnstream.models.evaluate import check_compatible, evaluate, forecast_predictions
from rnnstream.models.fit import BatchLoader, fit
from rnnstream.models.gradients import GradientWarning
from rnnstream.models.prepare import DataSpec, PreparedData, prepare_data
from rnnstream.models.rnn import ModelConfig, StreamingRNN
from rnnstream.models.metrics import seasonal_period_of
from rnnstream.models.tasks import task_for
from rnnstream.models.train_cli import build_parser, main
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ConfigError, DatasetError, ShapeError, StateError
from rnnstream.pipeline.model_config import Architecture
from rnnstream.pipeline.model_config import Cell, InputNorm, Pooling  # noqa: F401 -- TrainConfig's inherited field
# annotations name these: pdoc resolves them in this module's namespace
from rnnstream.pipeline.stats import RunningStats


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Architecture):
    """Architecture and optimisation of one training run (the task and dimensions come from the data).

    The architecture fields (``cell``, ``hidden_size``, ``num_layers``, ``dropout``, ``bidirectional``, ``pooling``,
    ``residual``, ``seasonal_period``, ``input_diff``, ``input_delta``, ``input_norm``, ``norm_decay``, ``norm_prior``,
    ``conv_channels``, ``conv_kernel``, ``conv_pool``, ``ensemble``) are :class:`Architecture`'s, declared there
    once; here ``seasonal_period=-1`` also means the data's daily period, and ``ensemble=N`` trains N members
    (:mod:`rnnstream.models.ensemble_train`).

    Attributes:
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
        progress: tqdm progress bars: ``None`` when stderr is a terminal, ``True`` always, ``False`` never.
        level_shift: forecast/generate augmentation: add a random constant ``N(0, level_shift^2)`` (in units of
            each channel's normalisation std) to a training window's inputs and targets alike, so the model
            learns to forecast relative to the recent level (helps on drifting series such as ETTh1's OT).
        num_threads: torch intra-op threads while training (``None``: leave torch's setting). Small RNNs on a
            busy CPU often run fastest on 1.
        augment: training-only per-batch feature augmentation (:class:`rnnstream.models.augment.BatchAugment`
            spec: ``none``, ``speech`` or ``freq=NxW,time=NxW,gain=DB,eq=DB,noise=STD,warp=A,bend=B,
            twarp=A,reverb=S,mixup=A``: SpecAugment masks, random gain, a random equaliser, feature noise, band-axis
            warp and bend, time warp, a random room's reverberation, mixup).
        weight_average: validate and keep an exponential moving average of the weights with this half-life in
            epochs (:class:`rnnstream.models.callbacks.WeightAverage`); 0: the raw weights.
        label_smoothing: classify/tag: the training loss's targets put ``1 - eps`` on the label and spread
            ``eps`` over every class (validation and test losses stay unsmoothed); 0: off.
    """

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
    progress: bool | None = None
    num_threads: int | None = None
    level_shift: float = 0.0
    augment: str = "none"
    weight_average: float = 0.0
    label_smoothing: float = 0.0

    def validate(self) -> None:
        self.validate_architecture()
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
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (self.weight_average >= 0 and math.isfinite(self.weight_average)):
            raise ConfigError(f"weight_average must be 0 (off) or a half-life in epochs > 0, got {self.weight_average}")
        if self.seasonal_period and (self.seasonal_period < -1 or not self.residual):
            raise ConfigError(f"seasonal_period must be -1 (the data's), 0 or a period in frames, with residual=True; "
                              f"got {self.seasonal_period}")
        BatchAugment.parse(self.augment)  # raises ConfigError naming the expected forms
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
        """The :class:`ModelConfig` for ``data``'s task and dimensions (the task sets its head's fields): one model's,
        also with ``ensemble > 1`` (whose members :mod:`rnnstream.models.ensemble_train` trains one by one)."""
        arch = {**self.architecture(), "ensemble": 1, "seasonal_period": self._period(data),
                **task_for(data.task).head_fields(data, self.pooling)}
        return ModelConfig(input_dim=data.input_dim, output_dim=data.output_dim, task=data.task, **arch)

    def _period(self, data: TaskData) -> int:
        if self.seasonal_period != -1:
            return self.seasonal_period
        period = seasonal_period_of(data.feature_config)
        if not period:
            raise ConfigError("seasonal_period=-1 takes the data's daily period, but its feature config has none "
                              "(sensor data on an hourly or finer grid); give the period in frames")
        return period


@dataclass
class TrainResult:
    """What :func:`train` returns: the best model (eval mode, CPU) and the run's record."""

    model: StreamingModel
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    checkpoint: str | None = None
    plots: list[str] = field(default_factory=list)
    labels: tuple[str, ...] = ()
    grad_warnings: list[str] = field(default_factory=list)
    members: list["TrainResult"] = field(default_factory=list)  # an ensemble's members' own results


def _shift_levels(model: StreamingModel, batch: Batch, sigma: float) -> Batch:
    """Level-shift augmentation: one random offset per sequence and channel, added to inputs and targets."""
    return task_for(model.config).shift_levels(model, batch, sigma)


def train(train_data: TaskData, config: TrainConfig = TrainConfig(), *, val_data: TaskData | None = None,
          test_data: TaskData | None = None, model: StreamingModel | None = None,
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
    kwargs: dict[str, Any] = {
        "val_data": val_data, "test_data": test_data, "model": model, "stats": stats, "feature_config": feature_config,
        "checkpoint": checkpoint, "resume": resume, "plots_dir": plots_dir, "metrics_path": metrics_path,
    }
    run = _train if config.ensemble == 1 else _train_ensemble
    if config.num_threads is None:
        return run(train_data, config, **kwargs)
    before = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return run(train_data, config, **kwargs)
    finally:
        torch.set_num_threads(before)


def _train_ensemble(train_data: TaskData, cfg: TrainConfig, **kwargs: Any) -> TrainResult:
    from rnnstream.models.ensemble_train import train_ensemble  # it trains each member with _train

    def one(data: TaskData, member_cfg: TrainConfig, **kw: Any) -> TrainResult:
        return _train(data, member_cfg, model=None, resume=False, **kw)

    return train_ensemble(train_data, cfg, one, **kwargs)


def _train(train_data: TaskData, cfg: TrainConfig, *, val_data: TaskData | None, test_data: TaskData | None,
           model: StreamingModel | None, stats: RunningStats | None, feature_config: FeatureConfig | None,
           checkpoint: str | None, resume: bool, plots_dir: str | None, metrics_path: str | None) -> TrainResult:
    _check_data(train_data, val_data, test_data)
    feature_config = feature_config or train_data.feature_config
    if checkpoint is not None and feature_config is None:
        raise ConfigError("writing a checkpoint needs the feature config (pass feature_config= or data built with one)")
    device = _device(cfg.device)
    labels = tuple(train_data.labels)
    if checkpoint is not None:
        os.makedirs(os.path.dirname(os.path.abspath(checkpoint)), exist_ok=True)
    torch.manual_seed(cfg.seed)  # weight init, then dropout and augmentation
    model, stats_dict, resumed = _initial_model(train_data, cfg, model, stats, checkpoint, resume)
    _check_stacking(model, feature_config)
    _check_pcen(model, feature_config)
    _check_band_augment(BatchAugment.parse(cfg.augment), feature_config)
    if cfg.tbptt and model.config.bidirectional:
        raise StateError("truncated BPTT carries state with model.step; a bidirectional model cannot stream")
    model.to(device).train()
    task = task_for(model.config)
    if cfg.label_smoothing:
        task = task.with_label_smoothing(cfg.label_smoothing)
    if metrics_path is None and checkpoint is not None:
        metrics_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), METRICS_FILE)
    callbacks = _callbacks(cfg, has_val=val_data is not None, checkpoint=checkpoint, feature_config=feature_config,
                           labels=labels, stats=stats_dict, resumed=resumed, scored=test_data or val_data,
                           plots_dir=plots_dir, metrics_path=metrics_path)
    loader = BatchLoader(train_data, cfg.batch_size, seed=cfg.seed, bucket=cfg.bucket, max_batches=cfg.steps_per_epoch)
    state = fit(model, loader, val_data, optimizer=_optimizer(cfg, model), epochs=cfg.epochs, callbacks=callbacks,
                test_data=test_data, task=task, clip_norm=cfg.clip_norm, tbptt=cfg.tbptt, labels=labels,
                transform=_transform(cfg, model, task, feature_config))
    return TrainResult(model=state.model, history=state.history, metrics=state.metrics, best_epoch=state.best_epoch,
                       epochs_run=state.epoch, stopped_early=state.stopped_early, checkpoint=checkpoint,
                       plots=state.plots, labels=labels, grad_warnings=state.grad_warnings)


def _transform(cfg: TrainConfig, model: StreamingModel, task: Any, feature_config: FeatureConfig | None) -> Any:
    """The training batches' augmentation (``fit``'s ``transform``): level shifts, then ``cfg.augment``."""
    steps = []
    if cfg.level_shift:
        steps.append(lambda b: task.shift_levels(model, b, cfg.level_shift))
    aug = BatchAugment.parse(cfg.augment)
    if aug.active:
        audio = feature_config.audio if feature_config is not None else None
        steps.append(batch_transform(model, aug, stack=audio.stack if audio is not None else 1,
                                     frame_s=audio.hop_length / audio.sample_rate if audio is not None else 0.01))
    if not steps:
        return None

    def transform(batch: Batch) -> Batch:
        for f in steps:
            batch = f(batch)
        return batch

    return transform


def _check_stacking(model: StreamingModel, feature_config: FeatureConfig | None) -> None:
    """Stacked frames (``AudioConfig.stack > 1``) lie side by side on the feature axis: a convolution over
    frequency would slide across the copies' seams, so it is refused (a full-width temporal conv is fine)."""
    audio = feature_config.audio if feature_config is not None else None
    c = model.config
    if audio is not None and audio.stack > 1 and c.conv_channels and not c.conv_full_width:
        raise ConfigError(f"a frequency convolution (conv_kernel {list(c.conv_kernel)}) over stacked frames "
                          f"(stack={audio.stack}) would mix the stacked copies' bands; use stack=1 for a CRNN, or a "
                          "temporal conv across every feature (conv_kernel T,0)")


def _check_pcen(model: StreamingModel, feature_config: FeatureConfig | None) -> None:
    """PCEN divides energies (``exp`` of the features): it needs log-mel features."""
    audio = feature_config.audio if feature_config is not None else None
    if model.config.input_norm == "pcen" and (audio is None or audio.feature != "logmel"):
        got = "sensor or unknown features" if audio is None else f"{audio.feature!r} features"
        raise ConfigError(f"input_norm='pcen' normalises band energies and needs log-mel features (feature "
                          f"'logmel'); got {got}")


def _check_band_augment(aug: BatchAugment, feature_config: FeatureConfig | None) -> None:
    """A gain, an equaliser, a band warp or bend and a reverberation act on log band energies: on audio features
    that are not log-mel (MFCC's cepstral coefficients) they would be an offset or a shuffle of coefficients, not
    what they claim, so they are refused. Sensor data has no such check for the first four (its feature axis is
    taken as given); a reverberation needs audio frames (their hop in seconds), so it is refused without an audio
    config. A bend too large for the mel bands is refused here, before any training."""
    audio = feature_config.audio if feature_config is not None else None
    if audio is None and aug.reverb_s:
        raise ConfigError(f"augment reverb={aug.reverb_s:g} reverberates log-mel audio frames; these features have "
                          "no audio config (sensor or unknown features)")
    if audio is not None and audio.feature != "logmel" and aug.band_options:
        raise ConfigError(f"augment {aug.band_options} acts on log-mel band energies; the features are "
                          f"{audio.feature!r} (use freq/time masks, noise, twarp or mixup, or log-mel features)")
    if audio is not None and aug.bend:
        check_bend(aug.bend, audio.n_mels)


def _check_data(train_data: TaskData, val_data: TaskData | None, test_data: TaskData | None) -> None:
    if len(train_data) == 0:
        raise DatasetError("training data is empty")
    for name, d in (("validation", val_data), ("test", test_data)):
        if d is not None and d.input_dim != train_data.input_dim:
            raise ShapeError(f"{name} data has feature dimension {d.input_dim}, training data {train_data.input_dim}")


def _initial_model(train_data: TaskData, cfg: TrainConfig, model: StreamingModel | None, stats: RunningStats | None,
                   checkpoint: str | None,
                   resume: bool) -> tuple[StreamingModel, dict[str, Any] | None, Resumed | None]:
    """``(model, normalisation stats to store, resume state)``: resumed, fine-tuned (a copy) or new."""
    if resume:
        if checkpoint is None:
            raise ConfigError("resume needs the checkpoint path to continue from")
        resumed = load_resume(checkpoint, train_data)
        return resumed.model, resumed.stats, resumed
    if model is not None:
        check_compatible(model, train_data, where="the initial model")
        model = copy.deepcopy(model)
        stats_dict = stats.to_dict() if stats is not None else {
            "mean": model.feat_mean.tolist(), "std": model.feat_std.tolist()}
        return model, stats_dict, None
    fitted = _stats_of(stats, train_data)
    model = StreamingRNN(cfg.model_config(train_data), feat_mean=fitted.mean.astype(np.float32),
                         feat_std=fitted.std.astype(np.float32))
    return model, fitted.to_dict(), None


def _callbacks(cfg: TrainConfig, *, has_val: bool, checkpoint: str | None, feature_config: FeatureConfig | None,
               labels: tuple[str, ...], stats: dict[str, Any] | None, resumed: Resumed | None,
               scored: TaskData | None, plots_dir: str | None, metrics_path: str | None) -> list[Callback]:
    """The callbacks of a :func:`train` run, in the order they must run (see :mod:`rnnstream.models.callbacks`)."""
    out: list[Callback] = [WeightAverage(cfg.weight_average)] if cfg.weight_average > 0 else []
    out += [
        LRSchedule(cfg.lr, cfg.lr_schedule, epochs=cfg.epochs, step=cfg.lr_step, gamma=cfg.lr_gamma),
        EarlyStopping(cfg.patience, active=has_val),
        GradientWatch(cfg.explode_threshold, cfg.vanish_threshold),
    ]
    if cfg.progress or (cfg.progress is None and _stderr_is_terminal()):
        out.append(Progress())
    if checkpoint is not None:
        out.append(ModelCheckpoint(checkpoint, feature_config, labels=labels, stats=stats,  # type: ignore[arg-type]
                                   train_config=json.dumps(dataclasses.asdict(cfg)), resume=resumed))
    plots_dir = plots_dir or (os.path.dirname(os.path.abspath(checkpoint)) if checkpoint else None)
    if plots_dir is not None:
        out.append(Plots(plots_dir, scored))
    if metrics_path is not None:
        out.append(MetricsFile(metrics_path, dataclasses.asdict(cfg), checkpoint))
    return out


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {spec!r}: {exc}") from None


def _optimizer(cfg: TrainConfig, model: StreamingModel) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _stats_of(stats: RunningStats | None, data: TaskData) -> RunningStats:
    s = data.fit_stats() if stats is None else stats
    if s.dim != data.input_dim:
        raise ShapeError(f"normalisation statistics have dimension {s.dim}, the data has {data.input_dim}")
    if s.count == 0:
        raise DatasetError("cannot fit normalisation statistics: the training data has no frames")
    return s


__all__ = [
    "METRICS_FILE", "DataSpec", "GradientWarning", "PreparedData", "TrainConfig", "TrainResult", "build_parser",
    "check_compatible", "evaluate", "forecast_predictions", "main", "prepare_data", "train",
]


if __name__ == "__main__":
    sys.exit(main())

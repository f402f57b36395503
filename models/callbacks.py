"""Callbacks for :func:`rnnstream.models.fit.fit`: LR schedule, early stopping, gradient warnings, progress,
checkpoints (+ resume), plots and ``metrics.json``.

:func:`rnnstream.models.train.train` installs them in this order (checkpointing after the callbacks whose
counters it stores, the metrics file after the plots it lists)::

    [WeightAverage?, LRSchedule, EarlyStopping, GradientWatch, Progress?, ModelCheckpoint?, Plots?, MetricsFile?]
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnstream.models.checkpoint import load_checkpoint, save_checkpoint
from rnnstream.models.data import TaskData
from rnnstream.models.evaluate import check_compatible
from rnnstream.models.fit import Callback, FitState, cpu_weights
from rnnstream.models.ensemble import StreamingModel
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import CheckpointError, DatasetError

METRICS_FILE = "metrics.json"


class WeightAverage(Callback):
    """An exponential moving average of the weights, updated after every batch, with a half-life of
    ``half_life_epochs`` epochs of batches. Validation sees the averaged weights, so the best epoch is chosen
    and kept by them (and the final model is an average); training goes on from the raw weights.

    Per batch, with ``keep = 0.5 ** (1 / (half_life_epochs * batches per epoch))``:
    ``ema = keep * ema + (1 - keep) * w`` from ``ema = 0``, and ``norm = keep * norm + (1 - keep)`` from
    ``norm = 0``; the average is ``ema / norm`` (bias-corrected, as Adam's moments: the initial weights get no
    share, and the half-life holds from the first batch). Parameters only: the model's buffers (normalisation
    statistics, filterbanks) do not train. Goes first in the callback list: its ``on_epoch_end`` puts the raw
    weights back before a checkpoint stores the epoch's resume state, in which the running sums are kept too
    (``weight_average``, ``weight_average_norm``).
    """

    def __init__(self, half_life_epochs: float):
        if not (half_life_epochs > 0 and math.isfinite(half_life_epochs)):
            raise ValueError(f"half_life_epochs must be a positive number, got {half_life_epochs}")
        self.half_life_epochs = half_life_epochs
        self.ema: dict[str, Tensor] = {}
        self.norm = 0.0
        self._raw: dict[str, Tensor] = {}

    def keep(self, batches_per_epoch: int) -> float:
        """The weight the running sum keeps per batch."""
        return 0.5 ** (1.0 / (self.half_life_epochs * max(batches_per_epoch, 1)))

    def average(self) -> dict[str, Tensor]:
        """The bias-corrected average so far (``ema / norm``)."""
        return {k: v / self.norm for k, v in self.ema.items()}

    def on_train_start(self, state: FitState) -> None:
        if not self.ema:  # a resume's load_state_dict sets it
            self.ema = {k: torch.zeros_like(p, requires_grad=False) for k, p in state.model.named_parameters()}

    def on_batch_end(self, state: FitState) -> None:
        keep = self.keep(len(state.loader))
        self.norm = keep * self.norm + (1.0 - keep)
        with torch.no_grad():
            for k, p in state.model.named_parameters():
                ema = self.ema[k]
                if ema.device != p.device:
                    ema = self.ema[k] = ema.to(p.device)
                ema.lerp_(p.detach(), 1.0 - keep)  # ema = keep * ema + (1 - keep) * p

    def on_epoch_trained(self, state: FitState) -> None:
        if self.norm <= 0:  # no batch yet (an empty epoch): nothing to average
            return
        self._raw = {k: p.detach().clone() for k, p in state.model.named_parameters()}
        _assign(state.model, self.average())

    def on_epoch_end(self, state: FitState) -> None:
        self._put_back(state)

    def on_exception(self, state: FitState, error: BaseException) -> None:
        self._put_back(state)

    def _put_back(self, state: FitState) -> None:
        if self._raw:
            _assign(state.model, self._raw)
            self._raw = {}

    def state_dict(self) -> dict[str, Any]:
        return {"weight_average": {k: v.detach().cpu().clone() for k, v in self.ema.items()},
                "weight_average_norm": self.norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "weight_average" not in state:
            warnings.warn(f"resuming at epoch {int(state.get('epoch', 0)) + 1} from a checkpoint trained without "
                          "weight averaging: the average starts at the resumed weights", stacklevel=2)
            return
        self.ema = {k: v.clone() for k, v in state["weight_average"].items()}
        self.norm = float(state["weight_average_norm"])


def _assign(model: torch.nn.Module, weights: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(weights[k])


class LRSchedule(Callback):
    """Sets the learning rate at each epoch start: ``lr * factor``.

    ``none``: 1; ``cosine``: to 0 over ``epochs``; ``step``: x ``gamma`` every ``step`` epochs; ``plateau``:
    x ``gamma`` after ``step`` epochs without a better monitored value.
    """

    def __init__(self, lr: float, schedule: str = "none", *, epochs: int, step: int = 10, gamma: float = 0.5):
        self.lr, self.schedule, self.epochs, self.step, self.gamma = lr, schedule, epochs, step, gamma
        self.plateau_scale, self.plateau_bad = 1.0, 0

    def factor(self, epoch: int) -> float:
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / self.epochs))
        if self.schedule == "step":
            return self.gamma ** ((epoch - 1) // self.step)
        if self.schedule == "plateau":
            return self.plateau_scale
        return 1.0

    def on_epoch_start(self, state: FitState) -> None:
        lr = self.lr * self.factor(state.epoch)
        for group in state.optimizer.param_groups:
            group["lr"] = lr

    def on_epoch_end(self, state: FitState) -> None:
        if state.improved:
            self.plateau_bad = 0
            return
        self.plateau_bad += 1
        if self.schedule == "plateau" and self.plateau_bad >= self.step:
            self.plateau_scale *= self.gamma
            self.plateau_bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "plateau_bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale, self.plateau_bad = float(state["plateau_scale"]), int(state["plateau_bad"])


class EarlyStopping(Callback):
    """Stop before an epoch once ``patience`` epochs in a row brought no better monitored value.

    Epochs without improvement are counted even when stopping is off (``patience=None`` or no validation
    data), so a resumed run with a patience stops where it would have.
    """

    def __init__(self, patience: int | None, *, active: bool = True):
        self.patience, self.active, self.bad_epochs = patience, active, 0

    def on_epoch_start(self, state: FitState) -> None:
        if self.patience is not None and self.active and self.bad_epochs >= self.patience:
            state.stop = True

    def on_epoch_end(self, state: FitState) -> None:
        self.bad_epochs = 0 if state.improved else self.bad_epochs + 1

    def state_dict(self) -> dict[str, Any]:
        return {"bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_epochs = int(state["bad_epochs"])


class GradientWatch(Callback):
    """Warn (:class:`~rnnstream.models.gradients.GradientWarning`) when an epoch's gradients exploded
    (total norm above ``explode``) or vanished (a layer's mean below ``vanish``); messages go to
    ``state.grad_warnings``."""

    def __init__(self, explode: float, vanish: float):
        self.explode, self.vanish = explode, vanish

    def on_epoch_end(self, state: FitState) -> None:
        state.grad_warnings += state.grads.check(state.epoch, state.row, self.explode, self.vanish)


class Progress(Callback):
    """A tqdm bar per epoch on stderr (running loss every 10 batches) and one summary line per epoch."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self.tqdm = tqdm
        self.bar: Any = None

    def on_batch_end(self, state: FitState) -> None:
        if self.bar is None:
            self.bar = self.tqdm(total=len(state.loader), desc=f"epoch {state.epoch}/{state.epochs}", leave=False,
                                 dynamic_ncols=True, file=sys.stderr)
        self.bar.update(1)
        if state.step % 10 == 0:
            self.bar.set_postfix(loss=f"{state.loss_sum / max(state.count, 1):.4f}", refresh=False)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_epoch_end(self, state: FitState) -> None:
        self._close()
        keys = ("epoch", "train_loss", "val_loss", f"val_{state.task.primary_metric}", "lr")
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in state.row.items() if k in keys}
        self.tqdm.write(" ".join(f"{k}={v}" for k, v in shown.items()), file=sys.stderr)

    def on_exception(self, state: FitState, error: BaseException) -> None:
        self._close()


@dataclass
class Resumed:
    """A checkpoint's resume state: the model with the last epoch's weights, the best weights, the rest."""

    model: StreamingModel
    best_weights: dict[str, Tensor]
    state: dict[str, Any]
    stats: dict[str, Any] | None


def load_resume(path: str, data: TaskData) -> Resumed:
    """Read ``path``'s resume state for training on ``data``.

    Raises:
        CheckpointError: missing, corrupt, or without resume state. ShapeError / ConfigError / DatasetError:
            the checkpoint's model does not fit ``data`` (dims, task, labels).
    """
    ck = load_checkpoint(path)
    state = ck.extra.get("resume")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path!r} holds no resume state (extra['resume'])")
    check_compatible(ck.model, data, where=f"checkpoint {path!r}")
    if ck.labels and tuple(ck.labels) != tuple(data.labels):
        raise DatasetError(f"checkpoint {path!r} was trained on labels {ck.labels}, the data has {list(data.labels)}")
    best = cpu_weights(ck.model)  # the checkpoint's top-level weights are the best so far
    ck.model.load_state_dict(state["model"])
    return Resumed(ck.model, best, state, ck.stats)


class ModelCheckpoint(Callback):
    """After every epoch, write ``path``: the best weights so far, and in ``extra["resume"]`` the last
    epoch's weights, the optimizer, the RNG state, the history and every callback's counters.

    With ``resume`` (from :func:`load_resume`), training continues after the saved epoch.
    """

    def __init__(self, path: str, feature_config: FeatureConfig, *, labels: tuple[str, ...] = (),
                 stats: dict[str, Any] | None = None, train_config: str = "{}", resume: Resumed | None = None):
        self.path, self.feature_config, self.labels, self.stats = path, feature_config, labels, stats
        self.train_config, self.resume = train_config, resume

    def on_train_start(self, state: FitState) -> None:
        if self.resume is None:
            return
        r = self.resume.state
        state.optimizer.load_state_dict(r["optimizer"])
        state.history = list(r["history"])
        state.best_value, state.best_epoch = float(r["best_val"]), int(r["best_epoch"])
        state.best_weights = self.resume.best_weights
        state.start_epoch = int(r["epoch"]) + 1
        state.last_checkpoint = (self.path, int(r["epoch"]))
        for cb in state.callbacks:
            cb.load_state_dict(r)
        torch.set_rng_state(r["rng"])

    def on_epoch_end(self, state: FitState) -> None:
        resume: dict[str, Any] = {
            "epoch": state.epoch, "model": cpu_weights(state.model), "optimizer": state.optimizer.state_dict(),
            "history": state.history, "best_val": state.best_value, "best_epoch": state.best_epoch,
        }
        for cb in state.callbacks:
            resume.update(cb.state_dict())
        resume.update(rng=torch.get_rng_state(), train_config=self.train_config)
        best = copy.deepcopy(state.model).cpu()
        best.load_state_dict(state.best_weights)
        save_checkpoint(self.path, best, self.feature_config, labels=list(self.labels), stats=self.stats,
                        extra={"epoch": state.epoch, "best_epoch": state.best_epoch, "resume": resume})
        state.last_checkpoint = (self.path, state.epoch)


class Plots(Callback):
    """At the end, PNGs in ``out_dir``: loss/metric curves plus the task's own (confusion, forecast on ``data``)."""

    def __init__(self, out_dir: str, data: TaskData | None = None):
        self.out_dir, self.data = out_dir, data

    def on_train_end(self, state: FitState) -> None:
        if not state.history:
            return
        from rnnstream.models import plots as P

        os.makedirs(self.out_dir, exist_ok=True)
        curves = os.path.join(self.out_dir, "curves.png")
        state.plots.append(P.plot_curves(state.history, curves, metric=f"val_{state.task.primary_metric}"))
        state.plots += state.task.plots(state.model, state.metrics, self.data, self.out_dir)


class MetricsFile(Callback):
    """At the end, ``path`` (JSON): configs, the run's record, the history and the final scores."""

    def __init__(self, path: str, train_config: dict[str, Any], checkpoint: str | None = None):
        self.path, self.train_config, self.checkpoint = path, train_config, checkpoint

    def on_train_end(self, state: FitState) -> None:
        record = {
            "task": state.task.name, "model_config": state.model.config.to_dict(), "train_config": self.train_config,
            "epochs_run": state.epoch, "best_epoch": state.best_epoch, "stopped_early": state.stopped_early,
            "checkpoint": self.checkpoint, "plots": state.plots, "grad_warnings": state.grad_warnings,
            "history": state.history, **state.metrics,
        }
        with open(self.path, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)


__all__ = ["METRICS_FILE", "EarlyStopping", "GradientWatch", "LRSchedule", "MetricsFile", "ModelCheckpoint",
           "Plots", "Progress", "Resumed", "WeightAverage", "load_resume"]

"""A small training loop with callbacks (Keras-like): :func:`fit`, :class:`Callback`, :class:`FitState`.

::

    loader = BatchLoader(train_data, batch_size=32, seed=0)
    state = fit(model, loader, val_data, optimizer=torch.optim.Adam(model.parameters()), epochs=10,
                callbacks=[EarlyStopping(patience=3), ModelCheckpoint("m.pt", feature_config)])
    state.model, state.history, state.metrics                  # best weights, one row per epoch, final scores

One epoch: the loader's seeded batches; per batch the forward over the padded batch (or truncated BPTT:
windows of ``tbptt`` frames through ``model.step`` with the state detached between windows, as streaming
inference carries it), the task's loss on the masked frames, backward, gradient-norm clipping and
measurement, an optimizer step. After it: validation, the best-so-far bookkeeping (the monitored value is the
validation loss, or the training loss without validation data), then the callbacks. A non-finite loss or
gradient raises :class:`TrainingDivergedError`. At the end the best weights are restored (CPU, eval mode)
and scored on the validation and test data.

Callback hooks, in order: ``on_train_start``; per epoch ``on_epoch_start`` (a callback may set
``state.stop`` to skip the epoch and end training), ``on_batch_end`` after each batch, ``on_epoch_trained``
after the last batch and before validation (a callback may put other weights in the model to be validated
and kept, e.g. averaged ones), ``on_epoch_end``
(``state.stop`` ends training after this epoch); ``on_train_end`` after the final scores; ``on_exception``
when training raises. Callbacks that must survive a resume keep their counters in ``state_dict()``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rnnstream.models.data import Batch, TaskData, batch_order
from rnnstream.models.evaluate import evaluate
from rnnstream.models.gradients import GradTracker
from rnnstream.models.ensemble import StreamingModel
from rnnstream.models.tasks import TaskSpec, task_for
from rnnstream.pipeline.errors import TrainingDivergedError


def cpu_weights(model: torch.nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of ``model``'s state dict."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class BatchLoader:
    """Training batches of ``data``: shuffled, length-bucketed, at most ``max_batches`` per epoch.

    Epoch ``e``'s order depends only on ``(seed, e)``, so a resumed run sees the batches it would have seen.
    """

    data: TaskData
    batch_size: int
    seed: int = 0
    bucket: bool = True
    max_batches: int | None = None

    def indices(self, epoch: int) -> list[Tensor]:
        """Index tensors ``[b]`` of epoch ``epoch``'s batches."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = batch_order(self.data, self.batch_size, shuffle=True, generator=gen, bucket=self.bucket)
        return order if self.max_batches is None else order[: self.max_batches]

    def __len__(self) -> int:
        n = math.ceil(len(self.data) / self.batch_size)
        return n if self.max_batches is None else min(n, self.max_batches)


@dataclass
class FitState:
    """Everything a callback may read (and the few fields it may write: ``stop``, and on resume the rest)."""

    model: StreamingModel
    optimizer: torch.optim.Optimizer
    task: TaskSpec
    loader: BatchLoader
    epochs: int
    callbacks: list[Callback]
    grads: GradTracker
    labels: tuple[str, ...] = ()
    start_epoch: int = 1
    epoch: int = 0  # the current epoch; after training, the last one run
    step: int = 0  # batches done in this epoch
    loss_sum: float = 0.0  # this epoch's summed training loss (float64) ...
    count: int = 0  # ... over this many scored frames
    row: dict[str, Any] = field(default_factory=dict)  # this epoch's record (history[-1] after validation)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float = math.inf
    best_epoch: int = 0
    best_weights: dict[str, Tensor] = field(default_factory=dict)
    improved: bool = False  # this epoch's monitored value beat the best so far
    stop: bool = False
    stopped_early: bool = False
    last_checkpoint: tuple[str, int] | None = None  # (path, epoch) of the last checkpoint written
    metrics: dict[str, Any] = field(default_factory=dict)  # final scores: {"val": ..., "test": ...}
    plots: list[str] = field(default_factory=list)
    grad_warnings: list[str] = field(default_factory=list)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


class Callback:
    """Base class: override the hooks you need (each receives the :class:`FitState`)."""

    def on_train_start(self, state: FitState) -> None: ...

    def on_epoch_start(self, state: FitState) -> None: ...

    def on_batch_end(self, state: FitState) -> None: ...

    def on_epoch_trained(self, state: FitState) -> None: ...

    def on_epoch_end(self, state: FitState) -> None: ...

    def on_train_end(self, state: FitState) -> None: ...

    def on_exception(self, state: FitState, error: BaseException) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """Counters to store in a checkpoint's resume state (flat keys, shared by all callbacks)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a resume state (the merged dict every callback's :meth:`state_dict` went into)."""


def _hook(state: FitState, name: str) -> None:
    for cb in state.callbacks:
        getattr(cb, name)(state)


def fit(model: StreamingModel, loader: BatchLoader, val_data: TaskData | None = None, *,
        optimizer: torch.optim.Optimizer, epochs: int, callbacks: Sequence[Callback] = (),
        test_data: TaskData | None = None, task: TaskSpec | None = None, clip_norm: float | None = None,
        tbptt: int | None = None, transform: Callable[[Batch], Batch] | None = None,
        labels: tuple[str, ...] = ()) -> FitState:
    """Train ``model`` (already on its device, in train mode) for epochs ``start_epoch..epochs``.

    Args:
        loader: the training batches; ``val_data``/``test_data``: scored with :func:`evaluate`.
        task: the task's loss and targets (default: ``task_for(model.config)``).
        clip_norm: clip the total gradient norm (``None`` or 0: no clipping). ``tbptt``: window in frames.
        transform: applied to each training batch on the device (augmentation), e.g. level shifts.
        labels: the model's label names, for evaluation.

    Returns the final :class:`FitState`: ``model`` holds the best weights (CPU, eval mode).
    """
    state = FitState(model=model, optimizer=optimizer, task=task or task_for(model.config), loader=loader,
                     epochs=epochs, callbacks=list(callbacks), grads=GradTracker(model, clip_norm), labels=labels)
    state.best_weights = cpu_weights(model)
    try:
        _hook(state, "on_train_start")
        state.epoch = state.start_epoch - 1
        for epoch in range(state.start_epoch, epochs + 1):
            state.epoch = epoch
            _hook(state, "on_epoch_start")
            if state.stop:
                state.stopped_early, state.epoch = True, epoch - 1
                break
            _train_epoch(state, transform, tbptt)
            _hook(state, "on_epoch_trained")
            _end_epoch(state, val_data)
            _hook(state, "on_epoch_end")
            if state.stop and epoch < epochs:
                state.stopped_early = True
                break
    except Exception as exc:
        for cb in state.callbacks:
            cb.on_exception(state, exc)
        raise
    model.load_state_dict(state.best_weights)
    model.cpu().eval()
    for name, d in (("val", val_data), ("test", test_data)):
        if d is not None:
            state.metrics[name] = evaluate(model, d, labels=labels or None)
    _hook(state, "on_train_end")
    return state


def _train_epoch(state: FitState, transform: Callable[[Batch], Batch] | None, tbptt: int | None) -> None:
    """One pass over the loader's batches; leaves ``state.row`` with the epoch's training record."""
    device = state.grads.device
    state.grads.reset()
    state.loss_sum = 0.0
    state.count = frames = 0
    t_start = time.perf_counter()
    for step, idx in enumerate(state.loader.indices(state.epoch), 1):
        state.step = step
        batch = state.loader.data.batch(idx).to(device)
        if transform is not None:
            batch = transform(batch)
        frames += batch.frames
        _train_batch(state, batch, tbptt)
        _hook(state, "on_batch_end")
    seconds = time.perf_counter() - t_start
    state.row = {"epoch": state.epoch, "lr": state.lr, "train_loss": state.loss_sum / max(state.count, 1),
                 "seconds": seconds, "frames_per_s": frames / seconds if seconds > 0 else 0.0,
                 **state.grads.summary()}


def _train_batch(state: FitState, batch: Batch, tbptt: int | None) -> None:
    """Forward ``batch.x [B, T, D]`` whole (or in ``tbptt`` windows, carrying the detached state) and step."""
    model = state.model
    T = batch.x.shape[1]
    window = tbptt or T
    rnn_state = model.initial_state(batch.x.shape[0]) if not model.config.bidirectional else None
    for t0 in range(0, T, window):
        t1 = min(t0 + window, T)
        if rnn_state is None:
            out = model(batch.x, batch.lengths)
        elif tbptt:
            out, rnn_state = model.step(batch.x[:, t0:t1], rnn_state)
            rnn_state = {k: v.detach() for k, v in rnn_state.items()}
        else:
            out = model(batch.x)
        pt = state.task.targets(model, out, batch, t0, t1)  # out [B, t1 - t0, O]
        if pt is not None:
            _optimizer_step(state, *pt)


def _optimizer_step(state: FitState, pred: Tensor, target: Tensor) -> None:
    """Loss, backward, clip and measure the gradient, step; a non-finite loss or norm raises."""
    loss = state.task.loss(pred, target)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = state.grads()
    lv, nv = float(loss.detach()), float(norm)
    if not (math.isfinite(lv) and math.isfinite(nv)):
        raise _divergence(state, lv, nv)
    state.optimizer.step()
    k = pred.shape[0]
    state.loss_sum += lv * k
    state.count += k


def _divergence(state: FitState, loss: float, norm: float) -> TrainingDivergedError:
    kept = "no checkpoint had been written yet"
    if state.last_checkpoint is not None:
        kept = f"the last good checkpoint {state.last_checkpoint[0]!r} (epoch {state.last_checkpoint[1]}) was kept"
    return TrainingDivergedError(
        f"training diverged in epoch {state.epoch}, step {state.step}: loss = {loss}, total gradient norm = "
        f"{norm:.4g}; {kept}. Lower the learning rate, clip gradients (--clip), or check the data for extreme values"
    )


def _end_epoch(state: FitState, val_data: TaskData | None) -> None:
    """Validation, the history row, and the best-so-far bookkeeping."""
    row, model = state.row, state.model
    monitored = row["train_loss"]
    if val_data is not None:
        primary = state.task.primary_metric
        vm = evaluate(model, val_data, labels=state.labels or None)
        row["val_loss"] = vm["loss"]
        row[f"val_{primary}"] = vm[primary]
        monitored = vm["loss"]
        model.train()
    state.history.append(row)
    state.improved = monitored < state.best_value
    if state.improved:
        state.best_value, state.best_epoch = monitored, state.epoch
        state.best_weights = cpu_weights(model)


__all__ = ["BatchLoader", "Callback", "FitState", "cpu_weights", "fit"]

"""Training data: featurized examples -> per-task tensors, splits and batches.

Every task is one shape of supervision over per-frame model outputs ``y [B, T, O]``
(see :mod:`rnnstream.models.rnn`); a :class:`Batch` carries the inputs and which frames have a target::

    x       float32 [B, T, D]  right-padded inputs in the *raw* feature scale (the model normalises)
    lengths int64   [B]        valid frames per sequence
    mask    bool    [B, T]     frames that carry a loss
    y       classify: int64 [B] (the label, scored at frame ``lengths - 1``: mask is that frame only)
            tag:      int64 [B, T] (per-frame label; mask = valid frames)
            forecast: float32 [B, T, H, Dt] (the next ``H`` raw values of the target channels after each
                      frame; mask = frames with a whole horizon of truth, or only the last frame)
            generate: float32 [B, T, D] (the next raw frame; mask = valid frames but the last)

Right-padding is harmless for unidirectional models (they are causal: frames after a sequence's end
never change its earlier outputs), and padded frames never carry a loss.

Splits of examples live in :mod:`rnnstream.models.splits`, channel selection in
:mod:`rnnstream.models.channels` (both re-exported here); per-task behaviour (loss,
metrics, output width) in :mod:`rnnstream.models.tasks`.

Two containers implement :class:`TaskData`: :class:`SequenceData` (padded example tensors: classify,
tag, generate) and :class:`WindowData` (stride-1 forecasting windows over long series, gathered per batch,
so 8k overlapping windows cost no more memory than the series).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnstream.models.channels import channel_names, resolve_channels, select_channels, sub_config  # noqa: F401
from rnnstream.models.splits import example_field, split_by, split_fraction  # noqa: F401  (re-exported)
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import Example
from rnnstream.pipeline.errors import ConfigError, DatasetError, ShapeError
from rnnstream.pipeline.model_config import Task
from rnnstream.pipeline.stats import RunningStats

IGNORE = -100  # tag targets of padded frames (never read: the mask excludes them)


@dataclass
class Batch:
    """One batch (see the module docstring for shapes)."""

    x: Tensor
    lengths: Tensor
    y: Tensor
    mask: Tensor

    def to(self, device: torch.device | str) -> "Batch":
        if torch.device(device).type == "cpu" and self.x.device.type == "cpu":
            return self
        return Batch(*(t.to(device, non_blocking=True) for t in (self.x, self.lengths, self.y, self.mask)))

    @property
    def frames(self) -> int:
        """Valid input frames in the batch."""
        return int(self.lengths.sum())


class TaskData:
    """Base of the training containers: ``len(data)`` examples, ``data.batch(idx)`` gathers a :class:`Batch`.

    Attributes:
        task: the task these targets are for.
        input_dim: feature dimension ``D``.
        lengths: int64 ``[N]`` valid frames per example.
        labels: class names (classify/tag), index = class id.
        horizon, target_dims: forecast targets (``target_dims`` index the input channels).
        feature_config: how the frames were computed (stored in checkpoints), if known.
        ids: example ids (for messages and plots).
    """

    task: Task
    input_dim: int
    lengths: Tensor
    labels: tuple[str, ...] = ()
    horizon: int = 1
    target_dims: tuple[int, ...] = ()
    feature_config: FeatureConfig | None = None
    ids: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def batch(self, idx: Tensor) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    @property
    def output_dim(self) -> int:
        """Width of the model output these targets need (the task decides: classes, ``H * Dt``, ``D``)."""
        from rnnstream.models.tasks import task_for  # tasks builds on this module

        return task_for(self.task).output_dim(self)

    def fit_stats(self) -> RunningStats:
        """Statistics of this data's own frames (the split's rows), for the model's normalisation."""
        raise NotImplementedError  # pragma: no cover - abstract


class SequenceData(TaskData):
    """Padded per-example tensors: ``x [N, Tmax, D]``, ``y``, ``mask [N, Tmax]`` (see module docstring)."""

    def __init__(self, task: Task, x: Tensor, lengths: Tensor, y: Tensor, mask: Tensor, *,
                 labels: Sequence[str] = (), feature_config: FeatureConfig | None = None,
                 ids: Sequence[str] = ()):
        if x.dim() != 3:
            raise ShapeError(f"x must be [N, T, D], got shape {list(x.shape)}")
        if x.shape[0] == 0:
            raise DatasetError(f"no examples for task {task!r}: the dataset or split is empty")
        if lengths.shape != (x.shape[0],) or mask.shape != x.shape[:2] or y.shape[0] != x.shape[0]:
            raise ShapeError(
                f"inconsistent shapes: x {list(x.shape)}, lengths {list(lengths.shape)}, y {list(y.shape)}, "
                f"mask {list(mask.shape)}"
            )
        if int(lengths.min()) < 1:
            bad = int(torch.argmin(lengths))
            name = ids[bad] if ids else str(bad)
            raise DatasetError(f"example {name!r} has 0 frames; every training example needs at least one frame")
        self.task = task
        self.x, self.lengths, self.y, self.mask = x, lengths.long(), y, mask
        self.input_dim = int(x.shape[2])
        self.labels = tuple(labels)
        self.feature_config = feature_config
        self.ids = tuple(ids) if ids else tuple(str(i) for i in range(x.shape[0]))

    def batch(self, idx: Tensor) -> Batch:
        lengths = self.lengths[idx]
        t = int(lengths.max())
        y = self.y[idx]
        if y.dim() > 1:  # per-frame targets (tag [N, T], generate [N, T, D]) are trimmed with x
            y = y[:, :t]
        return Batch(self.x[idx, :t], lengths, y, self.mask[idx, :t])

    def fit_stats(self) -> RunningStats:
        valid = torch.arange(self.x.shape[1])[None, :] < self.lengths[:, None]
        return RunningStats.of(self.x[valid].numpy())


class WindowData(TaskData):
    """Stride-1 forecasting windows over one or more series, gathered per batch.

    ``series [R, D]`` is every series' rows concatenated; ``future [R, H, Dt]`` the next ``H`` target values
    after each row (NaN where the series ends first) and ``starts [N]`` the first row of each window of
    ``window`` frames. ``last_only`` puts the loss on each window's last frame only (the evaluation protocol:
    forecast the ``H`` values after the window); otherwise on every frame.
    """

    def __init__(self, series: Tensor, future: Tensor, starts: Tensor, window: int, *, horizon: int,
                 target_dims: tuple[int, ...], last_only: bool, stats_rows: Tensor,
                 feature_config: FeatureConfig | None = None, ids: Sequence[str] = ()):
        if starts.numel() == 0:
            raise DatasetError(
                f"no forecasting windows of {window} input + {horizon} horizon frames fit in the selected rows; "
                "the dataset or split is empty or too short"
            )
        self.task = "forecast"
        self.series, self.future, self.starts, self.window = series, future, starts.long(), int(window)
        self.input_dim = int(series.shape[1])
        self.lengths = torch.full((starts.numel(),), self.window, dtype=torch.long)
        self.horizon, self.target_dims = int(horizon), tuple(target_dims)
        self.last_only = last_only
        self.stats_rows = stats_rows
        self.feature_config = feature_config
        self.ids = tuple(ids)
        self._offsets = torch.arange(self.window)

    def batch(self, idx: Tensor) -> Batch:
        rows = self.starts[idx][:, None] + self._offsets[None, :]  # [B, L]
        x = self.series[rows]
        y = self.future[rows]  # [B, L, H, Dt]
        if self.last_only:
            mask = torch.zeros(rows.shape, dtype=torch.bool)
            mask[:, -1] = True
        else:
            mask = torch.isfinite(y).flatten(2).all(-1)
        y = torch.nan_to_num(y)
        return Batch(x, self.lengths[idx], y, mask)

    def fit_stats(self) -> RunningStats:
        return RunningStats.of(self.stats_rows.numpy())

    def with_last_only(self, last_only: bool) -> "WindowData":
        out = WindowData.__new__(WindowData)
        out.__dict__.update(self.__dict__)
        out.last_only = last_only
        return out


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def _check_examples(examples: Sequence[Example], what: str) -> int:
    if not examples:
        raise DatasetError(f"no examples for {what}: the dataset or split is empty")
    dims = {int(e.features.shape[1]) for e in examples}
    if len(dims) != 1:
        raise ShapeError(f"examples for {what} have different feature dimensions {sorted(dims)}")
    for e in examples:
        if e.features.ndim != 2:
            raise ShapeError(f"example {e.id!r}: features must be [n_frames, dim], got {list(e.features.shape)}")
        bad = int((~np.isfinite(e.features)).sum())
        if bad:
            raise DatasetError(f"example {e.id!r} holds {bad} NaN/Inf feature values; expected finite features")
        if e.features.shape[0] == 0:
            raise DatasetError(f"example {e.id!r} has 0 frames; every training example needs at least one frame")
    return dims.pop()


def _pad(examples: Sequence[Example], dim: int) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([e.features.shape[0] for e in examples], dtype=torch.long)
    x = torch.zeros((len(examples), int(lengths.max()), dim), dtype=torch.float32)
    for i, e in enumerate(examples):
        x[i, : e.features.shape[0]] = torch.from_numpy(np.ascontiguousarray(e.features, dtype=np.float32))
    return x, lengths


def _label_ids(found: Sequence[str], labels: Sequence[str] | None, where: Sequence[str]) -> tuple[list[int], tuple[str, ...]]:
    """Map label names to ids; ``labels=None`` learns the sorted label set, otherwise unseen labels fail."""
    if labels is None:
        labels = sorted(set(found))
    index = {name: i for i, name in enumerate(labels)}
    ids = []
    for name, who in zip(found, where):
        if name not in index:
            raise DatasetError(
                f"{who} has label {name!r}, which never occurs in the training data (training labels: {list(labels)})"
            )
        ids.append(index[name])
    return ids, tuple(labels)


def classify_data(examples: Sequence[Example], labels: Sequence[str] | None = None, *,
                  feature_config: FeatureConfig | None = None) -> SequenceData:
    """One label per example (``Example.label``). ``labels``: the training label set (for val/test data)."""
    dim = _check_examples(examples, "classify")
    missing = [e.id for e in examples if e.label is None]
    if missing:
        raise DatasetError(f"task 'classify' needs a label on every example; {len(missing)} have none, e.g. {missing[0]!r}")
    y, names = _label_ids([e.label for e in examples], labels, [f"example {e.id!r}" for e in examples])  # type: ignore[misc]
    x, lengths = _pad(examples, dim)
    mask = torch.arange(x.shape[1])[None, :] == (lengths - 1)[:, None]
    return SequenceData("classify", x, lengths, torch.tensor(y, dtype=torch.long), mask, labels=names,
                        feature_config=feature_config, ids=[e.id for e in examples])


FrameLabels = str | Callable[[Example], Sequence[Any]]


def tag_data(examples: Sequence[Example], frame_labels: FrameLabels = "frame_labels",
             labels: Sequence[str] | None = None, *, feature_config: FeatureConfig | None = None) -> SequenceData:
    """Per-frame labels: a metadata key holding a list of ``n_frames`` labels, or a function of the example.

    Labels are compared as strings (``1`` and ``"1"`` are the same class).
    """
    dim = _check_examples(examples, "tag")
    per_example: list[list[str]] = []
    for e in examples:
        if callable(frame_labels):
            seq = frame_labels(e)
        else:
            if frame_labels not in e.metadata:
                raise DatasetError(
                    f"task 'tag' reads per-frame labels from metadata key {frame_labels!r}, which example {e.id!r} "
                    f"lacks (it has {sorted(e.metadata)})"
                )
            seq = e.metadata[frame_labels]
        if isinstance(seq, (str, bytes)) or len(seq) != e.features.shape[0]:
            n = "a string" if isinstance(seq, (str, bytes)) else f"{len(seq)} labels"
            raise DatasetError(f"example {e.id!r}: per-frame labels are {n}, expected a list of {e.features.shape[0]} (one per frame)")
        per_example.append([str(v) for v in seq])
    flat = [v for seq in per_example for v in seq]
    where = [f"example {e.id!r} (frame {t})" for e, seq in zip(examples, per_example) for t in range(len(seq))]
    ids, names = _label_ids(flat, labels, where)
    x, lengths = _pad(examples, dim)
    y = torch.full(x.shape[:2], IGNORE, dtype=torch.long)
    pos = 0
    for i, seq in enumerate(per_example):
        y[i, : len(seq)] = torch.tensor(ids[pos: pos + len(seq)], dtype=torch.long)
        pos += len(seq)
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    return SequenceData("tag", x, lengths, y, mask, labels=names, feature_config=feature_config,
                        ids=[e.id for e in examples])


def generate_data(examples: Sequence[Example], *, feature_config: FeatureConfig | None = None) -> SequenceData:
    """Next-frame targets: ``y[t] = x[t + 1]`` on every valid frame but the last."""
    dim = _check_examples(examples, "generate")
    if all(e.features.shape[0] < 2 for e in examples):
        raise DatasetError("task 'generate' needs sequences of at least 2 frames; every example has 1")
    x, lengths = _pad(examples, dim)
    y = torch.zeros_like(x)
    y[:, :-1] = x[:, 1:]
    mask = torch.arange(x.shape[1])[None, :] < (lengths - 1)[:, None]
    return SequenceData("generate", x, lengths, y, mask, feature_config=feature_config, ids=[e.id for e in examples])


def forecast_data(examples: Sequence[Example], *, window: int, horizon: int, target_dims: Sequence[int],
                  rows: tuple[int, int] | None = None, last_only: bool = False,
                  feature_config: FeatureConfig | None = None) -> WindowData:
    """Stride-1 windows over each example's series (windows never cross examples).

    A window is ``window`` input frames ``[s, s + window)``; its forecast is the next ``horizon`` values of
    ``target_dims``. With ``rows=(start, stop)`` (row indices within each series, e.g. ETTh1's Informer
    split) the forecast rows ``[s + window, s + window + horizon)`` lie inside ``[start, stop)`` while the
    input may reach back before ``start`` (to row 0). Statistics (:meth:`TaskData.fit_stats`) cover rows
    ``[start, stop)`` only: the Informer protocol fits its scaler on the training rows.
    """
    dim = _check_examples(examples, "forecast")
    if window < 1 or horizon < 1:
        raise ConfigError(f"forecast window and horizon must be >= 1, got window={window}, horizon={horizon}")
    target_dims = tuple(int(d) for d in target_dims)
    if not target_dims or any(not 0 <= d < dim for d in target_dims):
        raise ConfigError(f"forecast target_dims {list(target_dims)} must be non-empty indices in 0..{dim - 1}")
    series, futures, starts, stats_rows = [], [], [], []
    offset = 0
    for e in examples:
        feats = torch.from_numpy(np.ascontiguousarray(e.features, dtype=np.float32))
        n = feats.shape[0]
        start, stop = (0, n) if rows is None else rows
        if not 0 <= start < stop:
            raise ConfigError(f"forecast row range [{start}, {stop}) is empty or negative")
        stop = min(stop, n)
        fut = torch.full((n, horizon, len(target_dims)), float("nan"))
        tgt = feats[:, list(target_dims)]
        for h in range(horizon):
            fut[: max(n - 1 - h, 0), h] = tgt[1 + h:]
        # window s: input [s, s+L), forecast [s+L, s+L+H) inside [start, stop): s+L >= start, s+L+H <= stop
        first = max(start - window, 0)
        last = stop - window - horizon  # inclusive
        if last >= first:
            starts.append(torch.arange(first, last + 1) + offset)
        if stop > start:
            stats_rows.append(feats[start:stop])
        series.append(feats)
        futures.append(fut)
        offset += n
    return WindowData(
        torch.cat(series), torch.cat(futures), torch.cat(starts) if starts else torch.zeros(0, dtype=torch.long),
        window, horizon=horizon, target_dims=target_dims, last_only=last_only,
        stats_rows=torch.cat(stats_rows) if stats_rows else torch.zeros(0, dim), feature_config=feature_config,
        ids=[e.id for e in examples],
    )


def tensor_data(task: Task, sequences: Sequence[np.ndarray | Tensor], targets: Sequence[Any] | None = None, *,
                labels: Sequence[str] | None = None, feature_config: FeatureConfig | None = None) -> SequenceData:
    """Python-API convenience: arrays ``[T_i, D]`` and per-task targets -> :class:`SequenceData`.

    ``targets``: classify: one label per sequence; tag: one label list per sequence; generate: None.
    (Forecasting windows come from :func:`forecast_data` over :class:`Example` series.)
    """
    from rnnstream.models.tasks import task_for  # tasks builds on this module

    return task_for(task).from_sequences(sequences, targets, labels=labels,  # type: ignore[return-value]
                                         feature_config=feature_config)


def batch_order(data: TaskData, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                bucket: bool = True) -> list[Tensor]:
    """Index tensors of the batches of one epoch.

    ``bucket``: sort by length within pools of 50 batches before cutting batches (less padding), then shuffle
    the batch order. Deterministic for a seeded ``generator``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if bucket:
        pool = batch_size * 50
        chunks = []
        for i in range(0, n, pool):
            part = order[i: i + pool]
            chunks.append(part[torch.argsort(data.lengths[part], stable=True)])
        order = torch.cat(chunks)
    batches = list(torch.split(order, batch_size))
    if shuffle and bucket:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches

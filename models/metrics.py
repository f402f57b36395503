"""Metric accumulators, one kind per task family, fed batch by batch by :func:`rnnstream.models.evaluate.evaluate`.

Each :class:`Meter` sees the model, the batch, the model's output ``out [B, T, O]`` and the task's
``(pred, target)`` at the scored frames (see :mod:`rnnstream.models.tasks` for their shapes), and returns a
JSON-ready dict from :meth:`Meter.result`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnstream.models.data import Batch
from rnnstream.models.ensemble import StreamingModel
from rnnstream.models.rnn import StreamingRNN
from rnnstream.pipeline.errors import DatasetError


class Meter:
    """Accumulates one task's metrics over batches."""

    def update(self, model: StreamingModel, batch: Batch, out: Tensor, pred: Tensor, target: Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError


class ClassMeter(Meter):
    """Accuracy and the ``[C][C]`` confusion matrix (rows = truth) over scored frames.

    ``pred [K, C]`` logits, ``target [K]`` class ids. ``per_frame`` (tag) adds ``frames``, the count.
    """

    def __init__(self, num_classes: int, labels: tuple[str, ...], per_frame: bool = False):
        self.num_classes, self.labels, self.per_frame = num_classes, labels, per_frame
        self.correct = self.count = 0
        self.confusion = torch.zeros((num_classes, num_classes), dtype=torch.long)

    def update(self, model: StreamingModel, batch: Batch, out: Tensor, pred: Tensor, target: Tensor) -> None:
        c = self.num_classes
        if int(target.max()) >= c:
            raise DatasetError(f"label id {int(target.max())} out of range for a model with {c} classes")
        guess = pred.argmax(-1)
        self.correct += int((guess == target).sum())
        self.count += int(target.shape[0])
        self.confusion += torch.bincount((target * c + guess).cpu(), minlength=c * c).view(c, c)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": self.correct / self.count, "confusion": self.confusion.tolist(),
                               "labels": list(self.labels)}
        if self.per_frame:
            out["frames"] = self.count
        return out


class _ErrorMeter(Meter):
    """Squared and absolute error of the model and of the persistence baseline, summed over values."""

    def __init__(self) -> None:
        self.se = self.ae = self.pse = self.pae = 0.0
        self.n_values = 0

    def _add(self, pred: Tensor, truth: Tensor, persist: Tensor) -> None:
        self.se += float(((pred - truth) ** 2).sum())
        self.ae += float((pred - truth).abs().sum())
        self.pse += float(((persist - truth) ** 2).sum())
        self.pae += float((persist - truth).abs().sum())
        self.n_values += truth.numel()

    def result(self) -> dict[str, Any]:
        n = self.n_values
        return {"mse": self.se / n, "mae": self.ae / n, "persistence_mse": self.pse / n, "persistence_mae": self.pae / n}


def seasonal_period_of(feature_config: Any) -> int:
    """The daily period in frames of a sensor grid (24 for hourly data, 1440 for minutes), else 0."""
    sensor = getattr(feature_config, "sensor", None)
    if sensor is None:
        return 0
    per_day = 86400.0 * sensor.rate_hz
    period = int(round(per_day))
    return period if 2 <= period <= 1440 and abs(per_day - period) < 1e-6 else 0


class ForecastMeter(_ErrorMeter):
    """Each sequence's last-frame forecast ``[B, H, Dt]`` (the window protocol) against its truth, normalised;
    persistence repeats the last input value over the horizon; seasonal-naive (``period`` > 0) repeats the last
    period the window has (step ``k`` takes the value ``P * ceil(k / P)`` frames earlier)."""

    def __init__(self, period: int = 0) -> None:
        super().__init__()
        self.period = period
        self.sse = self.sae = 0.0
        self.s_values = 0

    def update(self, model: StreamingModel, batch: Batch, out: Tensor, pred: Tensor, target: Tensor) -> None:
        dims = list(model.config.target_dims)
        mean, std = model.feat_mean[dims], model.feat_std[dims]
        last = model.forecast_view(StreamingRNN.last_output(out, batch.lengths))  # [B, H, Dt]
        ly = StreamingRNN.last_output(batch.y.flatten(2), batch.lengths).view_as(last)
        truth = (ly - mean) / std
        lx = StreamingRNN.last_output(batch.x, batch.lengths)[:, dims]
        persist = ((lx - mean) / std).unsqueeze(1).expand_as(truth)
        self._add(last, truth, persist)
        if self.period:
            self._add_seasonal(batch, truth, dims, mean, std)

    def _add_seasonal(self, batch: Batch, truth: Tensor, dims: list[int], mean: Tensor, std: Tensor) -> None:
        """Seasonal-naive: step ``k`` repeats the value ``P * ceil(k / P)`` frames earlier (the same time of the
        last period the window has); windows too short for it are left out."""
        horizon = truth.shape[1]
        k = torch.arange(1, horizon + 1)
        back = self.period * torch.div(k + self.period - 1, self.period, rounding_mode="floor")  # P * ceil(k / P)
        idx = batch.lengths.view(-1, 1).long().cpu() - 1 + k.view(1, -1) - back.view(1, -1)  # [B, H]
        ok = (idx >= 0).all(dim=1)
        if not bool(ok.any()):
            return
        x = batch.x[ok][:, :, dims]  # [B', T, Dt]
        gather = idx[ok].unsqueeze(-1).expand(-1, -1, len(dims)).to(x.device)
        err = (x.gather(1, gather) - mean) / std - truth[ok]
        self.sse += float((err ** 2).sum())
        self.sae += float(err.abs().sum())
        self.s_values += err.numel()

    def result(self) -> dict[str, Any]:
        out = super().result()
        if self.s_values:
            out.update(seasonal_naive_mse=self.sse / self.s_values, seasonal_naive_mae=self.sae / self.s_values,
                       seasonal_period=self.period)
        return out


class NextFrameMeter(_ErrorMeter):
    """Next-frame prediction ``[K, D]`` on every scored frame, normalised; persistence repeats the frame."""

    def update(self, model: StreamingModel, batch: Batch, out: Tensor, pred: Tensor, target: Tensor) -> None:
        z = (batch.x - model.feat_mean) / model.feat_std
        persist = z[:, : out.shape[1]][batch.mask]
        self._add(pred, target, persist)


__all__ = ["ClassMeter", "ForecastMeter", "Meter", "NextFrameMeter", "seasonal_period_of"]

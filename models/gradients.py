"""Gradient norms while training: per-layer norms, clipping, and exploding/vanishing warnings."""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import Tensor

from rnnstream.models.ensemble import StreamingModel


class GradientWarning(UserWarning):
    """Gradient norms exploded or vanished during an epoch (the message has the measured norms)."""


class GradTracker:
    """Per-layer gradient norms, clipping, and the epoch's explode/vanish check.

    Layers are the RNN's layers (``rnn.l0``, ``rnn.l1``, ...) and the other top-level modules (``head``).
    Norms accumulate on the device (no host sync per step) until :meth:`summary`.
    """

    def __init__(self, model: StreamingModel, clip: float | None):
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
        """``grad_norm_mean``/``grad_norm_max`` (total norm) and per-layer ``grad_norm_layers_mean``/``_max``."""
        n = max(self.steps, 1)
        mean = (self.sum / n).tolist()
        return {
            "grad_norm_mean": float(self.total_sum) / n,
            "grad_norm_max": float(self.total_max),
            "grad_norm_layers_mean": dict(zip(self.groups, mean)),
            "grad_norm_layers_max": dict(zip(self.groups, self.max.tolist())),
        }

    def check(self, epoch: int, summary: dict[str, Any], explode: float, vanish: float) -> list[str]:
        """Warn (:class:`GradientWarning`) when the epoch's norms exploded or vanished; returns the messages."""
        msgs: list[str] = []
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
            warnings.warn(m, GradientWarning, stacklevel=4)
        return msgs


__all__ = ["GradTracker", "GradientWarning"]

"""Training plots as PNG files (matplotlib, Agg backend): curves, confusion matrix, forecast vs truth.

Each function writes one file and returns its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict[str, Any]], path: str, metric: str | None = None) -> str:
    """Loss per epoch (train and validation) and, when present, the validation ``metric``."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    has_metric = metric is not None and any(metric in row for row in history)
    metric = metric or ""
    fig, axes = plt.subplots(1, 2 if has_metric else 1, figsize=(10 if has_metric else 5.5, 3.8), squeeze=False)
    ax = axes[0, 0]
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    if any("val_loss" in row for row in history):
        ax.plot(epochs, [row.get("val_loss", np.nan) for row in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if has_metric:
        ax = axes[0, 1]
        ax.plot(epochs, [row.get(metric, np.nan) for row in history], marker="o", color="tab:green")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(confusion: np.ndarray, labels: Sequence[str], path: str) -> str:
    """Confusion matrix ``[C, C]`` (rows = truth, columns = prediction) with counts in the cells."""
    plt = _pyplot()
    cm = np.asarray(confusion)
    c = cm.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * c, 1.0 + 0.45 * c))
    ax.imshow(cm, cmap="Blues")
    names = list(labels) + [str(i) for i in range(len(labels), c)]
    ax.set_xticks(range(c), names[:c], rotation=45 if c > 10 else 0)
    ax.set_yticks(range(c), names[:c])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"confusion (accuracy {acc:.3f})")
    top = cm.max() if cm.size else 0
    for i in range(c):
        for j in range(c):
            if cm[i, j]:
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_forecast(pred: np.ndarray, truth: np.ndarray, path: str, channel: int = 0) -> str:
    """Forecast against truth for consecutive stride-1 windows (``pred``/``truth`` ``[N, H, Dt]``).

    Left: the 1-step-ahead and ``H``-step-ahead forecasts over the windows against the truth. Right: one
    window's whole horizon.
    """
    plt = _pyplot()
    pred, truth = np.asarray(pred), np.asarray(truth)
    n, h = pred.shape[0], pred.shape[1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    ax = axes[0]
    ax.plot(np.arange(n), truth[:, 0, channel], color="black", lw=1.2, label="truth")
    ax.plot(np.arange(n), pred[:, 0, channel], lw=1.0, label="forecast, 1 step ahead")
    if h > 1:
        # the forecast made at window i for step h lands at truth index i + h - 1
        ax.plot(np.arange(h - 1, n + h - 1), pred[:, h - 1, channel], lw=1.0, alpha=0.8,
                label=f"forecast, {h} steps ahead")
    ax.set_xlabel("window (time step)")
    ax.set_ylabel("value (normalised)")
    ax.set_title("forecast vs truth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    i = n // 2
    ax.plot(np.arange(1, h + 1), truth[i, :, channel], color="black", marker=".", label="truth")
    ax.plot(np.arange(1, h + 1), pred[i, :, channel], marker=".", label="forecast")
    ax.set_xlabel("steps ahead")
    ax.set_title(f"window {i}: whole horizon")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

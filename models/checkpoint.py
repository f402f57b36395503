"""Checkpoints: weights, model config, feature config, statistics and label names in one file.

Everything is stored as tensors, strings, numbers, lists and dicts, so the file loads with
``torch.load(path, weights_only=True)`` (no pickled classes, no code execution).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rnnstream.models.ensemble import StreamingModel
from rnnstream.models.rnn import ModelConfig, build_model
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import CheckpointError

CHECKPOINT_FORMAT = "rnnstream.checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, CPU) and what it needs to run."""

    model: StreamingModel
    feature_config: FeatureConfig
    labels: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # RunningStats.to_dict() of the training data
    extra: dict[str, Any] = field(default_factory=dict)  # training state: epoch, optimizer, metrics...


def save_checkpoint(
    path: str,
    model: StreamingModel,
    feature_config: FeatureConfig,
    *,
    labels: list[str] | None = None,
    stats: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write atomically (temp file + rename), so an interrupted save never leaves a corrupt checkpoint."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": model.config.to_json(),
        "feature_config": feature_config.to_json(),
        "labels": list(labels or []),
        "stats": json.dumps(stats or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load with ``weights_only=True``; raises :class:`CheckpointError` for a missing, corrupt or foreign file."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        raise CheckpointError(f"checkpoint {path!r} is corrupt or not a torch file: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint {path!r} has format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    try:
        config = ModelConfig.from_dict(json.loads(payload["model_config"]))
        feature_config = FeatureConfig.from_json(payload["feature_config"])
        state_dict = payload["state_dict"]
        model = build_model(
            config,
            feat_mean=np.asarray(state_dict["feat_mean"]),
            feat_std=np.asarray(state_dict["feat_std"]),
        )
        model.load_state_dict(state_dict)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path!r} is incomplete or inconsistent: {exc}") from None
    model.eval()
    return Checkpoint(
        model=model,
        feature_config=feature_config,
        labels=list(payload.get("labels", [])),
        stats=json.loads(payload.get("stats", "{}")),
        extra=dict(payload.get("extra", {})),
    )

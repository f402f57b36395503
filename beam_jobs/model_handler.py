"""The records of batch inference and the ``RunInference`` model handler for rnnstream models.

:class:`InferItem` (one input: its frames or segments, id, path, label, metadata) goes in, :class:`PredictionRecord`
comes out; :class:`RnnModelHandler` is Beam's ``ModelHandler`` over the runtime backend
(``rnnstream.api.load_backend``: ``.onnx`` graphs or checkpoints, local or ``gs://``/``s3://``), whole-sequence mode.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from rnnstream.pipeline.errors import ConfigError, ShapeError


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferItem:
    """One input for the model: its id, source, known label and feature segments (each ``[T, dim]``)."""

    id: str
    path: str
    label: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    segments: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class PredictionRecord:
    """One output object (see the module docstring)."""

    id: str
    path: str
    predicted: Any
    scores: list[float]
    frames: int
    label: str | None
    metadata: dict[str, Any]
    segments: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "path": self.path, "predicted": self.predicted, "scores": self.scores,
               "frames": self.frames, "label": self.label, "metadata": self.metadata}
        if self.segments is not None:
            out["segments"] = self.segments
        return out


def _local_file(path: str) -> tuple[str, bool]:
    """``path`` itself when local, else a temporary copy (same extension); returns ``(path, is_temporary)``."""
    if "://" not in path:
        return path, False
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
    with os.fdopen(fd, "wb") as out, FileSystems.open(path) as src:
        out.write(src.read())
    return tmp, True


def load_model_backend(path: str, threads: int | None = None) -> Any:
    """``rnnstream.api.load_backend`` for a local or remote (gs://, s3://) model file."""
    from rnnstream.api import load_backend

    local, temporary = _local_file(path)
    try:
        return load_backend(local, threads=threads)
    finally:
        if temporary:
            os.unlink(local)


# --------------------------------------------------------------------------------------------
# The model handler
# --------------------------------------------------------------------------------------------


class RnnModelHandler(ModelHandler[InferItem, PredictionResult, Any]):
    """``RunInference`` handler for rnnstream models: ``.onnx`` graphs or checkpoints.

    ``load_model`` returns the runtime backend (``rnnstream.api.load_backend``); ``run_inference``
    runs whole-sequence mode (``rnnstream.pipeline.streaming.predict_features``) on each segment of each item
    and returns ``PredictionResult(item, [Prediction per segment], model_id=weights_hash)``.
    """

    def __init__(self, model_path: str, *, batch_size: int = 1, threads: int | None = None):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        self.model_path = model_path
        self.batch_size = int(batch_size)
        self.threads = threads

    def load_model(self) -> Any:
        return load_model_backend(self.model_path, self.threads)

    def run_inference(self, batch: Sequence[InferItem], model: Any,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        from rnnstream.pipeline.streaming import predict_features

        model_id = model.info.weights_hash
        results = []
        for item in batch:
            preds = [predict_features(model, seg) for seg in item.segments]
            if not preds or any(p is None for p in preds):
                raise ShapeError(f"{item.id}: a segment has no frame; expected at least one frame per segment")
            results.append(PredictionResult(item, preds, model_id))
        return results

    def get_num_bytes(self, batch: Sequence[InferItem]) -> int:
        return int(sum(seg.nbytes for item in batch for seg in item.segments))

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self.batch_size}

    def should_skip_batching(self) -> bool:
        """Batches are made before RunInference (:class:`PredictItems`): one-item lists at batch size 1,
        which every runner keeps; Beam's ``BatchElements`` emits its last batch at bundle end, which the
        DaskRunner drops."""
        return True

    def get_metrics_namespace(self) -> str:
        return "rnnstream_infer"


__all__ = ["InferItem", "PredictionRecord", "RnnModelHandler", "load_model_backend"]

"""rnnstream: streaming speech and time-series pipelines whose streaming output equals offline output.

The public API (see :mod:`rnnstream.api`)::

    import rnnstream
    model = rnnstream.load("model.onnx")
    stream = model.stream(sample_rate=8000)
    out = stream.push(chunk)
    stream.prediction.label, stream.prediction.scores
    model.predict("file.wav")

Importing ``rnnstream`` loads nothing heavy: the names below are resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first access (PEP 562), so `import rnnstream` stays light.
_EXPORTS = {
    "load": "rnnstream.api",
    "load_backend": "rnnstream.api",
    "Model": "rnnstream.api",
    "Stream": "rnnstream.api",
    "ChunkResult": "rnnstream.pipeline.streaming",
    "Prediction": "rnnstream.pipeline.streaming",
    "SensorChunk": "rnnstream.pipeline.streaming",
    "StreamSession": "rnnstream.pipeline.streaming",
    "FeatureConfig": "rnnstream.pipeline.config",
    "AudioConfig": "rnnstream.pipeline.config",
    "SensorConfig": "rnnstream.pipeline.config",
    "ModelInfo": "rnnstream.pipeline.model_info",
    "RnnstreamError": "rnnstream.pipeline.errors",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # pragma: no cover  (names for type checkers; resolved lazily below)
    # ``import X as X``: an explicit re-export (PEP 484), so ``mypy --strict`` sees ``rnnstream.load`` and the rest.
    from rnnstream.api import Model as Model, Stream as Stream, load as load  # noqa: F401
    from rnnstream.api import load_backend as load_backend  # noqa: F401
    from rnnstream.pipeline.config import AudioConfig as AudioConfig, FeatureConfig as FeatureConfig  # noqa: F401
    from rnnstream.pipeline.config import SensorConfig as SensorConfig  # noqa: F401
    from rnnstream.pipeline.errors import RnnstreamError as RnnstreamError  # noqa: F401
    from rnnstream.pipeline.model_info import ModelInfo as ModelInfo  # noqa: F401
    from rnnstream.pipeline.streaming import ChunkResult as ChunkResult, Prediction as Prediction  # noqa: F401
    from rnnstream.pipeline.streaming import SensorChunk as SensorChunk, StreamSession as StreamSession  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rnnstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

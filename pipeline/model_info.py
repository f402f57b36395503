"""What a runtime knows about a model, and the stateless backend it steps.

:class:`ModelInfo` is the model's identity and contract (feature config, model config, labels, state specs, input
kind, hashes), stored as ONNX ``metadata_props``; :class:`Backend` is the one small abstraction both
``rnnstream.models.backend.TorchBackend`` (PyTorch) and :class:`rnnstream.pipeline.onnx_backend.OnnxBackend`
(onnxruntime) implement. Neither imports PyTorch here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import StateError
from rnnstream.pipeline.model_config import ModelConfig, StateSpec

FRONTEND_STATE = "frontend_carry"
InputKind = Literal["features", "audio"]


@dataclass(frozen=True)
class ModelInfo:
    """Everything a runtime needs to know about a model; stored as ONNX ``metadata_props``.

    ``state_specs`` are the *model* states (``h``, ``c``, ``pool_sum``, ``pool_count``); a raw-audio graph
    has one more input/output state, ``frontend_carry`` ``[win - hop]``, not listed here.
    """

    feature_config: FeatureConfig
    model_config: ModelConfig
    labels: tuple[str, ...]
    weights_hash: str
    stats_hash: str
    state_specs: tuple[StateSpec, ...]
    input_kind: InputKind = "features"
    version: str = ""

    @classmethod
    def from_model(cls, model: Any, feature_config: FeatureConfig, labels: Sequence[str] = (),
                   input_kind: InputKind = "features") -> "ModelInfo":
        """From a ``rnnstream.models.rnn.StreamingRNN``."""
        from rnnstream import __version__  # the root package's __init__ imports nothing heavy

        return cls(
            feature_config=feature_config,
            model_config=model.config,
            labels=tuple(labels),
            weights_hash=model.weights_hash(),
            stats_hash=model.stats_hash(),
            state_specs=tuple(model.state_spec()),
            input_kind=input_kind,
            version=__version__,
        )

    @property
    def task(self) -> str:
        return self.model_config.task

    # -- the ONNX step signature (docs/onnx.md) ------------------------------------------------
    def graph_states(self) -> list[str]:
        """Every state the step graph carries, in graph order (``frontend_carry`` first for raw audio)."""
        return ([FRONTEND_STATE] if self.input_kind == "audio" else []) + [s.name for s in self.state_specs]

    def graph_inputs(self) -> list[str]:
        """Graph input names in order: ``features`` (or ``audio``), then ``<state>_in``."""
        return ["audio" if self.input_kind == "audio" else "features"] + [f"{n}_in" for n in self.graph_states()]

    def graph_outputs(self) -> list[str]:
        """Graph output names in order: ``output``, then ``<state>_out``."""
        return ["output"] + [f"{n}_out" for n in self.graph_states()]

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX ``metadata_props`` (keys prefixed ``rnnstream.``)."""
        return {
            "rnnstream.version": self.version,
            "rnnstream.feature_config": self.feature_config.to_json(),
            "rnnstream.model_config": self.model_config.to_json(),
            "rnnstream.labels": json.dumps(list(self.labels)),
            "rnnstream.task": self.model_config.task,
            "rnnstream.weights_hash": self.weights_hash,
            "rnnstream.stats_hash": self.stats_hash,
            "rnnstream.input_kind": self.input_kind,
            "rnnstream.states": json.dumps([{"name": s.name, "shape": list(s.shape), "dtype": s.dtype}
                                            for s in self.state_specs]),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ModelInfo":
        missing = [k for k in ("rnnstream.feature_config", "rnnstream.model_config", "rnnstream.weights_hash",
                               "rnnstream.states") if k not in meta]
        if missing:
            raise StateError(f"model metadata lacks {missing}; was it exported by rnnstream?")
        return cls(
            feature_config=FeatureConfig.from_json(meta["rnnstream.feature_config"]),
            model_config=ModelConfig.from_dict(json.loads(meta["rnnstream.model_config"])),
            labels=tuple(json.loads(meta.get("rnnstream.labels", "[]"))),
            weights_hash=meta["rnnstream.weights_hash"],
            stats_hash=meta.get("rnnstream.stats_hash", ""),
            state_specs=tuple(StateSpec(s["name"], tuple(s["shape"]), s.get("dtype", "float32"))
                              for s in json.loads(meta["rnnstream.states"])),
            input_kind=meta.get("rnnstream.input_kind", "features"),  # type: ignore[arg-type]
            version=meta.get("rnnstream.version", ""),
        )

    def initial_states(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zero model states ``{name: [batch_size, *shape]}`` (no ``frontend_carry``)."""
        return {s.name: np.zeros((batch_size, *s.shape), dtype=np.float32) for s in self.state_specs}


class Backend(Protocol):
    """A stateless streaming step over a batch of streams.

    ``step(x, states) -> (y, new_states)`` where, for ``info.input_kind == "features"``, ``x`` is float32
    ``[B, T, F]``; for ``"audio"``, ``x`` is float32 ``[B, S]`` (``S`` a multiple of hop x stack) and ``states``
    also holds ``frontend_carry [B, win - hop]``. ``y`` is float32 ``[B, T, output_dim]``; every state is
    float32 with the batch on axis 0. Backends must not keep per-stream state.
    """

    info: ModelInfo

    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ...


__all__ = ["FRONTEND_STATE", "Backend", "InputKind", "ModelInfo"]

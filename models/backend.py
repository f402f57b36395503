"""The PyTorch backend of the streaming runtime (see ``rnnstream.pipeline.streaming.Backend``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rnnstream.models.ensemble import StreamingModel
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ShapeError, StateError
from rnnstream.models.frontend import AudioFrontend
from rnnstream.pipeline.model_info import FRONTEND_STATE, ModelInfo


class TorchBackend:
    """Runs a :class:`StreamingRNN` (eval mode, no grad) on NumPy inputs and states.

    ``raw_audio=True`` puts :class:`AudioFrontend` in front, mirroring the ``--raw-audio`` ONNX graph.
    """

    def __init__(self, model: StreamingModel, feature_config: FeatureConfig, labels: Sequence[str] = (),
                 *, raw_audio: bool = False, device: str | torch.device = "cpu"):
        if model.config.bidirectional:
            model.step(torch.zeros(1, 0, model.config.input_dim), {})  # raises the explanatory StateError
        if model.config.input_dim != feature_config.dim:
            raise ShapeError(
                f"model input_dim {model.config.input_dim} != feature dimension {feature_config.dim} of its feature config"
            )
        if raw_audio and feature_config.kind != "audio":
            raise ShapeError("raw_audio=True needs an audio feature config")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.frontend = AudioFrontend(feature_config).to(self.device).eval() if raw_audio else None
        self.info = ModelInfo.from_model(model, feature_config, labels, input_kind="audio" if raw_audio else "features")

    @classmethod
    def from_checkpoint(cls, path: str, *, raw_audio: bool = False, device: str = "cpu") -> "TorchBackend":
        from rnnstream.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        return cls(ckpt.model, ckpt.feature_config, ckpt.labels, raw_audio=raw_audio, device=device)

    @torch.no_grad()
    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``x [B, T, F]`` (or ``[B, S]`` audio) and states ``{name: [B, ...]}`` -> ``(y [B, T, O], states)``."""
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)
        st = {k: torch.as_tensor(np.asarray(v, dtype=np.float32), device=self.device) for k, v in states.items()}
        out_states: dict[str, np.ndarray] = {}
        if self.frontend is not None:
            if xt.dim() != 2:
                raise ShapeError(f"a raw-audio backend takes audio [batch, samples], got {list(xt.shape)}")
            if FRONTEND_STATE not in st:
                raise StateError(f"a raw-audio backend needs the {FRONTEND_STATE!r} state")
            xt, carry = self.frontend(xt, st.pop(FRONTEND_STATE))
            out_states[FRONTEND_STATE] = carry.cpu().numpy()
        y, new = self.model.step(xt, st)
        out_states.update({k: v.cpu().numpy() for k, v in new.items()})
        return y.cpu().numpy(), out_states

"""The audio featurizer as a PyTorch module, for ONNX graphs that take raw audio.

:class:`AudioFrontend` computes the features of :class:`rnnstream.pipeline.features.AudioFeaturizer` with a DFT as
a strided ``conv1d`` over a fixed windowed basis (which exports to ONNX exactly), from the same NumPy matrices.
"""

from __future__ import annotations

import numpy as np
import torch

from rnnstream.pipeline.config import AudioConfig, FeatureConfig
from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.features import dct_matrix, dft_basis, mel_matrix


class AudioFrontend(torch.nn.Module):
    """The featurizer as a stateless PyTorch step, for ONNX graphs that take raw audio.

    ``forward(audio [B, S], carry [B, context]) -> (features [B, S // hop, dim], carry [B, context])``.
    ``S`` must be a multiple of ``hop_length``; the runtime holds the ``< hop`` remainder (the pending
    tail of :class:`AudioFeaturizer`'s carry).
    """

    def __init__(self, config: FeatureConfig | AudioConfig):
        super().__init__()
        cfg = config.audio if isinstance(config, FeatureConfig) else config
        if cfg is None:
            raise ConfigError("AudioFrontend needs a feature config of kind 'audio'")
        cfg.validate()
        self.cfg = cfg
        self.n_freq = cfg.fft_size // 2 + 1
        self.register_buffer("basis", torch.from_numpy(dft_basis(cfg)).unsqueeze(1), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_matrix(cfg)), persistent=False)
        dct = dct_matrix(cfg) if cfg.feature == "mfcc" else np.zeros((0, 0), np.float32)
        self.register_buffer("dct", torch.from_numpy(dct), persistent=False)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, self.cfg.context)

    def forward(self, audio: torch.Tensor, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        buffer = torch.cat((carry, audio), dim=1)  # [B, context + S]
        spec = torch.nn.functional.conv1d(buffer.unsqueeze(1), self.basis, stride=self.cfg.hop_length)
        re, im = spec[:, : self.n_freq], spec[:, self.n_freq :]  # [B, n_freq, T]
        power = (re * re + im * im).transpose(1, 2)  # [B, T, n_freq]
        feats = torch.log(torch.matmul(power, self.mel) + self.cfg.log_eps)
        if self.cfg.feature == "mfcc":
            feats = torch.matmul(feats, self.dct)
        new_carry = buffer[:, audio.shape[1] :]
        return feats, new_carry


__all__ = ["AudioFrontend"]

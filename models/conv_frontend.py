"""A causal convolutional front end over (time, frequency): the "C" of a streaming CRNN.

Each layer is ``Conv2d(c_in, c_out, (kt, kf))`` over ``[B, c_in, time, bands]`` — causal in time (it sees the
current frame and the ``kt - 1`` before it, which a stream carries as state), zero-padded in frequency — then ReLU
and max-pooling over frequency. Streaming equals offline under any chunking: the carried frames are exactly the
ones the offline convolution would look back at, and zeros before the first frame are the initial state.
With ``conv_kernel = (kt, 0)`` the first kernel spans every input band (unpadded, one band out) and the later ones
that single band: a stack of causal 1-D temporal convolutions over all features, as in FCN for sensor series.

Shapes: ``step(z [B, T, F], states) -> (y [B, T, c_last * F_last], states)`` with ``states["conv<i>"]`` of shape
``[B, kt - 1, c_in_i, F_i]`` (see :meth:`rnnstream.pipeline.model_config.ModelConfig.state_specs`; ``c_in_0`` is 2 when
the features' deltas come in as a second channel, ``input_delta``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnstream.pipeline.model_config import ModelConfig


class CausalConvFrontend(nn.Module):
    """The conv layers of ``config.conv_channels``; stateless, the states are passed in and returned."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        kt, kf = config.conv_kernel
        chans = (config.conv_in_channels, *config.conv_channels)
        self.kt = kt
        self.pool = config.conv_pool
        bands = config.conv_bands()
        widths = [bands[i] if kf == 0 else kf for i in range(len(chans) - 1)]  # kf 0: across every band
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], (kt, widths[i]), padding=(0, widths[i] // 2 if kf else 0))
            for i in range(len(chans) - 1)
        )

    def forward(self, z: Tensor, state: dict[str, Tensor], delta: Tensor | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """``z [B, T, F]`` (T >= 1), with ``input_delta`` its deltas ``delta [B, T, F]`` (a second input channel), and
        ``{"conv<i>": [B, kt - 1, c_in, F_i]}`` -> ``(y [B, T, C * F'], new)``."""
        x = z.unsqueeze(2) if delta is None else torch.stack((z, delta), dim=2)  # [B, T, 1 or 2, F]
        new: dict[str, Tensor] = {}
        for i, conv in enumerate(self.convs):
            if self.kt > 1:
                name = f"conv{i}"
                x = torch.cat((state[name], x), dim=1)  # [B, kt - 1 + T, c_in, F]
                new[name] = x[:, 1 - self.kt :]  # a constant slice: the last kt - 1 frames
            y = torch.relu(conv(x.permute(0, 2, 1, 3)))  # [B, c_out, T, F]
            if self.pool > 1:
                y = nn.functional.max_pool2d(y, kernel_size=(1, self.pool))
            x = y.permute(0, 2, 1, 3)  # [B, T, c_out, F // pool]
        return x.reshape(x.shape[0], x.shape[1], -1), new  # onnxruntime folds this shape to [0, 0, -1]


__all__ = ["CausalConvFrontend"]

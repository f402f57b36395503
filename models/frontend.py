"""The audio featurizer as a PyTorch module, for ONNX graphs that take raw audio.

:class:`AudioFrontend` computes the features of :class:`rnnstream.pipeline.features.AudioFeaturizer` from the same
NumPy matrices, with plain tensor ops that export to ONNX exactly and run fast in onnxruntime:

* framing by reshapes and slices (no ``Gather``, no ``Conv``): the buffer is cut into hop-long blocks and a
  frame is the concatenation of ``ceil(win / hop)`` consecutive blocks (the first one trimmed); constant slice
  bounds and ``[batch, -1, hop]`` reshapes only, so onnxruntime's optimised graph computes no shapes (about 5 us
  less per 100 ms chunk than with the frame count derived from the input's length);
* the DFT as ``MatMul`` with bases that have the analysis window folded in and only the columns the mel filters
  use: cosines and sines of the bins with a non-zero mel weight (the sines of DC and Nyquist are zero columns);
* when ``win_length == n_fft`` (even), the DFT folded in half: the window is even about ``n_fft / 2``, so
  ``x[n] + x[N - n]`` against the cosines and ``x[n] - x[N - n]`` against the sines give the same spectrum with
  half the multiply-adds (:func:`folded_basis`);
* the power spectrum as ``re * re + im * im`` over those bins, then one ``MatMul`` with their mel rows.

For the default 16 kHz config (400-sample window, 160-sample hop, 80 mels) the DFT is a ``[201, 200]`` and a
``[200, 200]`` product (80k multiply-adds per frame) instead of the ``[402, 400]`` strided convolution
(160.8k) this module used before, and the mel projection a ``[200, 80]`` one (16k; 31.8k when it read the real
and imaginary parts side by side). onnxruntime time per chunk: ``bench/bench_stream.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from rnnstream.pipeline.config import AudioConfig, FeatureConfig, audio_config_of
from rnnstream.pipeline.features import dct_matrix, mel_matrix, window


def spectral_basis(cfg: AudioConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The windowed DFT bases of the bins the mel filters use and the mel matrix of those bins, float64.

    Returns ``(cos [win_length, U], sin [win_length, U], mel [U, n_mels])`` such that for a frame
    ``x [win_length]``, ``((x @ cos) ** 2 + (x @ sin) ** 2) @ mel`` equals
    ``|rfft(window * x, n_fft)| ** 2 @ mel_matrix(cfg)``. ``U``: the bins whose mel weights are not all zero
    (the sine columns of DC and Nyquist are exactly zero). The window is folded into both bases.
    """
    n_fft = cfg.fft_size
    mel = mel_matrix(cfg).astype(np.float64)  # [n_fft // 2 + 1, n_mels]
    used = np.flatnonzero(np.any(mel != 0.0, axis=1))
    n = np.arange(cfg.win_length, dtype=np.float64)[:, None]
    w = window(cfg).astype(np.float64)[:, None]
    angle = 2.0 * np.pi * ((n * used[None, :]) % n_fft) / n_fft
    sin = np.sin(angle) * w
    sin[:, (used == 0) | ((n_fft % 2 == 0) & (used == n_fft // 2))] = 0.0  # exactly zero, not rounding noise
    return np.cos(angle) * w, sin, mel[used]


def folded_basis(cfg: AudioConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`spectral_basis` folded in half, or ``None`` when the window is not even about ``n_fft / 2``.

    With ``win_length == n_fft`` even and a periodic (hence even) window, ``cos`` and ``sin`` rows ``n`` and
    ``N - n`` are equal and opposite: with ``a = x[1 : N/2 + 1]`` and ``b = x[N/2 :][::-1]``
    (``b[j] = x[N - 1 - j]``), ``x @ cos == concat(x[:1], a + b) @ cos_f`` and ``x @ sin == (a - b)[: N/2 - 1] @ sin_f``,
    half the multiply-adds. Returns ``(cos_f [N/2 + 1, U], sin_f [N/2 - 1, U], mel [U, n_mels])``.
    """
    n_fft = cfg.fft_size
    if cfg.win_length != n_fft or n_fft % 2 or n_fft < 4:
        return None
    cos, sin, mel = spectral_basis(cfg)
    half = n_fft // 2
    cos_f = cos[: half + 1].copy()
    cos_f[half] *= 0.5  # a + b counts x[N/2] twice
    return cos_f, sin[1:half], mel


class AudioFrontend(torch.nn.Module):
    """The featurizer as a stateless PyTorch step, for ONNX graphs that take raw audio.

    ``forward(audio [B, S], carry [B, context]) -> (features [B, S // (stack * hop), dim], carry [B, context])``.
    ``S`` must be a multiple of ``stack * hop_length`` (``S == 0`` gives ``[B, 0, dim]``); the runtime holds the
    ``< stack * hop`` remainder (the pending tail of :class:`AudioFeaturizer`'s carry). With ``stack > 1`` each
    output frame is that many analysis frames' features side by side, as :class:`AudioFeaturizer` stacks them.
    Batch and length stay dynamic in the exported graph.
    """

    cos: torch.Tensor  # buffers: the DFT basis [win, 2U] (or folded [N/2, U] with sin), mel [U, n_mels], dct
    sin: torch.Tensor
    mel: torch.Tensor
    dct: torch.Tensor

    def __init__(self, config: FeatureConfig | AudioConfig):
        super().__init__()
        self.cfg = cfg = audio_config_of(config, "AudioFrontend")
        self.hop = cfg.hop_length
        self.blocks = -(-cfg.win_length // self.hop)  # hop-long blocks a frame spans: ceil(win / hop)
        self.first = cfg.win_length - (self.blocks - 1) * self.hop  # samples of the first (trimmed) block
        folded = folded_basis(cfg)
        self.folded = folded is not None
        cos, sin, mel = folded if folded is not None else spectral_basis(cfg)
        self.bins = cos.shape[1]  # U
        if not self.folded:  # one [win, 2U] basis: cosines, then sines
            cos, sin = np.concatenate((cos, sin), axis=1), np.zeros((0, 0))
        else:  # a zero last row: (a - b)'s last entry is x[N/2] - x[N/2] = 0, so no slice to N/2 - 1 in the graph
            sin = np.concatenate((sin, np.zeros((1, sin.shape[1]))), axis=0)
        for name, arr in (("cos", cos), ("sin", sin), ("mel", mel)):
            self.register_buffer(name, torch.from_numpy(arr.astype(np.float32)), persistent=False)
        dct = dct_matrix(cfg) if cfg.feature == "mfcc" else np.zeros((0, 0), np.float32)
        self.register_buffer("dct", torch.from_numpy(dct), persistent=False)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, self.cfg.context)

    def frames(self, buffer: torch.Tensor) -> torch.Tensor:
        """``buffer [B, context + T * hop]`` -> the (unwindowed) frames ``[B, T, win]``.

        Frame ``t`` is ``buffer[:, t*hop : t*hop + win]``: the first ``self.first`` samples of block ``t`` of
        ``buffer`` cut in hops, then whole hops taken from ``buffer[:, self.first:]`` cut in hops. Every slice bound
        is a constant and every reshape ``[batch, -1, hop]``, so the graph computes no shapes (onnxruntime turns
        such a reshape into a constant ``[0, -1, hop]``).
        """
        hop, last, ctx = self.hop, self.blocks - 2, self.cfg.context
        body = buffer[:, :-ctx] if ctx else buffer  # [B, T * hop]: what precedes the carried context
        head = body.reshape(body.shape[0], -1, hop)[:, :, : self.first]
        if self.blocks == 1:
            return head
        rest = buffer[:, self.first :]
        tail = rest.reshape(rest.shape[0], -1, hop)  # [B, T + blocks - 2, hop]
        pieces = [head] + [tail[:, j : (j - last) if j < last else None] for j in range(self.blocks - 1)]
        return torch.cat(pieces, dim=2)

    def power(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames [B, T, win]`` -> ``[B, T, U]``: the power spectrum ``re^2 + im^2`` of the used bins."""
        if not self.folded:
            spec = torch.matmul(frames, self.cos)
            re, im = spec[:, :, : self.bins], spec[:, :, self.bins :]
        else:
            half = self.cfg.fft_size // 2
            a, b = frames[:, :, 1 : half + 1], torch.flip(frames[:, :, half:], dims=[2])  # x[n], x[N - n]
            re = torch.matmul(torch.cat((frames[:, :, :1], a + b), dim=2), self.cos)
            im = torch.matmul(a - b, self.sin)  # [B, T, N/2] @ [N/2, U] (last row zero)
        return re * re + im * im

    def forward(self, audio: torch.Tensor, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        buffer = torch.cat((carry, audio), dim=1)  # [B, context + S]
        power = self.power(self.frames(buffer))  # [B, T, U]
        feats = torch.log(torch.matmul(power, self.mel) + self.cfg.log_eps)  # [B, T, n_mels]
        if self.cfg.feature == "mfcc":
            feats = torch.matmul(feats, self.dct)
        if self.cfg.stack > 1:  # [B, k * T', frame_dim] -> [B, T', k * frame_dim]
            feats = feats.reshape(feats.shape[0], -1, self.cfg.dim)
        ctx = self.cfg.context  # a constant slice: the last ``context`` samples
        new_carry = buffer[:, :0] if ctx == 0 else buffer[:, -ctx:]
        return feats, new_carry


__all__ = ["AudioFrontend", "folded_basis", "spectral_basis"]

"""Causal smoothing for input normalisation, and PCEN as a streamable input norm.

* :func:`decayed_sums` is the one recurrence the causal norms share: ``S_t = a S_{t-1} + v_t`` over a chunk, from the
  carried ``S``, computed for the whole chunk at once (a ``[T, T]`` matrix of powers of ``a``; exact in ONNX too).
* :class:`CausalPCEN`: per-channel energy normalisation (Wang et al., "Trainable frontend for robust and far-field
  keyword spotting", 2017) of log-mel features ``x``. With the energy ``E = exp(x)`` and its smoothed level
  ``M_t = a M_{t-1} + (1 - a) E_t`` (started at the training data's geometric-mean energy ``P = exp(feat_mean)``),
  ``pcen_t = (E_t / (eps + M_t) ** alpha + delta) ** r - delta ** r`` per band, with ``alpha``, ``delta`` and
  ``r`` trained per band (kept positive as exponentials; started at 0.98, 2 and 0.5). The carried state is
  ``M - P`` (``pcen_m``, zero before the stream), so streaming equals offline under any chunking.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnstream.pipeline.errors import ConfigError

#: Longest chunk handled with one ``[T, T]`` weight matrix outside export (longer ones go in blocks).
BLOCK = 256
#: Added to the smoothed energy before the power (as in the PCEN paper).
PCEN_EPS = 1e-6


def decayed_sums(v: Tensor, s0: Tensor, a: float) -> Tensor:
    """``S [B, T, D]`` with ``S_t = a S_{t-1} + v_t`` for ``v [B, T, D]``, from ``S_{-1} = s0 [B, D]`` (``0 < a < 1``)."""
    steps = v.shape[1]
    if steps > BLOCK and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
        parts = []  # long offline sequences: blocks keep the [T, T] weights small
        for t0 in range(0, steps, BLOCK):
            part = decayed_sums(v[:, t0:t0 + BLOCK], s0, a)
            parts.append(part)
            s0 = part[:, -1]
        return torch.cat(parts, dim=1)
    idx = torch.arange(steps, device=v.device, dtype=v.dtype)
    lag = idx.view(-1, 1) - idx.view(1, -1)  # [T, T]: t - k
    w = torch.where(lag >= 0, torch.exp(lag.clamp(min=0) * math.log(a)), torch.zeros_like(lag))
    carry = torch.exp((idx + 1) * math.log(a)).view(1, -1, 1)  # a^(t+1): the weight of the carried sums
    return torch.matmul(w, v) + carry * s0.unsqueeze(1)


class CausalPCEN(nn.Module):
    """``forward(x [B, T, D] log-mel, m0 [B, D], log_prior [D]) -> (pcen [B, T, D], m [B, D])`` (module doc).

    ``decay`` is ``a`` (``0 < a < 1``; 0.975 at a 10 ms hop is a 0.4 s time constant); ``log_prior`` is the
    training data's mean log-mel (the model's ``feat_mean`` buffer), passed at each call; ``m0``/``m`` the carried
    level less ``exp(log_prior)`` before and after the chunk.
    """

    def __init__(self, dim: int, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"PCEN decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.log_alpha = nn.Parameter(torch.full((dim,), math.log(0.98)))
        self.log_delta = nn.Parameter(torch.full((dim,), math.log(2.0)))
        self.log_r = nn.Parameter(torch.full((dim,), math.log(0.5)))

    def forward(self, x: Tensor, m0: Tensor, log_prior: Tensor) -> tuple[Tensor, Tensor]:
        a = self.decay
        prior = torch.exp(log_prior)  # [D]
        energy = torch.exp(x)
        m = decayed_sums((1.0 - a) * (energy - prior), m0, a)  # M - P
        level = (m + prior).clamp(min=0.0) + PCEN_EPS
        alpha, delta, r = torch.exp(self.log_alpha), torch.exp(self.log_delta), torch.exp(self.log_r)
        out = torch.pow(energy / torch.pow(level, alpha) + delta, r) - torch.pow(delta, r)
        return out, m[:, -1]


__all__ = ["BLOCK", "CausalPCEN", "PCEN_EPS", "decayed_sums"]

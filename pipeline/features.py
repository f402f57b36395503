"""Audio featurization: pure functions, one streaming featurizer, one graph module.

Offline featurization *is* streaming over one chunk::

    fz = AudioFeaturizer(cfg)
    frames, carry = fz.step(chunk, fz.initial_state())    # any chunk length, 0 included
    fz.featurize(signal) == fz.step(signal, fz.initial_state())[0]

Framing is causal (see :mod:`rnnstream.pipeline.config`): ``N`` samples give ``N // hop`` frames. The carry is a
1-D float32 array of the samples not yet consumed: ``win - hop`` samples of context followed by
``0 .. hop - 1`` pending samples. Its first ``context`` samples are the ONNX graph's carry state
(:class:`rnnstream.models.frontend.AudioFrontend`); the pending tail is held by the runtime.

The NumPy path (real FFT) serves Python streaming, where per-call overhead dominates small chunks;
:class:`rnnstream.models.frontend.AudioFrontend` computes the same features in PyTorch with frames cut by slices
and the DFT as ``MatMul`` products over fixed windowed bases (folded in half when ``win == n_fft``), which export to
ONNX exactly. Both build their matrices from the same
functions below (NumPy; tests hold the filterbank and DCT equal to torchaudio's, and the two paths equal).
This module imports no PyTorch.

Precision: the NumPy path runs pocketfft's float32 kernel; its log-mel is within about 1.3e-5 of a
float64 computation (torchaudio's float32 MelSpectrogram: about 2.8e-5). Chunkings differ from the
offline result only by float32 rounding (one frame and several frames take different BLAS products).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from rnnstream.pipeline.codec import all_finite, to_float32
from rnnstream.pipeline.config import AudioConfig, FeatureConfig, audio_config_of
from rnnstream.pipeline.errors import NonFiniteSamplesError, ShapeError, StateError

# --------------------------------------------------------------------------------------------
# Matrices (pure, cached per config)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def window(cfg: AudioConfig) -> np.ndarray:
    """Periodic analysis window (``torch.hann_window``/``hamming_window(periodic=True)``), ``[win_length]`` float32."""
    phase = 2.0 * np.pi * np.arange(cfg.win_length, dtype=np.float64) / cfg.win_length
    a0 = 0.5 if cfg.window == "hann" else 0.54
    return (a0 - (1.0 - a0) * np.cos(phase)).astype(np.float32)


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)
def mel_matrix(cfg: AudioConfig) -> np.ndarray:
    """HTK mel filterbank without norm, shape ``[n_fft // 2 + 1, n_mels]`` float32.

    The same triangles as torchaudio's ``melscale_fbanks(..., norm=None, mel_scale="htk")`` (a test holds them
    equal), computed in float64 with NumPy so the runtime needs no PyTorch.
    """
    f_max = cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2
    all_freqs = np.linspace(0.0, cfg.sample_rate // 2, cfg.fft_size // 2 + 1)
    m_pts = np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(f_max), cfg.n_mels + 2)
    f_pts = _mel_to_hz(m_pts)
    f_diff = np.diff(f_pts)  # [n_mels + 1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up)).astype(np.float32)


@functools.lru_cache(maxsize=32)
def dct_matrix(cfg: AudioConfig) -> np.ndarray:
    """Orthonormal DCT-II (as torchaudio's ``create_dct(norm="ortho")``), shape ``[n_mels, n_mfcc]`` float32."""
    n = np.arange(cfg.n_mels, dtype=np.float64)
    k = np.arange(cfg.n_mfcc, dtype=np.float64)[:, None]
    dct = np.cos(np.pi / cfg.n_mels * (n + 0.5) * k)  # [n_mfcc, n_mels]
    dct[0] *= 1.0 / math.sqrt(2.0)
    dct *= math.sqrt(2.0 / cfg.n_mels)
    return np.ascontiguousarray(dct.T).astype(np.float32)


@functools.lru_cache(maxsize=32)
def dft_basis(cfg: AudioConfig) -> np.ndarray:
    """Windowed real-DFT basis, shape ``[2 * (n_fft // 2 + 1), win_length]``: cosine rows, then sine rows.

    ``basis @ frame`` gives the real and imaginary parts of ``rfft(window * frame, n=n_fft)`` (up to the
    sign of the imaginary part, which the power spectrum ignores).
    """
    n = np.arange(cfg.win_length, dtype=np.float64)
    k = np.arange(cfg.fft_size // 2 + 1, dtype=np.float64)[:, None]
    angle = 2.0 * np.pi * ((k * n) % cfg.fft_size) / cfg.fft_size
    w = window(cfg).astype(np.float64)
    return np.concatenate([np.cos(angle) * w, np.sin(angle) * w]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Pure feature functions
# --------------------------------------------------------------------------------------------


def frame_count(num_samples: int, cfg: AudioConfig) -> int:
    """Model frames produced by ``num_samples`` samples of a stream: ``num_samples // (stack * hop)``."""
    return num_samples // cfg.step_length


def _rfft(x: np.ndarray, n: int) -> np.ndarray:
    """``np.fft.rfft(x, n)`` over the last axis; calls pocketfft's ufunc directly when this NumPy has it.

    The public wrapper costs about 8 us per call in argument handling, which dominates 10 ms chunks.
    """
    if _POCKETFFT is not None and x.shape[-1] == n:
        ufunc = _POCKETFFT.rfft_n_even if n % 2 == 0 else _POCKETFFT.rfft_n_odd
        single = x.dtype == np.float32
        out = np.empty((*x.shape[:-1], n // 2 + 1), np.complex64 if single else np.complex128)
        return ufunc(x, _ONE_F32 if single else 1.0, out)
    return np.fft.rfft(x, n=n, axis=-1)


_F32, _C64 = np.dtype(np.float32), np.dtype(np.complex64)

#: The pocketfft ufunc's scale argument for float32 input; passing it typed skips a per-call cast.
_ONE_F32 = np.array(1.0, dtype=np.float32)
_ONE_F32.flags.writeable = False

try:  # NumPy >= 2.0
    from numpy.fft import _pocketfft_umath as _POCKETFFT  # type: ignore[attr-defined]

    if not hasattr(_POCKETFFT, "rfft_n_even"):
        _POCKETFFT = None
except ImportError:  # pragma: no cover - older NumPy
    _POCKETFFT = None


def features_from_frames(
    frames: np.ndarray,
    win: np.ndarray,
    mel2: np.ndarray,
    eps: np.float32,
    n_fft: int,
    dct: np.ndarray | None = None,
) -> np.ndarray:
    """Log-mel (``log(|rfft(win * frame, n_fft)|^2 @ mel + eps)``) or its MFCC (``@ dct``).

    ``frames [T, win_length] -> [T, n_mels or n_mfcc]`` float32. ``mel2`` is the mel matrix with each row
    repeated twice (``[2 * n_freq, n_mels]``), matching the interleaved ``(re, im)`` view of the spectrum.
    Arguments are precomputed arrays, not a config, because this runs once per chunk and per-call
    overhead dominates 10 ms chunks (:class:`AudioFeaturizer` also precomputes the matrices' other layouts).
    """
    return _features(frames, win, n_fft, _Mats.of(mel2, eps, dct))


class _Mats:
    """The mel/DCT matrices in the layouts the products below want, built once per featurizer."""

    __slots__ = ("mel2", "mel", "mel_t", "dct", "dct_t", "eps")

    def __init__(self, mel2: np.ndarray, mel: np.ndarray, eps: np.float32, dct: np.ndarray | None):
        self.mel2 = mel2  # [2 * n_freq, n_mels]
        self.mel = mel  # [n_freq, n_mels]
        self.mel_t = np.ascontiguousarray(mel.T)  # [n_mels, n_freq]
        self.dct = dct  # [n_mels, n_mfcc] or None
        self.dct_t = None if dct is None else np.ascontiguousarray(dct.T)
        self.eps = np.array(eps, dtype=_F32)  # 0-d: adding a NumPy scalar costs ~0.7 us more per call

    @classmethod
    def of(cls, mel2: np.ndarray, eps: np.float32, dct: np.ndarray | None) -> "_Mats":
        return cls(mel2, np.ascontiguousarray(mel2[::2]), eps, dct)


#: Up to this many frames the products run transposed (``mel.T @ power.T``): OpenBLAS's sgemm with a
#: short left operand (few frames) is several times slower than with a short right one.
_SMALL_T = 32


def _window(frames: np.ndarray, win: np.ndarray, n_fft: int) -> np.ndarray:
    """``frames [..., win_length] * win``, zero-padded at the end to ``[..., n_fft]`` (a new contiguous array)."""
    width = frames.shape[-1]
    if n_fft == width:
        return frames * win
    windowed = np.zeros((*frames.shape[:-1], n_fft), _F32)
    np.multiply(frames, win, out=windowed[..., :width])
    return windowed


def _features(frames: np.ndarray, win: np.ndarray, n_fft: int, m: _Mats) -> np.ndarray:
    """``frames [T, win_length]`` -> features ``[T, dim]`` float32 (see :func:`features_from_frames`)."""
    return _windowed_features(_window(frames, win, n_fft), n_fft, m)


def _windowed_features(windowed: np.ndarray, n_fft: int, m: _Mats) -> np.ndarray:
    """``windowed [T, n_fft]`` (window applied) -> features ``[T, dim]`` float32."""
    n = windowed.shape[0]
    sq = _rfft(windowed, n_fft).view(_F32)  # [T, 2 * n_freq]: re, im interleaved
    np.multiply(sq, sq, out=sq)
    if n == 1:  # one gemv with the doubled matrix, no re^2 + im^2 pass
        feats = np.dot(sq, m.mel2)
        np.add(feats, m.eps, feats)
        np.log(feats, feats)
        return feats if m.dct is None else np.dot(feats, m.dct)
    power = np.add(sq[:, 0::2], sq[:, 1::2])  # [T, n_freq]
    if n <= _SMALL_T:
        feats_t = np.dot(m.mel_t, power.T)  # [n_mels, T]
        np.add(feats_t, m.eps, feats_t)
        np.log(feats_t, feats_t)
        if m.dct_t is not None:
            feats_t = np.dot(m.dct_t, feats_t)
        return np.ascontiguousarray(feats_t.T)
    feats = np.dot(power, m.mel)  # np.dot calls BLAS directly; `@` adds the matmul ufunc's overhead
    np.add(feats, m.eps, feats)
    np.log(feats, feats)
    return feats if m.dct is None else np.dot(feats, m.dct)


def as_samples(chunk: np.ndarray | list[float], *, where: str = "chunk") -> np.ndarray:
    """Validate one chunk of mono samples and return it as float32 ``[S]`` (:func:`rnnstream.pipeline.codec.to_float32`).

    Floats are taken as they are, int16 PCM is scaled by ``1 / 32768``, other dtypes are refused.

    Raises:
        ShapeError: not one-dimensional, or not float/int16 samples.
        NonFiniteSamplesError: NaN or Inf present (the message counts them).
    """
    return to_float32(chunk, where=where)


# --------------------------------------------------------------------------------------------
# The streaming featurizer (NumPy)
# --------------------------------------------------------------------------------------------


class AudioFeaturizer:
    """Streaming log-mel / MFCC featurizer; offline is one ``step`` over the whole signal.

    State (the *carry*): float32 ``[context + pending]``, ``context = win - hop``, ``pending < stack * hop``.
    With ``stack = k`` each returned frame is ``k`` consecutive analysis frames' features side by side
    (``[k * frame_dim]``, oldest first), one per ``k * hop`` samples.
    """

    def __init__(self, config: FeatureConfig | AudioConfig):
        self.cfg = cfg = audio_config_of(config, "AudioFeaturizer")
        self.dim = cfg.dim
        self._stack, self._step = cfg.stack, cfg.step_length
        # Hot-path constants, computed once (see features_from_frames).
        self._hop, self._ctx, self._win, self._nfft = cfg.hop_length, cfg.context, cfg.win_length, cfg.fft_size
        self._window = window(cfg)
        self._mel = np.ascontiguousarray(mel_matrix(cfg))  # [n_freq, n_mels]
        self._mel2 = np.repeat(self._mel, 2, axis=0)  # [2 * n_freq, n_mels]
        self._dct = dct_matrix(cfg) if cfg.feature == "mfcc" else None
        self._eps = np.float32(cfg.log_eps)
        self._nfreq = self._nfft // 2 + 1
        self._fft = None if _POCKETFFT is None else (_POCKETFFT.rfft_n_even if self._nfft % 2 == 0 else _POCKETFFT.rfft_n_odd)
        self._mats = _Mats(self._mel2, self._mel, self._eps, self._dct)
        # one attribute load in step() instead of ten
        mel2_eps = self._mel2.copy()
        mel2_eps[1] = self._eps  # the row of Im(DC), which is 0 for real input (see step)
        fast = self._nfft == self._win and self._fft is not None and cfg.stack == 1  # the one-frame path applies
        # the fft slot is typed Any: it is None only when `fast` is False, and then it is never called
        self._hot: tuple[int, int, int, bool, int, np.ndarray, Any, np.ndarray, np.ndarray | None] = (
            self._ctx, self._hop, self._win, fast, self._nfreq, self._window, self._fft, mel2_eps, self._dct)

    @staticmethod
    def shared(config: AudioConfig) -> "AudioFeaturizer":
        """One featurizer per config for the whole process: it holds no stream state (the carry is the caller's),
        only its matrices (about 300 KB for 80 mel bins), which thousands of open streams then share."""
        return _shared_featurizer(config)

    def initial_state(self) -> np.ndarray:
        """Zero context, nothing pending: float32 ``[win - hop]``."""
        return np.zeros(self._ctx, dtype=np.float32)

    def step(self, chunk: np.ndarray, carry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Consume ``chunk`` ``[S]`` (any ``S >= 0``): returns frames ``[T, dim]`` and the new carry.

        ``T = (len(carry) - context + S) // (stack * hop)``. Raises :class:`ShapeError` for a chunk that is not
        1-D and :class:`NonFiniteSamplesError` for NaN/Inf samples.
        """
        # The hot path of 10 ms streaming: each NumPy call costs ~0.3-3 us and argument conversions add up
        # (dtype objects are compared and passed pre-built), so work is skipped where it can be without
        # changing a result; bench/bench_featurize.py measures it.
        x = chunk if type(chunk) is np.ndarray and chunk.dtype is _F32 else to_float32(chunk)
        if x.ndim != 1:
            as_samples(x)  # raises ShapeError
        ctx, hop, win, fast, nfreq, window, fft, mel2_eps, dct = self._hot
        if type(carry) is not np.ndarray or carry.dtype is not _F32 or carry.ndim != 1 or carry.shape[0] < ctx:
            carry = np.asarray(carry)
            if not (carry.dtype == _F32 and carry.ndim == 1 and carry.shape[0] >= ctx):
                raise StateError(
                    f"audio carry must be float32 [>= {ctx}] (context + pending samples), "
                    f"got {carry.dtype} {list(carry.shape)}"
                )
        total = carry.shape[0] + x.shape[0]
        if total == win and fast:  # exactly one frame, nothing left pending: the 10 ms streaming case
            buffer = np.concatenate((carry, x))
            spec = np.empty((1, nfreq), _C64)
            # 1-D frame broadcast into the [1, n_freq] output (faster than a [1, win] input); the float32
            # scale makes pocketfft run its float32 kernel without a per-call cast of a Python 1.0
            fft(buffer * window, _ONE_F32, spec)
            sq = spec.view(_F32)  # [1, 2 * n_freq]: re, im interleaved
            # Im(DC) of a real FFT is exactly 0; set to 1, with eps in its row of mel2_eps, the product
            # adds log_eps itself and saves a ufunc call.
            sq[0, 1] = 1.0
            np.multiply(sq, sq, sq)
            feats = np.dot(sq, mel2_eps)
            np.log(feats, feats)
            # All of x is in this frame, and NaN/Inf anywhere in a frame makes every feature NaN/Inf (NaN
            # and Inf times any window weight or DFT twiddle, 0 included, stay non-finite): one look at
            # the output replaces a pass over the input.
            if not math.isfinite(feats[0, 0]):
                as_samples(x)  # raises NonFiniteSamplesError (a finite x whose powers overflow passes)
            return (feats if dct is None else np.dot(feats, dct)), buffer[hop:]
        if x.shape[0] and not math.isfinite(x.dot(x)):
            as_samples(x)  # raises with a precise message (a finite x whose squares overflow passes)
        n = (total - ctx) // self._step * self._stack  # analysis frames, in whole model frames
        if n <= 0:
            buffer = np.concatenate((carry, x)) if x.shape[0] else np.ascontiguousarray(carry)
            return np.zeros((0, self.dim), dtype=_F32), buffer
        buffer = np.concatenate((carry, x))
        nfft = self._nfft
        frames = np.ndarray((n, win), _F32, buffer, strides=(hop * 4, 4))
        feats = _features(frames, window, nfft, self._mats)
        if self._stack > 1:
            feats = feats.reshape(n // self._stack, self.dim)
        # The new carry is a view of this call's own buffer (never of the caller's arrays); copied when the
        # buffer is large so a long chunk is not kept alive by its few hundred carried samples.
        rest = buffer[n * hop :]
        return feats, (rest.copy() if buffer.shape[0] > 8192 else rest)

    def step_batch(self, chunks: np.ndarray, carries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step` of ``B`` streams at once, all with chunks of one length and carries of one length.

        ``chunks [B, S]`` and ``carries [B, C]`` float32 (``C >= context``) -> ``(frames [B, T, dim], carries
        [B, C'])`` with ``T = (C - context + S) // (stack * hop)``; row ``b`` equals ``step(chunks[b],
        carries[b])`` (to float32 rounding: one FFT and one mel product over all ``B * T`` frames instead of ``B``
        small ones).
        Raises :class:`NonFiniteSamplesError` when any sample is NaN or Inf (:meth:`step` names the stream).
        """
        x = np.asarray(chunks)
        c = np.asarray(carries)
        if x.dtype != _F32 or c.dtype != _F32 or x.ndim != 2 or c.ndim != 2 or x.shape[0] != c.shape[0] \
                or c.shape[1] < self._ctx:
            raise ShapeError(f"step_batch takes float32 chunks [B, S] and carries [B, >= {self._ctx}], got "
                             f"{x.dtype} {list(x.shape)} and {c.dtype} {list(c.shape)}")
        if not all_finite(x):
            raise NonFiniteSamplesError("step_batch: NaN or Inf among the samples; step each stream to find it")
        b, total = x.shape[0], c.shape[1] + x.shape[1]
        n = (total - self._ctx) // self._step * self._stack  # analysis frames, in whole model frames
        buffer = np.concatenate((c, x), axis=1)  # [B, C + S]
        if n <= 0:
            return np.zeros((b, 0, self.dim), _F32), buffer
        hop, win = self._hop, self._win
        frames = np.ndarray((b, n, win), _F32, buffer, strides=(total * 4, hop * 4, 4))
        windowed = _window(frames, self._window, self._nfft).reshape(b * n, self._nfft)
        feats = _windowed_features(windowed, self._nfft, self._mats).reshape(b, n // self._stack, self.dim)
        return feats, buffer[:, n * hop :].copy()

    def featurize(self, signal: np.ndarray) -> np.ndarray:
        """Offline features of a whole signal ``[N]`` -> ``[N // (stack * hop), dim]``: one streaming step."""
        return self.step(signal, self.initial_state())[0]


@functools.lru_cache(maxsize=64)
def _shared_featurizer(config: AudioConfig) -> AudioFeaturizer:
    return AudioFeaturizer(config)

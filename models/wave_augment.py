"""Speaker-robust waveform augmentation for speech, at data preparation (training examples only).

Extra training copies of each recording (:func:`augment_audio_examples`, one random :func:`perturb_waveform`
each): speed perturbation (torchaudio's :class:`~torchaudio.transforms.Speed`: the recording resampled as if it
had been played ``factor`` times faster, which shifts pitch and formants like another vocal tract and changes the
speaking rate), optionally a pitch shift that keeps the formants (:func:`shift_pitch`, ``WaveAugment.pitch``),
and additive white noise at a random SNR (:class:`~torchaudio.transforms.AddNoise`). The perturbed copies are
featurized with the dataset's own :class:`~rnnstream.pipeline.features.AudioFeaturizer` and added to the
*training* examples only. Every draw comes from a generator seeded by ``(seed, example id)``.

The feature level, per batch while training, is :mod:`rnnstream.models.augment`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rnnstream.pipeline.errors import ConfigError


@dataclass(frozen=True)
class WaveAugment:
    """Waveform perturbations for extra training copies: speed factor range (quantised to 0.01), pitch shift range
    in semitones (quantised to 0.5; formants kept: a phase-vocoder stretch then a resampling; ``(0, 0)``: none), and
    the additive white-noise SNR range in dB, applied to a copy with probability ``noise_prob``.

    ``quiet_s``: the range of seconds of quiet added before and after the recording (each end drawn apart; ``(0, 0)``:
    none), as recordings cut with more or less room before and after the word; the quiet is white noise ``quiet_db``
    dB (a random level in that range) below the recording's RMS, a microphone's floor rather than digital zeros."""

    speed: tuple[float, float] = (0.9, 1.1)
    snr_db: tuple[float, float] = (10.0, 40.0)
    noise_prob: float = 0.5
    pitch: tuple[float, float] = (0.0, 0.0)
    quiet_s: tuple[float, float] = (0.0, 0.0)
    quiet_db: tuple[float, float] = (-60.0, -30.0)

    def __post_init__(self) -> None:
        lo, hi = self.speed
        if not 0.5 <= lo <= hi <= 2.0:
            raise ConfigError(f"speed range must lie within [0.5, 2] and be ordered, got {self.speed}")
        object.__setattr__(self, "pitch", tuple(float(v) for v in self.pitch))  # a list from a command line
        if len(self.pitch) != 2 or not -12.0 <= self.pitch[0] <= self.pitch[1] <= 12.0:
            raise ConfigError(f"pitch range (semitones) must lie within [-12, 12] and be ordered, got {self.pitch}")
        if self.snr_db[0] > self.snr_db[1]:
            raise ConfigError(f"snr_db range must be ordered, got {self.snr_db}")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ConfigError(f"noise_prob must be in [0, 1], got {self.noise_prob}")
        object.__setattr__(self, "quiet_s", tuple(float(v) for v in self.quiet_s))
        if len(self.quiet_s) != 2 or not 0.0 <= self.quiet_s[0] <= self.quiet_s[1] <= 2.0:
            raise ConfigError(f"quiet_s range (seconds) must lie within [0, 2] and be ordered, got {self.quiet_s}")
        if len(self.quiet_db) != 2 or not -120.0 <= self.quiet_db[0] <= self.quiet_db[1] <= 0.0:
            raise ConfigError(f"quiet_db range (dB below the recording) must lie within [-120, 0] and be ordered, "
                              f"got {self.quiet_db}")


_SPEEDS: dict[tuple[int, float], Any] = {}  # torchaudio Speed transforms (their resampling kernels), by factor


def shift_pitch(x: torch.Tensor, steps: float, n_fft: int = 512) -> torch.Tensor:
    """``x [1, N]`` with its pitch moved by ``steps`` semitones and its duration and formants kept: a phase-vocoder
    time stretch by ``2 ** (steps / 12)`` (:func:`torchaudio.functional.phase_vocoder`), then a resampling back to
    ``N`` samples (Fourier method, :func:`scipy.signal.resample`). The method of
    :func:`torchaudio.functional.pitch_shift`, whose resampling between the integer rates ``sample_rate / rate``
    and ``sample_rate`` builds a new kernel per call: up to ~1 s each for half-semitone steps at 8 kHz. ``n_fft``:
    the vocoder's frame (64 ms at 8 kHz), hop a quarter of it."""
    import torchaudio.functional as FA
    from scipy.signal import resample

    rate = 2.0 ** (-steps / 12.0)  # < 1 stretches (longer), then resampling to N samples raises the pitch
    hop, window = n_fft // 4, torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    advance = torch.linspace(0, math.pi * hop, spec.shape[-2])[..., None]
    n = x.shape[-1]
    stretched = torch.istft(FA.phase_vocoder(spec, rate, advance), n_fft=n_fft, hop_length=hop, window=window,
                            length=int(round(n / rate)))
    y = resample(stretched[0].numpy().astype(np.float64), n)
    return torch.as_tensor(y.astype(np.float32)).unsqueeze(0)


def add_quiet(x: torch.Tensor, before: int, after: int, level_db: float, rng: np.random.Generator) -> torch.Tensor:
    """``x [1, N]`` with ``before`` and ``after`` samples of white noise ``level_db`` dB (``<= 0``) below its RMS
    around it: ``[1, before + N + after]``. A silent ``x`` gets zeros."""
    rms = float(x.pow(2).mean().sqrt()) if x.shape[1] else 0.0
    noise = rng.standard_normal(before + after).astype(np.float32) * np.float32(rms * 10.0 ** (level_db / 20.0))
    quiet = torch.as_tensor(noise).unsqueeze(0)
    return torch.cat((quiet[:, :before], x, quiet[:, before:]), dim=1)


def perturb_waveform(samples: np.ndarray, sample_rate: int, rng: np.random.Generator,
                     wave: WaveAugment = WaveAugment()) -> tuple[np.ndarray, dict[str, float]]:
    """One random perturbation of ``samples [N]``: speed (torchaudio ``Speed``), a pitch shift when ``wave.pitch``
    is not ``(0, 0)`` (:func:`shift_pitch`; the length kept), quiet before and after when ``wave.quiet_s`` is not
    ``(0, 0)`` (:func:`add_quiet`), then maybe white noise at a random SNR (torchaudio ``AddNoise``). Returns
    ``(samples' [N'], {"speed": f, "snr_db": s or nan[, "pitch": semitones][, "quiet_before_s": s,
    "quiet_after_s": s]})``."""
    import torchaudio.transforms as TA

    x = torch.as_tensor(np.asarray(samples, dtype=np.float32)).unsqueeze(0)
    factor = round(float(rng.uniform(*wave.speed)), 2)
    if factor != 1.0:
        key = (int(sample_rate), factor)
        if key not in _SPEEDS:
            _SPEEDS[key] = TA.Speed(sample_rate, factor)
        x, _ = _SPEEDS[key](x)
    info = {"speed": factor}
    if wave.pitch != (0.0, 0.0):  # drawn only then, so copies made without a pitch range stay as they were
        steps = round(float(rng.uniform(*wave.pitch)) * 2) / 2
        if steps and x.shape[1] > 0:
            x = shift_pitch(x, steps)
        info["pitch"] = steps
    if wave.quiet_s != (0.0, 0.0):  # drawn only then, so copies made without it stay as they were
        before, after = (round(float(rng.uniform(*wave.quiet_s)) * sample_rate) for _ in range(2))
        x = add_quiet(x, before, after, float(rng.uniform(*wave.quiet_db)), rng)
        info.update(quiet_before_s=before / sample_rate, quiet_after_s=after / sample_rate)
    snr = float("nan")
    if rng.uniform() < wave.noise_prob and x.shape[1] > 0:
        snr = float(rng.uniform(*wave.snr_db))
        noise = torch.as_tensor(rng.standard_normal(x.shape[1]).astype(np.float32)).unsqueeze(0)
        if float(x.pow(2).sum()) > 0:
            x = TA.AddNoise()(x, noise, torch.tensor([snr]))
    return x[0].numpy().astype(np.float32), {**info, "snr_db": snr}


def augment_audio_examples(examples: Sequence[Any], feature_config: Any, copies: int, seed: int, *,
                           wave: WaveAugment = WaveAugment(), load: Any = None) -> list[Any]:
    """``examples`` plus ``copies`` waveform-perturbed copies of each (re-read from ``example.path``,
    perturbed with :func:`perturb_waveform`, featurized with ``feature_config``'s featurizer).

    Use on training examples only. Each file's copies depend only on ``(seed, example.id)``, so a file gets
    the same copies in every split that trains on it. The copies' ids are ``<id>#wav<k>``; their metadata gains ``speed``
    and ``snr_db`` (and ``pitch`` with a pitch range). ``load(path, feature_config) -> samples`` defaults to
    :func:`rnnstream.pipeline.audio_io.load_audio`.
    """
    from rnnstream.pipeline.features import AudioFeaturizer

    if copies < 0:
        raise ConfigError(f"copies must be >= 0, got {copies}")
    if feature_config.kind != "audio":
        raise ConfigError("waveform augmentation needs an audio feature config")
    if load is None:
        from rnnstream.pipeline.audio_io import load_audio as load
    rate = feature_config.audio.sample_rate
    featurizer = AudioFeaturizer(feature_config)
    out = list(examples)
    for e in examples:
        if not copies:
            break
        rng = np.random.default_rng([seed, *e.id.encode()])  # a file's copies do not depend on the other files
        samples = load(e.path, feature_config)
        for k in range(copies):
            y, info = perturb_waveform(samples, rate, rng, wave)
            feats = featurizer.featurize(y)
            if feats.shape[0] == 0:
                continue
            out.append(dataclasses.replace(e, id=f"{e.id}#wav{k}", features=feats.astype(np.float32),
                                           metadata={**e.metadata, **info}))
    return out


__all__ = ["WaveAugment", "augment_audio_examples", "perturb_waveform", "shift_pitch"]

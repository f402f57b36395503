"""Speaker-robust feature augmentation for speech, per batch while training.

:class:`BatchAugment` (used through the ``transform`` hook of :func:`rnnstream.models.fit.fit` via
``TrainConfig.augment``): SpecAugment frequency and time masks (:class:`~torchaudio.transforms.FrequencyMasking` /
:class:`~torchaudio.transforms.TimeMasking`, one mask draw per sequence; masked cells take the training mean of
their band, i.e. zero after the model's normalisation) and a random gain per sequence (a gain of ``g`` dB
multiplies the power spectrum by ``10^(g/10)``, i.e. adds ``g * ln(10) / 10`` to every log-mel band, exactly up to
the featurizer's ``log_eps``), a random equaliser per sequence (:func:`random_eq`: a smooth gain curve over the
bands, like another microphone), a random room per sequence (:func:`reverberate`: an exponentially decaying
reverberant tail added to every band's power, like a recording in another room), feature noise, a random
frequency warp of the band axis (:func:`warp_bands`, VTLP-like) and a random bend of it (:func:`bend_bands`:
regions moved on their own, like accents' vowels), a time warp (:func:`warp_time`), and mixup of labelled
sequences (:func:`mix_sequences`: inputs and one-hot targets mixed). Waveform copies at data preparation (speed,
pitch, noise) are :mod:`rnnstream.models.wave_augment`.

Nothing here is part of a model: the model's ``forward``/``step``, :func:`~rnnstream.models.evaluate.evaluate`
and the ONNX export never see it. Every random draw comes from torch's global RNG, which
:func:`rnnstream.models.train.train` seeds with ``TrainConfig.seed``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnstream.pipeline.errors import ConfigError

_LOG_POWER_PER_DB = math.log(10.0) / 10.0

#: The :class:`BatchAugment` fields that act on log-mel band energies (gain, equaliser, band warp and bend,
#: reverberation).
_BAND_FIELDS = ("gain_db", "eq_db", "warp", "bend", "reverb_s")


@dataclass(frozen=True)
class BatchAugment:
    """Per-batch feature augmentation for log-mel inputs ``[B, T, bands]`` (training only).

    Attributes:
        freq_masks, freq_width: number of frequency masks per sequence, each up to ``freq_width`` bands wide.
        time_masks, time_width: number of time masks per sequence, each up to ``time_width`` frames long.
        gain_db: random gain per sequence, uniform in ``[-gain_db, gain_db]`` dB (log-mel features only;
            0: off).
        eq_db: a random equaliser per sequence (a microphone's or room's frequency response; log-mel features
            only): :func:`random_eq`'s smooth gain curve over the bands, uniform in ``[-eq_db, eq_db]`` dB at
            :data:`EQ_KNOTS` evenly spaced bands and linear in between (0: off).
        noise: additive Gaussian noise per cell with this standard deviation in units of each band's training
            std (``scale`` passed to the call; 0: off). For any features, e.g. cepstra or sensor channels.
        warp: random frequency warp per sequence (a vocal-tract-length perturbation on the band axis): output
            band ``f`` reads the input at band ``f / alpha``, linearly interpolated and clamped to the edge band,
            with ``alpha`` uniform in ``[1 - warp, 1 + warp]`` (0: off; below 1). On mel bands it scales formant
            positions in mel rather than Hz, an approximation of VTLP.
        bend: a random bend of the band axis per sequence (:func:`bend_bands`; log-mel features only): output band
            ``f`` reads the input at ``f + d(f)``, ``d`` linear between :data:`BEND_KNOTS` evenly spaced bands,
            zero at the first and last, uniform in ``[-bend, bend]`` bands at the others. Unlike ``warp``'s one
            scale, each region of the spectrum moves on its own, as one vowel's formants differ between accents
            (0: off).
        time_warp: SpecAugment's time warp within each sequence's length (:func:`warp_time`): a point in the
            middle half moves by up to ``time_warp`` times the length, the frames on either side stretched or
            squeezed to fit; first and last frames stay (0: off; below 0.5). Classifiers only (per-frame targets
            would no longer line up).
        reverb_s: a random room per sequence (log-mel features only; :func:`reverberate`): a reverberation time
            (RT60) uniform in ``[REVERB_MIN_S, reverb_s]`` seconds and a direct-to-reverberant ratio uniform in
            :data:`REVERB_DRR_DB` (0: off).
        mixup: mixup of labelled sequences (:func:`mix_sequences`): each training sequence is mixed with another of
            its batch, time-stretched to its length, by a weight ``lam ~ Beta(mixup, mixup)`` per sequence, and its
            target becomes the same mix of the two one-hot labels (0: off). Classifiers only.
    """

    freq_masks: int = 0
    freq_width: int = 0
    time_masks: int = 0
    time_width: int = 0
    gain_db: float = 0.0
    eq_db: float = 0.0
    noise: float = 0.0
    warp: float = 0.0
    bend: float = 0.0
    time_warp: float = 0.0
    reverb_s: float = 0.0
    mixup: float = 0.0

    def __post_init__(self) -> None:
        for name in ("freq_masks", "freq_width", "time_masks", "time_width"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"augment {name} must be >= 0, got {getattr(self, name)}")
        if not (self.gain_db >= 0 and math.isfinite(self.gain_db)):
            raise ConfigError(f"augment gain_db must be >= 0, got {self.gain_db}")
        if not (self.eq_db >= 0 and math.isfinite(self.eq_db)):
            raise ConfigError(f"augment eq (dB) must be >= 0, got {self.eq_db}")
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ConfigError(f"augment noise must be >= 0, got {self.noise}")
        if not 0 <= self.warp < 1:
            raise ConfigError(f"augment warp must be in [0, 1), got {self.warp}")
        if not (self.bend >= 0 and math.isfinite(self.bend)):
            raise ConfigError(f"augment bend (bands) must be >= 0, got {self.bend}")
        if not 0 <= self.time_warp < 0.5:
            raise ConfigError(f"augment twarp must be in [0, 0.5), got {self.time_warp}")
        if not (self.reverb_s == 0 or REVERB_MIN_S <= self.reverb_s <= 10):
            raise ConfigError(f"augment reverb (the longest RT60, s) must be 0 or in [{REVERB_MIN_S}, 10], "
                              f"got {self.reverb_s}")
        if not (self.mixup >= 0 and math.isfinite(self.mixup)):
            raise ConfigError(f"augment mixup (the Beta distribution's parameter) must be >= 0, got {self.mixup}")

    @property
    def active(self) -> bool:
        return self.changes_features or bool(self.mixup)

    @property
    def changes_features(self) -> bool:
        """Whether :meth:`__call__` changes the features (every option but ``mixup``, which the transform applies)."""
        return bool((self.freq_masks and self.freq_width) or (self.time_masks and self.time_width) or self.gain_db
                    or self.eq_db or self.noise or self.warp or self.bend or self.time_warp or self.reverb_s)

    @property
    def band_options(self) -> str:
        """The options set that act on log-mel band energies (gain, equaliser, band warp and bend, reverberation) in
        :meth:`parse` form, ``""`` when none is: on other features (MFCC) they would not be what they claim."""
        return BatchAugment(**{f: getattr(self, f) for f in _BAND_FIELDS}).spec().replace("none", "")

    def without_band_options(self) -> BatchAugment:
        """This augmentation without its gain, equaliser, band warp and bend, and reverberation (what fits features
        other than log-mel)."""
        return dataclasses.replace(self, **{f: 0.0 for f in _BAND_FIELDS})  # type: ignore[arg-type]  # float fields

    @classmethod
    def parse(cls, text: str) -> "BatchAugment":
        """From ``"none"``, ``"speech"`` (:data:`SPEECH_AUGMENT`) or a list such as
        ``"freq=2x4,time=2x10,gain=6,eq=6,noise=0.1,warp=0.1,bend=2,twarp=0.1,reverb=0.5,mixup=0.2"``."""
        text = text.strip()
        if text in ("", "none"):
            return cls()
        if text == "speech":
            return SPEECH_AUGMENT
        kw: dict[str, Any] = {}
        for part in text.split(","):
            m = re.fullmatch(r"\s*(freq|time)\s*=\s*(\d+)\s*x\s*(\d+)\s*"
                             r"|\s*(gain|eq|noise|warp|bend|twarp|reverb|mixup)\s*=\s*([0-9.]+)\s*", part)
            if not m:
                raise ConfigError(f"--augment expects none, speech or freq=NxW,time=NxW,gain=DB,eq=DB,noise=STD,"
                                  f"warp=A,bend=B,twarp=A,reverb=S,mixup=A; got {text!r}")
            if m.group(1):
                kw[f"{m.group(1)}_masks"], kw[f"{m.group(1)}_width"] = int(m.group(2)), int(m.group(3))
            else:
                kw[_SCALAR_FIELDS[m.group(4)]] = float(m.group(5))
        return cls(**kw)

    def spec(self) -> str:
        """The :meth:`parse` form of this augmentation."""
        if not self.active:
            return "none"
        parts = []
        if self.freq_masks and self.freq_width:
            parts.append(f"freq={self.freq_masks}x{self.freq_width}")
        if self.time_masks and self.time_width:
            parts.append(f"time={self.time_masks}x{self.time_width}")
        if self.gain_db:
            parts.append(f"gain={self.gain_db:g}")
        if self.eq_db:
            parts.append(f"eq={self.eq_db:g}")
        if self.noise:
            parts.append(f"noise={self.noise:g}")
        if self.warp:
            parts.append(f"warp={self.warp:g}")
        if self.bend:
            parts.append(f"bend={self.bend:g}")
        if self.time_warp:
            parts.append(f"twarp={self.time_warp:g}")
        if self.reverb_s:
            parts.append(f"reverb={self.reverb_s:g}")
        if self.mixup:
            parts.append(f"mixup={self.mixup:g}")
        return ",".join(parts)

    def __call__(self, x: Tensor, fill: Tensor | None = None, scale: Tensor | None = None,
                 lengths: Tensor | None = None, frame_s: float = 0.01) -> Tensor:
        """``x [B, T, F]`` -> augmented ``[B, T, F]`` (a new tensor; ``fill [F]`` is the masked value per band,
        ``scale [F]`` the noise's unit per band, default 1; ``lengths [B]`` the sequences' valid frames, default
        ``T``, which the time warp keeps; ``frame_s`` the seconds between frames, for the reverberation)."""
        import torchaudio.transforms as TA

        if x.dim() != 3:
            raise ConfigError(f"BatchAugment expects [batch, time, bands], got shape {list(x.shape)}")
        if not self.changes_features or x.shape[0] == 0 or x.shape[1] == 0:
            return x
        if self.reverb_s:
            x = reverberate(x, frame_s, rt60_s=REVERB_MIN_S + torch.rand(x.shape[0]) * (self.reverb_s - REVERB_MIN_S),
                            drr_db=REVERB_DRR_DB[0] + torch.rand(x.shape[0]) * (REVERB_DRR_DB[1] - REVERB_DRR_DB[0]))
        if self.warp:
            x = warp_bands(x, self.warp)
        if self.bend:
            x = bend_bands(x, self.bend)
        if self.time_warp:
            x = warp_time(x, lengths, self.time_warp)
        base = fill if fill is not None else torch.zeros(x.shape[2], dtype=x.dtype, device=x.device)
        keep = torch.ones((x.shape[0], 1, x.shape[2], x.shape[1]), dtype=x.dtype, device=x.device)  # (.., freq, time)
        for _ in range(self.freq_masks if self.freq_width else 0):
            keep = TA.FrequencyMasking(min(self.freq_width, x.shape[2]), iid_masks=True)(keep)
        for _ in range(self.time_masks if self.time_width else 0):
            keep = TA.TimeMasking(min(self.time_width, x.shape[1]), iid_masks=True)(keep)
        y = torch.where(keep.squeeze(1).transpose(1, 2) > 0, x, base.expand_as(x))
        if self.gain_db:
            g = (torch.rand(x.shape[0], 1, 1, device=x.device, dtype=x.dtype) * 2 - 1) * self.gain_db
            y = y + g * _LOG_POWER_PER_DB
        if self.eq_db:
            y = y + random_eq(x.shape[0], x.shape[2], self.eq_db, dtype=x.dtype, device=x.device)[:, None, :]
        if self.noise:
            unit = scale if scale is not None else torch.ones(x.shape[2], dtype=x.dtype, device=x.device)
            y = y + torch.randn_like(y) * (self.noise * unit)
        return y.contiguous()


#: Bands of :func:`random_eq`'s curve that get a random gain of their own (the first, the last and three between).
EQ_KNOTS = 5


def random_eq(batch: int, bands: int, eq_db: float, knots: int = EQ_KNOTS, gains_db: Tensor | None = None,
              dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """A random equaliser per sequence as log-power offsets ``[batch, bands]``, to add to log-mel features.

    ``gains_db [batch, knots]`` (default uniform in ``[-eq_db, eq_db]``) are the gains at ``knots`` bands evenly
    spaced from the first to the last; the bands between are linearly interpolated, so the curve is smooth across
    neighbouring bands like a microphone's response, unlike a per-band noise. A gain of ``g`` dB multiplies a band's
    power by ``10 ** (g / 10)``, i.e. adds ``g * ln(10) / 10`` to its log.
    """
    if knots < 2:
        raise ConfigError(f"random_eq needs at least 2 knots, got {knots}")
    if gains_db is None:
        gains_db = (torch.rand(batch, knots, dtype=dtype, device=device) * 2 - 1) * eq_db
    pos = torch.linspace(0, knots - 1, bands, dtype=dtype, device=device).expand(batch, bands)
    curve = _read_at(gains_db.to(dtype)[:, None, :], pos, dim=2)[:, 0, :]  # [batch, bands]
    return curve * _LOG_POWER_PER_DB


#: The shortest reverberation time :class:`BatchAugment` draws (s) and its range of direct-to-reverberant ratios
#: (dB): from a damped small room heard close to the microphone to a live room heard from across it.
REVERB_MIN_S = 0.1
REVERB_DRR_DB = (0.0, 12.0)


def reverberate(x: Tensor, frame_s: float, rt60_s: Tensor, drr_db: Tensor) -> Tensor:
    """A random room for log-mel features ``x [B, T, F]`` (``log(power)``), one per sequence: every band's power
    ``p[t]`` becomes ``p[t] + g * sum_{k >= 1} r^k p[t - k]``, the direct sound plus an exponentially decaying
    reverberant tail (the late-reverberation model of a room, applied to band energies frame by frame: causal,
    so a frame never hears what follows it).

    ``frame_s``: seconds between frames; ``rt60_s [B]``: the time in which the tail falls by 60 dB (``r =
    10^(-6 * frame_s / rt60_s)``); ``drr_db [B]``: the direct-to-reverberant energy ratio (``g * r / (1 - r) =
    10^(-drr_db / 10)``). The tail is cut where the longest room has decayed by 60 dB. A log floor in ``x`` (e.g.
    the featurizer's ``log_eps``) is reverberated as if it were sound, so silence rises by at most
    ``10 * log10(1 + 10^(-drr_db / 10))`` dB.
    """
    batch, frames, bands = x.shape
    rt60 = rt60_s.to(torch.float64).clamp(min=frame_s)
    r = torch.pow(10.0, -6.0 * frame_s / rt60)  # [B] power decay per frame
    g = torch.pow(10.0, -drr_db.to(torch.float64) / 10.0) * (1 - r) / r
    taps = int(min(frames, math.ceil(float(rt60.max()) / frame_s) + 1))
    k = torch.arange(taps, dtype=torch.float64)
    h = g[:, None] * r[:, None] ** k[None, :]
    h[:, 0] = 1.0  # [B, taps]: the direct sound, then the tail
    weight = h.flip(1).to(x.dtype).repeat_interleave(bands, dim=0)[:, None, :]  # [B * F, 1, taps]
    p = torch.nn.functional.pad(torch.exp(x).transpose(1, 2).reshape(1, batch * bands, frames), (taps - 1, 0))
    y = torch.nn.functional.conv1d(p, weight.to(x.device), groups=batch * bands)  # causal: taps - 1 frames back
    return torch.log(y.reshape(batch, bands, frames).transpose(1, 2))


def warp_bands(x: Tensor, warp: float, alpha: Tensor | None = None) -> Tensor:
    """Frequency warp of ``x [B, T, F]`` along its band axis: output band ``f`` is the input at ``f / alpha``
    (linear interpolation, clamped to the last band); ``alpha [B]`` defaults to uniform in ``[1 - warp, 1 + warp]``
    per sequence. ``alpha > 1`` moves spectral content to higher bands."""
    bands = x.shape[2]
    if alpha is None:
        alpha = 1.0 + (torch.rand(x.shape[0], device=x.device, dtype=x.dtype) * 2 - 1) * warp
    pos = (torch.arange(bands, device=x.device, dtype=x.dtype)[None, :] / alpha[:, None]).clamp(0, bands - 1)
    return _read_at(x, pos, dim=2)


#: Bands of :func:`bend_bands`' displacement curve that are set (the first and last stay, three between move).
BEND_KNOTS = 5


def check_bend(bend: float, bands: int, knots: int = BEND_KNOTS) -> None:
    """Refuse a bend that would not keep ``bands`` bands in order: ``2 * bend`` at or above the knots' spacing."""
    spacing = (bands - 1) / (knots - 1)
    if knots < 3 or not 2 * bend < spacing:
        raise ConfigError(f"augment bend={bend:g} bands: twice it must be below the spacing of its {knots} knots "
                          f"over {bands} bands ({spacing:g}), so the bands keep their order; use a bend below "
                          f"{spacing / 2:g}")


def bend_bands(x: Tensor, bend: float, shifts: Tensor | None = None, knots: int = BEND_KNOTS) -> Tensor:
    """A random bend of ``x [B, T, F]``'s band axis: output band ``f`` reads the input at ``f + d(f)`` (linear
    interpolation), ``d [B, F]`` linear between ``knots`` evenly spaced bands, zero at the first and the last and
    ``shifts [B, knots - 2]`` bands at the others (default uniform in ``[-bend, bend]`` per sequence).

    The bend keeps the band order (it is monotone): ``2 * bend`` must be below the knots' spacing
    ``(F - 1) / (knots - 1)`` bands, else :class:`ConfigError` names both."""
    batch, _, bands = x.shape
    check_bend(bend, bands, knots)
    if shifts is None:
        shifts = (torch.rand(batch, knots - 2, dtype=x.dtype, device=x.device) * 2 - 1) * bend
    edge = torch.zeros(batch, 1, dtype=x.dtype, device=x.device)
    at_knots = torch.cat((edge, shifts.to(x.dtype), edge), dim=1)[:, None, :]  # [B, 1, knots]
    grid = torch.linspace(0, knots - 1, bands, dtype=x.dtype, device=x.device).expand(batch, bands)
    pos = torch.arange(bands, dtype=x.dtype, device=x.device) + _read_at(at_knots, grid, dim=2)[:, 0, :]
    return _read_at(x, pos.clamp(0, bands - 1), dim=2)


def _read_at(x: Tensor, pos: Tensor, dim: int) -> Tensor:
    """``x [B, T, F]`` read at fractional positions ``pos [B, L]`` (within ``[0, size - 1]``) along ``dim`` (1: time,
    2: bands), linearly interpolated between neighbours; the other axis is kept."""
    other = 3 - dim
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=x.shape[dim] - 1)
    frac = (pos - lo.to(x.dtype)).unsqueeze(other)
    size = list(x.shape)
    size[dim] = pos.shape[1]
    x_lo = x.gather(dim, lo.unsqueeze(other).expand(size))
    x_hi = x.gather(dim, hi.unsqueeze(other).expand(size))
    return x_lo + (x_hi - x_lo) * frac


def warp_time(x: Tensor, lengths: Tensor | None, amount: float, centre: Tensor | None = None,
              shift: Tensor | None = None) -> Tensor:
    """SpecAugment's time warp of ``x [B, T, F]`` within each sequence's ``lengths [B]`` (default ``T``).

    For a sequence of ``n >= 3`` frames, the point ``centre`` (default uniform in the middle half of ``[0, n - 1]``)
    moves to ``centre + shift`` (default ``shift`` uniform in ``+-amount * (n - 1)``, the target kept inside
    ``[1, n - 2]``): output frame ``t`` reads the input at ``t * centre / target`` before the target and linearly from
    ``centre`` to ``n - 1`` after it (linear interpolation between frames). Frames ``0`` and ``n - 1``, shorter
    sequences and the padding stay as they are.
    """
    batch, frames = x.shape[0], x.shape[1]
    t = torch.arange(frames, device=x.device, dtype=x.dtype)[None, :]  # [1, T]
    n = (torch.full((batch,), frames, device=x.device) if lengths is None else lengths.to(x.device)).to(x.dtype)
    last = (n - 1)[:, None]
    if centre is None:
        centre = (0.25 + 0.5 * torch.rand(batch, device=x.device, dtype=x.dtype)) * (n - 1)
    if shift is None:
        shift = (torch.rand(batch, device=x.device, dtype=x.dtype) * 2 - 1) * amount * (n - 1)
    valid = (n >= 3)[:, None]
    c = centre.to(x.dtype)[:, None].clamp(min=1.0)
    target = torch.minimum((c + shift.to(x.dtype)[:, None]).clamp(min=1.0), (last - 1).clamp(min=1.0))
    before = t * c / target
    after = c + (t - target) * (last - c) / (last - target).clamp(min=1e-6)
    src = torch.where(t <= target, before, after)
    src = torch.where(valid & (t < n[:, None]), src, t).clamp(0, frames - 1)
    return _read_at(x, src, dim=1)


#: ``--augment`` scalar keys and the :class:`BatchAugment` fields they set.
_SCALAR_FIELDS = {"gain": "gain_db", "eq": "eq_db", "noise": "noise", "warp": "warp", "bend": "bend",
                  "twarp": "time_warp", "reverb": "reverb_s", "mixup": "mixup"}

#: The speech recipe's per-batch augmentation (chosen on held-out-speaker validation; see docs/results.md):
#: SpecAugment masks, random gain, since issue 15 follow-up 3 a band-axis warp by 1 +- 0.1 and since follow-up 13 a
#: random equaliser of up to 6 dB. ``--augment freq=2x4,time=2x8,gain=6,warp=0.1`` is the set before the equaliser,
#: ``freq=2x4,time=2x8,gain=6`` the one before the warp.
SPEECH_AUGMENT = BatchAugment(freq_masks=2, freq_width=4, time_masks=2, time_width=8, gain_db=6.0, eq_db=6.0,
                              warp=0.1)


def batch_transform(model: Any, augment: BatchAugment, stack: int = 1, frame_s: float = 0.01) -> Any:
    """The ``transform`` hook for :func:`rnnstream.models.fit.fit`: augments ``batch.x`` of training batches.

    Masks fill with the model's ``feat_mean`` (the training mean per band). Padding frames may be masked or
    shifted too; the loss never reads them. ``stack``: the feature config's frames per model frame; stacked
    features ``[B, T, k * bands]`` are augmented as the ``[B, k * T, bands]`` frames they are made of (so masks
    and warps act on bands and frames, not across the stacked copies), then stacked again. ``frame_s``: seconds
    between those frames (the featurizer's hop), for the reverberation.
    """

    if augment.time_warp and not model.config.kind.per_sequence:
        raise ConfigError(f"--augment twarp applies to classifiers only; a {model.config.task!r} model's per-frame "
                          "targets would no longer line up with its warped inputs")
    if augment.mixup and not model.config.kind.per_sequence:
        raise ConfigError(f"--augment mixup applies to classifiers only (one label per sequence), not to a "
                          f"{model.config.task!r} model")
    mix = torch.distributions.Beta(augment.mixup, augment.mixup) if augment.mixup else None

    def augment_frames(x: Tensor, lengths: Tensor) -> Tensor:
        """``x [B, T, k * bands]`` augmented as its ``[B, k * T, bands]`` frames (k = 1: as it is)."""
        b, t, d = x.shape
        mean, std = model.feat_mean.to(x.device).reshape(stack, -1), model.feat_std.to(x.device).reshape(stack, -1)
        y = augment(x.reshape(b, t * stack, d // stack), mean.mean(0), std.mean(0), lengths=lengths * stack,
                    frame_s=frame_s)
        return y.reshape(b, t, d)

    def transform(batch: Any) -> Any:
        with torch.no_grad():
            x = augment_frames(batch.x, batch.lengths)
            if mix is None or x.shape[0] < 2:
                return dataclasses.replace(batch, x=x)
            lam = mix.sample((x.shape[0],)).to(device=x.device, dtype=x.dtype)
            partner = torch.randperm(x.shape[0], device=x.device)
            x, y = mix_sequences(x, batch.lengths, batch.y, model.config.output_dim, lam, partner)
        return dataclasses.replace(batch, x=x, y=y)

    return transform


def mix_sequences(x: Tensor, lengths: Tensor, y: Tensor, num_classes: int, lam: Tensor,
                  partner: Tensor) -> tuple[Tensor, Tensor]:
    """Mixup of labelled sequences of different lengths: ``x [B, T, F]`` (right-padded to ``lengths [B]``) and
    class ids ``y [B]`` -> ``(x' [B, T, F], y' [B, num_classes])``.

    Sequence ``i`` is mixed with sequence ``partner[i]`` time-stretched to its own length (linear interpolation;
    both start at frame 0 and end at their last valid frame): ``x'_i = lam_i x_i + (1 - lam_i) stretch(x_p)``, and
    its target is ``lam_i onehot(y_i) + (1 - lam_i) onehot(y_p)`` (class probabilities, for a cross-entropy with soft
    targets). Lengths, and so the frames that carry the loss, stay as they are; padding frames are left as mixed
    as they come (never read).
    """
    n = lengths.to(x.device, x.dtype)
    t = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)[None, :]  # [1, T]
    scale = ((n[partner] - 1) / (n - 1).clamp(min=1.0))[:, None]  # partner frames per own frame
    pos = torch.where(t < n[:, None], t * scale, t).clamp(0, x.shape[1] - 1)
    stretched = _read_at(x[partner], pos, dim=1)
    w = lam.to(x.dtype)[:, None]
    onehot = torch.nn.functional.one_hot(y.long(), num_classes).to(x.dtype)
    return w[:, :, None] * x + (1 - w[:, :, None]) * stretched, w * onehot + (1 - w) * onehot[partner]


__all__ = ["BEND_KNOTS", "EQ_KNOTS", "SPEECH_AUGMENT", "BatchAugment", "batch_transform", "bend_bands", "check_bend",
           "mix_sequences", "random_eq", "reverberate", "warp_bands", "warp_time"]

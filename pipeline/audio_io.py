"""Reading audio files into the featurizer's input: float32 mono samples at the configured rate.

::

    samples = load_audio("clip.flac", cfg)          # float32 [N] at cfg.sample_rate
    samples = decode_audio(blob, cfg, name=path)    # the same from bytes (Beam reads bytes)

Containers: WAV (PCM 16/24/32-bit, float), FLAC and OGG (Vorbis/Opus), read with ``soundfile``.
Multi-channel audio is averaged to mono, or ``cfg.channel`` is picked. A rate other than
``cfg.sample_rate`` is resampled with :func:`rnnstream.pipeline.resample.resample` (``scipy.signal.resample_poly``;
a stream at that rate gives the same samples through :class:`~rnnstream.pipeline.resample.StreamResampler`) when
``cfg.resample`` is true, refused otherwise.

Every failure is a typed error from :mod:`rnnstream.pipeline.errors` whose message names the file:
:class:`EmptyAudioError` (0 bytes or 0 frames), :class:`CorruptAudioError` (truncated, corrupt, not
audio), :class:`UnsupportedFormatError` (unknown extension or container),
:class:`NonFiniteSamplesError` (NaN/Inf in a float file), :class:`ChannelError` (no such channel),
:class:`SampleRateError` (rate differs and resampling is off).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from rnnstream.pipeline.config import AudioConfig, FeatureConfig
from rnnstream.pipeline.errors import (
    ChannelError,
    ConfigError,
    CorruptAudioError,
    EmptyAudioError,
    NonFiniteSamplesError,
    SampleRateError,
    ShapeError,
    UnsupportedFormatError,
)
from rnnstream.pipeline.resample import resample

#: File extensions read, and the soundfile container each means.
EXTENSIONS: dict[str, str] = {".wav": "WAV", ".wave": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG"}
#: Containers accepted whatever the extension says (a FLAC file named ``.wav`` is still read).
CONTAINERS: frozenset[str] = frozenset({"WAV", "WAVEX", "FLAC", "OGG"})


def _audio_config(cfg: AudioConfig | FeatureConfig) -> AudioConfig:
    audio = cfg.audio if isinstance(cfg, FeatureConfig) else cfg
    if not isinstance(audio, AudioConfig):
        raise ConfigError("reading audio needs a feature config of kind 'audio'")
    return audio


def check_extension(name: str) -> None:
    """Raise :class:`UnsupportedFormatError` when ``name`` has an extension other than those in ``EXTENSIONS``.

    A name without an extension passes: the container is then detected from the bytes.
    """
    ext = os.path.splitext(name)[1].lower()
    if ext and ext not in EXTENSIONS:
        raise UnsupportedFormatError(
            f"{name}: unsupported audio format {ext!r}; expected one of {', '.join(sorted(EXTENSIONS))}"
        )


def _check_wav_complete(data: bytes, name: str) -> None:
    """Refuse a RIFF/WAVE file whose ``data`` chunk is shorter than its header says.

    libsndfile silently reads the samples a truncated WAV still holds; a cut-off file is corrupt
    input, so the RIFF chunks are walked here. Sizes 0 and 0xFFFFFFFF mean "unknown length"
    (streaming writers) and are accepted.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk_id == b"data":
            available = len(data) - (pos + 8)
            if size not in (0, 0xFFFFFFFF) and available < size:
                raise CorruptAudioError(
                    f"{name}: truncated WAV: its header declares {size} bytes of samples but the file "
                    f"holds {available}; expected a complete file"
                )
            return
        pos += 8 + size + (size & 1)


def _decode(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Bytes -> (float32 ``[frames, channels]``, rate), with the container and completeness checked."""
    if len(data) == 0:
        raise EmptyAudioError(f"{name}: the file is empty (0 bytes); expected WAV, FLAC or OGG audio")
    _check_wav_complete(data, name)
    try:
        with sf.SoundFile(io.BytesIO(data)) as fh:
            container, frames, rate = fh.format, fh.frames, fh.samplerate
            if container not in CONTAINERS:
                raise UnsupportedFormatError(
                    f"{name}: unsupported audio container {container} ({fh.format_info}); "
                    f"expected one of {', '.join(sorted(CONTAINERS))}"
                )
            samples = fh.read(dtype="float32", always_2d=True)
    except sf.SoundFileError as exc:  # LibsndfileError: not audio, malformed header, lost sync, ...
        reason = getattr(exc, "error_string", None) or str(exc)
        raise CorruptAudioError(
            f"{name}: not readable as audio ({reason}); expected a valid WAV, FLAC or OGG file"
        ) from None
    if samples.shape[0] == 0:
        raise EmptyAudioError(f"{name}: the file holds 0 audio frames; expected at least one")
    if 0 < frames < 2**62 and samples.shape[0] < frames:
        raise CorruptAudioError(
            f"{name}: truncated audio: the header declares {frames} frames but only {samples.shape[0]} could be read"
        )
    return samples, rate


def to_mono(samples: np.ndarray, channel: int | None, *, name: str = "audio") -> np.ndarray:
    """``[frames, channels] -> [frames]`` float32: the mean over channels, or channel ``channel``.

    Raises:
        ChannelError: ``channel`` is not below the channel count.
    """
    if samples.ndim != 2:
        raise ShapeError(f"{name}: expected samples of shape [frames, channels], got {list(samples.shape)}")
    n_channels = samples.shape[1]
    if channel is not None:
        if not 0 <= channel < n_channels:
            raise ChannelError(
                f"{name}: channel {channel} does not exist; the file has {n_channels} channel(s) "
                f"(valid: 0..{n_channels - 1}, or None to downmix)"
            )
        return np.ascontiguousarray(samples[:, channel], dtype=np.float32)
    if n_channels == 1:
        return np.ascontiguousarray(samples[:, 0], dtype=np.float32)
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def decode_native(data: bytes, *, name: str = "<bytes>", channel: int | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio file's bytes into float32 mono samples ``[N]`` at the file's own rate: ``(samples, rate)``.

    Multi-channel audio is averaged, or ``channel`` picked. Raises as :func:`decode_audio` (no rate errors).
    """
    check_extension(name)
    samples, rate = _decode(bytes(data), name)
    if not np.isfinite(samples).all():
        bad = ~np.isfinite(samples)
        first = int(np.argmax(bad.any(axis=1)))
        raise NonFiniteSamplesError(
            f"{name}: {int(bad.sum())} samples are NaN or Inf (first at frame {first}); expected finite samples"
        )
    return to_mono(samples, channel, name=name), int(rate)


def read_native(path: str | os.PathLike[str], *, channel: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file into float32 mono samples at its own rate: ``(samples [N], rate)``."""
    name = os.fspath(path)
    check_extension(name)
    return decode_native(Path(name).read_bytes(), name=name, channel=channel)


def decode_audio(data: bytes, cfg: AudioConfig | FeatureConfig, name: str = "<bytes>") -> np.ndarray:
    """Decode an audio file's bytes into float32 mono samples ``[N]`` at ``cfg.sample_rate``.

    ``name`` (the file's path or URL) is used for its extension and in error messages.

    Raises:
        EmptyAudioError, CorruptAudioError, UnsupportedFormatError, NonFiniteSamplesError,
        ChannelError, SampleRateError: see the module docstring; each message names ``name``.
    """
    audio_cfg = _audio_config(cfg)
    mono, rate = decode_native(data, name=name, channel=audio_cfg.channel)
    if rate != audio_cfg.sample_rate:
        if not audio_cfg.resample:
            raise SampleRateError(
                f"{name}: sample rate {rate} Hz differs from the expected {audio_cfg.sample_rate} Hz "
                f"and resampling is off (audio.resample=false)"
            )
        mono = resample(mono, rate, audio_cfg.sample_rate)
    return mono


def load_audio(path: str | os.PathLike[str], cfg: AudioConfig | FeatureConfig) -> np.ndarray:
    """Read an audio file into float32 mono samples ``[N]`` at ``cfg.sample_rate`` (see :func:`decode_audio`).

    Raises:
        FileNotFoundError: no such file. Otherwise as :func:`decode_audio`.
    """
    name = os.fspath(path)
    check_extension(name)  # before reading: a .mp4 of gigabytes is refused at once
    return decode_audio(Path(name).read_bytes(), cfg, name=name)


def write_audio(path: str | os.PathLike[str], samples: np.ndarray, rate: int, subtype: str | None = None) -> None:
    """Write ``samples`` (``[N]`` mono or ``[N, channels]``, floats in [-1, 1]) to ``path``.

    The container follows the extension (WAV, FLAC, OGG); ``subtype`` is a soundfile subtype such as
    ``"PCM_16"``, ``"PCM_24"``, ``"FLOAT"`` or ``"VORBIS"`` (default: the container's default).
    """
    name = os.fspath(path)
    check_extension(name)
    sf.write(name, np.asarray(samples), int(rate), subtype=subtype)

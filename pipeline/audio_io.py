"""Reading audio files into the featurizer's input: float32 mono samples at the configured rate.

::

    samples = load_audio("clip.flac", cfg)          # float32 [N] at cfg.sample_rate
    samples = decode_audio(blob, cfg, name=path)    # the same from bytes (Beam reads bytes)

Containers: WAV (PCM 16/24/32-bit, float), FLAC and OGG (Vorbis/Opus), read with ``soundfile``.
Multi-channel audio is averaged to mono, or ``cfg.channel`` is picked. A rate other than
``cfg.sample_rate`` is resampled with :func:`rnnstream.pipeline.resample.resample` (``scipy.signal.resample_poly``;
a stream at that rate gives the same samples through :class:`~rnnstream.pipeline.resample.StreamResampler`) when
``cfg.resample`` is true, refused otherwise.

Decoding is bounded by :class:`AudioLimits` (``limits=``; default :data:`DEFAULT_LIMITS`): the header's
frame count and rate are checked *before* the samples are decoded, and the read itself is capped, so a
small file that declares a 1 Hz rate (which resampling would blow up into hundreds of MB) or a
multi-hour recording is refused at once with memory bounded:

* ``max_seconds`` (default 3600): frames / rate;
* ``max_bytes`` (default 512 MiB): the file's bytes, its decoded float32 samples (frames x channels x 4)
  and the resampled copy (frames at the target rate x 4);
* ``min_rate`` (default 1000 Hz): a lower source rate is refused, unless it is the target rate itself.

Every failure is a typed error from :mod:`rnnstream.pipeline.errors` whose message names the file:
:class:`EmptyAudioError` (0 bytes or 0 frames), :class:`CorruptAudioError` (truncated, corrupt, not
audio), :class:`UnsupportedFormatError` (unknown extension or container),
:class:`NonFiniteSamplesError` (NaN/Inf in a float file), :class:`ChannelError` (no such channel),
:class:`SampleRateError` (rate differs and resampling is off), :class:`AudioTooLongError`,
:class:`AudioTooLargeError`, :class:`SampleRateTooLowError` (an :class:`AudioLimits` bound). Reading a
path (:func:`load_audio`, :func:`read_native`) refuses a FIFO, socket, device or directory
(:class:`SpecialFileError`) and a dangling link or link loop (:class:`BrokenLinkError`) before opening it
(:func:`check_regular_file`).
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from rnnstream.pipeline.config import AudioConfig, FeatureConfig
from rnnstream.pipeline.errors import (
    AudioTooLargeError,
    AudioTooLongError,
    BrokenLinkError,
    ChannelError,
    ConfigError,
    CorruptAudioError,
    EmptyAudioError,
    NonFiniteSamplesError,
    SampleRateError,
    SampleRateTooLowError,
    ShapeError,
    SpecialFileError,
    UnsupportedFormatError,
)
from rnnstream.pipeline.resample import resample

#: File extensions read, and the soundfile container each means.
EXTENSIONS: dict[str, str] = {".wav": "WAV", ".wave": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG"}
#: Containers accepted whatever the extension says (a FLAC file named ``.wav`` is still read).
CONTAINERS: frozenset[str] = frozenset({"WAV", "WAVEX", "FLAC", "OGG"})


MIB = 2**20


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on decoding one file; ``None`` switches a bound off (``min_rate=1`` switches that one off).

    ``max_seconds``: the longest file (header frames / rate). ``max_bytes``: the most bytes the file, its
    decoded float32 samples (frames x channels x 4) and its resampled copy (frames at the target rate x 4)
    may each take. ``min_rate``: the lowest source sample rate in Hz (a file already at the target rate
    passes). The CLI flags are ``--max-seconds``, ``--max-decoded-mb`` and ``--min-sample-rate``.

    Raises:
        ConfigError: a bound that is not positive.
    """

    max_seconds: float | None = 3600.0
    max_bytes: int | None = 512 * MIB
    min_rate: int = 1000

    def __post_init__(self) -> None:
        if self.max_seconds is not None and not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ConfigError(f"max_seconds must be > 0 (or None for no bound), got {self.max_seconds}")
        if self.max_bytes is not None and int(self.max_bytes) < 1:
            raise ConfigError(f"max_bytes must be >= 1 (or None for no bound), got {self.max_bytes}")
        if int(self.min_rate) < 1:
            raise ConfigError(f"min_rate must be >= 1 Hz, got {self.min_rate}")

    def check_size(self, name: str, n_bytes: int, *, capped: bool = False) -> None:
        """:class:`AudioTooLargeError` when a file of ``n_bytes`` is over ``max_bytes`` (before reading it).

        ``capped``: ``n_bytes`` came from a read capped at ``max_bytes + 1``, so the file holds at least that.
        """
        if self.max_bytes is not None and n_bytes > self.max_bytes:
            size = f"at least {n_bytes}" if capped else f"{n_bytes}"
            raise AudioTooLargeError(
                f"{display_path(name)}: the file holds {size} bytes, more than the maximum of "
                f"{_mib(self.max_bytes)} (--max-decoded-mb / AudioLimits.max_bytes)"
            )

    def check_rate(self, name: str, rate: int, target_rate: int | None = None) -> None:
        """:class:`SampleRateTooLowError` when ``rate`` is below ``min_rate`` (and is not ``target_rate``)."""
        if rate < self.min_rate and rate != target_rate:
            raise SampleRateTooLowError(
                f"{display_path(name)}: sample rate {rate} Hz is below the minimum of {self.min_rate} Hz; "
                f"refused before decoding (--min-sample-rate / AudioLimits.min_rate)"
            )

    def check_header(self, name: str, frames: int, channels: int, rate: int) -> None:
        """Duration and decoded size from the header's ``frames`` (not yet decoded)."""
        if self.max_seconds is not None and frames / rate > self.max_seconds:
            raise AudioTooLongError(
                f"{display_path(name)}: {frames} frames at {rate} Hz last {frames / rate:.1f} s, longer than "
                f"the maximum of {self.max_seconds:g} s; refused before decoding (--max-seconds / "
                f"AudioLimits.max_seconds)"
            )
        decoded = frames * channels * 4
        if self.max_bytes is not None and decoded > self.max_bytes:
            raise AudioTooLargeError(
                f"{display_path(name)}: decoding {frames} frames x {channels} channel(s) would take "
                f"{_mib(decoded)}, more than the maximum of {_mib(self.max_bytes)}; refused before decoding "
                f"(--max-decoded-mb / AudioLimits.max_bytes)"
            )

    def check_resample(self, name: str, frames: int, rate: int, target_rate: int) -> None:
        """The resampled copy's size (``frames`` at ``rate`` -> ``target_rate``), before resampling."""
        out = math.ceil(frames * target_rate / rate)
        if self.max_bytes is not None and out * 4 > self.max_bytes:
            raise AudioTooLargeError(
                f"{display_path(name)}: resampling {frames} frames from {rate} Hz to {target_rate} Hz would "
                f"give {out} samples ({_mib(out * 4)}), more than the maximum of {_mib(self.max_bytes)} "
                f"(--max-decoded-mb / AudioLimits.max_bytes)"
            )

    def max_frames(self, channels: int, rate: int) -> int | None:
        """The most frames a read may return (caps a read whose header gives no frame count)."""
        caps = []
        if self.max_seconds is not None:
            caps.append(int(self.max_seconds * rate))
        if self.max_bytes is not None:
            caps.append(self.max_bytes // (4 * max(1, channels)))
        return min(caps) if caps else None


#: The bounds used when none are given.
DEFAULT_LIMITS = AudioLimits()
#: No bound at all (trusted input only).
NO_LIMITS = AudioLimits(max_seconds=None, max_bytes=None, min_rate=1)


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n} bytes"


def display_path(path: str | os.PathLike[str] | bytes) -> str:
    """``path`` as printable text: a name that is not valid UTF-8 shows its bad bytes as ``\\xNN``."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def check_regular_file(path: str | os.PathLike[str]) -> int:
    """The size in bytes of the local regular file ``path`` (links followed), checked before opening it.

    Raises:
        SpecialFileError: a FIFO, socket, device or directory (a FIFO would block the reader forever).
        BrokenLinkError: a dangling symbolic link or a symbolic-link loop.
        FileNotFoundError, PermissionError: no such file / no access (as ``open`` would).
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        if os.path.islink(name):
            raise BrokenLinkError(
                f"{display_path(name)}: dangling symbolic link to {display_path(os.readlink(name))!r} "
                "(the target does not exist)"
            ) from None
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BrokenLinkError(f"{display_path(name)}: symbolic-link loop (too many levels of links)") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        what = next((text for test, text in _FILE_TYPES if test(st.st_mode)), f"a special file (mode {st.st_mode:o})")
        raise SpecialFileError(f"{display_path(name)}: is {what}, not a regular file; expected an audio file")
    return int(st.st_size)


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


def _read_bounded(fh: sf.SoundFile, name: str, limits: AudioLimits, target_rate: int | None) -> np.ndarray:
    """The samples of an open file, its header checked against ``limits`` first and the read capped."""
    frames, rate, channels = fh.frames, fh.samplerate, fh.channels
    limits.check_rate(name, rate, target_rate)
    if 0 < frames < 2**62:  # a real frame count: refuse before decoding a single sample
        limits.check_header(name, frames, channels, rate)
    cap = limits.max_frames(channels, rate)
    if cap is None:
        return fh.read(dtype="float32", always_2d=True)
    samples = fh.read(frames=cap + 1, dtype="float32", always_2d=True)  # the header may not say (or lie)
    if samples.shape[0] > cap:
        limits.check_header(name, samples.shape[0], channels, rate)  # raises: cap + 1 frames pass a bound
        raise AudioTooLargeError(f"{display_path(name)}: more than {cap} frames; refused (AudioLimits)")
    return samples


def _decode(data: bytes, name: str, limits: AudioLimits, target_rate: int | None) -> tuple[np.ndarray, int]:
    """Bytes -> (float32 ``[frames, channels]``, rate), with the container, completeness and bounds checked."""
    if len(data) == 0:
        raise EmptyAudioError(f"{name}: the file is empty (0 bytes); expected WAV, FLAC or OGG audio")
    limits.check_size(name, len(data))
    _check_wav_complete(data, name)
    try:
        with sf.SoundFile(io.BytesIO(data)) as fh:
            container, frames, rate = fh.format, fh.frames, fh.samplerate
            if container not in CONTAINERS:
                raise UnsupportedFormatError(
                    f"{name}: unsupported audio container {container} ({fh.format_info}); "
                    f"expected one of {', '.join(sorted(CONTAINERS))}"
                )
            samples = _read_bounded(fh, name, limits, target_rate)
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


def decode_native(data: bytes, *, name: str = "<bytes>", channel: int | None = None,
                  limits: AudioLimits | None = None, target_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio file's bytes into float32 mono samples ``[N]`` at the file's own rate: ``(samples, rate)``.

    Multi-channel audio is averaged, or ``channel`` picked. ``limits`` (default :data:`DEFAULT_LIMITS`) bound
    the decoding; ``target_rate``, the rate the caller will resample to, passes the minimum-rate bound.
    Raises as :func:`decode_audio` (no :class:`SampleRateError` for a differing rate).
    """
    check_extension(name)
    samples, rate = _decode(bytes(data), name, limits or DEFAULT_LIMITS, target_rate)
    if not np.isfinite(samples).all():
        bad = ~np.isfinite(samples)
        first = int(np.argmax(bad.any(axis=1)))
        raise NonFiniteSamplesError(
            f"{name}: {int(bad.sum())} samples are NaN or Inf (first at frame {first}); expected finite samples"
        )
    return to_mono(samples, channel, name=name), int(rate)


def _read_checked(name: str, limits: AudioLimits | None) -> bytes:
    """The bytes of the local file ``name`` once it is known to be a regular file within the size bound."""
    check_extension(name)
    size = check_regular_file(name)  # a FIFO would block read_bytes forever
    (limits or DEFAULT_LIMITS).check_size(name, size)
    return Path(name).read_bytes()


def read_native(path: str | os.PathLike[str], *, channel: int | None = None,
                limits: AudioLimits | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file into float32 mono samples at its own rate: ``(samples [N], rate)``.

    Raises as :func:`load_audio`.
    """
    name = os.fspath(path)
    return decode_native(_read_checked(name, limits), name=name, channel=channel, limits=limits)


def decode_audio(data: bytes, cfg: AudioConfig | FeatureConfig, name: str = "<bytes>", *,
                 limits: AudioLimits | None = None) -> np.ndarray:
    """Decode an audio file's bytes into float32 mono samples ``[N]`` at ``cfg.sample_rate``.

    ``name`` (the file's path or URL) is used for its extension and in error messages. ``limits``
    (default :data:`DEFAULT_LIMITS`) bound the file, the decoded samples and the resampled copy.

    Raises:
        EmptyAudioError, CorruptAudioError, UnsupportedFormatError, NonFiniteSamplesError,
        ChannelError, SampleRateError, AudioTooLongError, AudioTooLargeError, SampleRateTooLowError:
        see the module docstring; each message names ``name``.
    """
    audio_cfg = _audio_config(cfg)
    limits = limits or DEFAULT_LIMITS
    mono, rate = decode_native(data, name=name, channel=audio_cfg.channel, limits=limits,
                               target_rate=audio_cfg.sample_rate)
    if rate != audio_cfg.sample_rate:
        if not audio_cfg.resample:
            raise SampleRateError(
                f"{name}: sample rate {rate} Hz differs from the expected {audio_cfg.sample_rate} Hz "
                f"and resampling is off (audio.resample=false)"
            )
        limits.check_resample(name, mono.shape[0], rate, audio_cfg.sample_rate)
        mono = resample(mono, rate, audio_cfg.sample_rate)
    return mono


def load_audio(path: str | os.PathLike[str], cfg: AudioConfig | FeatureConfig, *,
               limits: AudioLimits | None = None) -> np.ndarray:
    """Read an audio file into float32 mono samples ``[N]`` at ``cfg.sample_rate`` (see :func:`decode_audio`).

    The path is checked before it is opened (:func:`check_regular_file`) and its size against ``limits``.

    Raises:
        FileNotFoundError: no such file. SpecialFileError: a FIFO, socket, device or directory.
        BrokenLinkError: a dangling link or link loop. Otherwise as :func:`decode_audio`.
    """
    name = os.fspath(path)
    return decode_audio(_read_checked(name, limits), cfg, name=name, limits=limits)


def write_audio(path: str | os.PathLike[str], samples: np.ndarray, rate: int, subtype: str | None = None) -> None:
    """Write ``samples`` (``[N]`` mono or ``[N, channels]``, floats in [-1, 1]) to ``path``.

    The container follows the extension (WAV, FLAC, OGG); ``subtype`` is a soundfile subtype such as
    ``"PCM_16"``, ``"PCM_24"``, ``"FLOAT"`` or ``"VORBIS"`` (default: the container's default).
    """
    name = os.fspath(path)
    check_extension(name)
    sf.write(name, np.asarray(samples), int(rate), subtype=subtype)

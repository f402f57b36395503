"""The feature config: the one contract every stage reads.

Beam jobs write it beside their output, training stores it in the checkpoint, export stores it in
the ONNX metadata and the runtime rebuilds its featurizer from it, so training and serving cannot
disagree. It is a frozen dataclass that round-trips through JSON::

    cfg = FeatureConfig.audio_default(n_mels=40)
    assert FeatureConfig.from_json(cfg.to_json()) == cfg

Audio framing is *causal*: the signal is preceded by ``win_length - hop_length`` zeros and frame ``t``
covers samples ``[(t + 1) * hop - win, (t + 1) * hop)``. So ``N`` samples give exactly ``N // hop``
frames and a stream needs to carry only ``win - hop`` samples of context (plus ``< hop`` pending
samples), which keeps the carry a fixed-shape state tensor in ONNX. With ``stack = k`` (low frame rate) the
model reads ``k`` consecutive frames as one: ``N`` samples give ``N // (k * hop)`` model frames of ``k * dim``
values, and ``< k * hop`` samples stay pending.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from rnnstream.pipeline.errors import ConfigError

FEATURE_CONFIG_VERSION = 1

AudioFeature = Literal["logmel", "mfcc"]
WindowKind = Literal["hann", "hamming"]
GapPolicy = Literal["split", "flag"]


#: Calendar covariates of sensor frames: name -> period in seconds (each becomes a sin/cos pair).
TIME_FEATURES: dict[str, float] = {"hour_of_day": 86400.0, "day_of_week": 7 * 86400.0, "day_of_year": 365.2425 * 86400.0}

@dataclass(frozen=True)
class AudioConfig:
    """Log-mel / MFCC features of audio sampled at ``sample_rate``.

    Attributes:
        sample_rate: rate the features are computed at (Hz); files at another rate are resampled
            when ``resample`` is true, refused otherwise.
        win_ms, hop_ms: analysis window and hop in milliseconds.
        n_fft: FFT size (>= window length); ``None`` means the window length. Frames are zero-padded
            at the end to ``n_fft``; the power spectrum equals torch.stft's (which centres the window),
            as a circular shift does not change magnitudes.
        n_mels: mel bands. ``f_min``/``f_max`` bound the filterbank (``None`` = Nyquist).
        feature: ``"logmel"`` (``n_mels`` dims) or ``"mfcc"`` (``n_mfcc`` dims, DCT-II ortho of log-mel).
        window: ``"hann"`` or ``"hamming"`` (periodic, as torch's window functions).
        log_eps: added before the log: ``log(mel_power + log_eps)`` (torchaudio MFCC's ``log_mels``).
        channel: ``None`` downmixes multi-channel audio by averaging; an int picks that channel.
        resample: resample files whose rate differs (``scipy.signal.resample_poly``), or refuse them.
        stack: frames stacked into one model frame (low frame rate): the model reads the features of ``stack``
            consecutive frames concatenated (oldest first), one model frame per ``stack * hop`` samples, so its
            recurrent layers step ``stack`` times less often. 1: every frame on its own.
    """

    sample_rate: int = 16000
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None
    n_mels: int = 80
    n_mfcc: int = 13
    feature: AudioFeature = "logmel"
    f_min: float = 0.0
    f_max: float | None = None
    window: WindowKind = "hann"
    log_eps: float = 1e-6
    channel: int | None = None
    resample: bool = True
    stack: int = 1

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    @property
    def step_length(self) -> int:
        """Samples per model frame: ``stack * hop_length``."""
        return self.stack * self.hop_length

    @property
    def fft_size(self) -> int:
        return self.n_fft if self.n_fft is not None else self.win_length

    @property
    def context(self) -> int:
        """Samples of left context a stream carries: ``win_length - hop_length``."""
        return self.win_length - self.hop_length

    @property
    def frame_dim(self) -> int:
        """Values of one analysis frame: ``n_mels`` (log-mel) or ``n_mfcc``."""
        return self.n_mels if self.feature == "logmel" else self.n_mfcc

    @property
    def dim(self) -> int:
        """Values of one model frame: ``stack * frame_dim``."""
        return self.stack * self.frame_dim

    @property
    def frame_rate(self) -> float:
        """Model frames per second."""
        return self.sample_rate / self.step_length

    def validate(self) -> None:
        if self.sample_rate <= 0:
            raise ConfigError(f"audio.sample_rate must be > 0, got {self.sample_rate}")
        if self.hop_length <= 0 or self.win_length <= 0:
            raise ConfigError(
                f"audio.win_ms={self.win_ms} and hop_ms={self.hop_ms} must each be at least one sample "
                f"at {self.sample_rate} Hz"
            )
        if self.hop_length > self.win_length:
            raise ConfigError(f"audio.hop_ms={self.hop_ms} must not exceed win_ms={self.win_ms}")
        if self.fft_size < self.win_length:
            raise ConfigError(f"audio.n_fft={self.n_fft} must be >= the window length {self.win_length}")
        if self.feature not in ("logmel", "mfcc"):
            raise ConfigError(f"audio.feature must be 'logmel' or 'mfcc', got {self.feature!r}")
        if self.window not in ("hann", "hamming"):
            raise ConfigError(f"audio.window must be 'hann' or 'hamming', got {self.window!r}")
        if self.n_mels <= 0:
            raise ConfigError(f"audio.n_mels must be > 0, got {self.n_mels}")
        if self.feature == "mfcc" and not 0 < self.n_mfcc <= self.n_mels:
            raise ConfigError(f"audio.n_mfcc must be in 1..n_mels={self.n_mels}, got {self.n_mfcc}")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0 <= self.f_min < f_max <= nyquist:
            raise ConfigError(
                f"audio.f_min={self.f_min} and f_max={self.f_max} must satisfy 0 <= f_min < f_max <= {nyquist}"
            )
        if self.log_eps <= 0:
            raise ConfigError(f"audio.log_eps must be > 0, got {self.log_eps}")
        if self.channel is not None and self.channel < 0:
            raise ConfigError(f"audio.channel must be None (downmix) or >= 0, got {self.channel}")
        if type(self.stack) is not int or self.stack < 1:
            raise ConfigError(f"audio.stack must be an integer >= 1 (frames per model frame), got {self.stack!r}")


@dataclass(frozen=True)
class SensorConfig:
    """Multichannel numeric series resampled onto a fixed-rate grid.

    Attributes:
        columns: the channel columns, in feature order.
        timestamp_column: the time column (seconds as numbers, or datetimes in tables).
        rate_hz: output grid rate. Grid points are absolute multiples of ``1 / rate_hz``, so the grid
            does not depend on where a stream or a chunk starts.
        max_gap_s: input gaps up to this long are linearly interpolated; longer ones follow ``gap_policy``.
        gap_policy: ``"split"`` ends the segment at a long gap and starts a new one after it;
            ``"flag"`` interpolates across it and sets an extra ``gap`` feature to 1 on the grid points
            inside it.
        time_features: calendar covariates derived from each grid point's time (seconds since the Unix epoch,
            UTC): any of ``"hour_of_day"``, ``"day_of_week"``, ``"day_of_year"``, each as a (sin, cos) pair
            appended after the channels (and ``gap``). They depend on the frame's time alone, so they stream.
    """

    columns: tuple[str, ...] = ()
    timestamp_column: str = "timestamp"
    rate_hz: float = 1.0
    max_gap_s: float = 5.0
    gap_policy: GapPolicy = "split"
    time_features: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        return len(self.columns) + (1 if self.gap_policy == "flag" else 0) + 2 * len(self.time_features)

    @property
    def frame_rate(self) -> float:
        return self.rate_hz

    def validate(self) -> None:
        if not self.columns:
            raise ConfigError("sensor.columns must name at least one channel column")
        if len(set(self.columns)) != len(self.columns):
            raise ConfigError(f"sensor.columns has duplicates: {list(self.columns)}")
        if self.timestamp_column in self.columns:
            raise ConfigError(f"sensor.timestamp_column {self.timestamp_column!r} is also a channel column")
        if not (self.rate_hz > 0 and math.isfinite(self.rate_hz)):
            raise ConfigError(f"sensor.rate_hz must be a positive number, got {self.rate_hz}")
        if not self.max_gap_s > 0:
            raise ConfigError(f"sensor.max_gap_s must be > 0, got {self.max_gap_s}")
        if self.gap_policy not in ("split", "flag"):
            raise ConfigError(f"sensor.gap_policy must be 'split' or 'flag', got {self.gap_policy!r}")
        bad = [f for f in self.time_features if f not in TIME_FEATURES]
        if bad or len(set(self.time_features)) != len(self.time_features):
            raise ConfigError(f"sensor.time_features must be distinct names from {list(TIME_FEATURES)}, "
                              f"got {list(self.time_features)}")


@dataclass(frozen=True)
class FeatureConfig:
    """Which featurizer, with which settings. Exactly one of ``audio``/``sensor`` is set, per ``kind``."""

    kind: Literal["audio", "sensor"] = "audio"
    audio: AudioConfig | None = field(default_factory=AudioConfig)
    sensor: SensorConfig | None = None
    version: int = FEATURE_CONFIG_VERSION

    def __post_init__(self) -> None:
        self.validate()

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def audio_default(cls, **overrides: Any) -> "FeatureConfig":
        return cls(kind="audio", audio=AudioConfig(**overrides), sensor=None)

    @classmethod
    def sensor_default(cls, columns: tuple[str, ...] | list[str], **overrides: Any) -> "FeatureConfig":
        return cls(kind="sensor", audio=None, sensor=SensorConfig(columns=tuple(columns), **overrides))

    # -- derived ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Feature dimension of one frame."""
        return self.section.dim

    @property
    def frame_rate(self) -> float:
        """Frames per second of stream time."""
        return self.section.frame_rate

    @property
    def section(self) -> AudioConfig | SensorConfig:
        return self.audio if self.kind == "audio" else self.sensor  # type: ignore[return-value]

    def validate(self) -> None:
        if self.version != FEATURE_CONFIG_VERSION:
            raise ConfigError(f"feature config version {self.version} is not supported (expected {FEATURE_CONFIG_VERSION})")
        if self.kind == "audio":
            if self.audio is None or self.sensor is not None:
                raise ConfigError("kind='audio' needs an 'audio' section and no 'sensor' section")
        elif self.kind == "sensor":
            if self.sensor is None or self.audio is not None:
                raise ConfigError("kind='sensor' needs a 'sensor' section and no 'audio' section")
        else:
            raise ConfigError(f"feature config kind must be 'audio' or 'sensor', got {self.kind!r}")
        self.section.validate()

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["sensor"] is not None and not d["sensor"]["time_features"]:
            del d["sensor"]["time_features"]  # configs without covariates read (and hash) as before they existed
        if d["audio"] is not None and d["audio"]["stack"] == 1:
            del d["audio"]["stack"]  # configs without stacking read (and hash) as before it existed
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"feature config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown feature config keys {sorted(unknown)}; expected some of {sorted(known)}")
        audio = data.get("audio")
        sensor = data.get("sensor")
        try:
            audio_cfg = AudioConfig(**audio) if audio is not None else None
            sensor_cfg = (
                SensorConfig(**{**sensor, "columns": tuple(sensor.get("columns", ())),
                                "time_features": tuple(sensor.get("time_features", ()))})
                if sensor is not None else None
            )
        except TypeError as exc:  # unknown or missing keys inside a section
            raise ConfigError(f"bad feature config section: {exc}") from None
        return cls(
            kind=data.get("kind", "audio"),
            audio=audio_cfg,
            sensor=sensor_cfg,
            version=data.get("version", FEATURE_CONFIG_VERSION),
        )

    @classmethod
    def from_json(cls, text: str) -> "FeatureConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"feature config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str) -> "FeatureConfig":
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(fh.read())


def audio_config_of(config: FeatureConfig | AudioConfig, who: str) -> AudioConfig:
    """The validated audio settings of ``config``; :class:`ConfigError` naming ``who`` when it is not audio."""
    cfg = config.audio if isinstance(config, FeatureConfig) else config
    if not isinstance(cfg, AudioConfig):
        raise ConfigError(f"{who} needs a feature config of kind 'audio'")
    cfg.validate()
    return cfg

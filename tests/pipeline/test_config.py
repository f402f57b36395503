"""FeatureConfig: JSON round trips and validation errors that name the bad value."""

from __future__ import annotations

import pytest

from rnnstream.pipeline.config import AudioConfig, FeatureConfig, SensorConfig
from rnnstream.pipeline.errors import ConfigError


@pytest.mark.parametrize(
    "cfg",
    [
        FeatureConfig(),
        FeatureConfig.audio_default(n_mels=40, feature="mfcc", n_mfcc=20, n_fft=512, window="hamming", f_max=7000.0),
        FeatureConfig.audio_default(channel=1, resample=False, sample_rate=8000),
        FeatureConfig.audio_default(n_mels=40, stack=3),
        FeatureConfig.sensor_default(["a", "b"], rate_hz=2.5, max_gap_s=3.0, gap_policy="flag"),
    ],
)
def test_json_and_file_round_trip(cfg, tmp_path):
    again = FeatureConfig.from_json(cfg.to_json())
    assert again == cfg and hash(again) == hash(cfg)
    cfg.save(str(tmp_path / "feature_config.json"))
    assert FeatureConfig.load(str(tmp_path / "feature_config.json")) == cfg


def test_derived_values():
    audio = FeatureConfig.audio_default()
    assert (audio.audio.win_length, audio.audio.hop_length, audio.audio.context) == (400, 160, 240)
    assert audio.dim == 80 and audio.frame_rate == 100.0
    sensor = FeatureConfig.sensor_default(["x", "y", "z"], gap_policy="flag", rate_hz=4)
    assert sensor.dim == 4 and sensor.frame_rate == 4
    stacked = FeatureConfig.audio_default(n_mels=40, stack=3)
    assert (stacked.dim, stacked.audio.frame_dim, stacked.audio.step_length, stacked.frame_rate) == (120, 40, 480,
                                                                                                    100 / 3)


def test_stack_appears_in_json_only_when_used():
    """Configs without stacking serialise (and hash) as before ``stack`` existed."""
    assert "stack" not in FeatureConfig.audio_default().to_json()
    assert '"stack": 2' in FeatureConfig.audio_default(stack=2).to_json()


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"sample_rate": 0}, "sample_rate must be > 0, got 0"),
        ({"hop_ms": 30.0}, "hop_ms=30.0 must not exceed win_ms=25.0"),
        ({"n_fft": 256}, "n_fft=256 must be >= the window length 400"),
        ({"feature": "spectrogram"}, "'spectrogram'"),
        ({"window": "blackman"}, "'blackman'"),
        ({"n_mels": 0}, "n_mels must be > 0"),
        ({"feature": "mfcc", "n_mfcc": 100}, "n_mfcc must be in 1..n_mels=80, got 100"),
        ({"f_max": 9000.0}, "f_max=9000.0"),
        ({"log_eps": 0.0}, "log_eps must be > 0"),
        ({"channel": -1}, "channel must be None"),
        ({"win_ms": 0.01}, "at least one sample"),
        ({"stack": 0}, "stack must be an integer >= 1 .*, got 0"),
        ({"stack": 1.5}, "stack must be an integer >= 1 .*, got 1.5"),
    ],
)
def test_audio_validation_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        FeatureConfig.audio_default(**overrides)


@pytest.mark.parametrize(
    "columns, overrides, match",
    [
        ((), {}, "at least one"),
        (("a", "a"), {}, "duplicates"),
        (("timestamp",), {}, "also a channel column"),
        (("a",), {"rate_hz": 0.0}, "rate_hz must be a positive number, got 0.0"),
        (("a",), {"rate_hz": float("inf")}, "rate_hz"),
        (("a",), {"max_gap_s": -1.0}, "max_gap_s must be > 0, got -1.0"),
        (("a",), {"gap_policy": "drop"}, "'drop'"),
    ],
)
def test_sensor_validation_errors(columns, overrides, match):
    with pytest.raises(ConfigError, match=match):
        FeatureConfig.sensor_default(columns, **overrides)


@pytest.mark.parametrize(
    "text, match",
    [
        ("[1, 2]", "must be a JSON object"),
        ("{oops", "not valid JSON"),
        ('{"kind": "audio", "colour": 1}', r"unknown feature config keys \['colour'\]"),
        ('{"kind": "audio", "audio": {"n_melz": 3}}', "n_melz"),
        ('{"kind": "video"}', "'video'"),
        ('{"kind": "sensor", "audio": null}', "needs a 'sensor' section"),
        ('{"version": 99}', "version 99"),
    ],
)
def test_bad_json_is_a_config_error(text, match):
    with pytest.raises(ConfigError, match=match):
        FeatureConfig.from_json(text)


def test_kind_and_sections_must_agree():
    with pytest.raises(ConfigError, match="kind='audio' needs an 'audio' section and no 'sensor'"):
        FeatureConfig(kind="audio", audio=AudioConfig(), sensor=SensorConfig(columns=("a",)))

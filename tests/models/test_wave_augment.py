"""Waveform copies for training (rnnstream.models.wave_augment): speed, pitch and noise, seeded per file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rnnstream.models.wave_augment import WaveAugment, augment_audio_examples, perturb_waveform
from rnnstream.pipeline.dataset import Example
from rnnstream.pipeline.errors import ConfigError

from tests.models.test_augment import FC, tone


def test_perturb_waveform_speed_noise_and_seeding() -> None:
    x = tone(0.5, 440.0)
    a, ia = perturb_waveform(x, 8000, np.random.default_rng(1), WaveAugment(noise_prob=1.0))
    b, ib = perturb_waveform(x, 8000, np.random.default_rng(1), WaveAugment(noise_prob=1.0))
    np.testing.assert_array_equal(a, b)
    assert ia == ib and 0.9 <= ia["speed"] <= 1.1 and 10.0 <= ia["snr_db"] <= 40.0
    assert abs(a.size - x.size / ia["speed"]) <= 2  # faster = shorter
    fast, info = perturb_waveform(x, 8000, np.random.default_rng(0), WaveAugment(speed=(1.2, 1.2), noise_prob=0.0))
    assert info["speed"] == 1.2 and math.isnan(info["snr_db"]) and abs(fast.size - x.size / 1.2) <= 2
    with pytest.raises(ConfigError):
        WaveAugment(speed=(1.1, 0.9))


def _peak_hz(x: np.ndarray, rate: int = 8000) -> float:
    mid = x[x.size // 8: -x.size // 8]  # away from the vocoder's edges
    return float(np.argmax(np.abs(np.fft.rfft(mid * np.hanning(mid.size)))) * rate / mid.size)


@pytest.mark.parametrize("steps", [12.0, -12.0, 3.0])
def test_pitch_shift_moves_the_pitch_by_whole_semitones_and_keeps_the_length(steps) -> None:
    x = tone(1.0, 500.0)
    y, info = perturb_waveform(x, 8000, np.random.default_rng(0),
                               WaveAugment(speed=(1.0, 1.0), pitch=(steps, steps), noise_prob=0.0))
    assert info["pitch"] == steps and y.size == x.size
    assert abs(_peak_hz(y) - 500.0 * 2 ** (steps / 12)) < 4.0  # 1.0 s of audio: 1.33 Hz bins after the trim


def test_a_pitch_range_changes_nothing_else_and_no_range_draws_nothing() -> None:
    x = tone(0.5, 440.0)
    plain, pi = perturb_waveform(x, 8000, np.random.default_rng(3), WaveAugment(noise_prob=1.0))
    again, ai = perturb_waveform(x, 8000, np.random.default_rng(3), WaveAugment(noise_prob=1.0, pitch=[0, 0]))
    np.testing.assert_array_equal(plain, again)  # copies made before pitch ranges existed stay the same
    assert pi == ai and "pitch" not in pi
    shifted, si = perturb_waveform(x, 8000, np.random.default_rng(3), WaveAugment(noise_prob=1.0, pitch=(-3, 3)))
    assert si["speed"] == pi["speed"] and -3.0 <= si["pitch"] <= 3.0 and si["pitch"] * 2 == int(si["pitch"] * 2)
    for bad in ((3, -3), (-13, 0), (1, 2, 3)):
        with pytest.raises(ConfigError, match="pitch range"):
            WaveAugment(pitch=bad)


def test_quiet_before_and_after_at_a_level_below_the_recording() -> None:
    x = tone(0.5, 440.0)
    plain, pi = perturb_waveform(x, 8000, np.random.default_rng(5), WaveAugment(noise_prob=0.0))
    again, ai = perturb_waveform(x, 8000, np.random.default_rng(5), WaveAugment(noise_prob=0.0, quiet_s=[0, 0]))
    np.testing.assert_array_equal(plain, again)  # no range draws nothing: earlier copies stay the same
    assert "quiet_before_s" not in ai
    y, info = perturb_waveform(x, 8000, np.random.default_rng(5),
                               WaveAugment(noise_prob=0.0, quiet_s=(0.05, 0.2), quiet_db=(-40.0, -40.0)))
    before, after = round(info["quiet_before_s"] * 8000), round(info["quiet_after_s"] * 8000)
    assert 400 <= before <= 1600 and 400 <= after <= 1600 and info["speed"] == pi["speed"]
    assert y.size == plain.size + before + after
    np.testing.assert_allclose(y[before : before + plain.size], plain, atol=1e-6)  # the recording unchanged
    quiet = np.concatenate((y[:before], y[y.size - after :]))
    level_db = 10 * np.log10(np.mean(quiet.astype(np.float64) ** 2) / np.mean(plain.astype(np.float64) ** 2))
    assert abs(level_db - (-40.0)) < 1.0 and np.all(quiet != 0)  # a noise floor, not digital zeros
    for bad in ((0.2, 0.1), (-0.1, 0.1), (0.0, 3.0)):
        with pytest.raises(ConfigError, match="quiet_s range"):
            WaveAugment(quiet_s=bad)
    with pytest.raises(ConfigError, match="quiet_db range"):
        WaveAugment(quiet_db=(-30.0, 10.0))


def test_augment_audio_examples_adds_copies_per_file(tmp_path) -> None:
    import soundfile as sf

    examples = []
    for i, f in enumerate((300.0, 500.0, 700.0)):
        path = tmp_path / f"{i}.wav"
        sf.write(path, tone(0.3, f, seed=i), 8000)
        examples.append(Example(id=f"ex{i}", path=str(path), features=np.zeros((1, FC.dim), np.float32),
                                label=str(i), metadata={"speaker": "s"}))
    out = augment_audio_examples(examples, FC, 2, seed=5)
    assert out[:3] == examples and len(out) == 9
    assert [e.id for e in out[3:5]] == ["ex0#wav0", "ex0#wav1"]
    assert all(e.features.shape[1] == FC.dim and e.label == e.id[2] for e in out[3:])
    assert out[3].metadata["speaker"] == "s" and "speed" in out[3].metadata
    # a file's copies depend only on (seed, id): the same without the other files
    alone = augment_audio_examples(examples[1:2], FC, 2, seed=5)
    np.testing.assert_array_equal(alone[1].features, out[5].features)
    assert len(augment_audio_examples(examples, FC, 0, seed=5)) == 3

"""Reading audio files: formats, downmix/channel pick, resampling, and every bad-input error."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from rnnstream.pipeline.audio_io import decode_audio, load_audio, write_audio
from rnnstream.pipeline.config import AudioConfig, FeatureConfig
from rnnstream.pipeline.errors import (
    ChannelError,
    CorruptAudioError,
    EmptyAudioError,
    NonFiniteSamplesError,
    SampleRateError,
    UnsupportedFormatError,
)

CFG = AudioConfig(sample_rate=16000)


def _tone(n: int = 4000, rate: int = 16000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(n) / rate
    cols = [0.5 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
    x = np.stack(cols, axis=1).astype(np.float32)
    return x[:, 0] if channels == 1 else x


@pytest.mark.parametrize(
    "subtype, tol",
    [("PCM_16", 1 / 2**15), ("PCM_24", 1 / 2**23), ("PCM_32", 1 / 2**30), ("FLOAT", 0.0)],
)
def test_wav_subtypes_read_as_float32(tmp_path, subtype, tol):
    x = _tone()
    path = tmp_path / f"a_{subtype}.wav"
    write_audio(path, x, 16000, subtype=subtype)
    assert sf.info(str(path)).subtype == subtype
    y = load_audio(path, CFG)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=tol + 1e-7)


def test_flac_is_lossless_at_16_bit(tmp_path):
    x = _tone()
    write_audio(tmp_path / "a.flac", x, 16000)
    y = load_audio(tmp_path / "a.flac", FeatureConfig.audio_default())
    np.testing.assert_allclose(y, x, atol=1 / 2**15 + 1e-7)


def test_ogg_vorbis_reads_back_close(tmp_path):
    x = _tone(16000)
    write_audio(tmp_path / "a.ogg", x, 16000)
    y = load_audio(tmp_path / "a.ogg", CFG)
    assert y.dtype == np.float32 and abs(len(y) - len(x)) < 1024
    n = min(len(x), len(y))
    # lossy codec: the tone survives (correlation), bit-exactness does not
    corr = np.corrcoef(x[:n], y[:n])[0, 1]
    assert corr > 0.95


def test_stereo_is_averaged_and_channel_picked(tmp_path):
    x = _tone(channels=2)
    write_audio(tmp_path / "s.wav", x, 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav", CFG), x.mean(axis=1), atol=1e-7)
    np.testing.assert_array_equal(load_audio(tmp_path / "s.wav", AudioConfig(channel=1)), x[:, 1])
    np.testing.assert_array_equal(load_audio(tmp_path / "s.wav", AudioConfig(channel=0)), x[:, 0])


def test_missing_channel_names_file_and_count(tmp_path):
    write_audio(tmp_path / "s.wav", _tone(channels=2), 16000)
    with pytest.raises(ChannelError, match=r"s\.wav.*channel 2.*2 channel"):
        load_audio(tmp_path / "s.wav", AudioConfig(channel=2))


def test_resampling_changes_length_and_keeps_the_tone(tmp_path):
    x = _tone(8000, rate=8000, freq=300.0)  # 1 s at 8 kHz
    write_audio(tmp_path / "r.wav", x, 8000, subtype="FLOAT")
    y = load_audio(tmp_path / "r.wav", CFG)
    assert y.dtype == np.float32 and len(y) == 16000
    ref = _tone(16000, rate=16000, freq=300.0)
    # away from the edges the band-limited resample equals the tone sampled at 16 kHz
    np.testing.assert_allclose(y[500:-500], ref[500:-500], atol=2e-3)


def test_rate_mismatch_without_resampling_is_refused(tmp_path):
    write_audio(tmp_path / "r.wav", _tone(800, rate=8000), 8000)
    with pytest.raises(SampleRateError, match=r"r\.wav.*8000 Hz.*16000 Hz"):
        load_audio(tmp_path / "r.wav", AudioConfig(resample=False))


def test_empty_file(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    with pytest.raises(EmptyAudioError, match=r"e\.wav.*0 bytes"):
        load_audio(tmp_path / "e.wav", CFG)


def test_wav_with_zero_frames(tmp_path):
    sf.write(str(tmp_path / "z.wav"), np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(EmptyAudioError, match=r"z\.wav.*0 audio frames"):
        load_audio(tmp_path / "z.wav", CFG)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_wav(tmp_path, keep):
    write_audio(tmp_path / "t.wav", _tone(), 16000)
    data = (tmp_path / "t.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptAudioError, match=r"cut\.wav.*truncated"):
        load_audio(tmp_path / "cut.wav", CFG)


def test_truncated_flac(tmp_path):
    write_audio(tmp_path / "t.flac", np.random.default_rng(0).uniform(-0.5, 0.5, 16000), 16000)
    data = (tmp_path / "t.flac").read_bytes()
    with pytest.raises(CorruptAudioError, match=r"t\.flac"):
        decode_audio(data[: len(data) // 2], CFG, name="t.flac")


def test_corrupt_wav_header(tmp_path):
    write_audio(tmp_path / "c.wav", _tone(), 16000)
    data = bytearray((tmp_path / "c.wav").read_bytes())
    data[20:24] = b"\xff\xff\xff\xff"  # format tag and channel count of the fmt chunk
    (tmp_path / "c.wav").write_bytes(bytes(data))
    with pytest.raises(CorruptAudioError, match=r"c\.wav.*not readable"):
        load_audio(tmp_path / "c.wav", CFG)


def test_text_file_named_wav(tmp_path):
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 20)
    with pytest.raises(CorruptAudioError, match=r"notes\.wav.*not readable as audio"):
        load_audio(tmp_path / "notes.wav", CFG)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.txt", "clip.WMA"])
def test_unsupported_extension(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00" * 100)
    with pytest.raises(UnsupportedFormatError, match=name.replace(".", r"\.")):
        load_audio(tmp_path / name, CFG)


def test_unsupported_container_inside_supported_name(tmp_path):
    sf.write(str(tmp_path / "a.aiff"), _tone(), 16000, format="AIFF")
    data = (tmp_path / "a.aiff").read_bytes()
    with pytest.raises(UnsupportedFormatError, match=r"disguised\.wav.*AIFF"):
        decode_audio(data, CFG, name="disguised.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_samples(tmp_path, bad):
    x = _tone()
    x[123] = bad
    write_audio(tmp_path / "n.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(NonFiniteSamplesError, match=r"n\.wav.*1 samples.*frame 123"):
        load_audio(tmp_path / "n.wav", CFG)


def test_decode_bytes_equals_load_and_detects_without_extension(tmp_path):
    write_audio(tmp_path / "b.flac", _tone(), 16000)
    data = (tmp_path / "b.flac").read_bytes()
    expected = load_audio(tmp_path / "b.flac", CFG)
    np.testing.assert_array_equal(decode_audio(data, CFG, name="gs://bucket/b.flac"), expected)
    np.testing.assert_array_equal(decode_audio(data, CFG), expected)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav", CFG)

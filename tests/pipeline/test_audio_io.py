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


# ----------------------------------------------------------------------------------------------
# Decoding bounds (AudioLimits) and special files
# ----------------------------------------------------------------------------------------------


def test_a_1_hz_header_is_refused_before_decoding(tmp_path, monkeypatch):
    """800 frames that declare 1 Hz would resample to 12.8 M samples at 16 kHz: refused from the header."""
    from rnnstream.pipeline.errors import SampleRateTooLowError

    path = tmp_path / "slow.wav"
    sf.write(path, _tone(800), 1, subtype="PCM_16")
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("decoded samples of a refused file"))
    with pytest.raises(SampleRateTooLowError, match=r"slow\.wav: sample rate 1 Hz is below the minimum of 1000 Hz"):
        load_audio(path, CFG)
    with pytest.raises(SampleRateError):  # it is a SampleRateError too
        decode_audio(path.read_bytes(), CFG, name=str(path))


def test_resampled_copy_is_bounded_before_resampling(tmp_path):
    from rnnstream.pipeline.audio_io import AudioLimits
    from rnnstream.pipeline.errors import AudioTooLargeError

    path = tmp_path / "slow.wav"
    sf.write(path, _tone(800), 8, subtype="PCM_16")
    limits = AudioLimits(max_seconds=None, max_bytes=10 * 2**20, min_rate=1)
    with pytest.raises(AudioTooLargeError, match=r"resampling 800 frames from 8 Hz to 16000 Hz would give 1600000 "
                       r"samples \(6\.1 MiB\)"):
        load_audio(path, CFG, limits=AudioLimits(max_seconds=None, max_bytes=2 * 2**20, min_rate=1))
    assert load_audio(path, CFG, limits=limits).shape == (1_600_000,)  # within the bound it decodes


def test_a_file_at_the_target_rate_passes_the_minimum_rate(tmp_path):
    from rnnstream.pipeline.audio_io import decode_native
    from rnnstream.pipeline.errors import SampleRateTooLowError

    path = tmp_path / "x.wav"
    sf.write(path, _tone(500, rate=500), 500, subtype="PCM_16")
    samples, rate = decode_native(path.read_bytes(), name="x.wav", target_rate=500)
    assert rate == 500 and samples.shape == (500,)
    with pytest.raises(SampleRateTooLowError, match="500 Hz is below the minimum of 1000 Hz"):
        decode_native(path.read_bytes(), name="x.wav")


def test_too_long_is_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    from rnnstream.pipeline.audio_io import AudioLimits
    from rnnstream.pipeline.errors import AudioTooLongError

    path = tmp_path / "long.wav"
    write_audio(path, _tone(32000), 16000, subtype="PCM_16")
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("decoded samples of a refused file"))
    with pytest.raises(AudioTooLongError, match=r"long\.wav: 32000 frames at 16000 Hz last 2\.0 s, longer than the "
                       r"maximum of 1\.5 s; refused before decoding \(--max-seconds"):
        load_audio(path, CFG, limits=AudioLimits(max_seconds=1.5))


def test_decoded_size_and_file_size_are_bounded(tmp_path):
    from rnnstream.pipeline.audio_io import AudioLimits, read_native
    from rnnstream.pipeline.errors import AudioTooLargeError

    path = tmp_path / "stereo.wav"
    write_audio(path, _tone(4000, channels=2), 16000, subtype="PCM_16")  # 16044 bytes, 32000 decoded
    with pytest.raises(AudioTooLargeError, match=r"decoding 4000 frames x 2 channel\(s\) would take 32000 bytes, "
                       r"more than the maximum of 20000 bytes; refused before decoding"):
        read_native(path, limits=AudioLimits(max_bytes=20000))
    with pytest.raises(AudioTooLargeError, match=r"the file holds 16044 bytes, more than the maximum of 1000 bytes"):
        load_audio(path, CFG, limits=AudioLimits(max_bytes=1000))


def test_a_read_without_a_frame_count_is_capped():
    """A header that gives no frame count (streamed OGG) cannot make the read unbounded."""
    from rnnstream.pipeline.audio_io import AudioLimits, _read_bounded
    from rnnstream.pipeline.errors import AudioTooLongError

    asked = []

    class Endless:
        frames, samplerate, channels = 2**63 - 1, 16000, 1

        def read(self, frames: int, dtype: str, always_2d: bool) -> np.ndarray:
            asked.append(frames)
            return np.zeros((frames, 1), np.float32)

    with pytest.raises(AudioTooLongError, match="16001 frames at 16000 Hz last 1.0 s"):
        _read_bounded(Endless(), "stream.ogg", AudioLimits(max_seconds=1.0), None)
    assert asked == [16001]


def test_bad_limits_are_config_errors():
    from rnnstream.pipeline.audio_io import NO_LIMITS, AudioLimits
    from rnnstream.pipeline.errors import ConfigError

    for kwargs in ({"max_seconds": 0}, {"max_seconds": float("nan")}, {"max_bytes": 0}, {"min_rate": 0}):
        with pytest.raises(ConfigError):
            AudioLimits(**kwargs)
    assert NO_LIMITS.max_frames(2, 16000) is None


@pytest.mark.timeout(20)
def test_special_files_are_refused_before_opening(tmp_path):
    """A FIFO would block the reader forever; links that lead nowhere must not vanish."""
    import os

    from rnnstream.pipeline.audio_io import read_native
    from rnnstream.pipeline.errors import BrokenLinkError, SpecialFileError

    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(SpecialFileError, match=r"pipe\.wav: is a FIFO \(named pipe\), not a regular file"):
        load_audio(tmp_path / "pipe.wav", CFG)
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(SpecialFileError, match=r"dir\.wav: is a directory"):
        read_native(tmp_path / "dir.wav")
    os.symlink("nowhere.wav", tmp_path / "dangling.wav")
    with pytest.raises(BrokenLinkError, match=r"dangling\.wav: dangling symbolic link to 'nowhere\.wav'"):
        load_audio(tmp_path / "dangling.wav", CFG)
    os.symlink("b.wav", tmp_path / "a.wav")
    os.symlink("a.wav", tmp_path / "b.wav")
    with pytest.raises(BrokenLinkError, match=r"a\.wav: symbolic-link loop"):
        load_audio(tmp_path / "a.wav", CFG)
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav", CFG)


def test_display_path_shows_bytes_that_are_not_utf8():
    import os

    from rnnstream.pipeline.audio_io import display_path

    assert display_path(os.fsdecode(b"/d/bad\xff.wav")) == "/d/bad\\xff.wav"
    assert display_path("/d/caf\u00e9.wav") == "/d/caf\u00e9.wav"

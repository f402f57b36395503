"""experiments.speaker_stats: how each speaker's recordings are cut (quiet before and after the word) and sound."""

from __future__ import annotations

import numpy as np

from experiments.speaker_stats import file_stats, main, speaker_stats


def _word(before_s: float, after_s: float, hz: float, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(0.3 * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * hz * t)
    return np.concatenate((np.zeros(int(before_s * rate)), tone, np.zeros(int(after_s * rate)))).astype(np.float32)


def test_file_stats_finds_the_quiet_around_the_word_and_its_band():
    s = file_stats(_word(0.1, 0.05, 1500.0), 8000)
    assert abs(s["quiet_before_s"] - 0.1) < 0.01 and abs(s["quiet_after_s"] - 0.05) < 0.01
    assert abs(s["duration_s"] - 0.45) < 1e-9 and abs(s["peak"] - 0.5) < 1e-3
    assert s["band_1000_2000_db"] > -0.5 > -20 > s["band_0_250_db"]  # the tone's band holds the power


def test_speaker_stats_and_its_table(tmp_path, capsys):
    import soundfile as sf

    for take in range(2):
        sf.write(str(tmp_path / f"0_roomy_{take}.wav"), _word(0.2, 0.2, 600.0), 8000)
        sf.write(str(tmp_path / f"0_tight_{take}.wav"), _word(0.0, 0.0, 600.0), 8000)
    sf.write(str(tmp_path / "notes.wav"), _word(0.0, 0.0, 600.0), 8000)  # not <digit>_<speaker>_<take>: skipped
    stats = speaker_stats(str(tmp_path))
    assert sorted(stats) == ["roomy", "tight"] and stats["roomy"]["files"] == 2
    assert stats["roomy"]["quiet_before_s"] > 0.18 and stats["tight"]["quiet_before_s"] < 0.01
    assert main([str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| roomy | 2 |" in table and "| tight | 2 |" in table
    assert main([str(tmp_path / "none")]) == 2

"""experiments.synth_digits: seeded synthetic speakers, FSDD-named 8 kHz WAVs, silence trimmed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.synth_digits import ACCENTS, VARIANTS, main, trim, voices
from rnnstream import datasets as D

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_voices_are_distinct_seeded_accent_variant_pairs() -> None:
    a = voices(20, seed=0)
    assert len(set(a)) == 20 and a == voices(20, seed=0) and a != voices(20, seed=1)
    assert all(v.split("+")[0] in ACCENTS and v.split("+")[1] in VARIANTS for v in a)
    with pytest.raises(SystemExit, match="--speakers must be in 1..128"):
        voices(len(ACCENTS) * len(VARIANTS) + 1, seed=0)


def test_trim_keeps_the_loud_part_and_a_margin() -> None:
    x = np.zeros(1000, np.int16)
    x[400:500] = 1000
    x[300] = 5  # 46 dB below the peak: trimmed as silence
    y = trim(x, rate=1000, floor_db=-40.0, pad_s=0.01)
    assert y.size == 100 + 2 * 10 and y[10] == 1000 and y[-11] == 1000


def test_the_files_are_fsdd_named_8khz_digits(tmp_path) -> None:
    pytest.importorskip("espeakng_loader", reason="espeakng-loader (the dev extra) is not installed")
    import soundfile as sf

    assert main(["--out", str(tmp_path), "--speakers", "2", "--takes", "1", "--seed", "3"]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 20
    rx = re.compile(D.FSDD_PATTERN)
    assert all(rx.fullmatch(f) for f in files)  # what experiments.fsdd --extra-train reads
    assert {rx.fullmatch(f)["label"] for f in files} == set("0123456789")
    for f in files[:4]:
        x, rate = sf.read(tmp_path / f)
        assert rate == 8000 and 0.15 < x.size / rate < 1.5 and np.abs(x).max() > 0.05
    # seeded: two fresh processes, over a second apart, write the same samples (espeak-ng keeps state between
    # initialisations in one, and seeds its breath noise from the clock unless told); seed 1's voices include a
    # breathy variant (en-gb-scotland+f5)
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        time.sleep(1.1)
        subprocess.run([sys.executable, "-m", "experiments.synth_digits", "--out", str(out), "--speakers", "2",
                        "--takes", "1", "--seed", "1"], check=True, cwd=ROOT, capture_output=True)
    assert any(v.endswith("+f5") for v in voices(2, seed=1))
    for f in files:
        np.testing.assert_array_equal(sf.read(runs[0] / f)[0], sf.read(runs[1] / f)[0])

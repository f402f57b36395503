"""Tiny corpora for the Beam job tests: good audio, every kind of bad audio, sensor tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

RATE = 8000
LABEL_PATTERN = r"(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav"
#: Feature flags the tests pass to the jobs (8 kHz, 20 mels keeps runs fast).
AUDIO_FLAGS = ["--sample-rate", str(RATE), "--n-mels", "20", "--no-resample"]


def tone(n: int, freq: float, seed: int, rate: int = RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def write_good_audio(root: Path, n: int = 4) -> list[Path]:
    paths = []
    for i in range(n):
        p = root / f"{i % 3}_{['ann', 'bob'][i % 2]}_{i}.wav"
        sf.write(p, tone(2000 + 700 * i, 200.0 + 150 * i, seed=i), RATE, subtype="PCM_16")
        paths.append(p)
    return paths


def write_bad_audio(root: Path) -> dict[Path, str]:
    """Bad files -> the error kind each must be dead-lettered with."""
    bad: dict[Path, str] = {}
    # truncated: a valid header that declares more samples than the file holds
    p = root / "7_cut_0.wav"
    sf.write(p, tone(4000, 300.0, seed=7), RATE, subtype="PCM_16")
    p.write_bytes(p.read_bytes()[:3000])
    bad[p] = "CorruptAudioError"
    p = root / "7_empty_0.wav"
    p.write_bytes(b"")
    bad[p] = "EmptyAudioError"
    p = root / "7_text_0.wav"
    p.write_text("this is not audio, just a text file named .wav\n" * 20)
    bad[p] = "CorruptAudioError"
    p = root / "7_nan_0.wav"
    x = tone(3000, 400.0, seed=8)
    x[100:110] = np.nan
    sf.write(p, x, RATE, subtype="FLOAT")
    bad[p] = "NonFiniteSamplesError"
    p = root / "7_fast_0.wav"
    sf.write(p, tone(6000, 500.0, seed=9, rate=16000), 16000, subtype="PCM_16")
    bad[p] = "SampleRateError"
    return bad


@pytest.fixture
def audio_corpus(tmp_path: Path) -> tuple[Path, list[Path], dict[Path, str]]:
    root = tmp_path / "corpus"
    root.mkdir()
    return root, write_good_audio(root), write_bad_audio(root)


def write_sensor_table(path: Path, *, gap_at: int | None = None, seed: int = 0, n: int = 60) -> None:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.uniform(0.05, 0.15, n))
    if gap_at is not None:
        t[gap_at:] += 5.0  # a gap longer than max_gap_s
    df = pd.DataFrame({"t": t, "ax": rng.standard_normal(n), "ay": rng.standard_normal(n), "other": "x"})
    if path.suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def label_of(path: Path) -> tuple[str, dict[str, str]]:
    m = re.search(LABEL_PATTERN, path.name)
    assert m is not None
    groups = m.groupdict()
    return groups.pop("label"), groups

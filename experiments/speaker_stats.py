"""How each speaker's recordings are cut and sound: duration, quiet before and after the word, level, spectrum.

Used to look for what differs between FSDD's speakers beyond their voices (issue 15 follow-up 23)::

    python -m experiments.speaker_stats ../shared/data/fsdd/recordings

Files are named like FSDD's (``<digit>_<speaker>_<take>.wav``). "Quiet" is the time before the first and after the
last sample whose 10 ms mean power is above ``--floor-db`` (default -30 dB) of the file's highest; the band shares
are each band's part of the file's power (Hann-windowed FFT), in dB.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

BANDS_HZ = (0, 250, 500, 1000, 2000, 3000, 4000)


def file_stats(samples: np.ndarray, rate: int, floor_db: float = -30.0) -> dict[str, float]:
    """``samples [N]`` -> duration, quiet before / after the word (s), peak, RMS and band shares (dB) of one file."""
    x = np.asarray(samples, dtype=np.float64)
    win = max(1, rate // 100)
    power = np.convolve(x * x, np.ones(win) / win, mode="same")
    loud = np.flatnonzero(power > power.max() * 10.0 ** (floor_db / 10.0)) if power.max() > 0 else np.array([], int)
    before, after = (loud[0] / rate, (x.size - 1 - loud[-1]) / rate) if loud.size else (x.size / rate, 0.0)
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size), n=max(x.size, 2 * (rate // 2)))) ** 2
    hz = np.fft.rfftfreq(max(x.size, 2 * (rate // 2)), 1.0 / rate)
    total = spec.sum() or 1.0
    out = {"duration_s": x.size / rate, "quiet_before_s": before, "quiet_after_s": after,
           "peak": float(np.abs(x).max(initial=0.0)), "rms": float(np.sqrt(np.mean(x * x))) if x.size else 0.0}
    for lo, hi in zip(BANDS_HZ, BANDS_HZ[1:]):
        share = spec[(hz >= lo) & (hz < hi)].sum() / total
        out[f"band_{lo}_{hi}_db"] = float(10.0 * np.log10(share + 1e-12))
    return out


def speaker_stats(folder: str, floor_db: float = -30.0) -> dict[str, dict[str, float]]:
    """``{speaker: {stat: mean over the speaker's files}}`` for the WAVs in ``folder``."""
    import soundfile as sf

    per: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(folder, "*.wav"))):
        parts = os.path.basename(path)[:-4].split("_")
        if len(parts) != 3:
            continue
        samples, rate = sf.read(path, dtype="float32", always_2d=False)
        per[parts[1]].append(file_stats(samples if samples.ndim == 1 else samples.mean(axis=1), rate, floor_db))
    return {spk: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"files": float(len(rows))}
            for spk, rows in per.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.speaker_stats", description=__doc__.split("\n")[0])
    p.add_argument("folder", help="a folder of <digit>_<speaker>_<take>.wav files")
    p.add_argument("--floor-db", type=float, default=-30.0, help="loudness threshold for the word, dB of the peak")
    args = p.parse_args(argv)
    stats = speaker_stats(args.folder, args.floor_db)
    if not stats:
        print(f"no <digit>_<speaker>_<take>.wav files in {args.folder}", file=sys.stderr)
        return 2
    bands = [f"band_{lo}_{hi}_db" for lo, hi in zip(BANDS_HZ, BANDS_HZ[1:])]
    print("| speaker | files | duration s | quiet before s | quiet after s | peak | RMS | "
          + " | ".join(f"{lo}-{hi} Hz dB" for lo, hi in zip(BANDS_HZ, BANDS_HZ[1:])) + " |")
    print("|---" * (7 + len(bands)) + "|")
    for spk, s in sorted(stats.items()):
        print(f"| {spk} | {s['files']:.0f} | {s['duration_s']:.3f} | {s['quiet_before_s']:.3f} | "
              f"{s['quiet_after_s']:.3f} | {s['peak']:.2f} | {s['rms']:.3f} | "
              + " | ".join(f"{s[b]:.1f}" for b in bands) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

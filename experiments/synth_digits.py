"""Synthetic spoken digits from espeak-ng voices: extra *training* speakers for the FSDD recipe (issue 15).

The shared FSDD copy has 4 speakers, so a leave-one-speaker-out fold trains on 3: too few voices to learn digits
apart from voices. This script writes ``<digit>_synth<xy>_<take>.wav`` files (FSDD's naming, 8 kHz mono int16) spoken
by espeak-ng (the formant synthesiser bundled, library and data, in the ``espeakng-loader`` wheel: nothing is
fetched at run time), one synthetic speaker per (accent, voice variant) pair, with a seeded random pitch, pitch
range and speaking rate per take. ``experiments.fsdd --extra-train DIR`` adds them to the training examples of
every split (never to validation or test)::

    python -m experiments.synth_digits --out out/synth_digits --speakers 48 --takes 2

Every draw comes from ``--seed`` (espeak-ng's breath noise from a fixed seed): the same arguments write the same
files, run as a fresh process (espeak-ng keeps some state when it is initialised again in one process).
``experiments.fsdd``'s ``speech`` recipe makes its set with :func:`synth_set` (once, then reused).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

#: FSDD's labels and the words its speakers say.
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: espeak-ng's English accents and voice variants (``accent+variant`` names one synthetic speaker).
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
            "croak")
#: How many synthetic speakers there are: one per accent and variant.
N_VOICES = len(ACCENTS) * len(VARIANTS)
_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: synthesise into the callback, return when done
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_POS_CHARACTER = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """espeak-ng through its C API (``espeakng_loader``'s library and data): :meth:`say` returns int16 samples."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise SystemExit("experiments.synth_digits needs espeakng-loader (pip install espeakng-loader; "
                             "`make install` includes it)") from exc
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.rate = int(self.lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0))
        if self.rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.rate})")
        # espeak-ng seeds the generator of its voices' breath noise (the f2, f3 and f5 variants) from the clock:
        # seed it, so the same arguments write the same samples
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(1))
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: the library calls it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, n: int, _events: Any) -> int:  # (short*, samples, espeak_EVENT*)
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: str, *, rate_wpm: int, pitch: int, pitch_range: int) -> np.ndarray:
        """``text`` in ``voice`` at ``rate_wpm`` words per minute, base pitch and pitch range 0-99: int16 ``[N]``."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for param, value in ((_RATE, rate_wpm), (_PITCH, pitch), (_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self._chunks = []
        data = text.encode()
        self.lib.espeak_Synth(ctypes.c_char_p(data), len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def voices(n: int, seed: int) -> list[str]:
    """``n`` distinct ``accent+variant`` voices, a seeded sample of every pair."""
    pairs = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    if not 1 <= n <= N_VOICES:
        raise SystemExit(f"--speakers must be in 1..{N_VOICES}, got {n}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[k] for k in order[:n]]


def trim(x: np.ndarray, rate: int, floor_db: float = -40.0, pad_s: float = 0.02) -> np.ndarray:
    """``x`` without the leading and trailing stretches more than ``-floor_db`` below its peak (FSDD's recordings
    are trimmed to near minimal silence), ``pad_s`` kept each side."""
    level = np.abs(x.astype(np.float64))
    if level.size == 0 or level.max() == 0:
        return x
    loud = np.flatnonzero(level >= level.max() * 10 ** (floor_db / 20))
    pad = int(pad_s * rate)
    return x[max(0, loud[0] - pad): loud[-1] + pad + 1]


def synthesize(out: str, speakers: int, takes: int, seed: int, sample_rate: int = 8000) -> list[str]:
    """Write ``speakers x 10 digits x takes`` WAVs into ``out``; returns their paths."""
    import soundfile as sf

    from rnnstream.pipeline.resample import resample

    engine = Espeak()
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    paths = []
    for k, voice in enumerate(voices(speakers, seed)):
        name = f"synth{chr(97 + k // 26)}{chr(97 + k % 26)}"  # letters only: FSDD's file pattern names speakers so
        base_pitch, base_rate = int(rng.integers(20, 80)), int(rng.integers(130, 200))
        for take in range(takes):
            for label, word in enumerate(DIGITS):
                x = engine.say(word, voice, rate_wpm=base_rate + int(rng.integers(-20, 21)),
                               pitch=int(np.clip(base_pitch + rng.integers(-10, 11), 0, 99)),
                               pitch_range=int(rng.integers(20, 80)))
                y = resample(trim(x, engine.rate).astype(np.float32) / 32768.0, engine.rate, sample_rate)
                path = os.path.join(out, f"{label}_{name}_{take}.wav")
                sf.write(path, np.clip(y, -1, 1), sample_rate, subtype="PCM_16")
                paths.append(path)
    return paths


def synth_set(root: str, speakers: int, takes: int, seed: int = 0) -> str:
    """The folder ``root/synth_digits_<speakers>x<takes>_seed<seed>`` holding that set: synthesised the first time
    (by this script in a fresh process, so the files are the ones its command line writes), reused when its manifest
    (``synth.json``, written last) says it is complete."""
    import subprocess

    out = os.path.abspath(os.path.join(root, f"synth_digits_{speakers}x{takes}_seed{seed}"))
    manifest = os.path.join(out, "synth.json")
    want = {"speakers": speakers, "takes": takes, "seed": seed, "files": speakers * len(DIGITS) * takes}
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as fh:
            if json.load(fh) == want:
                return out
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "experiments.synth_digits", "--out", out, "--speakers", str(speakers),
                    "--takes", str(takes), "--seed", str(seed)], check=True, cwd=repo)
    with open(manifest, "w", encoding="utf-8") as fh:
        json.dump(want, fh)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.synth_digits", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the WAVs")
    p.add_argument("--speakers", type=int, default=48, help="synthetic speakers (accent+variant pairs)")
    p.add_argument("--takes", type=int, default=2, help="takes of each digit per speaker")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    paths = synthesize(args.out, args.speakers, args.takes, args.seed)
    print(f"{len(paths)} WAVs ({args.speakers} voices x {len(DIGITS)} digits x {args.takes} takes) in {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

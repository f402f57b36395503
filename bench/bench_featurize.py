"""Streaming featurizer throughput vs kaldi-native-fbank, one thread, side by side in one run.

Throughput is seconds of audio featurized per CPU-second (``time.process_time``) when a 16 kHz signal
is streamed in 10 ms, 100 ms and 1 s chunks through

* ours: :class:`rnnstream.pipeline.features.AudioFeaturizer` (80 log-mel bins, 25 ms Hann windows, 10 ms hops),
  ``step(chunk, carry)`` per chunk, features returned as a ``[T, 80]`` array;
* knf: ``kaldi_native_fbank.OnlineFbank`` (80 bins, dither 0, snip_edges False, other options at
  knf's defaults), ``accept_waveform`` per chunk, then ``get_frame`` for each new frame and ``pop``.
  Its Python API takes a sequence of floats: it is timed both fed the same NumPy chunks and fed the
  same samples pre-converted to Python lists (conversion not timed), and ours is compared with the
  faster of the two.

The implementations take turns within each repeat (the order rotates), so machine noise hits all of
them alike; the table gives median (min-max) over repeats and the ratio ours / best knf as the median
of the per-repeat ratios. ``python -m bench.bench_featurize [--seconds 30] [--repeats 11] [--no-write]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
SECTION = "Featurization throughput (bench_featurize)"
TARGETS = {10: 1.0, 100: 2.0}  # chunk ms -> required ratio ours / knf


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_featurize", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the test signal (default 30 s)")
    ap.add_argument("--repeats", type=int, default=11, help="repeats per implementation and chunk size")
    ap.add_argument("--chunks-ms", type=int, nargs="+", default=[10, 100, 1000], help="chunk sizes in ms")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    return ap.parse_args(argv)


def _signal(seconds: float, rate: int):
    """Deterministic speech-band test audio: tones with a moving pitch plus noise, float32 ``[N]``."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.3 * t)
    x = sum(0.2 / k * np.sin(2 * np.pi * k * np.cumsum(f0) / rate) for k in range(1, 6))
    return (x + rng.normal(0, 0.02, t.size)).astype(np.float32)


def _ours(chunks, fz):
    def run() -> int:
        carry = fz.initial_state()
        frames = 0
        for chunk in chunks:
            feats, carry = fz.step(chunk, carry)
            frames += feats.shape[0]
        return frames

    return run


def _knf(chunks, rate: int):
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = rate
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = 80

    def run() -> int:
        fb = knf.OnlineFbank(opts)
        done = 0
        for chunk in chunks:
            fb.accept_waveform(rate, chunk)
            ready = fb.num_frames_ready
            if ready > done:
                _ = [fb.get_frame(i) for i in range(done, ready)]
                fb.pop(ready - done)
                done = ready
        return done

    return run


def _cpu(fn) -> tuple[float, int]:
    start = time.process_time()
    frames = fn()
    return time.process_time() - start, frames


def run_benchmark(seconds: float, repeats: int, chunks_ms: list[int]) -> tuple[list[list[object]], dict[int, float]]:
    """Returns table rows and ``{chunk_ms: median ratio ours / best knf}``."""
    import numpy as np

    from bench._report import median_spread
    from rnnstream.pipeline.config import AudioConfig
    from rnnstream.pipeline.features import AudioFeaturizer

    cfg = AudioConfig(sample_rate=16000, win_ms=25.0, hop_ms=10.0, n_mels=80)
    rate = cfg.sample_rate
    x = _signal(seconds, rate)
    audio_s = x.size / rate
    fz = AudioFeaturizer(cfg)
    rows: list[list[object]] = []
    ratios: dict[int, float] = {}
    for ms in chunks_ms:
        size = rate * ms // 1000
        np_chunks = [x[i : i + size] for i in range(0, x.size, size)]
        list_chunks = [c.tolist() for c in np_chunks]
        impls = {"ours": _ours(np_chunks, fz), "knf (ndarray)": _knf(np_chunks, rate), "knf (list)": _knf(list_chunks, rate)}
        for fn in impls.values():  # warm-up (plans, caches, lazy imports)
            fn()
        tput: dict[str, list[float]] = {name: [] for name in impls}
        frames: dict[str, int] = {}
        names = list(impls)
        for rep in range(repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                cpu, frames[name] = _cpu(impls[name])
                tput[name].append(audio_s / cpu)
        best_knf = np.maximum(tput["knf (ndarray)"], tput["knf (list)"])
        per_rep = np.asarray(tput["ours"]) / best_knf
        ratios[ms] = float(np.median(per_rep))
        cells = []
        for name in names:
            med, lo, hi = median_spread(tput[name])
            cells.append(f"{med:.0f} ({lo:.0f}-{hi:.0f})")
        target = TARGETS.get(ms)
        verdict = ""
        if target is not None:
            verdict = f">= {target:g}x: " + ("met" if ratios[ms] >= target else "NOT met")
            if (per_rep.min() < target) != (per_rep.max() < target):
                verdict += " (borderline: repeats fall on both sides)"

        rows.append([f"{ms} ms", *cells, f"{ratios[ms]:.2f}x ({per_rep.min():.2f}-{per_rep.max():.2f})", verdict,
                     f"{frames['ours']} / {frames['knf (list)']}"])
    return rows, ratios


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if any(os.environ.get(var) != "1" for var in _THREAD_VARS):
        # BLAS reads its thread count when NumPy loads: rerun in a fresh interpreter pinned to one thread.
        env = {**os.environ, **{var: "1" for var in _THREAD_VARS}}
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.call([sys.executable, "-m", "bench.bench_featurize", *argv], env=env, cwd=root)

    from bench._report import markdown_table, single_thread, write_section

    single_thread()
    load0 = os.getloadavg()[0]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    rows, ratios = run_benchmark(args.seconds, args.repeats, args.chunks_ms)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    header = ["chunk", "ours audio-s/CPU-s", "knf (ndarray)", "knf (list)", "ours / best knf", "target", "frames ours / knf"]
    table = markdown_table(header, rows)
    notes = (
        f"One thread ({', '.join(f'{v}=1' for v in _THREAD_VARS)}, torch.set_num_threads(1)); "
        f"{args.seconds:g} s of 16 kHz audio per run, {args.repeats} interleaved repeats; median (min-max). "
        "Ours: 25 ms Hann window, 400-point FFT, 80 HTK mel bins, log(x + 1e-6). knf: its defaults besides "
        "dither 0 / snip_edges False / 80 bins (povey window, pre-emphasis, DC removal, 512-point FFT), "
        "frames read with get_frame and popped. knf (list): chunks pre-converted to Python lists, conversion not timed. "
        f"Whole run: {cpu:.1f} CPU-s in {wall:.1f} s wall (CPU time not above wall time: one busy thread); "
        f"1-min load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end on {os.cpu_count()} cores "
        "(a loaded machine widens the spreads)."
    )
    print(table)
    print()
    print(notes)
    if not args.no_write:
        write_section(SECTION, table + "\n\n" + notes, command="python -m bench.bench_featurize " + " ".join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

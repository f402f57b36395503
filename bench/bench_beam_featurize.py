"""Beam featurize job vs a plain Python loop over the same featurizer, on the 2,000 FSDD recordings.

Modes, all in one run on the same files and feature config (the demo's: 8 kHz, 40 log-mels):

* ``loop``: read bytes, ``decode_audio``, ``AudioFeaturizer.featurize``, ``RunningStats.update``, then one
  Parquet file (PARQUET_SCHEMA) and stats.json: the job's work and outputs, without Beam;
* ``direct in_memory``: ``featurize_corpus`` on the DirectRunner, one in-process worker;
* ``direct multi_processing``: ``--direct_num_workers=N --direct_running_mode=multi_processing``;
* ``dask``: Beam's DaskRunner on a ``distributed.LocalCluster`` of N single-threaded worker processes
  (loopback). The cluster is started, and warmed with one small job (workers import torch/Beam once),
  before the timed run; both are reported apart.

Every Beam mode must give the loop's counts and statistics (checked; the run fails otherwise).
Targets (the issue's): in-memory at most 1.3x the loop's wall time; multi-processing and Dask at least
1.6x faster than in-memory on 2 cores.

    python -m bench.bench_beam_featurize [--data DIR] [--limit N] [--workers 2] [--repeats 1] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._report import ROOT, markdown_table, single_thread, write_section

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
LABEL_PATTERN = r"(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav"
SECTION = "Beam featurize (FSDD)"


def _loop(files: list[str], cfg, out_dir: str) -> dict:
    """The plain loop: the same decode/featurize/stats code, one Parquet file."""
    from rnnstream.beam_jobs.common import InputRecord, write_examples_parquet
    from rnnstream.beam_jobs.inputs import apply_label_pattern, compile_label_pattern
    from rnnstream.pipeline.audio_io import decode_audio
    from rnnstream.pipeline.dataset import Example
    from rnnstream.pipeline.features import AudioFeaturizer
    from rnnstream.pipeline.stats import RunningStats

    fz = AudioFeaturizer(cfg)
    regex = compile_label_pattern(LABEL_PATTERN)
    stats = RunningStats.empty(cfg.dim)
    examples = []
    for path in files:
        rec = apply_label_pattern(InputRecord(path), regex)
        with open(path, "rb") as fh:
            feats = fz.featurize(decode_audio(fh.read(), cfg, name=path))
        stats.update(feats)
        examples.append(Example(id=path, path=path, features=feats, label=rec.label, metadata=rec.metadata))
    os.makedirs(out_dir, exist_ok=True)
    write_examples_parquet(os.path.join(out_dir, "examples-00000-of-00001.parquet"), examples)
    stats.save(os.path.join(out_dir, "stats.json"))
    return {"inputs": len(files), "outputs": len(examples), "dead_letters": 0, "frames": stats.count, "stats": stats}


def _warm_worker() -> bool:
    """Run in each Dask worker before timing: the imports a long-lived worker has already done."""
    single_thread()
    import rnnstream.beam_jobs.featurize  # noqa: F401
    import rnnstream.pipeline.features  # noqa: F401

    return True


def _check(name: str, summary: dict, ref: dict, out_dir: str) -> None:
    import numpy as np

    from rnnstream.pipeline.stats import RunningStats

    got = (summary["inputs"], summary["outputs"], summary["dead_letters"], summary["frames"])
    want = (ref["inputs"], ref["outputs"], ref["dead_letters"], ref["frames"])
    if got != want:
        raise SystemExit(f"{name}: (inputs, outputs, dead letters, frames) = {got}, the loop gave {want}")
    with open(os.path.join(out_dir, "stats.json"), encoding="utf-8") as fh:
        stats = RunningStats.from_dict(json.load(fh))
    if not (np.allclose(stats.mean, ref["stats"].mean, rtol=1e-9, atol=1e-12)
            and np.allclose(stats.var, ref["stats"].var, rtol=1e-9, atol=1e-12)):
        raise SystemExit(f"{name}: stats.json differs from the loop's statistics")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_beam_featurize", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder of FSDD WAVs")
    parser.add_argument("--limit", type=int, default=0, help="use the first N files (0: all)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for multi_processing and Dask")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per mode (median reported)")
    parser.add_argument("--modes", default="loop,in_memory,multi_processing,dask")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = parser.parse_args(argv)

    data = Path(args.data)
    if not data.is_dir():
        print(f"bench_beam_featurize: skipped, no FSDD recordings at {data}")
        return 0
    single_thread()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    from rnnstream.beam_jobs.featurize import featurize_corpus
    from rnnstream.pipeline.config import FeatureConfig

    files = sorted(str(p) for p in data.glob("*.wav"))
    if args.limit:
        files = files[: args.limit]
    cfg = FeatureConfig.audio_default(sample_rate=8000, n_mels=40)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    tmp = tempfile.mkdtemp(prefix="bench_beam_")
    times: dict[str, list[float]] = {}
    notes: dict[str, str] = {}
    counts: dict[str, int] = {}

    _loop(files[:20], cfg, os.path.join(tmp, "warm"))  # imports and caches, as every Beam mode gets
    ref = None
    times["loop"] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ref = _loop(files, cfg, os.path.join(tmp, "loop"))
        times["loop"].append(time.perf_counter() - t0)
    assert ref is not None

    def beam_mode(name: str, pipeline_args: list[str]) -> None:
        times[name] = []
        for _ in range(args.repeats):
            out = os.path.join(tmp, name)
            t0 = time.perf_counter()
            summary = featurize_corpus(files, out, cfg, label_pattern=LABEL_PATTERN, pipeline_args=pipeline_args)
            times[name].append(time.perf_counter() - t0)
            _check(name, summary, ref, out)

    n = args.workers
    if "in_memory" in modes:
        small = files[:20]
        featurize_corpus(small, os.path.join(tmp, "warm_beam"), cfg, pipeline_args=["--direct_num_workers=1"])
        fixed = f"direct in_memory, {len(small)} files (fixed cost)"
        times[fixed] = []
        counts[fixed] = len(small)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            featurize_corpus(small, os.path.join(tmp, "small"), cfg, pipeline_args=["--direct_num_workers=1"])
            times[fixed].append(time.perf_counter() - t0)
        notes[fixed] = "pipeline construction, translation and start-up; not in the ratios"
        beam_mode("direct in_memory", ["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    if "multi_processing" in modes:
        beam_mode(f"direct multi_processing ({n} workers)",
                  [f"--direct_num_workers={n}", "--direct_running_mode=multi_processing"])
    if "dask" in modes:
        from distributed import LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.WARNING)
        started = time.perf_counter() - t0
        dask_args = ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}",
                     f"--dask_npartitions={4 * n}"]
        try:
            t0 = time.perf_counter()
            from distributed import Client

            with Client(cluster) as client:  # every worker imports torch/Beam once, as a long-lived cluster has
                client.run(_warm_worker)
            featurize_corpus(files[:20], os.path.join(tmp, "warm_dask"), cfg, pipeline_args=dask_args)
            warm = time.perf_counter() - t0
            name = f"dask LocalCluster ({n} workers)"
            beam_mode(name, dask_args)
            notes[name] = f"cluster start {started:.1f} s and warm-up (imports in workers, one small job) {warm:.1f} s not included"
        finally:
            cluster.close()

    loop_s = statistics.median(times["loop"])
    mem_s = statistics.median(times["direct in_memory"]) if "direct in_memory" in times else None
    rows = []
    for name, values in times.items():
        med = statistics.median(values)
        full = name not in counts
        rows.append([
            name,
            f"{med:.2f} ({min(values):.2f}-{max(values):.2f})",
            f"{counts.get(name, len(files)) / med:.0f}",
            f"{med / loop_s:.2f}x" if full else "-",
            f"{mem_s / med:.2f}x" if mem_s and full else "-",
            notes.get(name, ""),
        ])
    header = ["mode", "wall s, median (min-max)", "files/s", "time vs loop", "speed-up vs in_memory", "note"]
    table = markdown_table(header, rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = (
        f"{len(files)} FSDD WAVs (8 kHz), 40 log-mels, {args.repeats} timed run(s) per mode; "
        f"every Beam mode checked against the loop (counts and stats). "
        f"Load average at the end: {load:.1f} on {os.cpu_count()} cores (other jobs were running).\n"
        f"Targets: in_memory <= 1.3x the loop; multi_processing and Dask >= 1.6x faster than in_memory "
        f"({os.cpu_count()} cores).\n\n{table}\n"
    )
    print(text)
    if not args.no_write:
        write_section(SECTION, text, command="python -m bench.bench_beam_featurize")
    return 0


if __name__ == "__main__":
    sys.exit(main())

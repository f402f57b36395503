"""Beam stream job throughput: chunks per second through the DirectRunner, and the model's share of it.

Workload: ``--streams`` (1,000) interleaved audio streams of ``--chunks`` (10) chunks of 100 ms
(1,600 samples at 16 kHz, int16 base64 messages), shuffled within each stream's reorder window, fed as
a bounded replay (``rnnstream stream-job --input FILE``). Model: an untrained GRU classifier (2 x 64,
40 log-mels, 10 classes) saved as a checkpoint (TorchBackend). Modes:

* ``in_memory``: the DirectRunner in one process (``--direct_running_mode=in_memory``);
* ``multi_processing``: ``--direct_num_workers=2 --direct_running_mode=multi_processing``.

Each mode runs in a subprocess killed after ``--timeout`` seconds (reported as a timeout), so the
benchmark is bounded in time. Reported per mode: wall time of the job (pipeline construction, model
load and run; not the message file generation), chunks/s = applied chunks / wall, and the model share:
time inside ``backend.step`` (Beam counter ``model_step_us``) over the time inside the stateful DoFn's
element callbacks (``stateful_fn_us``), and over wall time x workers. Every run must balance
(``messages_in == chunks + duplicates + dead letters``) or the benchmark fails.

    python -m bench.bench_stream_job [--streams 1000] [--chunks 10] [--timeout 300] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._report import ROOT, markdown_table, write_section

SECTION = "Beam stream job (DirectRunner)"
RATE = 16000
CHUNK = 1600


def make_inputs(workdir: Path, streams: int, chunks: int, seed: int = 0) -> tuple[str, str, int]:
    """Write the model checkpoint and the message file; returns (model path, input path, messages)."""
    import numpy as np
    import torch

    from rnnstream.beam_jobs.messages import chunk, encode_message
    from rnnstream.models.checkpoint import save_checkpoint
    from rnnstream.models.rnn import rnn_classifier
    from rnnstream.pipeline.config import FeatureConfig

    torch.manual_seed(seed)
    cfg = FeatureConfig.audio_default(sample_rate=RATE, n_mels=40)
    model = rnn_classifier(input_dim=40, num_classes=10, hidden_size=64, num_layers=2)
    model_path = str(workdir / "model.pt")
    save_checkpoint(model_path, model, cfg, labels=[str(i) for i in range(10)])
    rng = np.random.default_rng(seed)
    lines: list[tuple[float, str]] = []
    t0 = 1_764_000_000.0
    for s in range(streams):
        order = np.arange(chunks)
        for i in range(0, chunks - 1, 2):  # swap neighbours at random: out of order, never far
            if rng.random() < 0.3:
                order[i], order[i + 1] = order[i + 1], order[i]
        for q in order:
            audio = (0.1 * rng.standard_normal(CHUNK)).astype(np.float32)
            et = t0 + q * 0.1 + s * 1e-4
            lines.append((et + rng.uniform(0, 0.05), encode_message(chunk(f"mic-{s}", int(q), et, audio=audio),
                                                                      audio_dtype="int16")))
    lines.sort(key=lambda x: x[0])  # interleaved by arrival time
    input_path = str(workdir / "messages.jsonl")
    with open(input_path, "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for _, line in lines)
    return model_path, input_path, len(lines)


def run_mode(model: str, input_path: str, out: str, beam_args: list[str]) -> dict:
    """One job run in this process (the subprocess entry point); returns timings and counters."""
    import logging

    from bench._report import single_thread
    from rnnstream.beam_jobs import stream_job

    single_thread()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    start = time.perf_counter()
    stream_job.run(["--model", model, "--input", input_path, "--output", out, "--chunk-size", str(CHUNK),
                    "--no-per-stream-metrics", *beam_args])
    wall = time.perf_counter() - start
    summary = json.loads(Path(out, "summary.json").read_text())
    return {"wall_s": wall, "summary": summary}


def _spawn(mode: str, model: str, input_path: str, out: str, timeout: float) -> dict:
    beam_args = ["--direct_running_mode=in_memory"] if mode == "in_memory" else [
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    code = (
        "import json, sys; from bench.bench_stream_job import run_mode; "
        f"print('RESULT ' + json.dumps(run_mode({model!r}, {input_path!r}, {out!r}, {beam_args!r})))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timeout": True}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"mode {mode} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_stream_job", description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per mode")
    ap.add_argument("--modes", default="in_memory,multi_processing")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args(argv)
    rows = []
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_stream_job_") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        model, input_path, n = make_inputs(work, args.streams, args.chunks)
        print(f"{n} messages ({args.streams} streams x {args.chunks} chunks of {CHUNK / RATE * 1000:.0f} ms), "
              f"written in {time.perf_counter() - t:.1f} s", flush=True)
        for mode in args.modes.split(","):
            res = _spawn(mode, model, input_path, str(work / f"out_{mode}"), args.timeout)
            if res.get("timeout"):
                rows.append([mode, n, f"timeout > {args.timeout:.0f} s", "-", "-", "-"])
                continue
            s, wall = res["summary"], res["wall_s"]
            if not s.get("balanced") or s["chunks"] != n:
                raise RuntimeError(f"{mode}: counts do not balance or chunks lost: {s}")
            workers = 2 if mode == "multi_processing" else 1
            model_s = s["model_step_us"] / 1e6
            fn_s = s["stateful_fn_us"] / 1e6
            rows.append([
                mode, s["chunks"], f"{wall:.1f}", f"{s['chunks'] / wall:.0f}",
                f"{model_s / fn_s:.0%} ({model_s:.1f} of {fn_s:.1f} s)" if fn_s else "-",
                f"{model_s / (wall * workers):.0%}",
            ])
            print(rows[-1], flush=True)
    header = ["mode", "chunks", "wall s", "chunks/s", "model / stateful DoFn", "model / (wall x workers)"]
    table = markdown_table(header, rows)
    print(table)
    note = (
        f"{args.streams} streams x {args.chunks} chunks of 100 ms (16 kHz int16, base64 JSON), neighbours swapped "
        "with p=0.3; GRU 2x64 over 40 log-mels (TorchBackend, 1 thread per process); wall includes pipeline "
        "start-up and model load. Model time is the Beam counter `model_step_us` (time in `backend.step`); "
        "the stateful DoFn time `stateful_fn_us` covers its element callbacks (restore/featurize/model/snapshot), "
        "not its timer callbacks nor Beam's own overhead. "
        f"1-min load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end on {os.cpu_count()} cores "
        "(other jobs were running: absolute numbers are pessimistic)."
    )
    if not args.no_write:
        write_section(SECTION, table + "\n\n" + note, command="python -m bench.bench_stream_job")
    return 0


if __name__ == "__main__":
    sys.exit(main())

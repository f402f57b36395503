"""Beam stream job throughput against Beam's own floor, measured side by side in one run.

Workload: ``--streams`` (1,000) interleaved audio streams of ``--chunks`` (10) chunks of 100 ms (1,600 samples at
16 kHz, int16 base64 JSON lines carrying ``sample_rate``), neighbours swapped with p=0.3, fed as a bounded replay
(``rnnstream stream-job --input FILE``, event-time timers). Model: an untrained GRU classifier (2 x 64, 40
log-mels, 10 classes), exported to ONNX and run with onnxruntime, one intra-op thread (``--backend onnx``, the
default) or as the PyTorch checkpoint (``--backend torch``).

Per runner mode (``in_memory``: Beam's FnApiRunner (``--runner=FnApiRunner``, what the DirectRunner picks) in one
process, with the job's default ``--local-state-cache-mb 0`` (no SDK state cache in that process);
``in_memory_beam_cache``: the same with the 100 MB cache Beam makes there by itself; ``multi_processing``: the
FnApiRunner with ``--direct_num_workers 2`` worker processes), in one subprocess, ``--repeats`` interleaved rounds
of:

* the job on the full replay and on a small one (``--small-streams`` streams, same chunks): the *marginal*
  cost per chunk is ``(cpu_full - cpu_small) / (chunks_full - chunks_small)`` in CPU seconds of the process and
  its ended children (the worker processes), so start-up, model load and fixed per-run costs cancel out and
  other jobs on the machine do not inflate it; chunks/s with start-up is ``chunks_full / wall_full``;
* floor (1): a bare keyed stateful ``DoFn`` on the same runner options, same keys and element count, whose
  elements carry the chunk's 3,200 int16 bytes and which reads and writes a float32 ``[2, 128]`` state per
  element (no timers, no outputs), its marginal cost measured the same way;
* floor (2): one ``StreamSession.push`` of the same 100 ms chunk on the same backend (median of 2,000 pushes).

floor = (1) + (2) per chunk; the job's ratio to it is marginal cost / floor, all in CPU time, so chunks per
CPU-second is chunks/s per core. Every job run must balance (``messages_in == chunks + duplicates + dead letters + resumes``) and
apply every chunk, or the benchmark fails.

    python -m bench.bench_stream_job [--streams 1000] [--chunks 10] [--repeats 3] [--backend onnx|torch]
        [--modes in_memory,in_memory_beam_cache,multi_processing] [--timeout 900] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._report import ROOT, command_line, markdown_table, write_section

SECTION = "Beam stream job (DirectRunner)"
RATE = 16000
CHUNK = 1600
FLOOR_RUNS = 3  # floor DoFn runs per replay size and round (median)
TARGET_CHUNKS_PER_CORE = 2000.0
TARGET_FLOOR_RATIO = 3.0
#: mode -> (Beam options, worker processes, in-process SDK state cache MB), the job's and the floor's alike. Pinned to
#: the FnApiRunner: the DirectRunner would first try the PrismRunner. The cache MB is the job's
#: ``--local-state-cache-mb`` (0, off, is its default) and wraps the floor's pipeline the same way
#: (``in_memory_state_cache``); ``in_memory_beam_cache`` runs both with the 100 MB cache Beam's in-process worker
#: makes by itself. Worker processes take their cache from ``--max_cache_memory_usage_mb`` (0 by default).
_IN_MEMORY = ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]
_MODE_ARGS = {"in_memory": (_IN_MEMORY, 1, 0),
              "in_memory_beam_cache": (_IN_MEMORY, 1, 100),
              "multi_processing": (["--runner=FnApiRunner", "--direct_num_workers=2",
                                    "--direct_running_mode=multi_processing"], 2, 0)}


def make_model(workdir: Path, backend: str, seed: int = 0) -> str:
    """An untrained GRU 2x64 over 40 log-mels, 10 classes: the checkpoint, or its ONNX export (``backend``)."""
    import torch
    from rnnstream.models.checkpoint import save_checkpoint
    from rnnstream.models.rnn import rnn_classifier
    from rnnstream.pipeline.config import FeatureConfig

    torch.manual_seed(seed)
    cfg = FeatureConfig.audio_default(sample_rate=RATE, n_mels=40)
    model = rnn_classifier(input_dim=40, num_classes=10, hidden_size=64, num_layers=2)
    ckpt = str(workdir / "model.pt")
    save_checkpoint(ckpt, model, cfg, labels=[str(i) for i in range(10)])
    if backend == "torch":
        return ckpt
    from rnnstream.export.onnx_export import export_onnx

    return export_onnx(ckpt, workdir / "model.onnx")


def make_messages(path: Path, streams: int, chunks: int, seed: int = 0) -> int:
    """Write the replay (interleaved by arrival time); returns the number of messages."""
    import numpy as np
    from rnnstream.beam_jobs.messages import chunk, encode_message

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
            msg = chunk(f"mic-{s}", int(q), et, audio=audio, sample_rate=RATE)
            lines.append((et + rng.uniform(0, 0.05), encode_message(msg, audio_dtype="int16")))
    lines.sort(key=lambda x: x[0])
    path.write_text("".join(line + "\n" for _, line in lines), encoding="utf-8")
    return len(lines)


# ----------------------------------------------------------------------------------------------
# In the subprocess (one runner mode)
# ----------------------------------------------------------------------------------------------


def _cpu_split() -> tuple[float, float]:
    """CPU seconds ``(this process, its children that ended)``: the runner and the multi-processing workers."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def _cpu() -> float:
    """CPU seconds of this process and of its children that ended (the multi-processing workers)."""
    return sum(_cpu_split())


def _job(model: str, input_path: str, out: str, beam_args: list[str], cache_mb: int) -> tuple[float, float, float, dict]:
    """``(wall s, CPU s, CPU s of the worker processes, summary)`` of one job run."""
    from rnnstream.beam_jobs import stream_job

    start, (own, kids) = time.perf_counter(), _cpu_split()
    stream_job.run(["--model", model, "--input", input_path, "--output", out, "--chunk-size", str(CHUNK),
                    "--no-per-stream-metrics", "--local-state-cache-mb", str(cache_mb), *beam_args])
    own_end, kids_end = _cpu_split()
    wall, workers = time.perf_counter() - start, kids_end - kids
    return wall, own_end - own + workers, workers, json.loads(Path(out, "summary.json").read_text())


def _floor_dofn(streams: int, chunks: int, beam_args: list[str], cache_mb: int) -> tuple[float, float]:
    """``(wall s, CPU s)`` of the bare keyed stateful DoFn pipeline (floor (1)) over ``streams x chunks`` elements."""
    import apache_beam as beam
    import numpy as np
    from apache_beam.coders import BytesCoder
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
    from rnnstream.beam_jobs.common import in_memory_state_cache
    from rnnstream.beam_jobs.session_state import StreamStateCoder  # noqa: F401  (same imports as the job)

    class StateFn(beam.DoFn):
        STATE = ReadModifyWriteStateSpec("h", BytesCoder())

        def process(self, element, state=beam.DoFn.StateParam(STATE)):  # type: ignore[no-untyped-def]
            raw = state.read()
            h = np.zeros((2, 128), np.float32) if raw is None else np.frombuffer(raw, np.float32).reshape(2, 128)
            h = h * 0.5 + float(len(element[1]))
            state.write(h.tobytes())
            return []

    payload = bytes(2 * CHUNK)
    start, cpu = time.perf_counter(), _cpu()
    with in_memory_state_cache(cache_mb), beam.Pipeline("DirectRunner", options=PipelineOptions(beam_args)) as p:
        _ = (p | beam.Create(list(range(streams)))
             | beam.FlatMap(lambda s: [(f"mic-{s}", payload)] * chunks)
             | beam.ParDo(StateFn()))
    return time.perf_counter() - start, _cpu() - cpu


def _push_us(model: str, input_path: str, pushes: int = 2000) -> tuple[float, float]:
    """Floor (2): one ``StreamSession.push`` of a 100 ms chunk of the replay, ``(median wall us, mean CPU us)``."""
    from rnnstream.beam_jobs.messages import parse_message
    from rnnstream.beam_jobs.stateful import load_model
    from rnnstream.pipeline.streaming import StreamSession

    with open(input_path, encoding="utf-8") as fh:
        audio = parse_message(fh.readline()).audio
    session = StreamSession(load_model(model), sample_rate=RATE)
    times = []
    cpu = time.process_time()
    for _ in range(pushes):
        t = time.perf_counter()
        session.push(audio)
        times.append(time.perf_counter() - t)
    return statistics.median(times[pushes // 10:]) * 1e6, (time.process_time() - cpu) / pushes * 1e6


def _check(summary: dict, n: int, where: str) -> None:
    if not summary.get("balanced") or summary["chunks"] != n:
        raise RuntimeError(f"{where}: counts do not balance or chunks were not applied: {summary}")


def run_mode(model: str, inputs: dict, workdir: str, mode: str, repeats: int) -> dict:
    """The subprocess entry point: ``repeats`` rounds of job (full, small), floor DoFn (full, small), pushes."""
    import logging

    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    if not model.endswith(".onnx"):
        from bench._report import single_thread

        single_thread()
    beam_args, _, cache_mb = _MODE_ARGS[mode]
    rounds = []
    for r in range(repeats):
        row: dict = {"load_before": os.getloadavg()[0]}
        for size in ("full", "small"):
            path, n, streams = inputs[size]
            wall, cpu, workers, summary = _job(model, path, f"{workdir}/out_{mode}_{size}_{r}", beam_args, cache_mb)
            _check(summary, n, f"{mode} {size} round {r}")
            row[f"job_{size}"], row[f"job_cpu_{size}"], row[f"summary_{size}"] = wall, cpu, summary
            row[f"job_workers_cpu_{size}"] = workers
            # the floor is cheap and its start-up varies (multi_processing: +-0.2 CPU-s per run, as large as the
            # floor itself over 9,000 chunks): the median of FLOOR_RUNS runs per size
            runs = [_floor_dofn(streams, n // streams, beam_args, cache_mb) for _ in range(FLOOR_RUNS)]
            row[f"floor_{size}"] = statistics.median(w for w, _ in runs)
            row[f"floor_cpu_{size}"] = statistics.median(c for _, c in runs)
        row["push_us"], row["push_cpu_us"] = _push_us(model, inputs["full"][0])
        row["load_after"] = os.getloadavg()[0]
        rounds.append(row)
        print("ROUND " + json.dumps({k: v for k, v in row.items() if not k.startswith("summary")}), flush=True)
    return {"rounds": rounds}


# ----------------------------------------------------------------------------------------------
# The parent: inputs, one subprocess per mode, the table
# ----------------------------------------------------------------------------------------------


def _spawn(mode: str, model: str, inputs: dict, workdir: str, repeats: int, timeout: float) -> dict:
    code = ("import json; from bench.bench_stream_job import run_mode; "
            f"print('RESULT ' + json.dumps(run_mode({model!r}, {inputs!r}, {workdir!r}, {mode!r}, {repeats})))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"timeout": True}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"mode {mode} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def _spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def summarize_mode(mode: str, res: dict, n_full: int, n_small: int) -> tuple[list[object], dict]:
    """One table row and the medians the verdict needs (costs in CPU microseconds per chunk, marginal)."""
    workers = _MODE_ARGS[mode][1]
    dn = n_full - n_small
    rs = res["rounds"]
    with_start = [n_full / r["job_full"] for r in rs]
    job_us = [(r["job_cpu_full"] - r["job_cpu_small"]) / dn * 1e6 for r in rs]
    workers_us = [(r["job_workers_cpu_full"] - r["job_workers_cpu_small"]) / dn * 1e6 for r in rs]
    beam_us = [(r["floor_cpu_full"] - r["floor_cpu_small"]) / dn * 1e6 for r in rs]
    floor_us = [b + r["push_cpu_us"] for b, r in zip(beam_us, rs)]
    ratio = [m / f for m, f in zip(job_us, floor_us)]
    per_core = [1e6 / m for m in job_us]
    s = rs[-1]["summary_full"]
    model_share = s["model_step_us"] / s["stateful_fn_us"] if s.get("stateful_fn_us") else float("nan")
    loads = [r["load_before"] for r in rs] + [r["load_after"] for r in rs]
    row = [mode, workers, n_full, _spread([r["job_full"] for r in rs], "{:.1f}"), _spread(with_start),
           _spread(per_core), _spread(job_us), _spread(workers_us) if workers > 1 else "-", _spread(beam_us),
           _spread([r["push_cpu_us"] for r in rs]),
           _spread(floor_us), _spread(ratio, "{:.2f}"), f"{model_share:.0%}", f"{min(loads):.1f}-{max(loads):.1f}"]
    return row, {"per_core": statistics.median(per_core), "ratio": statistics.median(ratio),
                 "with_start_per_core": statistics.median(with_start) / workers}


def _verdict(mode: str, v: dict) -> str:
    core = "met" if v["per_core"] >= TARGET_CHUNKS_PER_CORE else "NOT met"
    ratio = "met" if v["ratio"] <= TARGET_FLOOR_RATIO else "NOT met"
    return (f"{mode}: {v['per_core']:.0f} chunks per CPU-second (= per core) after start-up (target >= {TARGET_CHUNKS_PER_CORE:.0f}: "
            f"{core}; with start-up {v['with_start_per_core']:.0f}), {v['ratio']:.2f}x the floor "
            f"(target <= {TARGET_FLOOR_RATIO:.0f}x: {ratio}).")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_stream_job", description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--small-streams", type=int, default=100)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per mode")
    ap.add_argument("--modes", default="in_memory,in_memory_beam_cache,multi_processing",
                    help=f"comma-separated, of {', '.join(_MODE_ARGS)}")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args(argv)
    load_start = os.getloadavg()[0]
    rows, verdicts = [], []
    with tempfile.TemporaryDirectory(prefix="bench_stream_job_") as tmp:
        work = Path(tmp)
        model = make_model(work, args.backend)
        inputs = {}
        for size, streams in (("full", args.streams), ("small", args.small_streams)):
            path = work / f"messages_{size}.jsonl"
            inputs[size] = (str(path), make_messages(path, streams, args.chunks), streams)
        print(f"model {Path(model).name}; {inputs['full'][1]} + {inputs['small'][1]} messages; "
              f"load {load_start:.2f}", flush=True)
        for mode in args.modes.split(","):
            res = _spawn(mode, model, inputs, tmp, args.repeats, args.timeout)
            if res.get("timeout"):
                rows.append([mode, "-", inputs["full"][1], f"timeout > {args.timeout:.0f} s"] + ["-"] * 10)
                verdicts.append(f"{mode}: timed out (targets NOT met).")
                continue
            row, v = summarize_mode(mode, res, inputs["full"][1], inputs["small"][1])
            rows.append(row)
            verdicts.append(_verdict(mode, v))
            print(row, verdicts[-1], flush=True)
    header = ["runner (DirectRunner mode)", "workers", "chunks", "wall s (full run)", "chunks/s with start-up (wall)",
              "chunks per CPU-s after start-up", "job CPU us/chunk", "of which worker processes",
              "floor (1) DoFn CPU us/elem", "floor (2) push CPU us", "floor CPU us", "job / floor",
              "model / stateful DoFn", "load avg (1 min)"]
    table = markdown_table(header, rows)
    note = _note(args, inputs, load_start) + "\n\n" + "\n".join(f"- {v}" for v in verdicts)
    print(table + "\n\n" + note)
    if not args.no_write:
        write_section(SECTION, table + "\n\n" + note, command=command_line("bench.bench_stream_job", argv))
    return 0


def _note(args: argparse.Namespace, inputs: dict, load_start: float) -> str:
    backend = ("ONNX export, onnxruntime CPU, 1 intra-op thread" if args.backend == "onnx"
               else "PyTorch checkpoint, TorchBackend, 1 thread")
    return (
        f"Runner: Beam's FnApiRunner, pinned (`--runner=FnApiRunner`; the DirectRunner picks it for these pipelines "
        f"after trying the PrismRunner) (`--direct_running_mode=in_memory`: one process, with the job's default "
        "`--local-state-cache-mb 0`, no SDK state cache; `in_memory_beam_cache`: the same with the 100 MB state cache "
        "Beam's in-process worker makes by itself, job and floor alike; "
        f"`multi_processing`: `--direct_num_workers=2` worker processes). {args.streams} streams x {args.chunks} "
        f"chunks of 100 ms (16 kHz int16, base64 JSON), neighbours swapped with p=0.3, bounded replay with "
        f"event-time timers; GRU 2x64 over 40 log-mels ({backend}). Cells: median (min-max) over {args.repeats} "
        "interleaved rounds. *After start-up*: the marginal CPU cost, (CPU time of the full replay - CPU time of a "
        f"{args.small_streams}-stream replay) / ({inputs['full'][1]} - {inputs['small'][1]}) chunks, CPU time of the "
        "benchmark process and its ended children (the workers), so chunks per CPU-second = chunks/s per core "
        "(*of which worker processes*: the part in the workers, measured the same way; the rest is the runner's "
        "process, which holds the state and moves every element between stages; the FnApiRunner runs the stateful "
        "stage on one worker at a time, see docs/stream_job.md); "
        "*with start-up*: chunks / wall of the full run (pipeline construction, model load, the output files; "
        "wall time suffers from other jobs on the machine). Floor (1): a bare keyed stateful DoFn on the same "
        "runner mode, same keys and element count, each element the chunk's 3,200 int16 bytes, reading and writing "
        "a float32 [2, 128] state (no timers), marginal CPU cost measured the same way (the median of "
        f"{FLOOR_RUNS} runs per replay size, each round); floor (2): CPU time of one "
        "`StreamSession.push` of the same chunk on the same backend (mean of 2,000). floor = (1) + (2). Model share: Beam "
        "counters `model_step_us` / `stateful_fn_us` (last full run). Load average: the 1-minute load average before "
        f"and after each round (min-max), {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end on "
        f"{os.cpu_count()} cores; above 2, other jobs shared the CPUs and the numbers are pessimistic."
    )


if __name__ == "__main__":
    sys.exit(main())

"""Load benchmark of ``rnnstream serve`` with its command-line defaults, over loopback, on this machine.

::

    python -m bench.bench_serve [--levels 1,64,256,1000] [--seconds 10] [--repeats 3] [--quick] [--no-write]

The server is the ``rnnstream serve`` command (a 2-layer 128-unit GRU over 80 log-mel bins, untrained,
exported to ONNX), started with its defaults: as many worker processes as cores, one onnxruntime thread each,
max batch 64, max wait 10 ms (``SERVE_DEFAULTS``). The load generator (:mod:`bench._serve_loadgen`) is a separate
process on the same machine; its CPU share is reported beside the server's. Rows:

* ``realtime``: N streams each send a 100 ms chunk every 100 ms; latency = sent -> prediction received. A level
  *keeps up* when every chunk got its prediction and p99 < 100 ms. Binary replies, and one level with JSON.
* ``saturate``: N streams each keep ``--window`` chunks outstanding: throughput at saturation, also with
  ``--workers 1`` and with ``--max-batch 1`` (one server each) for the gain of workers and of batching.
* the target rows (the top real-time level and saturation with the defaults) run ``--repeats`` times in all,
  interleaved, each with its compute floor measured again right after it: their verdicts use the median, with
  the spread beside it (the same code gave 2.95x and 3.03x server / floor in two runs an hour apart);
* ``idle``: N streams started and held without chunks (a server with ``--max-streams 10000``): its resident
  memory (all processes) with them open, less before any connection, per stream.

Server CPU is the user + system time of the server's processes (supervisor and workers) per prediction;
"batch us/chunk" is the part in the batch threads (featurize + onnxruntime, ``rnnstream_serve_batch_cpu_seconds``).
The **compute floor** is measured in this process in the same run, without a server: one
``AudioFeaturizer.step_batch`` plus one onnxruntime step over a batch of the level's mean batch size, per chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from bench._report import ROOT, markdown_table
from rnnstream.serving.cli import SERVE_DEFAULTS

LABELS = [f"class{i}" for i in range(12)]
SECTION = "Streaming server"


def build_model(workdir: str) -> str:
    """The benchmark model: a 2x128 GRU over 80 log-mel bins, 12 classes, untrained, as ONNX."""
    import torch

    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.models.rnn import rnn_classifier
    from rnnstream.pipeline.config import FeatureConfig

    torch.manual_seed(0)
    fc = FeatureConfig.audio_default(n_mels=80)
    model = rnn_classifier(input_dim=80, num_classes=len(LABELS), hidden_size=128, num_layers=2, cell="gru")
    return str(export_onnx(model, os.path.join(workdir, "gru2x128.onnx"), feature_config=fc, labels=LABELS))


class ServerProcess:
    """``rnnstream serve --model M --port 0 [flags]`` as a child process: its port, CPU, memory and metrics."""

    def __init__(self, model: str, flags: list[str], provider: str = "cpu"):
        import psutil

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.flags = flags
        self.proc = subprocess.Popen([sys.executable, "-m", "rnnstream", "--quiet", "serve", "--model", model,
                                      "--port", "0", "--provider", provider, *flags],
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        deadline = time.monotonic() + 120
        self.port = 0
        while time.monotonic() < deadline and not self.port:
            line = self.proc.stderr.readline()  # type: ignore[union-attr]
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"rnnstream serve {flags} exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            found = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
            self.port = int(found.group(1)) if found else 0
        if not self.port:
            self.stop()
            raise RuntimeError(f"rnnstream serve {flags} did not start in 120 s")
        self.ps = psutil.Process(self.proc.pid)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def processes(self) -> list[Any]:
        return [self.ps, *self.ps.children(recursive=True)]

    def cpu_s(self) -> float:
        return sum(p.cpu_times().user + p.cpu_times().system for p in self.processes())

    def rss_bytes(self) -> int:
        return sum(p.memory_info().rss for p in self.processes())

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for name in ("predictions_total", "batch_size_sum", "batch_size_count", "batch_cpu_seconds_total"):
            found = re.search(rf"^rnnstream_serve_{name} ([0-9.e+-]+)$", text, re.M)
            out[name] = float(found.group(1)) if found else 0.0
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_loadgen(opts: dict[str, Any], on_started: Any = None) -> dict[str, Any]:
    """Run the load generator; ``on_started()`` is called once all its streams are open."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bench._serve_loadgen", json.dumps(opts)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    result = None
    for line in proc.stdout:  # type: ignore[union-attr]
        msg = json.loads(line)
        if msg.get("event") == "started":
            if on_started is not None:
                on_started()
        else:
            result = msg
    err = proc.stderr.read()  # type: ignore[union-attr]
    if proc.wait() != 0 or result is None:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err[-2000:]}")
    return result


def run_level(server: ServerProcess, mode: str, streams: int, args: argparse.Namespace, replies: str = "binary",
              label: str = "") -> dict[str, Any]:
    opts = {"url": server.url, "streams": streams, "seconds": args.seconds, "mode": mode, "window": args.window,
            "streams_per_connection": args.streams_per_connection, "replies": replies}
    cpu0, m0, t0 = server.cpu_s(), server.metrics(), time.perf_counter()
    res = run_loadgen(opts)
    wall = time.perf_counter() - t0
    cpu, m1 = server.cpu_s() - cpu0, server.metrics()
    d = {k: m1[k] - m0[k] for k in m0}
    preds = d["predictions_total"]
    res.update(mode=mode, server=label or " ".join(server.flags) or "defaults", replies=replies,
               mean_batch=d["batch_size_sum"] / d["batch_size_count"] if d["batch_size_count"] else float("nan"),
               server_cpu_share=cpu / wall, loadavg=os.getloadavg()[0],
               server_us=1e6 * cpu / preds if preds else float("nan"),
               batch_us=1e6 * d["batch_cpu_seconds_total"] / preds if preds else float("nan"))
    if mode == "realtime":
        res["keeps_up"] = bool(res["lost"] == 0 and res["n_errors"] == 0 and res["p99_ms"] < 100.0)
    return res


def idle_memory(model: str, counts: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Resident memory per open idle stream, one fresh server per count."""
    out = []
    for n in counts:
        server = ServerProcess(model, ["--max-streams", str(max(n, 1024)), "--idle-timeout", "0"], args.provider)
        try:
            time.sleep(1.0)
            base = server.rss_bytes()
            seen: dict[str, int] = {}

            def measure() -> None:
                time.sleep(2.0)
                seen["rss"] = server.rss_bytes()

            opts = {"url": server.url, "streams": n, "seconds": 4.0, "mode": "idle", "window": 0,
                    "streams_per_connection": args.streams_per_connection, "replies": "binary"}
            run_loadgen(opts, on_started=measure)
            out.append({"streams": n, "base_mib": base / 2**20, "rss_mib": seen["rss"] / 2**20,
                        "per_stream_kb": (seen["rss"] - base) / n / 1000.0})
        finally:
            server.stop()
    return out


def compute_floor(model: str, batch: int, seconds: float = 1.0, provider: str = "cpu") -> float:
    """CPU us per chunk of one ``AudioFeaturizer.step_batch`` + one onnxruntime step over ``batch`` streams (a
    ``--raw-audio`` graph: its one step over the batch's samples, featurizing included)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from rnnstream.api import load_backend
    from rnnstream.pipeline.features import AudioFeaturizer
    from rnnstream.pipeline.model_info import FRONTEND_STATE

    backend = load_backend(model, provider=provider, threads=1)
    fz = AudioFeaturizer(backend.info.feature_config)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((batch, 1600))).astype(np.float32)
    carries = np.zeros((batch, fz.cfg.context), np.float32)
    states = backend.info.initial_states(batch)
    raw = backend.info.input_kind == "audio"  # a --raw-audio graph featurizes inside onnxruntime
    n, start = 0, time.thread_time()
    with threadpool_limits(limits=1, user_api="blas"):
        while n < 3 or time.thread_time() - start < seconds:
            if raw:
                _, states = backend.step(x, {**states, FRONTEND_STATE: carries})
                states.pop(FRONTEND_STATE)
            else:
                feats, carries = fz.step_batch(x, carries)
                _, states = backend.step(feats, states)
            n += 1
    return 1e6 * (time.thread_time() - start) / (n * batch)


HEADER = ["mode", "server", "replies", "streams", "conns", "offered chunks/s", "chunks/s", "p50 ms", "p99 ms",
          "max ms", "mean batch", "server CPU (cores)", "server CPU us/chunk", "batch us/chunk", "compute floor us/chunk",
          "server / floor", "loadgen CPU", "lost", "errors", "keeps up", "load avg"]


def _fmt(r: dict[str, Any]) -> list[Any]:
    offered = f"{r['offered']:.0f}" if r.get("offered") else "-"
    keeps = {True: "yes", False: "no"}.get(r.get("keeps_up"), "-")
    return [r["mode"], r["server"], r["replies"], r["streams"], r["connections"], offered, f"{r['throughput']:.0f}",
            f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}", f"{r['mean_batch']:.1f}",
            f"{r['server_cpu_share']:.2f}", f"{r['server_us']:.0f}", f"{r['batch_us']:.0f}", f"{r['floor_us']:.0f}",
            f"{r['server_us'] / r['floor_us']:.2f}x", f"{100 * r['cpu_share']:.0f}%", r["lost"], r["n_errors"], keeps,
            f"{r['loadavg']:.1f}"]


def _with_floor(res: dict[str, Any], model: str, floors: dict[int, float], provider: str,
                fresh: bool = False) -> dict[str, Any]:
    """The row with its compute floor at its mean batch size (``fresh``: measured again now, for a repeat)."""
    batch = max(1, round(res["mean_batch"])) if res["mean_batch"] == res["mean_batch"] else 1
    if fresh or batch not in floors:
        floors[batch] = compute_floor(model, batch, provider=provider)
    res["floor_us"] = floors[batch]
    return res


#: Issue 14's targets: server CPU per chunk at the top real-time level at most this many times the floor, and
#: saturation throughput at least this many chunks/s (3x the 2,352 measured before the multi-worker server).
TARGET_RATIO = 2.5
TARGET_SATURATION = 3 * 2352


def _target_rows(args: argparse.Namespace) -> list[tuple[list[str], str, str, int, str]]:
    """The target rows' plan entries: the top real-time level and saturation, with the defaults."""
    top = max(args.levels, default=0)
    return ([([], "defaults", "realtime", top, "binary")] if top else []) + \
        [([], "defaults", "saturate", args.saturate_streams, "binary")]


def run_all(args: argparse.Namespace, model: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every row of the table (each server started with its flags), then the idle-memory rows."""
    plan: list[tuple[list[str], str, str, int, str]] = []  # (server flags, label, mode, streams, replies)
    plan += [([], "defaults", "realtime", n, "binary") for n in args.levels]
    plan += [([], "defaults", "realtime", n, "json") for n in args.levels_json]
    plan += [([], "defaults", "saturate", args.saturate_streams, "binary")]
    if not args.quick:
        plan += [(["--workers", "1"], "--workers 1", "saturate", args.saturate_streams, "binary"),
                 (["--max-batch", "1"], "--max-batch 1", "saturate", args.saturate_streams, "binary")]
    rows, floors, server, flags_now = [], {}, None, None
    first = len(plan)
    targets = _target_rows(args)
    plan += targets * max(0, args.repeats - 1)  # the target rows again, interleaved, for their spread
    try:
        for k, entry in enumerate(plan):
            flags, label, mode, n, replies = entry
            if flags != flags_now:
                if server is not None:
                    server.stop()
                server, flags_now = ServerProcess(model, flags, args.provider), flags
            res = _with_floor(run_level(server, mode, n, args, replies, label), model, floors, args.provider,
                              fresh=entry in targets)
            res["repeat"] = k >= first
            rows.append(res)
            print(markdown_table(HEADER, [_fmt(res)]).splitlines()[-1], flush=True)
    finally:
        if server is not None:
            server.stop()
    return rows, idle_memory(model, args.idle, args)


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})" if len(values) > 1 \
        else f"{values[0]:{fmt}}"


def target_lines(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[str]:
    """The targets' verdicts from every run of the target rows: median (min-max) over the runs."""
    top = max(args.levels, default=0)
    rt = [r for r in rows if r["mode"] == "realtime" and r["server"] == "defaults" and r["replies"] == "binary"
          and r["streams"] == top]
    sat = [r for r in rows if r["mode"] == "saturate" and r["server"] == "defaults"]
    lines = []
    if rt:
        ratios = [r["server_us"] / r["floor_us"] for r in rt]
        kept = sum(bool(r["keeps_up"]) for r in rt)
        lines += [
            f"- {top} real-time streams, {len(rt)} run(s): kept up in {kept}; p99 {_spread([r['p99_ms'] for r in rt], '.1f')} "
            f"ms; server CPU {_spread([r['server_us'] for r in rt], '.0f')} us/chunk, compute floor "
            f"{_spread([r['floor_us'] for r in rt], '.0f')} us/chunk (measured after each run), server / floor "
            f"{_spread(ratios, '.2f')}x (target <= {TARGET_RATIO}x): "
            f"{'met' if statistics.median(ratios) <= TARGET_RATIO else 'MISSED'}"]
    if sat:
        tput = [r["throughput"] for r in sat]
        lines += [
            f"- saturation, {len(sat)} run(s): {_spread(tput, '.0f')} chunks/s (target >= {TARGET_SATURATION}): "
            f"{'met' if statistics.median(tput) >= TARGET_SATURATION else 'MISSED'}; server / floor "
            f"{_spread([r['server_us'] / r['floor_us'] for r in sat], '.2f')}x"]
    return lines


PLOT = ROOT / "docs" / "img" / "bench_serve.png"


def plot_levels(rows: list[dict[str, Any]], path: os.PathLike[str] | str) -> str:
    """A PNG of the real-time levels (binary replies, defaults): server CPU and the compute floor per chunk, and
    p50/p99 latency, against the number of streams; every run of a level is a point, the line joins medians."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rt = [r for r in rows if r["mode"] == "realtime" and r["server"] == "defaults" and r["replies"] == "binary"]
    levels = sorted({r["streams"] for r in rt})
    med = {n: {k: statistics.median(r[k] for r in rt if r["streams"] == n) for k in ("server_us", "floor_us",
                                                                                        "p50_ms", "p99_ms")}
           for n in levels}
    fig, (cpu, lat) = plt.subplots(1, 2, figsize=(10, 3.8))
    cpu.plot(levels, [med[n]["server_us"] for n in levels], "o-", label="server CPU per chunk")
    cpu.plot(levels, [med[n]["floor_us"] for n in levels], "s--", label="compute floor (same batch size)")
    cpu.plot(levels, [TARGET_RATIO * med[n]["floor_us"] for n in levels], ":", color="gray",
             label=f"{TARGET_RATIO}x the floor (target)")
    cpu.scatter([r["streams"] for r in rt], [r["server_us"] for r in rt], s=10, color="C0")
    cpu.set(xscale="log", yscale="log", xlabel="real-time streams (100 ms chunks)", ylabel="us per chunk",
            title="server CPU per chunk")
    lat.plot(levels, [med[n]["p50_ms"] for n in levels], "o-", label="p50")
    lat.plot(levels, [med[n]["p99_ms"] for n in levels], "s-", label="p99")
    lat.axhline(100, color="gray", ls=":", label="100 ms (target p99)")
    lat.set(xscale="log", xlabel="real-time streams (100 ms chunks)", ylabel="ms, chunk sent -> prediction",
            title="latency")
    for ax in (cpu, lat):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return os.fspath(path)


def summary(args: argparse.Namespace, rows: list[dict[str, Any]], idle: list[dict[str, Any]]) -> str:
    first = [r for r in rows if not r.get("repeat")]  # the table's rows; repeats feed the target lines
    rt = [r for r in first if r["mode"] == "realtime" and r["server"] == "defaults" and r["replies"] == "binary"]
    best = max((r["streams"] for r in rt if r["keeps_up"]), default=0)
    sat = {r["server"]: r for r in first if r["mode"] == "saturate"}
    d = sat.get("defaults")
    lines = [
        f"`rnnstream serve --model gru2x128.onnx --port 0 --provider {args.provider}` with its other defaults "
        f"({os.cpu_count()} worker processes here, "
        f"one onnxruntime thread each, max batch {SERVE_DEFAULTS['max_batch']}, max wait "
        f"{SERVE_DEFAULTS['max_wait_ms']:g} ms); the model is a 2-layer 128-unit GRU over 80 "
        "log-mel bins, 12 classes (untrained, ONNX). Load generator: a separate process on the same machine, "
        f"{args.streams_per_connection} streams per WebSocket connection, 100 ms chunks of float32 audio, "
        f"{args.seconds:g} s per level; \"loadgen CPU\" in % of one core. \"server CPU (cores)\" = CPU seconds of all "
        "server processes / wall seconds. \"compute floor\": one `AudioFeaturizer.step_batch` + one onnxruntime "
        "step at the row's mean batch size, measured in the benchmark's own process in the same run (no server). "
        "\"load avg\": the machine's 1-minute load average after the row; above 2 other jobs shared the 2 cores.",
        "",
        f"Largest real-time level kept up (every chunk answered, p99 < 100 ms): **{best} streams**.",
    ]
    if d is not None:
        lines.append(f"Saturation ({args.saturate_streams} streams x {args.window} outstanding): **{d['throughput']:.0f} "
                     f"chunks/s** with the defaults, {d['server_us'] / d['floor_us']:.2f}x the compute floor per chunk.")
        for label in ("--workers 1", "--max-batch 1"):
            if label in sat:
                lines.append(f"Defaults vs `{label}`: {d['throughput'] / sat[label]['throughput']:.2f}x the throughput.")
    targets = target_lines(args, rows)
    if targets:
        lines += ["", f"Targets (the target rows run {args.repeats} time(s), interleaved; median (min-max)):", *targets, ""]
    for m in idle:
        lines.append(f"Idle streams: {m['streams']} open -> {m['per_stream_kb']:.1f} KB per stream "
                     f"(resident memory of all server processes {m['base_mib']:.0f} -> {m['rss_mib']:.0f} MiB; "
                     "connections included, 16 streams each).")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.bench_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", default="1,64,256,512,768,1000", help="real-time stream counts (binary replies)")
    p.add_argument("--levels-json", default="1000", help="real-time stream counts with JSON replies")
    p.add_argument("--saturate-streams", type=int, default=512)
    p.add_argument("--window", type=int, default=4, help="outstanding chunks per stream when saturating")
    p.add_argument("--idle", default="1000,10000", help="idle stream counts for the memory rows")
    p.add_argument("--seconds", type=float, default=10.0, help="load per level (s)")
    p.add_argument("--streams-per-connection", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of the target rows (the top real-time level, saturation with the defaults), for the spread")
    p.add_argument("--quick", action="store_true", help="short smoke run: levels 1,64; 3 s each; 100 idle streams")
    p.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu",
                   help="onnxruntime provider of the servers and the compute floor (cuda: its own BENCHMARKS.md section)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]  # noqa: E731
    args.levels, args.levels_json, args.idle = ints(args.levels), ints(args.levels_json), ints(args.idle)
    if args.quick:
        args.levels, args.levels_json, args.seconds, args.saturate_streams, args.idle = [1, 64], [], 3.0, 64, [100]
        args.repeats = 1
    from bench._report import machine_info, write_section

    print(f"machine: {machine_info()}", flush=True)
    print(markdown_table(HEADER, []), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = build_model(tmp)
        rows, idle = run_all(args, model)
    table = markdown_table(HEADER, [_fmt(r) for r in rows if not r.get("repeat")])
    repeats = [_fmt(r) for r in rows if r.get("repeat")]
    text = summary(args, rows, idle) + "\n" + table
    if repeats:
        text += "\n\nRepeats of the target rows (in the target lines above):\n\n" + markdown_table(HEADER, repeats)
    print("\n" + text)
    if not args.no_write:
        if args.provider == "cpu":
            plot_levels(rows, PLOT)
            text += f"\n\n![server CPU per chunk and latency against the number of streams]({PLOT.relative_to(ROOT)})\n"
        section = SECTION if args.provider == "cpu" else f"{SECTION} ({args.provider})"
        write_section(section, text, "python -m bench.bench_serve " + " ".join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

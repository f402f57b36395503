"""Load benchmark of the streaming server over loopback: real-time streams, latency, batching gain.

::

    python -m bench.bench_serve [--levels 1,64,256,1000] [--seconds 10] [--quick] [--no-write]

The server (2-layer 128-unit GRU over 80 log-mel bins, untrained, ONNX backend with one intra-op
thread, one batch worker thread) runs in this process; the load generator runs in a separate process
(``python -m bench.bench_serve --loadgen``) on the same machine, so its CPU share is reported beside the
server's. Each level runs ``--seconds`` of load (at most ~20 s with setup and drain):

* ``realtime``: N streams each send a 100 ms chunk (1600 float32 samples) every 100 ms, start times
  spread over the first 100 ms; latency is chunk sent -> its prediction received, measured by the load
  generator. A level *keeps up* when every chunk got its prediction and p99 < 100 ms.
* ``saturate``: N streams each keep ``--window`` chunks outstanding (send the next when a prediction
  arrives): the server's throughput at saturation, batching on against ``max_batch = 1``.

Writes the table into BENCHMARKS.md (section "Streaming server") unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import tempfile
import time
from typing import Any

LABELS = [f"class{i}" for i in range(12)]
CHUNK_SAMPLES = 1600
RATE = 16000


# ----------------------------------------------------------------------------------------------------
# The load generator (a separate process)
# ----------------------------------------------------------------------------------------------------


async def _loadgen(opts: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    url, n, seconds = opts["url"], opts["streams"], opts["seconds"]
    mode, window, per_conn = opts["mode"], opts["window"], opts["streams_per_connection"]
    chunk_s = CHUNK_SAMPLES / RATE
    rng = np.random.default_rng(0)
    payloads = [(0.1 * rng.standard_normal(CHUNK_SAMPLES)).astype("<f4").tobytes() for _ in range(8)]
    header = struct.Struct("<II")
    n_conns = (n + per_conn - 1) // per_conn
    conns = [await connect(url, compression=None, max_size=None, open_timeout=30, ping_interval=None)
             for _ in range(n_conns)]
    for ws in conns:
        json.loads(await ws.recv())  # hello
    sent: list[dict[tuple[int, int], float]] = [{} for _ in conns]
    latencies: list[float] = []
    errors: list[str] = []
    next_seq = [0] * n
    received = 0
    measure_from = 0.0
    stop_sending = asyncio.Event()

    def conn_of(i: int) -> int:
        return i // per_conn

    dead: set[int] = set()

    async def send(i: int) -> None:
        c = conn_of(i)
        if c in dead:
            return
        seq = next_seq[i]
        next_seq[i] += 1
        sent[c][(i, seq)] = time.perf_counter()
        try:
            await conns[c].send(header.pack(i, seq) + payloads[(i + seq) % len(payloads)])
        except ConnectionClosed as exc:  # the server refused (e.g. queue_full 1013): counted, not fatal
            dead.add(c)
            errors.append(f"connection {c} closed: {exc}")

    async def reader(c: int) -> None:
        nonlocal received
        ws = conns[c]
        try:
            async for raw in ws:
                now = time.perf_counter()
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "prediction":
                    t_sent = sent[c].pop((msg["channel"], msg["seq"]), None)
                    if t_sent is not None and t_sent >= measure_from:
                        latencies.append(now - t_sent)
                        received += 1
                    if mode == "saturate" and not stop_sending.is_set():
                        await send(msg["channel"])
                elif kind == "error":
                    errors.append(f"{msg.get('code')}: {msg.get('message')}")
        except ConnectionClosed as exc:
            if not stop_sending.is_set():
                errors.append(f"connection closed: {exc}")

    # start every stream (channel = global stream index), wait for all "started"
    for i in range(n):
        await conns[conn_of(i)].send(json.dumps({"type": "start", "channel": i, "stream": f"lg-{os.getpid()}-{i}",
                                                    "sample_rate": RATE}))
    for c, ws in enumerate(conns):
        count = min(per_conn, n - c * per_conn)
        while count:
            msg = json.loads(await ws.recv())
            if msg.get("type") == "started":
                count -= 1
            elif msg.get("type") == "error":
                raise RuntimeError(f"start refused: {msg}")
    readers = [asyncio.create_task(reader(c)) for c in range(n_conns)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    warmup = min(1.0, seconds / 5)
    measure_from = t0 + warmup
    offsets = np.linspace(0, chunk_s, n, endpoint=False)
    if mode == "realtime":
        due = t0 + offsets
        end = t0 + seconds
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            for i in np.flatnonzero(due <= now):
                await send(int(i))
                due[i] += chunk_s
            await asyncio.sleep(max(0.0, min(float(due.min()), end) - time.perf_counter(), 0.002))
    else:
        for i in range(n):
            for _ in range(window):
                await send(i)
        await asyncio.sleep(seconds)
    stop_sending.set()
    t_stop = time.perf_counter()
    drain_deadline = t_stop + 5.0
    while any(s for c, s in enumerate(sent) if c not in dead) and time.perf_counter() < drain_deadline:
        await asyncio.sleep(0.01)
    measured_s = (t_stop if mode == "saturate" else time.perf_counter()) - measure_from
    lost = sum(len(s) for s in sent)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - t0
    for ws in conns:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)
    lat = np.sort(np.asarray(latencies)) * 1000.0
    q = (lambda p: float(np.percentile(lat, p))) if lat.size else (lambda p: float("nan"))
    total_sent = sum(next_seq)
    return {
        "streams": n, "connections": n_conns, "sent": total_sent, "received": received, "lost": lost,
        "errors": errors[:5], "n_errors": len(errors),
        "throughput": received / measured_s if mode == "saturate" else received / max(measured_s, 1e-9),
        "offered": n / chunk_s if mode == "realtime" else None,
        "p50_ms": q(50), "p99_ms": q(99), "max_ms": float(lat.max()) if lat.size else float("nan"),
        "cpu_s": cpu, "wall_s": wall, "cpu_share": cpu / wall,
    }


def loadgen_main(argv: list[str]) -> int:
    opts = json.loads(argv[0])
    result = asyncio.run(_loadgen(opts))
    print(json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------------
# The server side (this process)
# ----------------------------------------------------------------------------------------------------


def build_backend(workdir: str) -> tuple[Any, str]:
    """A 2x128 GRU over 80 log-mel bins, exported to ONNX (falls back to PyTorch if export fails)."""
    import torch

    from rnnstream.models.rnn import rnn_classifier
    from rnnstream.pipeline.config import FeatureConfig

    torch.manual_seed(0)
    fc = FeatureConfig.audio_default(n_mels=80)
    model = rnn_classifier(input_dim=80, num_classes=len(LABELS), hidden_size=128, num_layers=2, cell="gru")
    try:
        from rnnstream.export.onnx_export import export_onnx
        from rnnstream.api import load_backend

        path = export_onnx(model, os.path.join(workdir, "gru2x128.onnx"), feature_config=fc, labels=LABELS)
        return load_backend(path, provider="cpu", threads=1), "onnxruntime"
    except ImportError:
        from rnnstream.models.backend import TorchBackend

        torch.set_num_threads(1)
        return TorchBackend(model, fc, LABELS), "torch"


async def run_level(backend: Any, mode: str, streams: int, max_batch: int, args: argparse.Namespace) -> dict[str, Any]:
    from rnnstream.serving.server import ServerConfig, StreamServer

    cfg = ServerConfig(port=0, http_port=None, max_streams=max(streams, 1), max_batch=max_batch,
                       max_wait_ms=args.max_wait_ms, max_queue=max(32, int(10 * args.seconds) + 2 * args.window),
                       idle_timeout_s=0,
                       max_outbound=1 << 16, ping_interval_s=None,
                       batch_threads=args.workers)
    server = await StreamServer(backend, cfg).start()
    opts = {"url": server.url, "streams": streams, "seconds": args.seconds, "mode": mode, "window": args.window,
            "streams_per_connection": args.streams_per_connection}
    cpu0, t0 = time.process_time(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bench_serve", "--loadgen", json.dumps(opts),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), args.seconds + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    server_cpu = time.process_time() - cpu0
    wall = time.perf_counter() - t0
    load = os.getloadavg()[0]
    m = server.metrics
    predictions = m.value("rnnstream_serve_predictions_total")
    worker_us = 1e6 * server.batcher.worker_cpu_s / predictions if predictions else float("nan")
    server_us = 1e6 * server_cpu / predictions if predictions else float("nan")
    batches = m.value("rnnstream_serve_batch_size_count")
    mean_batch = m.value("rnnstream_serve_batch_size_sum") / batches if batches else float("nan")
    await server.shutdown()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode()[-2000:]}")
    res = json.loads(out.decode().strip().splitlines()[-1])
    res.update(mode=mode, max_batch=max_batch, mean_batch=mean_batch, batches=int(batches),
               server_cpu_share=server_cpu / wall, loadavg=load, server_us=server_us, worker_us=worker_us)
    if mode == "realtime":
        res["keeps_up"] = bool(res["lost"] == 0 and res["n_errors"] == 0 and res["p99_ms"] < 100.0)
    return res


def _fmt(res: dict[str, Any]) -> list[Any]:
    offered = f"{res['offered']:.0f}" if res.get("offered") else "-"
    keeps = {True: "yes", False: "no"}.get(res.get("keeps_up"), "-")
    return [res["mode"], res["streams"], res["connections"], res["max_batch"], offered, f"{res['throughput']:.0f}",
            f"{res['p50_ms']:.1f}", f"{res['p99_ms']:.1f}", f"{res['max_ms']:.1f}", f"{res['mean_batch']:.1f}",
            f"{100 * res['server_cpu_share']:.0f}%", f"{res['server_us']:.0f}", f"{res['worker_us']:.0f}",
            f"{100 * res['cpu_share']:.0f}%", res["lost"], res["n_errors"],
            keeps, f"{res['loadavg']:.1f}"]


HEADER = ["mode", "streams", "conns", "max batch", "offered chunks/s", "chunks/s", "p50 ms", "p99 ms", "max ms",
          "mean batch", "server CPU", "server CPU us/chunk", "worker us/chunk", "loadgen CPU", "lost", "errors", "keeps up", "load avg"]


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    from bench._report import markdown_table

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        backend, kind = build_backend(tmp)
        args.backend_kind = kind
        plan = [("realtime", n, args.max_batch) for n in args.levels]
        plan += [("realtime", n, 1) for n in args.levels_batch1]
        plan += [("saturate", args.saturate_streams, args.max_batch), ("saturate", args.saturate_streams, 1)]
        results = []
        for mode, n, mb in plan:
            res = await run_level(backend, mode, n, mb, args)
            results.append(res)
            print(markdown_table(HEADER, [_fmt(res)]).splitlines()[-1], flush=True)
        return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.bench_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", default="1,64,256,1000", help="real-time stream counts, batching on")
    p.add_argument("--levels-batch1", default="64,256", help="real-time stream counts with max batch 1")
    p.add_argument("--saturate-streams", type=int, default=256)
    p.add_argument("--window", type=int, default=4, help="outstanding chunks per stream when saturating")
    p.add_argument("--seconds", type=float, default=10.0, help="load per level (s)")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--streams-per-connection", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="server batch worker threads")
    p.add_argument("--quick", action="store_true", help="short smoke run: levels 1,64; 3 s each")
    p.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--loadgen":
        return loadgen_main(argv[1:])
    args = build_parser().parse_args(argv)
    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]  # noqa: E731
    args.levels, args.levels_batch1 = ints(args.levels), ints(args.levels_batch1)
    if args.quick:
        args.levels, args.levels_batch1, args.seconds, args.saturate_streams = [1, 64], [], 3.0, 64
    from bench._report import machine_info, markdown_table, write_section

    print(f"machine: {machine_info()}", flush=True)
    print(markdown_table(HEADER, []), flush=True)
    results = asyncio.run(run_all(args))
    sat = {r["max_batch"]: r for r in results if r["mode"] == "saturate"}
    on, off = sat.get(args.max_batch), sat.get(1)
    gain = on["throughput"] / off["throughput"] if on and off else float("nan")
    cpu_gain = off["server_us"] / on["server_us"] if on and off else float("nan")
    per_core = 1e6 / on["server_us"] if on else float("nan")
    rt = [r for r in results if r["mode"] == "realtime" and r["max_batch"] == args.max_batch]
    best = max((r["streams"] for r in rt if r["keeps_up"]), default=0)
    summary = (
        f"Backend: {args.backend_kind}, 2-layer 128-unit GRU, 80 log-mel bins, 12 classes (untrained); "
        f"{args.workers} batch worker thread(s), 1 intra-op thread; max wait {args.max_wait_ms:g} ms; {args.streams_per_connection} streams "
        f"per WebSocket connection; 100 ms chunks of float32 audio; {args.seconds:g} s per level; load generator in "
        f"a separate process on the same machine (its CPU share in % of one core). \"server CPU us/chunk\" is the "
        f"server process's CPU time per prediction (event loop + batch worker), \"worker us/chunk\" the part spent "
        f"in step_streams (featurize + onnxruntime). \"load avg\" is the machine's 1-minute load average after the "
        f"level: above 2 on this 2-core machine, other jobs took CPU from both processes and the numbers understate "
        f"the server. Each stream may queue a whole level's chunks (max queue {int(10 * args.seconds) + 2 * args.window}), "
        f"so a server that falls behind shows growing latency instead of closing streams with 1013; \"lost\" counts "
        f"chunks still unanswered 5 s after the load stopped. At 1 stream the CPU per chunk is mostly the server's "
        f"fixed cost (event loop, keep-alive, level set-up) spread over few chunks.\n\n"
        f"Largest real-time level kept up (every chunk answered, p99 < 100 ms): {best} streams. At saturation "
        f"({args.saturate_streams} streams, {args.window} chunks outstanding each) batching gave {gain:.2f}x the "
        f"throughput of max batch 1 and {cpu_gain:.2f}x less server CPU per chunk; at its CPU cost the batched "
        f"server needs one core per {per_core:.0f} chunks/s (= {per_core / 10:.0f} real-time streams of 100 ms "
        f"chunks per core).\n"
    )
    table = markdown_table(HEADER, [_fmt(r) for r in results])
    print("\n" + table + "\n\n" + summary)
    if not args.no_write:
        write_section("Streaming server", summary + "\n" + table, "python -m bench.bench_serve " + " ".join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

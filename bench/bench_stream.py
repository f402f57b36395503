"""Streaming latency on one thread: PyTorch vs onnxruntime (features / raw-audio graph) vs Silero VAD.

A 2-layer, 128-unit GRU tagger on 80 log-mel bands (16 kHz, 25 ms window, 10 ms hop) streams 100 ms
chunks of audio (10 frames each) through :class:`rnnstream.pipeline.streaming.StreamSession` over

* (a) ``TorchBackend`` (PyTorch eager; features from the Python featurizer),
* (b) ``OnnxBackend`` on the features graph (Python featurizer + onnxruntime),
* (c) ``OnnxBackend`` on the ``--raw-audio`` graph (featurizer inside the graph),

and, for reference, (d) the Silero VAD ONNX model shipped inside the ``silero-vad`` package, run with
onnxruntime directly on 512-sample (32 ms) chunks with its ``state`` and 64-sample context inputs, as
the package's own ``OnnxWrapper`` does. All four run in the same process, interleaved round by round,
with torch and onnxruntime pinned to one thread. Per-chunk latency is wall time of one ``push`` (one
Silero call); the real-time factor is processing time / audio time. Rounds give the median and spread.

    python -m bench.bench_stream [--seconds 20] [--rounds 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench._report import fmt_ms, markdown_table, median_spread, single_thread, write_section

SECTION = "Streaming runtime: PyTorch vs onnxruntime vs Silero VAD (bench_stream)"
RATE = 16000
CHUNK_MS = 100
SILERO_CHUNK = 512  # samples at 16 kHz = 32 ms
SILERO_CONTEXT = 64


def bench_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: noise plus a gliding tone with a syllable-rate envelope, float32 [N]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.2 * t))
    tone = np.sin(2 * np.pi * (180 + 60 * np.sin(2 * np.pi * 0.5 * t)) * t)
    return (0.01 * rng.standard_normal(n) + 0.3 * env * tone).astype(np.float32)


def silero_path() -> str:
    """The ONNX file the ``silero-vad`` package loads by default (``load_silero_vad(onnx=True)``)."""
    import silero_vad

    path = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"silero-vad ONNX model not found at {path}")
    return str(path)


class SileroStream:
    """Silero VAD v5+ streaming with onnxruntime, mirroring ``silero_vad.utils_vad.OnnxWrapper.__call__``."""

    def __init__(self, path: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.sr = np.array(RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros((1, SILERO_CONTEXT), np.float32)

    def __call__(self, chunk: np.ndarray) -> float:
        x = np.concatenate((self.context, chunk[None]), axis=1)
        out, self.state = self.session.run(None, {"input": x, "state": self.state, "sr": self.sr})
        self.context = x[:, -SILERO_CONTEXT:]
        return float(out[0, 0])


def build_backends(tmp: str) -> dict[str, object]:
    """The GRU (random weights, plausible statistics) as TorchBackend and both ONNX graphs."""
    import torch

    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.pipeline.onnx_backend import OnnxBackend
    from rnnstream.models.backend import TorchBackend
    from rnnstream.models.rnn import rnn_tagger
    from rnnstream.pipeline.config import FeatureConfig
    from rnnstream.pipeline.features import AudioFeaturizer

    fc = FeatureConfig.audio_default(sample_rate=RATE, n_mels=80)
    feats = AudioFeaturizer(fc).featurize(bench_signal(5.0, seed=1))
    torch.manual_seed(0)
    model = rnn_tagger(input_dim=80, num_classes=2, cell="gru", hidden_size=128, num_layers=2).eval()
    with torch.no_grad():
        model.feat_mean.copy_(torch.from_numpy(feats.mean(0)))
        model.feat_std.copy_(torch.from_numpy(feats.std(0) + 1e-3))
    labels = ["silence", "speech"]
    feat_path = export_onnx(model, os.path.join(tmp, "gru.onnx"), fc, labels)
    raw_path = export_onnx(model, os.path.join(tmp, "gru_raw.onnx"), fc, labels, raw_audio=True)
    return {
        "torch": TorchBackend(model, fc, labels),
        "onnx": OnnxBackend(feat_path, provider="cpu", threads=1, inter_threads=1),
        "onnx_raw": OnnxBackend(raw_path, provider="cpu", threads=1, inter_threads=1),
    }


def time_chunks(fn: Callable[[np.ndarray], object], chunks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Wall time and CPU time (of this thread, where one-thread torch and onnxruntime run) of ``fn(chunk)`` per chunk, seconds, each ``[len(chunks)]``.

    CPU time is what the work costs; wall time adds waiting for the CPU when other processes compete.
    """
    wall, cpu = np.empty(len(chunks)), np.empty(len(chunks))
    clock, cpu_clock = time.perf_counter, time.thread_time
    for i, c in enumerate(chunks):
        t0, c0 = clock(), cpu_clock()
        fn(c)
        cpu[i] = cpu_clock() - c0
        wall[i] = clock() - t0
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_stream", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="audio streamed per round (default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; median and spread over them (default %(default)s)")
    p.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = p.parse_args(argv)
    single_thread()
    from rnnstream.pipeline.streaming import StreamSession

    signal = bench_signal(args.seconds)
    chunk = RATE * CHUNK_MS // 1000
    chunks = [signal[i : i + chunk] for i in range(0, signal.size - chunk + 1, chunk)]
    silero_chunks = [signal[i : i + SILERO_CHUNK] for i in range(0, signal.size - SILERO_CHUNK + 1, SILERO_CHUNK)]
    audio_s = len(chunks) * chunk / RATE
    silero_s = len(silero_chunks) * SILERO_CHUNK / RATE
    with tempfile.TemporaryDirectory() as tmp:
        backends = build_backends(tmp)
        silero = SileroStream(silero_path())
        names = {
            "torch": "(a) PyTorch eager: featurizer + TorchBackend",
            "onnx": "(b) onnxruntime: featurizer + features graph",
            "onnx_raw": "(c) onnxruntime: --raw-audio graph",
            "silero": "(d) Silero VAD (onnxruntime, 32 ms chunks)",
        }
        lat: dict[str, list[np.ndarray]] = {k: [] for k in names}
        rtf: dict[str, list[float]] = {k: [] for k in names}  # CPU time / audio time
        wall_rtf: dict[str, list[float]] = {k: [] for k in names}
        # Warm-up, then rounds with the variants interleaved so drift hits all alike.
        for key in ("torch", "onnx", "onnx_raw"):
            time_chunks(StreamSession(backends[key], sample_rate=RATE).push, chunks[:20])
        time_chunks(silero, silero_chunks[:20])
        for _ in range(args.rounds):
            for key in ("torch", "onnx", "onnx_raw", "silero"):
                if key == "silero":
                    silero.reset()
                    wall, cpu = time_chunks(silero, silero_chunks)
                    seconds = silero_s
                else:
                    wall, cpu = time_chunks(StreamSession(backends[key], sample_rate=RATE).push, chunks)
                    seconds = audio_s
                rtf[key].append(float(cpu.sum()) / seconds)
                wall_rtf[key].append(float(wall.sum()) / seconds)
                lat[key].append(wall)
    rows = []
    for key, label in names.items():
        p50 = [float(np.percentile(t, 50)) * 1e6 for t in lat[key]]
        p99 = [float(np.percentile(t, 99)) * 1e6 for t in lat[key]]
        ratio = [a / b for a, b in zip(rtf[key], rtf["silero"])]
        rows.append([
            label,
            "32" if key == "silero" else str(CHUNK_MS),
            fmt_ms(*median_spread(p50), digits=0),
            fmt_ms(*median_spread(p99), digits=0),
            fmt_ms(*median_spread([x * 1e3 for x in rtf[key]]), digits=2),
            fmt_ms(*median_spread([x * 1e3 for x in wall_rtf[key]]), digits=2),
            fmt_ms(*median_spread(ratio), digits=2),
        ])
    header = ["variant", "chunk ms", "p50 us/chunk (wall)", "p99 us/chunk (wall)", "RTF x1e-3 (CPU)",
              "RTF x1e-3 (wall)", "RTF / Silero (CPU)"]
    raw_ratio = median_spread([a / b for a, b in zip(rtf["onnx_raw"], rtf["silero"])])
    speedup = median_spread([a / b for a, b in zip(rtf["torch"], rtf["onnx_raw"])])
    verdict = "met" if raw_ratio[0] <= 1 / 3 else "NOT met"
    table = markdown_table(header, rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    notes = (
        f"2-layer 128-unit GRU, 80 log-mel bands, 16 kHz, {CHUNK_MS} ms chunks (10 frames); {args.seconds:g} s of "
        f"audio per round, {args.rounds} rounds, one thread (torch and onnxruntime intra/inter-op = 1). "
        "Cells: median (min-max) over rounds. Latency is the wall time of one `StreamSession.push` "
        "(featurizer, backend, bookkeeping) or one Silero `session.run` with its context/state handling. "
        "RTF = processing time / audio time, from CPU time of the streaming thread (robust to other processes competing "
        f"for the CPU; load average {load:.1f} at the end of this run) and from wall time.\n\n"
        f"Target: `--raw-audio` streaming RTF <= 1/3 of Silero's: CPU-time ratio {raw_ratio[0]:.2f} "
        f"({raw_ratio[1]:.2f}-{raw_ratio[2]:.2f}) -> {verdict}. "
        f"PyTorch eager / `--raw-audio` onnxruntime (CPU RTF): {speedup[0]:.1f}x ({speedup[1]:.1f}-{speedup[2]:.1f})."
    )
    print(table)
    print()
    print(notes)
    if not args.no_write:
        write_section(SECTION, table + "\n\n" + notes, command="python -m bench.bench_stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())

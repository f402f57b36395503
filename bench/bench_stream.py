"""Streaming latency on one thread: PyTorch vs onnxruntime (features / raw-audio graph) vs Silero VAD.

A 2-layer, 128-unit GRU tagger on 80 log-mel bands (16 kHz, 25 ms window, 10 ms hop) streams 100 ms
chunks of audio (10 frames each) through :class:`rnnstream.pipeline.streaming.StreamSession` over

* (a) ``TorchBackend`` (PyTorch eager; features from the Python featurizer),
* (b) ``OnnxBackend`` on the features graph (Python featurizer + onnxruntime),
* (c) ``OnnxBackend`` on the ``--raw-audio`` graph (featurizer inside the graph),
* (e), (f) the same ``--raw-audio`` graph for a 2-layer 128-unit LSTM, float and ``--quantize int8`` (onnxruntime
  runs LSTMs as ``DynamicQuantizeLSTM``, int8 matrix products; it has no int8 GRU kernel, so an int8 GRU graph
  computes its cell in float),
* (g), (h) the GRU's and the int8 LSTM's ``--raw-audio`` graphs at a low frame rate (``stack=3``: the recurrent
  layers read 3 frames side by side, one step per 30 ms, as Silero steps once per 32 ms),

and, for reference, (d) the Silero VAD ONNX model shipped inside the ``silero-vad`` package, run with
onnxruntime directly on 512-sample (32 ms) chunks with its ``state`` and 64-sample context inputs, as
the package's own ``OnnxWrapper`` does. All four run in the same process, side by side chunk by chunk (each
100 ms chunk through every variant, the order rotating, then Silero over the same 100 ms of audio), so a
machine whose load changes slows them alike; torch and onnxruntime are pinned to one thread. Per-chunk latency is wall time of one ``push`` (one
Silero call); the real-time factor is processing time / audio time. Rounds give the median and spread.

A second table splits a raw-audio chunk's CPU time, timed in the same loop: bare ``session.run`` of each graph
(the features graph is norm + GRU + head alone, so the difference is the in-graph front end), the NumPy
featurizer, ``OnnxBackend.step``, and ``StreamSession.push`` over a backend that computes nothing (the runtime's
own Python per chunk), each against Silero's CPU time per 100 ms of audio.

    python -m bench.bench_stream [--seconds 5] [--rounds 20] [--no-write]
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
BLOCK = 10  # chunks per block of the side-by-side loop (1 s of audio)


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
    """The GRU (random weights, plausible statistics) as TorchBackend and both ONNX graphs; the LSTM's raw-audio
    graph, float and int8."""
    import torch

    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.export.quantize import quantize_int8
    from rnnstream.pipeline.onnx_backend import OnnxBackend
    from rnnstream.models.backend import TorchBackend
    from rnnstream.models.rnn import rnn_tagger
    from rnnstream.pipeline.config import FeatureConfig
    from rnnstream.pipeline.features import AudioFeaturizer

    fc = FeatureConfig.audio_default(sample_rate=RATE, n_mels=80)
    fc3 = FeatureConfig.audio_default(sample_rate=RATE, n_mels=80, stack=3)
    labels = ["silence", "speech"]

    def tagger(cell: str, config: FeatureConfig = fc) -> torch.nn.Module:
        feats = AudioFeaturizer(config).featurize(bench_signal(5.0, seed=1))
        torch.manual_seed(0)
        model = rnn_tagger(input_dim=config.dim, num_classes=2, cell=cell, hidden_size=128, num_layers=2).eval()
        with torch.no_grad():
            model.feat_mean.copy_(torch.from_numpy(feats.mean(0)))
            model.feat_std.copy_(torch.from_numpy(feats.std(0) + 1e-3))
        return model

    def int8(path: str) -> str:
        quantize_int8(path, path.replace(".onnx", "_int8.onnx"))
        return path.replace(".onnx", "_int8.onnx")

    def onnx(path: str) -> OnnxBackend:
        return OnnxBackend(path, provider="cpu", threads=1, inter_threads=1)

    gru, lstm = tagger("gru"), tagger("lstm")
    lstm_raw = export_onnx(lstm, os.path.join(tmp, "lstm_raw.onnx"), fc, labels, raw_audio=True)
    gru3_raw = export_onnx(tagger("gru", fc3), os.path.join(tmp, "gru3_raw.onnx"), fc3, labels, raw_audio=True)
    lstm3_raw = export_onnx(tagger("lstm", fc3), os.path.join(tmp, "lstm3_raw.onnx"), fc3, labels, raw_audio=True)
    return {
        "torch": TorchBackend(gru, fc, labels),
        "onnx": onnx(export_onnx(gru, os.path.join(tmp, "gru.onnx"), fc, labels)),
        "onnx_raw": onnx(export_onnx(gru, os.path.join(tmp, "gru_raw.onnx"), fc, labels, raw_audio=True)),
        "lstm_raw": onnx(lstm_raw),
        "lstm_raw_int8": onnx(int8(lstm_raw)),
        "gru3_raw": onnx(gru3_raw),
        "lstm3_raw_int8": onnx(int8(lstm3_raw)),
    }


class NoopBackend:
    """A backend that computes nothing (zeros out, states unchanged): ``StreamSession.push`` over it is the
    runtime's own per-chunk Python cost (codec, carry, state bookkeeping, result), without featurizer or model."""

    def __init__(self, info: object):
        self.info = info

    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        frames = x.shape[1] // (self.info.feature_config.audio.hop_length if x.ndim == 2 else 1)  # type: ignore[attr-defined]
        return np.zeros((x.shape[0], frames, self.info.model_config.output_dim), np.float32), states  # type: ignore[attr-defined]


def breakdown_parts(backends: dict[str, object], chunks: list[np.ndarray]) -> dict[str, Callable[[np.ndarray], object]]:
    """Per-chunk callables for the cost breakdown: bare ``session.run`` of each graph (states carried), the
    NumPy featurizer alone, ``OnnxBackend.step`` on the raw graph, and ``push`` over :class:`NoopBackend`."""
    from rnnstream.pipeline.features import AudioFeaturizer
    from rnnstream.pipeline.model_info import FRONTEND_STATE
    from rnnstream.pipeline.streaming import StreamSession

    raw, feat = backends["onnx_raw"], backends["onnx"]
    fz = AudioFeaturizer(feat.info.feature_config)  # type: ignore[attr-defined]
    feats = {id(c): fz.featurize(c)[None] for c in chunks}  # 10 frames each (the carry does not change the cost)

    def bare(backend: object, make_x: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], object]:
        sess, names = backend.session, backend.info.graph_inputs()  # type: ignore[attr-defined]
        outs, shapes = backend.info.graph_outputs(), backend._state_shapes()  # type: ignore[attr-defined]
        states = [np.zeros((1, *shape), np.float32) for shape in shapes.values()]

        def run(chunk: np.ndarray) -> object:
            nonlocal states
            res = sess.run(outs, dict(zip(names, [make_x(chunk), *states])))
            states = res[1:]
            return res

        return run

    raw_states = raw.info.initial_states(1)  # type: ignore[attr-defined]
    raw_states = {FRONTEND_STATE: np.zeros((1, raw.info.feature_config.audio.context), np.float32), **raw_states}  # type: ignore[attr-defined]
    return {
        "run_raw": bare(raw, lambda c: c[None]),
        "run_feat": bare(feat, lambda c: feats[id(c)]),
        "run_raw_lstm_int8": bare(backends["lstm_raw_int8"], lambda c: c[None]),
        "featurize": lambda c: fz.step(c, fz.initial_state()),
        "step_raw": lambda c: raw.step(c[None], raw_states),  # type: ignore[attr-defined]
        "noop_push": StreamSession(NoopBackend(raw.info), sample_rate=RATE).push,  # type: ignore[attr-defined]
    }


BREAKDOWN = {
    "run_feat": "features graph `session.run` alone (norm + 2x128 GRU + head; 10 frames)",
    "run_raw": "--raw-audio graph `session.run` alone (front end + the same)",
    "run_raw_lstm_int8": "--raw-audio graph of the int8 LSTM 2x128 `session.run` alone",
    "featurize": "NumPy featurizer alone (`AudioFeaturizer.step`, 1600 samples)",
    "step_raw": "`OnnxBackend.step` on the --raw-audio graph (input/state checks + run)",
    "noop_push": "`StreamSession.push` over a backend that computes nothing (runtime Python per chunk)",
}
VARIANTS = {
    "torch": "(a) PyTorch eager: featurizer + TorchBackend",
    "onnx": "(b) onnxruntime: featurizer + features graph",
    "onnx_raw": "(c) onnxruntime: --raw-audio graph",
    "silero": "(d) Silero VAD (onnxruntime, 32 ms chunks)",
    "lstm_raw": "(e) onnxruntime: --raw-audio graph, LSTM 2x128",
    "lstm_raw_int8": "(f) onnxruntime: --raw-audio graph, LSTM 2x128, --quantize int8",
    "gru3_raw": "(g) onnxruntime: --raw-audio graph, GRU 2x128, stack=3 (one step per 30 ms)",
    "lstm3_raw_int8": "(h) onnxruntime: --raw-audio graph, LSTM 2x128, --quantize int8, stack=3",
}
STREAMED = [k for k in VARIANTS if k != "silero"]


def _timed(fn: Callable[[np.ndarray], object], x: np.ndarray, wall: list[float], cpu: list[float]) -> None:
    t0, c0 = time.perf_counter(), time.thread_time()
    fn(x)
    cpu.append(time.thread_time() - c0)
    wall.append(time.perf_counter() - t0)


def one_round(calls: dict[str, Callable[[np.ndarray], object]], silero: SileroStream, chunks: list[np.ndarray],
              signal: np.ndarray, block: int = BLOCK) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One pass over ``chunks`` in blocks of ``block`` chunks: each block goes through every variant and part in
    turn (the order rotating from block to block), chunk by chunk, then through Silero (the same audio in 32 ms
    calls). Variants stay warm within a block and alternate often, so a changing machine load hits all alike.

    Returns ``{name: (wall seconds [calls], CPU seconds [calls])}``; Silero's entries are per 32 ms call.
    """
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in [*calls, "silero"]}
    keys, chunk, pos = list(calls), chunks[0].size, 0
    silero.reset()
    for b, start in enumerate(range(0, len(chunks), block)):
        group = chunks[start : start + block]
        for j in range(len(keys)):
            key = keys[(b + j) % len(keys)]
            for c in group:
                _timed(calls[key], c, *times[key])
        while pos + SILERO_CHUNK <= (start + len(group)) * chunk:
            _timed(silero, signal[pos : pos + SILERO_CHUNK], *times["silero"])
            pos += SILERO_CHUNK
    return {k: (np.array(w), np.array(c)) for k, (w, c) in times.items()}


def run_rounds(args: argparse.Namespace, tmp: str) -> tuple[dict[str, list[np.ndarray]], dict[str, list[float]],
                                                            dict[str, list[float]], dict[str, list[float]]]:
    """Warm-up, then ``args.rounds`` rounds of :func:`one_round` (fresh streams each round).

    Returns ``(wall latencies per chunk, CPU RTF, wall RTF, breakdown CPU us per 100 ms chunk)``, one list entry
    per round.
    """
    from rnnstream.pipeline.streaming import StreamSession

    signal = bench_signal(args.seconds)
    chunk = RATE * CHUNK_MS // 1000
    chunks = [signal[i : i + chunk] for i in range(0, signal.size - chunk + 1, chunk)]
    backends = build_backends(tmp)
    silero = SileroStream(silero_path())
    parts = breakdown_parts(backends, chunks)
    lat: dict[str, list[np.ndarray]] = {k: [] for k in VARIANTS}
    rtf: dict[str, list[float]] = {k: [] for k in VARIANTS}  # CPU time / audio time
    wall_rtf: dict[str, list[float]] = {k: [] for k in VARIANTS}
    parts_us: dict[str, list[float]] = {k: [] for k in parts}
    for r in range(args.rounds + 1):  # round 0 warms up
        calls = {k: StreamSession(backends[k], sample_rate=RATE).push for k in STREAMED}
        times = one_round({**calls, **parts}, silero, chunks[:20] if r == 0 else chunks, signal)
        if r == 0:
            continue
        for key in VARIANTS:
            wall, cpu = times[key]
            audio_s = wall.size * (SILERO_CHUNK if key == "silero" else chunk) / RATE
            rtf[key].append(float(cpu.sum()) / audio_s)
            wall_rtf[key].append(float(wall.sum()) / audio_s)
            lat[key].append(wall)
        for key in parts:
            parts_us[key].append(float(np.median(times[key][1])) * 1e6)
    return lat, rtf, wall_rtf, parts_us


def main_table(lat: dict[str, list[np.ndarray]], rtf: dict[str, list[float]], wall_rtf: dict[str, list[float]]) -> str:
    rows = []
    for key, label in VARIANTS.items():
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
    return markdown_table(header, rows)


def breakdown_table(parts_us: dict[str, list[float]], rtf: dict[str, list[float]]) -> str:
    """CPU us per 100 ms chunk of each part, and as a fraction of Silero's CPU per 100 ms of audio (same round)."""
    silero_us = [r * CHUNK_MS * 1e3 for r in rtf["silero"]]  # CPU us per 100 ms of audio
    rows = [["Silero VAD, per 100 ms of audio (the round's CPU time)", fmt_ms(*median_spread(silero_us), digits=0),
             "1.00"]]
    rows.append(["budget: 1/3 of Silero's", fmt_ms(*median_spread([u / 3 for u in silero_us]), digits=0), "0.33"])
    for key, label in BREAKDOWN.items():
        frac = [u / s for u, s in zip(parts_us[key], silero_us)]
        rows.append([label, fmt_ms(*median_spread(parts_us[key]), digits=0), fmt_ms(*median_spread(frac), digits=2)])
    front = [a - b for a, b in zip(parts_us["run_raw"], parts_us["run_feat"])]
    rows.append(["in-graph front end (raw run - features run)", fmt_ms(*median_spread(front), digits=0),
                 fmt_ms(*median_spread([u / s for u, s in zip(front, silero_us)]), digits=2)])
    return markdown_table(["part (one stream, 100 ms chunk)", "CPU us (parts: median of the round's chunks)",
                           "/ Silero per 100 ms"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_stream", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="audio streamed per round (default %(default)s)")
    p.add_argument("--rounds", type=int, default=20, help="rounds; median and spread over them (default %(default)s)")
    p.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = p.parse_args(argv)
    single_thread()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        lat, rtf, wall_rtf, parts_us = run_rounds(args, tmp)
    table, parts = main_table(lat, rtf, wall_rtf), breakdown_table(parts_us, rtf)

    def ratio(key: str) -> tuple[float, float, float]:
        return median_spread([a / b for a, b in zip(rtf[key], rtf["silero"])])

    def verdict(r: tuple[float, float, float]) -> str:
        return f"{r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f}) -> {'met' if r[0] <= 1 / 3 else 'NOT met'}"

    raw_ratio, feat_ratio = ratio("onnx_raw"), ratio("onnx")
    speedup = median_spread([a / b for a, b in zip(rtf["torch"], rtf["onnx_raw"])])
    notes = (
        f"2-layer 128-unit GRU, 80 log-mel bands, 16 kHz, {CHUNK_MS} ms chunks (10 frames); {args.seconds:g} s of "
        f"audio per round, {args.rounds} rounds, one thread (torch and onnxruntime intra/inter-op = 1). "
        "Cells: median (min-max) over rounds. Latency is the wall time of one `StreamSession.push` "
        "(featurizer, backend, bookkeeping) or one Silero `session.run` with its context/state handling. "
        "RTF = processing time / audio time, from CPU time of the streaming thread (robust to other processes competing "
        f"for the CPU, not to their cache and memory traffic) and from wall time. 1-min load average {load0:.1f} at "
        f"the start, {os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores.\n\n"
        f"Target: `--raw-audio` streaming RTF <= 1/3 of Silero's (CPU-time ratio): GRU 2x128 {verdict(raw_ratio)} "
        f"(features path: {feat_ratio[0]:.2f}); LSTM 2x128 float {verdict(ratio('lstm_raw'))}; "
        f"LSTM 2x128 int8 {verdict(ratio('lstm_raw_int8'))}; at stack=3: GRU {verdict(ratio('gru3_raw'))}, "
        f"int8 LSTM {verdict(ratio('lstm3_raw_int8'))}. "
        f"PyTorch eager / `--raw-audio` onnxruntime (CPU RTF): {speedup[0]:.1f}x ({speedup[1]:.1f}-{speedup[2]:.1f}).\n\n"
        "Where a raw-audio chunk's CPU goes (timed in the same loop, chunk by chunk; median over a round's chunks, "
        "then median (min-max) over rounds):"
    )
    body = table + "\n\n" + notes + "\n\n" + parts
    print(body)
    if not args.no_write:
        write_section(SECTION, body, command="python -m bench.bench_stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())

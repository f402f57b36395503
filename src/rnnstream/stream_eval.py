"""Streamed evaluation of a classifier on held-out recordings, shared by ``rnnstream demo`` and ``experiments/``.

:func:`stream_classification` reads each held-out *file* (:func:`read_raw`), pushes it chunk by chunk
(:func:`raw_chunks`) through an onnxruntime :class:`~rnnstream.pipeline.streaming.StreamSession` and scores the same
example offline with PyTorch over its stored features; the :class:`StreamReport` gives accuracy both ways, their
agreement (labels, final scores, every frame's logits) and the latency per chunk. :func:`plot_stream_trace` draws
one recording with its streamed prediction over time, :func:`featurize_dataset` runs the Beam featurize job and
loads its dataset, :func:`format_table` prints a small result table.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnstream.pipeline.config import FeatureConfig


def featurize_dataset(inputs: Sequence[str], output_dir: str, feature_config: FeatureConfig,
                      label_pattern: str | None = None, pipeline_args: Sequence[str] | None = None) -> Any:
    """Run the Beam featurize job over ``inputs`` into ``output_dir`` and load the result.

    Returns the :class:`rnnstream.pipeline.dataset.FeatureDataset`.
    """
    from rnnstream.beam_jobs.featurize import featurize_corpus
    from rnnstream.pipeline.dataset import read_dataset

    featurize_corpus(list(inputs), output_dir, feature_config, label_pattern=label_pattern,
                     pipeline_args=list(pipeline_args) if pipeline_args is not None else None)
    return read_dataset(output_dir)


def read_raw(path: str, cfg: FeatureConfig) -> Any:
    """A recording as the runtime's raw input: audio samples ``[N]`` or ``(timestamps [N], values [N, C])``."""
    if cfg.kind == "audio":
        from rnnstream.pipeline.audio_io import load_audio

        return load_audio(path, cfg)
    from rnnstream.pipeline.sensors import read_sensor_table

    return read_sensor_table(path, cfg)


def raw_chunks(raw: Any, cfg: FeatureConfig, chunk_s: float) -> Iterator[tuple[Any, float]]:
    """Cut a raw recording into chunks of ``chunk_s`` seconds: yields ``(chunk, seconds of stream in it)``."""
    from rnnstream.pipeline.streaming import SensorChunk

    if cfg.kind == "audio":
        n = max(1, int(round(chunk_s * cfg.audio.sample_rate)))  # type: ignore[union-attr]
        for i in range(0, raw.shape[0], n):
            part = raw[i: i + n]
            yield part, part.shape[0] / cfg.audio.sample_rate  # type: ignore[union-attr]
        return
    ts, vals = raw
    rate = cfg.sensor.rate_hz  # type: ignore[union-attr]
    n = max(1, int(round(chunk_s * rate)))
    for i in range(0, ts.shape[0], n):
        yield SensorChunk(ts[i: i + n], vals[i: i + n]), min(n, ts.shape[0] - i) / rate


@dataclass
class StreamedItem:
    """One held-out recording streamed through the runtime and scored offline."""

    id: str
    path: str
    label: str
    stream_predicted: str
    offline_predicted: str
    stream_scores: list[float]
    offline_scores: list[float]
    max_logit_diff: float  # over every frame: streamed outputs vs offline outputs
    frames: int
    stream_outputs: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))


@dataclass
class StreamReport:
    items: list[StreamedItem]
    latencies_ms: list[float]
    chunk_s: float
    labels: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        n = len(self.items)
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        score_diff = max((float(np.max(np.abs(np.subtract(i.stream_scores, i.offline_scores)))) for i in self.items),
                         default=0.0)
        return {
            "n": n,
            "accuracy_streaming_onnx": sum(i.stream_predicted == i.label for i in self.items) / max(n, 1),
            "accuracy_offline_torch": sum(i.offline_predicted == i.label for i in self.items) / max(n, 1),
            "label_agreement": sum(i.stream_predicted == i.offline_predicted for i in self.items) / max(n, 1),
            "max_abs_score_diff": score_diff,
            "max_abs_logit_diff_all_frames": max((i.max_logit_diff for i in self.items), default=0.0),
            "chunk_s": self.chunk_s,
            "chunks": int(lat.size),
            "latency_ms_mean": float(lat.mean()) if lat.size else None,
            "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else None,
            "latency_ms_max": float(lat.max()) if lat.size else None,
        }

    def confusion(self, which: str = "stream") -> np.ndarray:
        index = {name: k for k, name in enumerate(self.labels)}
        c = len(self.labels)
        cm = np.zeros((c, c), dtype=np.int64)
        for i in self.items:
            guess = i.stream_predicted if which == "stream" else i.offline_predicted
            if i.label in index and guess in index:
                cm[index[i.label], index[guess]] += 1
        return cm


def stream_classification(onnx_backend: Any, torch_backend: Any, examples: Sequence[Any], chunk_s: float,
                          *, progress: bool = True, keep_outputs: int = 4) -> StreamReport:
    """Stream each example's *file* chunk by chunk through ``onnx_backend``; score offline with ``torch_backend``.

    Offline is PyTorch over the example's stored (Beam-featurized) features, whole sequence in one step.
    Latency is the wall time of each ``StreamSession.push`` (featurize + onnxruntime step).
    ``keep_outputs``: keep the per-frame streamed outputs of the first few items (for the trace plot).
    """
    from tqdm.auto import tqdm

    from rnnstream.pipeline.streaming import StreamSession, interpret

    cfg = onnx_backend.info.feature_config
    labels = tuple(onnx_backend.info.labels)
    items: list[StreamedItem] = []
    latencies: list[float] = []
    bars = progress and sys.stderr.isatty()  # progress bars only on a terminal
    for k, ex in enumerate(tqdm(examples, desc="stream (onnxruntime)", disable=not bars, file=sys.stderr,
                                dynamic_ncols=True)):
        raw = read_raw(ex.path, cfg)
        rate = cfg.audio.sample_rate if cfg.audio is not None else None  # read_raw gives the model's rate
        session = StreamSession(onnx_backend, sample_rate=rate, stream_id=ex.id)
        outs = []
        for chunk, _ in raw_chunks(raw, cfg, chunk_s):
            t0 = time.perf_counter()
            res = session.push(chunk)
            latencies.append((time.perf_counter() - t0) * 1e3)
            outs.append(res.outputs)
        stream_out = np.concatenate(outs) if outs else np.zeros((0, onnx_backend.info.model_config.output_dim))
        feats = np.asarray(ex.features, dtype=np.float32)
        off_out, _ = torch_backend.step(feats[None], torch_backend.info.initial_states(1))
        off_out = off_out[0]
        n = min(stream_out.shape[0], off_out.shape[0])
        diff = float(np.max(np.abs(stream_out[:n] - off_out[:n]))) if n else float("inf")
        if stream_out.shape[0] != off_out.shape[0]:
            diff = float("inf")  # a different frame count is a disagreement, whatever the values
        final = session.final()
        offline = interpret(torch_backend.info, off_out[-1], off_out.shape[0]) if off_out.shape[0] else None
        items.append(StreamedItem(
            id=ex.id, path=ex.path, label=str(ex.label),
            stream_predicted=str(final.label) if final else "", offline_predicted=str(offline.label) if offline else "",
            stream_scores=list(final.values) if final else [], offline_scores=list(offline.values) if offline else [],
            max_logit_diff=diff, frames=int(stream_out.shape[0]),
            stream_outputs=stream_out if k < keep_outputs else np.zeros((0, 0)),
        ))
    return StreamReport(items=items, latencies_ms=latencies, chunk_s=chunk_s, labels=labels)


def plot_stream_trace(item: StreamedItem, raw: Any, cfg: FeatureConfig, labels: Sequence[str], path: str,
                      features: np.ndarray | None = None) -> str:
    """The input (sensor channels, or the log-mel spectrogram) above the streamed class probabilities over time."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from rnnstream.pipeline.streaming import softmax

    probs = softmax(np.asarray(item.stream_outputs, dtype=np.float64))
    t_frames = (np.arange(probs.shape[0]) + 1) / cfg.frame_rate
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ax = axes[0]
    if cfg.kind == "audio":
        spec = features if features is not None else np.zeros((probs.shape[0], cfg.dim))
        ax.imshow(spec.T, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, spec.shape[0] / cfg.frame_rate, 0, spec.shape[1]))
        ax.set_ylabel("log-mel band" if cfg.audio.feature == "logmel" else "MFCC")  # type: ignore[union-attr]
        ax.set_title(f"{os.path.basename(item.path)} (true label {item.label})")
    else:
        ts, vals = raw
        for j, name in enumerate(cfg.sensor.columns):  # type: ignore[union-attr]
            ax.plot(ts - ts[0], vals[:, j], lw=0.9, label=name)
        ax.set_ylabel("sensor value")
        ax.legend(fontsize=7, ncol=min(6, vals.shape[1]), loc="upper right")
        ax.set_title(f"{os.path.basename(item.path)} (true label {item.label})")
    ax.grid(alpha=0.3)
    ax = axes[1]
    for j, name in enumerate(labels):
        ax.plot(t_frames, probs[:, j], lw=1.8 if name == item.label else 1.0, label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("P(class | stream so far)")
    ax.set_title(f"streaming prediction (onnxruntime, chunk by chunk): final = {item.stream_predicted}")
    ax.legend(fontsize=7, ncol=min(10, len(labels)), loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A small fixed-width text table."""
    cells = [[str(h) for h in header]] + [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


__all__ = ["StreamReport", "StreamedItem", "featurize_dataset", "format_table", "plot_stream_trace", "raw_chunks",
           "read_raw", "stream_classification"]

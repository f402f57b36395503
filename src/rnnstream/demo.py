"""``rnnstream demo``: the main job end to end on real recorded data, in a few minutes on two cores.

Stages (each prints its progress)::

    1. data       aeon's embedded BasicMotions (smart-watch accelerometer + gyroscope, 10 Hz) written as
                  sensor tables (CSV with a timestamp column), or a folder of labelled WAV files (--audio-dir)
    2. featurize  the Beam featurize job (rnnstream.beam_jobs.featurize) -> Parquet dataset + stats
    3. train      a stateful GRU classifier (rnnstream.models.train) -> checkpoint, training curves, confusion matrix
    4. export     the streaming ONNX graph (rnnstream.export.onnx_export), verified against PyTorch at export
    5. stream     every held-out recording, read from its file and pushed chunk by chunk through an
                  onnxruntime StreamSession; compared with offline PyTorch over the Beam features

Reported: accuracy (streamed ONNX and offline PyTorch), agreement of streaming with offline (max |score
difference| of the final softmax scores, max |logit difference| over every frame, label agreement) and
latency per chunk. Written to ``--out`` (default ``demo_out``): ``report.json``, ``curves.png``,
``confusion.png`` (offline test), ``confusion_streaming.png``, ``stream_trace.png`` (the input with the
streaming prediction over time), the dataset, checkpoint and ONNX model.

Speech: ``rnnstream demo --audio-dir ../shared/data/fsdd/recordings --label-pattern
'(?P<label>\\d)_(?P<speaker>[a-z]+)_(?P<take>\\d+)\\.wav'`` does the same on spoken digits (held-out: takes
0-4, FSDD's documented split, when the pattern has a ``take`` group).

The stages' featurizing, streamed evaluation and plots are :mod:`rnnstream.stream_eval`'s, shared with the
``experiments/`` scripts.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnstream.demo_cli import DEFAULT_OUT  # noqa: F401 - the CLI default, declared once
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import RnnstreamError
from rnnstream.stream_eval import (StreamReport, featurize_dataset, format_table, plot_stream_trace, read_raw,
                                   stream_classification)

FSDD_LABEL_PATTERN = r"(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``rnnstream demo`` parser (declared in the light :mod:`rnnstream.demo_cli`)."""
    from rnnstream.demo_cli import build_parser as build

    return build()


def _limit_per_class(paths: list[str], pattern: str, limit: int | None) -> list[str]:
    if limit is None:
        return paths
    rx = re.compile(pattern)
    seen: dict[tuple[str, ...], int] = {}
    out = []
    for p in paths:
        m = rx.search(os.path.basename(p))
        key = (m.group("label"),) + ((m.group("split"),) if m and "split" in m.groupdict() else ()) if m else ("",)
        if seen.get(key, 0) < limit:
            seen[key] = seen.get(key, 0) + 1
            out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    """``rnnstream demo``: parsing, logging and exit status are :data:`rnnstream.demo_cli.DEMO`'s."""
    from rnnstream.demo_cli import DEMO

    return DEMO.main(argv)


@dataclass
class DemoData:
    """Stage 1's result: the input files and how the later stages treat them."""

    inputs: list[str]
    label_pattern: str
    feature_config: FeatureConfig
    test_by: str | None
    test_match: str | None
    source: str
    epochs: int
    chunk_s: float


def run_from_args(args: argparse.Namespace) -> int:
    """Run the demo as the parsed command line asks (errors propagate to the CLI's handler): the five stages of
    the module doc, each timed, then the plots, ``report.json`` and the results table."""
    import torch

    from rnnstream._cli_support import progress_enabled

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    progress = progress_enabled(args.no_progress)  # bars only on a terminal
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, stage: Any, *stage_args: Any) -> Any:
        t0 = time.perf_counter()
        value = stage(*stage_args)
        timings[name] = time.perf_counter() - t0
        return value

    data = timed("data_s", _data_stage, args, out)
    _log(f"[1/5] data: {data.source}")
    dataset = timed("featurize_s", _featurize_stage, data, out)
    _log(f"      {len(dataset.examples)} examples, feature dim {dataset.config.dim}, "
         f"{sum(e.features.shape[0] for e in dataset.examples)} frames ({timings['featurize_s']:.1f} s)")
    spec, result, ckpt = timed("train_s", _train_stage, args, data, dataset, out, progress)
    onnx_path = timed("export_s", _export_stage, args, data, ckpt, out)
    report, test_examples = timed("stream_s", _stream_stage, args, data, dataset, spec, ckpt, onnx_path, progress)
    plots = _plots(data, result, report, test_examples, out)
    timings["total_s"] = time.perf_counter() - t_all
    _write_report(data, result, report, timings, plots, ckpt, onnx_path, out)
    return 0


def _data_stage(args: argparse.Namespace, out: str) -> DemoData:
    """1. The inputs: labelled WAV files (``--audio-dir``) or aeon's BasicMotions written as sensor tables."""
    if not args.audio_dir:
        from rnnstream import datasets as D

        table_dir = os.path.join(out, "data", "basicmotions_tables")
        written = D.write_uea_tables("BasicMotions", table_dir, limit=args.limit)
        return DemoData(
            inputs=written["train"] + written["test"], label_pattern=D.TABLE_PATTERN,
            feature_config=D.uea_feature_config("BasicMotions"), test_by=args.test_by or "split",
            test_match=args.test_match or "test",
            source=(f"aeon BasicMotions (real smart-watch accelerometer+gyroscope, 10 Hz): {len(written['train'])} "
                    f"train + {len(written['test'])} test recordings written as sensor tables to {table_dir}"),
            epochs=args.epochs or 40, chunk_s=args.chunk_s or 1.0)
    pattern = args.label_pattern or FSDD_LABEL_PATTERN
    try:
        groups = re.compile(pattern).groupindex
    except re.error as exc:
        raise RnnstreamError(f"--label-pattern {pattern!r} is not a valid regex: {exc}") from None
    if "label" not in groups:
        raise RnnstreamError(f"--label-pattern {pattern!r} needs a (?P<label>...) group")
    files = sorted(glob.glob(os.path.join(args.audio_dir, "*.wav")))
    if not files:
        raise RnnstreamError(f"no .wav files in --audio-dir {args.audio_dir!r}")
    files = [f for f in files if re.fullmatch(pattern, os.path.basename(f))] or files
    inputs = _limit_per_class(files, pattern, args.limit)
    test_by = args.test_by or ("take" if "take" in groups else None)
    return DemoData(
        inputs=inputs, label_pattern=pattern,
        feature_config=FeatureConfig.audio_default(sample_rate=args.sample_rate, n_mels=args.n_mels, win_ms=25.0,
                                                   hop_ms=10.0),
        test_by=test_by, test_match=args.test_match or ("[0-4]" if test_by == "take" else None),
        source=f"{len(inputs)} WAV files from {args.audio_dir}", epochs=args.epochs or 25, chunk_s=args.chunk_s or 0.1)


def _featurize_stage(data: DemoData, out: str) -> Any:
    """2. The Beam featurize job -> the loaded dataset."""
    feat_dir = os.path.join(out, "features")
    _log(f"[2/5] featurize: Beam job over {len(data.inputs)} files -> {feat_dir}")
    return featurize_dataset(data.inputs, feat_dir, data.feature_config, label_pattern=data.label_pattern)


def _train_stage(args: argparse.Namespace, data: DemoData, dataset: Any, out: str, progress: bool) -> tuple[Any, Any, str]:
    """3. Train the GRU classifier -> ``(data spec, train result, checkpoint path)``."""
    from rnnstream.models.train import DataSpec, TrainConfig, prepare_data, train

    spec = DataSpec(task="classify", val_fraction=args.val_fraction, test_by=data.test_by, test_match=data.test_match,
                    seed=args.seed)
    if not data.test_by:
        spec = DataSpec(task="classify", val_fraction=args.val_fraction, test_by="id",
                        test_match=_fraction_regex(dataset.examples, 0.2, args.seed), seed=args.seed)
    prepared = prepare_data(os.path.join(out, "features"), spec)
    tcfg = TrainConfig(cell=args.cell, hidden_size=args.hidden, num_layers=args.layers, dropout=args.dropout,
                       epochs=data.epochs, batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine",
                       seed=args.seed, device="cpu", progress=progress)
    ckpt = os.path.join(out, "model.pt")
    n_val, n_test = len(prepared.val) if prepared.val else 0, len(prepared.test) if prepared.test else 0
    _log(f"[3/5] train: {tcfg.cell} {tcfg.num_layers}x{tcfg.hidden_size}, {data.epochs} epochs on "
         f"{len(prepared.train)} recordings (val {n_val}, held-out test {n_test})")
    result = train(prepared.train, tcfg, val_data=prepared.val, test_data=prepared.test, stats=prepared.stats,
                   feature_config=prepared.feature_config, checkpoint=ckpt, plots_dir=out)
    return spec, result, ckpt


def _export_stage(args: argparse.Namespace, data: DemoData, ckpt: str, out: str) -> str:
    """4. The streaming ONNX graph (raw audio in with ``--raw-audio``) -> its path."""
    from rnnstream.export.onnx_export import export_onnx

    onnx_path = os.path.join(out, "model.onnx")
    raw_audio = bool(args.raw_audio and data.feature_config.kind == "audio")
    _log(f"[4/5] export: {onnx_path}{' (raw-audio graph)' if raw_audio else ''}")
    export_onnx(ckpt, onnx_path, raw_audio=raw_audio)
    return onnx_path


def _stream_stage(args: argparse.Namespace, data: DemoData, dataset: Any, spec: Any, ckpt: str, onnx_path: str,
                  progress: bool) -> tuple[StreamReport, list[Any]]:
    """5. Every held-out recording streamed through onnxruntime, against offline PyTorch."""
    from rnnstream.api import load_backend
    from rnnstream.models.backend import TorchBackend
    from rnnstream.models.data import split_by

    _, test_examples = split_by(dataset.examples, spec.test_by, spec.test_match)
    onnx_backend = load_backend(onnx_path, provider="cpu", threads=args.threads if args.threads > 0 else None)
    torch_backend = TorchBackend.from_checkpoint(ckpt)
    _log(f"[5/5] stream: {len(test_examples)} held-out recordings, {data.chunk_s:g} s chunks, onnxruntime session")
    report = stream_classification(onnx_backend, torch_backend, test_examples, data.chunk_s, progress=progress)
    return report, test_examples


def _plots(data: DemoData, result: Any, report: StreamReport, test_examples: list[Any], out: str) -> list[str]:
    """The training plots, the streaming confusion matrix and the first held-out recording's stream trace."""
    from rnnstream.models import plots as P

    plots = list(result.plots)
    plots.append(P.plot_confusion(report.confusion("stream"), report.labels,
                                  os.path.join(out, "confusion_streaming.png")))
    first = report.items[0]
    plots.append(plot_stream_trace(first, read_raw(first.path, data.feature_config), data.feature_config,
                                   report.labels, os.path.join(out, "stream_trace.png"),
                                   features=np.asarray(test_examples[0].features)))
    return plots


def _write_report(data: DemoData, result: Any, report: StreamReport, timings: dict[str, float], plots: list[str],
                  ckpt: str, onnx_path: str, out: str) -> None:
    """``report.json`` in ``out`` and the results table on stdout."""
    summary = report.summary()
    report_json = {
        "data": data.source,
        "feature_config": json.loads(data.feature_config.to_json()),
        "model": result.model.config.to_dict(),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "offline_test_accuracy_torch_evaluate": result.metrics.get("test", {}).get("accuracy"),
        "streaming": summary,
        "timings": timings,
        "plots": plots,
        "checkpoint": ckpt,
        "onnx": onnx_path,
        "items": [{k: v for k, v in vars(i).items() if k != "stream_outputs"} for i in report.items],
    }
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as fh:
        json.dump(report_json, fh, indent=2)
    rows = [
        ["held-out recordings", summary["n"]],
        ["accuracy, streamed through onnxruntime", summary["accuracy_streaming_onnx"]],
        ["accuracy, offline PyTorch", summary["accuracy_offline_torch"]],
        ["label agreement stream vs offline", summary["label_agreement"]],
        ["max |score diff| (final softmax)", f"{summary['max_abs_score_diff']:.2e}"],
        ["max |logit diff| (every frame)", f"{summary['max_abs_logit_diff_all_frames']:.2e}"],
        [f"latency per {data.chunk_s:g} s chunk, mean / p95 (ms)",
         f"{summary['latency_ms_mean']:.3f} / {summary['latency_ms_p95']:.3f}"],
        ["wall time total (s)", f"{timings['total_s']:.1f}"],
    ]
    print(format_table(rows, ["result", "value"]))
    print(f"plots and report in {out}: " + ", ".join(os.path.basename(p) for p in plots) + ", report.json")


def _fraction_regex(examples: Sequence[Any], fraction: float, seed: int) -> str:
    """A regex matching the ids of a seeded ``fraction`` of examples (a held-out split when files carry none)."""
    rng = np.random.default_rng(seed)
    ids = sorted(e.id for e in examples)
    k = max(1, int(round(fraction * len(ids))))
    picked = rng.choice(len(ids), size=k, replace=False)
    return "|".join(re.escape(ids[i]) for i in sorted(picked))


if __name__ == "__main__":
    sys.exit(main())

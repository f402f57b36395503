"""Shared pieces of the experiment scripts: one classification run = train, export, stream, compare."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    p.add_argument("--out", default=os.path.join("out", "experiments", name), help="output folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch / onnxruntime intra-op threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    v = np.asarray(list(values), dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def setup_threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


#: The packages whose versions decide a training run's numbers (recorded beside every run).
ENV_PACKAGES = ("numpy", "torch", "torchaudio", "scipy", "onnxruntime", "apache-beam", "espeakng-loader")
#: The CPU flags that pick PyTorch's and onnxruntime's kernels (and so a run's rounding).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma")


def environment() -> dict[str, Any]:
    """What a run's exact numbers depend on besides its command: Python, the packages, the CPU (model name, count,
    kernel-picking flags). Runs repeat to the digit within one environment, not across CPUs (docs/results.md,
    follow-up 26)."""
    import platform
    from importlib import metadata

    versions = {}
    for name in ENV_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: the processor string is what there is
        model = platform.processor()
    return {"python": platform.python_version(), "packages": versions, "cpu": model, "cpus": os.cpu_count(),
            "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_json(path: str, obj: Any) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, default=_jsonable)
    return path


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def featurized(inputs: Sequence[str], feat_dir: str, cfg: Any, *, label_pattern: str | None = None,
               refeaturize: bool = False) -> Any:
    """The Beam-featurized dataset of ``inputs`` in ``feat_dir``: read when it exists with ``cfg``, else (or with
    ``refeaturize``) featurized again by the Beam job."""
    from rnnstream.stream_eval import featurize_dataset
    from rnnstream.pipeline.dataset import read_dataset

    if not refeaturize and os.path.exists(os.path.join(feat_dir, "summary.json")):
        ds = read_dataset(feat_dir)
        if ds.config == cfg:
            return ds
        log(f"{feat_dir} was featurized with another config: featurizing again")
    log(f"featurize (Beam): {', '.join(inputs)} -> {feat_dir}")
    return featurize_dataset(list(inputs), feat_dir, cfg, label_pattern=label_pattern)


def refit_run(selection: dict[str, Any], train_d: Any, test_d: Any, test_examples: Sequence[Any], tcfg: Any,
              run_dir: str, *, epochs: str | int = "best", **run_kw: Any) -> dict[str, Any]:
    """Train again on ``train_d`` (the training and validation examples), with no validation, for the epoch count
    ``epochs`` says (``rnnstream train --refit-epochs``: ``best``, the one the ``selection`` run, a
    :func:`classification_run` record, chose; ``all``; or a number); returns the refit run's record with the
    selection run's under ``selection`` and its validation scores. ``run_kw`` go to :func:`classification_run`."""
    import dataclasses

    from rnnstream.models.train_cli import refit_count

    rcfg = dataclasses.replace(tcfg, epochs=refit_count(epochs, int(selection["best_epoch"]), tcfg.epochs)[0])
    log(f"   refit on {len(train_d)} sequences for {rcfg.epochs} epochs")
    r = classification_run(run_dir, train_d, None, test_d, test_examples, rcfg, **run_kw)
    r.update(selection={k: v for k, v in selection.items() if k != "history"}, val_loss=selection["val_loss"],
             val_accuracy=selection["val_accuracy"])
    return r


def pooled_best_epoch(run_dirs: Sequence[str], metric: str = "val_accuracy") -> tuple[int, list[float]]:
    """The epoch count whose validation ``metric`` (accuracy: highest; loss: lowest), averaged over the
    selection runs in ``run_dirs`` (folders with a ``metrics.json`` training history of equal length), is best;
    returns ``(epoch, the mean per epoch)``.

    Raises:
        DatasetError: no runs, or histories of different lengths (runs of different schedules).
    """
    import json

    import numpy as np

    from rnnstream.pipeline.errors import DatasetError

    curves = []
    for d in run_dirs:
        with open(os.path.join(d, "metrics.json"), encoding="utf-8") as fh:
            curves.append([h[metric] for h in json.load(fh)["history"]])
    if not curves or len({len(c) for c in curves}) != 1:
        raise DatasetError(f"pooled_best_epoch needs runs with histories of equal length, got "
                           f"{[len(c) for c in curves]}")
    mean = np.mean(np.asarray(curves, dtype=np.float64), axis=0)
    best = int(np.argmin(mean) if metric.endswith("loss") else np.argmax(mean))
    return best + 1, [float(v) for v in mean]


def classification_run(run_dir: str, train_d: Any, val_d: Any, test_d: Any, test_examples: Sequence[Any],
                       tcfg: Any, *, chunk_s: float, threads: int, progress: bool,
                       trace_features: bool = False) -> dict[str, Any]:
    """Train on ``train_d`` (model selection on ``val_d``), export to ONNX, stream ``test_examples``' files.

    Returns the offline (PyTorch ``evaluate``) test accuracy, the streamed (onnxruntime, chunk by chunk from
    the raw files) accuracy, and their agreement.
    """
    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.api import load_backend
    from rnnstream.models import plots as P
    from rnnstream.models.backend import TorchBackend
    from rnnstream.models.train import train
    from rnnstream.stream_eval import plot_stream_trace, read_raw, stream_classification

    os.makedirs(run_dir, exist_ok=True)
    ckpt = os.path.join(run_dir, "model.pt")
    t0 = time.perf_counter()
    result = train(train_d, tcfg, val_data=val_d, test_data=test_d, stats=train_d.fit_stats(),
                   feature_config=train_d.feature_config, checkpoint=ckpt, plots_dir=run_dir)
    train_s = time.perf_counter() - t0
    onnx_path = os.path.join(run_dir, "model.onnx")
    export_onnx(ckpt, onnx_path)
    onnx_b = load_backend(onnx_path, provider="cpu", threads=threads)
    torch_b = TorchBackend.from_checkpoint(ckpt)
    t0 = time.perf_counter()
    rep = stream_classification(onnx_b, torch_b, test_examples, chunk_s, progress=progress)
    stream_s = time.perf_counter() - t0
    P.plot_confusion(rep.confusion("stream"), rep.labels, os.path.join(run_dir, "confusion_streaming.png"))
    first = rep.items[0]
    cfg = onnx_b.info.feature_config
    plot_stream_trace(first, read_raw(first.path, cfg), cfg, rep.labels, os.path.join(run_dir, "stream_trace.png"),
                      features=np.asarray(test_examples[0].features) if trace_features else None)
    s = rep.summary()
    out = {
        "n_train": len(train_d), "n_val": len(val_d) if val_d is not None else 0, "n_test": len(test_d),
        "offline_accuracy_torch": result.metrics["test"]["accuracy"],
        "val_accuracy": result.metrics["val"]["accuracy"] if "val" in result.metrics else None,
        "val_loss": result.metrics["val"]["loss"] if "val" in result.metrics else None,
        "streaming_accuracy_onnx": s["accuracy_streaming_onnx"],
        "streaming": s,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "train_seconds": train_s, "stream_seconds": stream_s,
        "model": result.model.config.to_dict(),
        "history": result.history,
        "confusion_offline": result.metrics["test"]["confusion"],
        "labels": list(rep.labels),
    }
    write_json(os.path.join(run_dir, "result.json"), out)
    # the model files are large-ish and reproducible: keep the ONNX for inspection, drop nothing else
    return out


if __name__ == "__main__":  # python -m experiments._common pooled-epoch RUN_DIR... [--metric val_loss]
    _p = argparse.ArgumentParser(prog="python -m experiments._common pooled-epoch")
    _p.add_argument("command", choices=["pooled-epoch"])
    _p.add_argument("run_dirs", nargs="+")
    _p.add_argument("--metric", default="val_accuracy", choices=["val_accuracy", "val_loss"])
    _a = _p.parse_args()
    from rnnstream.pipeline.errors import DatasetError

    try:
        _epoch, _mean = pooled_best_epoch(_a.run_dirs, _a.metric)
    except DatasetError as _exc:
        sys.exit(f"error: {_exc}")
    print(f"best epoch by mean {_a.metric} over {len(_a.run_dirs)} runs: {_epoch}; per epoch "
          + " ".join(f"{v:.4f}" for v in _mean))

"""int8 against float on real speech: FSDD digits, every test file streamed through both ONNX graphs.

::

    .venv/bin/python -m experiments.quantize --data-root ../shared/data --out out/experiments/quantize

Trains one classifier per ``--cells`` entry on FSDD's documented split (takes 5-49, a seeded 10% of them for
validation; takes 0-4 test), exports it twice — float and ``--quantize int8`` (LSTM: onnxruntime's
``DynamicQuantizeLSTM``; GRU: int8 weights with ``DequantizeLinear``; heads: ``MatMulInteger``) — and streams every
test WAV in 100 ms chunks through an onnxruntime ``StreamSession`` on each graph. Reports test accuracy of both, the
label agreement, the largest score difference and the file sizes (``results.json`` and a table).
Skips (exit 0) when the FSDD folder is absent.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from experiments._common import base_parser, featurized, log, setup_threads, write_json


def build_parser():
    p = base_parser("quantize", "FSDD: int8 vs float ONNX graphs, every test file streamed through both")
    p.add_argument("--data-root", default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--cells", default="gru,lstm")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--chunk-s", type=float, default=0.1)
    p.add_argument("--checkpoints", default=None,
                   help="comma-separated checkpoints already trained on the documented split (e.g. experiments.fsdd's "
                        "documented-seed<N>/model.pt): compare their float and int8 graphs instead of training --cells")
    return p


def stream_accuracy(model_path: str, examples: list[Any], chunk_s: float) -> tuple[list[str], np.ndarray]:
    """Every example's file streamed through ``model_path``: (final labels, final probabilities ``[N, C]``)."""
    import rnnstream
    from rnnstream.pipeline.audio_io import read_native

    model = rnnstream.load(model_path, provider="cpu", threads=1)
    labels, scores = [], []
    for ex in examples:
        samples, rate = read_native(ex.path)
        stream = model.stream(sample_rate=rate)
        step = max(1, int(round(chunk_s * rate)))
        for start in range(0, samples.size, step):
            stream.push(samples[start:start + step])
        stream.end()
        labels.append(stream.prediction.label)
        scores.append(stream.prediction.values)
    return labels, np.asarray(scores)


def run_cell(cell: str, train_ex: list[Any], val_ex: list[Any], test_ex: list[Any], cfg: Any, args: Any,
             out: str) -> dict[str, Any]:
    from rnnstream.models.data import classify_data
    from rnnstream.models.train import TrainConfig, train

    train_d = classify_data(train_ex, feature_config=cfg)
    val_d = classify_data(val_ex, train_d.labels, feature_config=cfg)
    tcfg = TrainConfig(cell=cell, hidden_size=args.hidden, num_layers=1, dropout=0.1, epochs=args.epochs, lr=3e-3,
                       lr_schedule="cosine", seed=args.seed, device="cpu", progress=False if args.no_progress else None)
    ckpt = os.path.join(out, cell, "model.pt")
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    t0 = time.perf_counter()
    train(train_d, tcfg, val_data=val_d, feature_config=cfg, checkpoint=ckpt)
    train_s = time.perf_counter() - t0
    return {**compare_checkpoint(ckpt, test_ex, os.path.join(out, cell), args.chunk_s), "cell": cell,
            "train_seconds": train_s}


def compare_checkpoint(ckpt: str, test_ex: list[Any], out: str, chunk_s: float) -> dict[str, Any]:
    """Export ``ckpt`` float and int8 into ``out``, stream every test file through both; accuracies and sizes."""
    from rnnstream.export.onnx_export import export_with_report

    paths = {}
    for kind in ("float", "int8"):
        rep = export_with_report(ckpt, os.path.join(out, f"{kind}.onnx"), quantize="int8" if kind == "int8" else None)
        paths[kind] = rep.path
        if rep.quantization is not None:
            qops = rep.quantization.quantized_ops
    mc = rep.info.model_config  # the model, named from the export (no second checkpoint load)
    truth = [str(e.label) for e in test_ex]
    got = {kind: stream_accuracy(path, test_ex, chunk_s) for kind, path in paths.items()}
    acc = {kind: float(np.mean([p == t for p, t in zip(lab, truth)])) for kind, (lab, _) in got.items()}
    return {
        "cell": f"{mc.cell} {mc.num_layers}x{mc.hidden_size} conv {list(mc.conv_channels)} {mc.pooling}",
        "test_files": len(test_ex), "accuracy_float": acc["float"], "accuracy_int8": acc["int8"],
        "accuracy_delta": acc["int8"] - acc["float"],
        "label_agreement": float(np.mean([a == b for a, b in zip(got["float"][0], got["int8"][0])])),
        "max_score_diff": float(np.abs(got["float"][1] - got["int8"][1]).max()),
        "float_bytes": os.path.getsize(paths["float"]), "int8_bytes": os.path.getsize(paths["int8"]),
        "quantized_ops": qops,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_threads(args.threads)
    from rnnstream import datasets as D
    from rnnstream.stream_eval import format_table
    from rnnstream.models.data import split_by, split_fraction
    from rnnstream.pipeline.config import FeatureConfig

    rec = D.fsdd_dir(args.data_root)
    if not os.path.isdir(rec):
        print(f"SKIP: FSDD recordings not found at {rec} (pass --data-root)")
        return 0
    out = os.path.abspath(args.out)
    feat_dir = os.path.join(out, "features")
    cfg = FeatureConfig.audio_default(sample_rate=8000, n_mels=40, f_min=100.0)
    ds = featurized([rec], feat_dir, cfg, label_pattern=D.FSDD_PATTERN)
    rest, test_ex = split_by(ds.examples, "take", "[0-4]")
    train_ex, val_ex = split_fraction(rest, 0.1, args.seed)
    if args.checkpoints:  # given models: compare only
        jobs = [(f"checkpoint {i}: {ckpt}",
                 lambda i=i, ckpt=ckpt: {"checkpoint": ckpt, **compare_checkpoint(
                     ckpt, test_ex, os.path.join(out, f"checkpoint{i}"), args.chunk_s)})
                for i, ckpt in enumerate(c.strip() for c in args.checkpoints.split(",") if c.strip())]
    else:
        jobs = [(f"{cell}: train {len(train_ex)}, val {len(val_ex)}",
                 lambda cell=cell: run_cell(cell, train_ex, val_ex, test_ex, cfg, args, out))
                for cell in (c.strip() for c in args.cells.split(",") if c.strip())]
    results = []
    for what, job in jobs:
        log(f"== {what}, test {len(test_ex)} files")
        r = job()
        log(f"   float {r['accuracy_float']:.4f}  int8 {r['accuracy_int8']:.4f}  agreement {r['label_agreement']:.4f}")
        results.append(r)
    rows = [[r["cell"], f"{r['accuracy_float']:.4f}", f"{r['accuracy_int8']:.4f}", f"{r['accuracy_delta']:+.4f}",
             f"{r['label_agreement']:.4f}", f"{r['max_score_diff']:.3g}",
             f"{r['float_bytes'] / 1024:.0f} -> {r['int8_bytes'] / 1024:.0f} KiB",
             ", ".join(f"{k} x{v}" for k, v in sorted(r["quantized_ops"].items()))] for r in results]
    print(format_table(rows, ["cell", "float acc", "int8 acc", "delta", "agreement", "max |score diff|", "size",
                              "int8 ops"]))
    write_json(os.path.join(out, "results.json"), {
        "command": "python -m experiments.quantize " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

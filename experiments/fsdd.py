"""Spoken digits (FSDD): the documented split and leave-one-speaker-out, streamed through ONNX.

::

    .venv/bin/python -m experiments.fsdd --data-root ../shared/data --out out/experiments/fsdd

1. The Beam featurize job turns the 2,000 WAVs (8 kHz) into 40-band log-mel frames (25 ms / 10 ms).
2. Splits: ``documented`` (takes 0-4 test, 5-49 train; FSDD's README) and ``loso-<speaker>`` for each of
   the four speakers (train on the other three). Validation (model selection) is a seeded 10% of the
   training files; the test files are never seen in training or selection.
3. Each split: a GRU classifier trained with :func:`rnnstream.models.train.train`, exported to ONNX, and every test
   file streamed from its WAV in 100 ms chunks through onnxruntime; offline PyTorch accuracy, streamed
   accuracy and their agreement are reported.

Writes ``results.json`` (every number), per-split folders (curves, confusion matrices, stream trace) and
prints a table. Skips (exit 0, with the reason) when the FSDD folder is absent.
"""

from __future__ import annotations

import os
import sys
import time

from experiments._common import base_parser, classification_run, log, setup_threads, write_json

SPEAKERS = ("george", "jackson", "lucas", "nicolas")


def build_parser():
    p = base_parser("fsdd", "FSDD spoken digits: documented split + leave-one-speaker-out, streamed through ONNX")
    p.add_argument("--data-root", default=None, help="shared data folder (default: ../shared/data from the repo root)")
    p.add_argument("--splits", default="documented,loso", help="comma-separated: documented, loso, loso-<speaker>")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--cell", default="gru", choices=["gru", "lstm"])
    p.add_argument("--pooling", default="last", choices=["last", "mean"])
    p.add_argument("--input-norm", default="none", choices=["none", "causal_mean"],
                   help="causal_mean: subtract the running mean of the features so far (streamable CMN, in the model)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--feature", default="logmel", choices=["logmel", "mfcc"])
    p.add_argument("--f-min", type=float, default=100.0,
                   help="lowest mel frequency (Hz); 100 drops the rumble band whose level differs most between "
                        "FSDD's speakers' recordings")
    p.add_argument("--chunk-s", type=float, default=0.1)
    p.add_argument("--refeaturize", action="store_true", help="run the Beam job again even if OUT/features exists")
    p.add_argument("--augment", type=int, default=2,
                   help="add this many augmented copies of each training file (random gain, random smooth "
                        "microphone-like EQ across mel bands, time stretch 0.85-1.15); test files are never augmented")
    return p


def augment_examples(examples, copies: int, seed: int):
    """Training-only augmentation on log-mel frames: the originals plus ``copies`` perturbed copies each.

    A gain ``g`` and an equaliser ``e(band)`` multiply the power spectrum, i.e. *add* ``g + e(band)`` to log-mel
    (exactly, up to the featurizer's ``log_eps``): this simulates other microphones and levels, the main
    difference between FSDD's speakers' recordings. Time stretch resamples frames linearly (speaking rate).
    """
    import dataclasses

    import numpy as np

    rng = np.random.default_rng(seed)
    out = list(examples)
    for e in examples:
        x = np.asarray(e.features, dtype=np.float32)
        t, d = x.shape
        bands = np.linspace(0.0, 1.0, d)
        for k in range(copies):
            gain = rng.uniform(-2.0, 2.0)
            eq = sum(rng.normal(0.0, 1.0 / j) * np.cos(np.pi * j * bands) for j in range(1, 4))
            rate = rng.uniform(0.85, 1.15)
            n = max(2, int(round(t * rate)))
            pos = np.linspace(0.0, t - 1.0, n)
            lo = np.floor(pos).astype(int)
            hi = np.minimum(lo + 1, t - 1)
            w = (pos - lo)[:, None].astype(np.float32)
            y = (1.0 - w) * x[lo] + w * x[hi] + np.float32(gain) + eq.astype(np.float32)[None, :]
            out.append(dataclasses.replace(e, id=f"{e.id}#aug{k}", features=y.astype(np.float32)))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_threads(args.threads)
    from rnnstream.models.data import classify_data, split_by, split_fraction
    from rnnstream.models.train import TrainConfig
    from rnnstream.pipeline.config import FeatureConfig
    from rnnstream.pipeline.dataset import read_dataset
    from rnnstream import datasets as D
    from rnnstream.demo import featurize_dataset, format_table

    rec = D.fsdd_dir(args.data_root)
    if not os.path.isdir(rec):
        print(f"SKIP: FSDD recordings not found at {rec} (pass --data-root)")
        return 0
    out = os.path.abspath(args.out)
    feat_dir = os.path.join(out, "features")
    cfg = FeatureConfig.audio_default(sample_rate=8000, n_mels=args.n_mels, win_ms=25.0, hop_ms=10.0,
                                      feature=args.feature, f_min=args.f_min)
    t0 = time.perf_counter()
    if args.refeaturize or not os.path.exists(os.path.join(feat_dir, "summary.json")):
        log(f"featurize (Beam): {rec} -> {feat_dir}")
        ds = featurize_dataset([rec], feat_dir, cfg, label_pattern=D.FSDD_PATTERN)
    else:
        ds = read_dataset(feat_dir)
        if ds.config != cfg:
            print(f"error: {feat_dir} was featurized with another config; pass --refeaturize", file=sys.stderr)
            return 2
    featurize_s = time.perf_counter() - t0
    examples = ds.examples
    log(f"{len(examples)} examples, {sum(e.features.shape[0] for e in examples)} frames")

    splits: list[tuple[str, str, str]] = []
    for item in [s.strip() for s in args.splits.split(",") if s.strip()]:
        if item == "documented":
            splits.append(("documented (takes 0-4 test)", "take", "[0-4]"))
        elif item == "loso":
            splits += [(f"loso-{s}", "speaker", s) for s in SPEAKERS]
        elif item.startswith("loso-") and item[5:] in SPEAKERS:
            splits.append((item, "speaker", item[5:]))
        else:
            print(f"error: unknown split {item!r}", file=sys.stderr)
            return 2

    tcfg = TrainConfig(cell=args.cell, hidden_size=args.hidden, num_layers=args.layers, dropout=args.dropout,
                       pooling=args.pooling, input_norm=args.input_norm, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr,
                       lr_schedule="cosine", seed=args.seed, device="cpu", progress=not args.no_progress)
    results: dict[str, dict] = {}
    for name, key, pattern in splits:
        log(f"== split {name}: test = {key} ~ {pattern}")
        rest, test_ex = split_by(examples, key, pattern)
        train_ex, val_ex = split_fraction(rest, 0.1, args.seed)
        if args.augment:
            train_ex = augment_examples(train_ex, args.augment, args.seed)
        train_d = classify_data(train_ex, feature_config=ds.config)
        val_d = classify_data(val_ex, train_d.labels, feature_config=ds.config)
        test_d = classify_data(test_ex, train_d.labels, feature_config=ds.config)
        run_dir = os.path.join(out, name.split(" ")[0])
        results[name] = classification_run(run_dir, train_d, val_d, test_d, test_ex, tcfg, chunk_s=args.chunk_s,
                                           threads=args.threads, progress=not args.no_progress, trace_features=True)
        r = results[name]
        log(f"   offline {r['offline_accuracy_torch']:.4f}  streamed {r['streaming_accuracy_onnx']:.4f}  "
            f"agreement {r['streaming']['label_agreement']:.4f}  ({r['train_seconds']:.0f} s training)")

    rows = []
    for name, r in results.items():
        s = r["streaming"]
        rows.append([name, r["n_train"], r["n_test"], r["offline_accuracy_torch"], r["streaming_accuracy_onnx"],
                     s["label_agreement"], f"{s['max_abs_score_diff']:.1e}", f"{s['latency_ms_mean']:.2f}"])
    loso = [r["streaming_accuracy_onnx"] for n, r in results.items() if n.startswith("loso-")]
    if len(loso) > 1:
        mean_off = sum(r["offline_accuracy_torch"] for n, r in results.items() if n.startswith("loso-")) / len(loso)
        rows.append(["loso mean", "", "", mean_off, sum(loso) / len(loso), "", "", ""])
    print(format_table(rows, ["split", "train", "test", "acc offline (torch)", "acc streamed (onnx)",
                              "label agree", "max |dscore|", "ms/chunk"]))
    write_json(os.path.join(out, "results.json"), {
        "command": "python -m experiments.fsdd " + " ".join(sys.argv[1:] if argv is None else argv),
        "feature_config": ds.config.to_dict(), "train_config": tcfg.__dict__, "featurize_seconds": featurize_s,
        "splits": {n: {k: v for k, v in r.items() if k != "history"} for n, r in results.items()},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

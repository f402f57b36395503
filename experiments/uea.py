"""UEA multivariate classification on aeon's embedded sets (BasicMotions, JapaneseVowels), streamed through ONNX.

::

    .venv/bin/python -m experiments.uea --out out/experiments/uea

Each set's shipped ``.ts`` files (UEA train/test split) are written as sensor tables (CSV, timestamp
column at the set's rate), featurized by the Beam job, a GRU classifier is trained on the train split
(model selection on a seeded 15% of it), exported to ONNX, and every test recording is streamed from its
table through onnxruntime (BasicMotions: 1 s chunks = 10 rows; JapaneseVowels: 5-row chunks) and compared
with offline PyTorch. Writes ``results.json``, per-set plots, and prints a table.
"""

from __future__ import annotations

import os
import sys
import time

from experiments._common import base_parser, classification_run, log, setup_threads, write_json

#: Per-set settings: (epochs, hidden, layers, dropout, lr, batch size, chunk seconds).
SETTINGS = {
    "BasicMotions": dict(epochs=40, hidden=64, layers=2, dropout=0.1, lr=3e-3, batch_size=16, chunk_s=1.0),
    "JapaneseVowels": dict(epochs=60, hidden=128, layers=2, dropout=0.2, lr=3e-3, batch_size=32, chunk_s=5 / 160),
}


def build_parser():
    p = base_parser("uea", "UEA multivariate classification (aeon's embedded BasicMotions, JapaneseVowels)")
    p.add_argument("--sets", default="BasicMotions,JapaneseVowels")
    p.add_argument("--epochs", type=int, default=None, help="override every set's epochs")
    p.add_argument("--val-fraction", type=float, default=0.15)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_threads(args.threads)
    from rnnstream.models.data import classify_data, split_by, split_fraction
    from rnnstream.models.train import TrainConfig
    from rnnstream import datasets as D
    from rnnstream.demo import featurize_dataset, format_table

    out = os.path.abspath(args.out)
    results: dict[str, dict] = {}
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if name not in SETTINGS:
            print(f"error: unknown set {name!r}; known: {sorted(SETTINGS)}", file=sys.stderr)
            return 2
        st = dict(SETTINGS[name])
        if args.epochs is not None:
            st["epochs"] = args.epochs
        set_dir = os.path.join(out, name)
        t0 = time.perf_counter()
        written = D.write_uea_tables(name, os.path.join(set_dir, "tables"))
        log(f"== {name}: {len(written['train'])} train + {len(written['test'])} test tables; featurize (Beam)")
        ds = featurize_dataset(written["train"] + written["test"], os.path.join(set_dir, "features"),
                               D.uea_feature_config(name), label_pattern=D.TABLE_PATTERN)
        featurize_s = time.perf_counter() - t0
        rest, test_ex = split_by(ds.examples, "split", "test")
        train_ex, val_ex = split_fraction(rest, args.val_fraction, args.seed)
        train_d = classify_data(train_ex, feature_config=ds.config)
        val_d = classify_data(val_ex, train_d.labels, feature_config=ds.config) if val_ex else None
        test_d = classify_data(test_ex, train_d.labels, feature_config=ds.config)
        tcfg = TrainConfig(cell="gru", hidden_size=st["hidden"], num_layers=st["layers"], dropout=st["dropout"],
                           epochs=st["epochs"], batch_size=st["batch_size"], lr=st["lr"], lr_schedule="cosine",
                           seed=args.seed, device="cpu", progress=not args.no_progress)
        r = classification_run(set_dir, train_d, val_d, test_d, test_ex, tcfg, chunk_s=st["chunk_s"],
                               threads=args.threads, progress=not args.no_progress)
        r["featurize_seconds"] = featurize_s
        r["settings"] = st
        results[name] = r
        log(f"   offline {r['offline_accuracy_torch']:.4f}  streamed {r['streaming_accuracy_onnx']:.4f}")

    rows = [[n, r["n_train"], r["n_val"], r["n_test"], r["offline_accuracy_torch"], r["streaming_accuracy_onnx"],
             r["streaming"]["label_agreement"], f"{r['streaming']['max_abs_score_diff']:.1e}",
             f"{r['streaming']['latency_ms_mean']:.2f}"] for n, r in results.items()]
    print(format_table(rows, ["set", "train", "val", "test", "acc offline (torch)", "acc streamed (onnx)",
                              "label agree", "max |dscore|", "ms/chunk"]))
    write_json(os.path.join(out, "results.json"), {
        "command": "python -m experiments.uea " + " ".join(sys.argv[1:] if argv is None else argv),
        "sets": {n: {k: v for k, v in r.items() if k != "history"} for n, r in results.items()},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

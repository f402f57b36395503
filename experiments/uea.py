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

from experiments._common import (base_parser, classification_run, int_list, log, mean_std, refit_run,
                                 setup_threads, write_json)

#: Per-set settings: (epochs, cell, hidden, layers, dropout, lr, batch size, chunk seconds).
SETTINGS = {
    "BasicMotions": dict(epochs=40, cell="gru", hidden=64, layers=2, dropout=0.1, lr=3e-3, batch_size=16,
                         chunk_s=1.0),
    "JapaneseVowels": dict(epochs=60, cell="gru", hidden=128, layers=2, dropout=0.2, lr=3e-3, batch_size=32,
                           chunk_s=5 / 160),
}


def build_parser():
    p = base_parser("uea", "UEA multivariate classification (aeon's embedded BasicMotions, JapaneseVowels)")
    p.add_argument("--sets", default="BasicMotions,JapaneseVowels")
    p.add_argument("--epochs", type=int, default=None, help="override every set's epochs")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seeds", default=None, help="comma-separated seeds, one run per set and seed (default: --seed)")
    p.add_argument("--cv-folds", type=int, default=0,
                   help="selection only: K-fold cross-validation over the UEA train split per seed (every recording "
                        "validates once); writes the mean validation loss and accuracy to cv.json, never touches "
                        "the test split")
    p.add_argument("--refit", action="store_true",
                   help="after each run, train again on the whole UEA train split (validation included) for the "
                        "epoch count validation chose; both are reported, the refit one is the result")
    for key, typ in OVERRIDES:
        p.add_argument("--" + key.replace("_", "-"), type=typ, default=None, help="override every set's setting")
    p.add_argument("--input-delta", action="store_true", default=None,
                   help="append each feature's change since the previous frame (delta features) for every set")
    return p


#: Settings the command line may override for every set (``--epochs`` apart, with its own help): key and type.
OVERRIDES: tuple[tuple[str, type], ...] = (
    ("cell", str), ("hidden", int), ("layers", int), ("dropout", float), ("lr", float), ("weight_decay", float),
    ("pooling", str), ("augment", str), ("conv_channels", str), ("conv_kernel", str), ("conv_pool", int),
    ("input_norm", str), ("norm_prior", float), ("norm_decay", float), ("batch_size", int), ("weight_average", float),
    ("ensemble", int))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_threads(args.threads)
    from rnnstream.models.data import split_by
    from rnnstream import datasets as D
    from rnnstream.stream_eval import featurize_dataset

    out = os.path.abspath(args.out)
    seeds = int_list(args.seeds) if args.seeds else (args.seed,)
    results: dict[str, dict] = {}
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if name not in SETTINGS:
            print(f"error: unknown set {name!r}; known: {sorted(SETTINGS)}", file=sys.stderr)
            return 2
        st = set_settings(name, args)
        set_dir = os.path.join(out, name)
        t0 = time.perf_counter()
        written = D.write_uea_tables(name, os.path.join(set_dir, "tables"))
        log(f"== {name}: {len(written['train'])} train + {len(written['test'])} test tables; featurize (Beam)")
        ds = featurize_dataset(written["train"] + written["test"], os.path.join(set_dir, "features"),
                               D.uea_feature_config(name), label_pattern=D.TABLE_PATTERN)
        featurize_s = time.perf_counter() - t0
        # sorted by id: the Beam job's output order varies from run to run, the seeded validation split must not
        rest, test_ex = split_by(sorted(ds.examples, key=lambda e: e.id), "split", "test")
        if args.cv_folds:
            results[name] = _cross_validate(rest, ds.config, st, seeds, args, os.path.join(out, "cv.json"))
            continue
        for seed in seeds:
            r = _run_seed(args, ds.config, rest, test_ex, st, seed, set_dir if len(seeds) == 1 else
                          os.path.join(set_dir, f"seed{seed}"))
            r.update(featurize_seconds=featurize_s, settings=st, seed=seed)
            results.setdefault(name, {})[seed] = r
            log(f"   seed {seed}: val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.4f}  "
                f"offline {r['offline_accuracy_torch']:.4f}  streamed {r['streaming_accuracy_onnx']:.4f}")
            write_json(os.path.join(out, "results.json"), _summary(args, argv, results))
    if args.cv_folds:
        return 0
    summ = _summary(args, argv, results)
    print(_table(results, summ))
    write_json(os.path.join(out, "results.json"), summ)
    return 0


def _run_seed(args, feature_config, rest, test_ex, st: dict, seed: int, run_dir: str) -> dict:
    """One seed's run on the UEA split (validation: a seeded fraction of the train split), refit when asked."""
    from rnnstream.models.data import classify_data, split_fraction

    train_ex, val_ex = split_fraction(rest, args.val_fraction, seed)
    train_d = classify_data(train_ex, feature_config=feature_config)
    val_d = classify_data(val_ex, train_d.labels, feature_config=feature_config) if val_ex else None
    test_d = classify_data(test_ex, train_d.labels, feature_config=feature_config)
    tcfg = _train_config(st, seed, args)
    r = classification_run(run_dir, train_d, val_d, test_d, test_ex, tcfg, chunk_s=st["chunk_s"],
                           threads=args.threads, progress=not args.no_progress)
    if args.refit and val_d is not None:
        r = refit_run(r, classify_data(rest, train_d.labels, feature_config=feature_config), test_d, test_ex, tcfg,
                      run_dir + "-refit", chunk_s=st["chunk_s"], threads=args.threads, progress=not args.no_progress)
    return r


def _table(results: dict[str, dict], summ: dict) -> str:
    """Every run's row, then each set's mean +- sd over seeds."""
    from rnnstream.stream_eval import format_table

    rows = [[n, seed, r["n_train"], r["n_val"], r["n_test"], f"{r['val_loss']:.4f}", r["offline_accuracy_torch"],
             r["streaming_accuracy_onnx"], r["streaming"]["label_agreement"],
             f"{r['streaming']['max_abs_score_diff']:.1e}", f"{r['streaming']['latency_ms_mean']:.2f}"]
            for n, by_seed in results.items() for seed, r in by_seed.items()]
    for n, agg in summ["aggregate"].items():
        rows.append([n, "mean+-sd", "", "", "", "", f"{agg['offline_mean']:.4f}+-{agg['offline_sd']:.4f}",
                     f"{agg['streamed_mean']:.4f}+-{agg['streamed_sd']:.4f}", "", "", ""])
    return format_table(rows, ["set", "seed", "train", "val", "test", "val loss", "acc offline (torch)",
                               "acc streamed (onnx)", "label agree", "max |dscore|", "ms/chunk"])


def set_settings(name: str, args) -> dict:
    """The settings of set ``name`` with the command line's overrides (those given)."""
    st = dict(SETTINGS[name])
    keys = ("epochs", "input_delta", *(k for k, _ in OVERRIDES))
    st.update({key: getattr(args, key) for key in keys if getattr(args, key) is not None})
    return st


def _train_config(st: dict, seed: int, args):  # -> TrainConfig
    """The set's settings (with the command line's overrides) as a :class:`TrainConfig` for ``seed``."""
    from rnnstream.models.train import TrainConfig

    return TrainConfig(cell=st["cell"], hidden_size=st["hidden"], num_layers=st["layers"], dropout=st["dropout"],
                       epochs=st["epochs"], batch_size=st["batch_size"], lr=st["lr"], lr_schedule="cosine",
                       weight_decay=st.get("weight_decay", 0.0), pooling=st.get("pooling", "last"),
                       augment=st.get("augment", "none"), conv_channels=int_list(st.get("conv_channels", "")),
                       conv_kernel=int_list(st.get("conv_kernel", "3,3")), conv_pool=st.get("conv_pool", 2),
                       input_norm=st.get("input_norm", "none"), norm_prior=st.get("norm_prior", 0.0),
                       norm_decay=st.get("norm_decay", 1.0), weight_average=st.get("weight_average", 0.0),
                       ensemble=st.get("ensemble", 1), input_delta=st.get("input_delta", False), seed=seed,
                       device="cpu", progress=not args.no_progress)


def _cross_validate(rest, feature_config, st: dict, seeds, args, path: str) -> dict:
    """K-fold cross-validation over ``rest`` for each seed (folds from a seeded permutation; each fold's model
    keeps its best epoch by validation loss). Returns and writes the per-fold and mean validation scores (``path``),
    and every recording's out-of-fold class probabilities per seed (``<path without .json>_oof.npz``)."""
    import numpy as np

    from rnnstream.models.data import classify_data
    from rnnstream.models.train import train

    k = args.cv_folds
    if not 2 <= k <= len(rest):
        raise SystemExit(f"--cv-folds must be in 2..{len(rest)}, got {k}")
    folds = []
    labels = sorted({e.label for e in rest})
    oof = np.full((len(seeds), len(rest), len(labels)), np.nan)  # out-of-fold class probabilities per seed
    for s, seed in enumerate(seeds):
        order = np.random.default_rng(seed).permutation(len(rest))
        for i, held in enumerate(np.array_split(order, k)):
            held_ids = sorted(held.tolist())
            held_set = set(held_ids)
            tr = [e for j, e in enumerate(rest) if j not in held_set]
            train_d = classify_data(tr, feature_config=feature_config)
            val_d = classify_data([rest[j] for j in held_ids], train_d.labels, feature_config=feature_config)
            res = train(train_d, _train_config(st, seed, args), val_data=val_d, stats=train_d.fit_stats())
            cols = [labels.index(name) for name in train_d.labels]
            oof[s, np.asarray(held_ids)[:, None], np.asarray(cols)[None, :]] = class_probabilities(res.model, val_d)
            v = res.metrics["val"]
            folds.append({"seed": seed, "fold": i, "val_loss": v["loss"], "val_accuracy": v["accuracy"],
                          "best_epoch": res.best_epoch, "n_val": len(val_d)})
            log(f"   seed {seed} fold {i}: val loss {v['loss']:.4f} acc {v['accuracy']:.4f} (epoch {res.best_epoch})")
    truth = np.asarray([labels.index(e.label) for e in rest])
    out = {"cv_folds": k, "seeds": list(seeds), "settings": st, "folds": folds,
           "val_loss_mean": float(np.mean([f["val_loss"] for f in folds])),
           "val_accuracy_mean": float(np.mean([f["val_accuracy"] for f in folds])),
           "seed_ensemble": seed_ensemble_scores(np.nan_to_num(oof), truth)}
    ens = out["seed_ensemble"]
    log(f"   {k}-fold CV over {len(rest)} recordings x {len(seeds)} seeds: val loss {out['val_loss_mean']:.4f} "
        f"acc {out['val_accuracy_mean']:.4f}; the seeds' out-of-fold probabilities averaged: loss {ens['loss']:.4f} "
        f"acc {ens['accuracy']:.4f}")
    write_json(path, out)
    # every recording's out-of-fold probabilities per seed, to average across configurations (same seeds: same folds)
    np.savez(os.path.splitext(path)[0] + "_oof.npz", oof=oof, truth=truth, labels=np.asarray(labels),
             ids=np.asarray([e.id for e in rest]))
    return out


def class_probabilities(model, data):  # -> np.ndarray
    """Softmax of ``model``'s scored frame (a classifier's last frame) for every example of ``data``, in its
    order: ``[len(data), len(data.labels)]`` float64."""
    import numpy as np
    import torch

    from rnnstream.models.evaluate import predict_batches
    from rnnstream.models.tasks import task_for

    task = task_for(model.config)
    probs = np.zeros((len(data), len(data.labels)))
    for idx, batch, out in predict_batches(model.eval(), data, 256, torch.device("cpu")):
        pred, _ = task.targets(model, out, batch, 0, out.shape[1])
        probs[idx.numpy()] = torch.softmax(pred.double(), dim=-1).numpy()
    return probs


def seed_ensemble_scores(oof, truth) -> dict:
    """Cross-validated scores of an ensemble of the seeds' models: ``oof [S, N, C]`` out-of-fold class
    probabilities of each seed (each recording scored by the seed's model that did not train on it), averaged over
    seeds; ``truth [N]`` class ids. Returns the mean negative log-likelihood, the accuracy of the average and,
    for comparison, each seed's own out-of-fold accuracy."""
    import numpy as np

    mean = oof.mean(axis=0)
    rows = np.arange(len(truth))
    return {"members": int(oof.shape[0]),
            "loss": float(-np.log(np.clip(mean[rows, truth], 1e-12, None)).mean()),
            "accuracy": float((mean.argmax(axis=1) == truth).mean()),
            "member_accuracy": [float((p.argmax(axis=1) == truth).mean()) for p in oof]}


def _summary(args, argv, results) -> dict:
    agg = {}
    for n, by_seed in results.items():
        agg[n] = dict(zip(("offline_mean", "offline_sd"), mean_std([r["offline_accuracy_torch"] for r in by_seed.values()])))
        agg[n].update(zip(("streamed_mean", "streamed_sd"),
                          mean_std([r["streaming_accuracy_onnx"] for r in by_seed.values()])))
        agg[n]["val_loss_mean"] = mean_std([r["val_loss"] for r in by_seed.values()])[0]
        agg[n]["seeds"] = list(by_seed)
    return {
        "command": "python -m experiments.uea " + " ".join(sys.argv[1:] if argv is None else argv),
        "sets": {n: {s: {k: v for k, v in r.items() if k != "history"} for s, r in by_seed.items()}
                 for n, by_seed in results.items()},
        "aggregate": agg,
    }


if __name__ == "__main__":
    sys.exit(main())

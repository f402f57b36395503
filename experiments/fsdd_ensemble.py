"""Validation accuracy of an ensemble of finished FSDD selection runs, fold by fold (no test speaker read).

::

    .venv/bin/python -m experiments.fsdd_ensemble out/explore4/WARP10 out/explore4/WARP10_s1 out/explore4/WARP10_s2

Each argument is the ``--out`` folder of an ``experiments.fsdd --splits loso --no-refit`` run (one seed each, the
same options). For every leave-one-speaker-out fold, the runs' selection models (``loso-<speaker>/model.pt``, each
trained on the same two speakers) score the fold's validation speaker (the held-out *training* speaker the runs
recorded, :func:`experiments.fsdd.validation_speaker`; runs of different ``--val-offset`` are refused); their class
probabilities are averaged, as :class:`rnnstream.models.ensemble.StreamingEnsemble` averages its members'. Prints
each fold's member and ensemble accuracies and the mean over folds: the number that decides, by the selection
rule of docs/results.md, whether an ensemble of these runs' configuration replaces the recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np


def ensemble_accuracy(models: Sequence, data) -> tuple[float, list[float]]:  # -> (ensemble, each member)
    """Accuracy of the mean of ``models``' class probabilities on classify ``data`` (labels in the models' order),
    and each model's own accuracy."""
    from experiments.uea import class_probabilities, seed_ensemble_scores

    scores = seed_ensemble_scores(np.stack([class_probabilities(m, data) for m in models]), data.y.numpy())
    return scores["accuracy"], scores["member_accuracy"]


def _read_splits(run: str) -> dict:
    with open(os.path.join(run, "results.json"), encoding="utf-8") as fh:
        return json.load(fh)["splits"]


def _validation_speaker(records: list[dict], split: str) -> str:
    """The validation speaker every run recorded for ``split`` (``SystemExit`` when the runs differ)."""
    speakers = {r["val_speaker"] for rec in records for r in rec[split].values()}
    if len(speakers) != 1:
        raise SystemExit(f"{split}: the runs validated on different speakers {sorted(map(str, speakers))}; "
                         "average runs of one --val-offset")
    return speakers.pop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.fsdd_ensemble", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="experiments.fsdd --no-refit output folders (one seed each)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    from experiments.fsdd import SPEAKERS
    from rnnstream.models.checkpoint import load_checkpoint
    from rnnstream.models.data import classify_data, split_by
    from rnnstream.pipeline.dataset import read_dataset

    torch.set_num_threads(args.threads)
    ds = read_dataset(os.path.join(args.runs[0], "features"))
    records = [_read_splits(r) for r in args.runs]
    accs = []
    for test in SPEAKERS:
        val = _validation_speaker(records, f"loso-{test}")
        rest, _ = split_by(ds.examples, "speaker", test)
        _, val_ex = split_by(rest, "speaker", val)
        ckpts = [load_checkpoint(os.path.join(r, f"loso-{test}", "model.pt")) for r in args.runs]
        data = classify_data(val_ex, ckpts[0].labels, feature_config=ds.config)
        acc, members = ensemble_accuracy([c.model for c in ckpts], data)
        accs.append(acc)
        print(f"fold loso-{test} (validation speaker {val}, {len(data)} files): members "
              + " ".join(f"{a:.4f}" for a in members) + f", ensemble {acc:.4f}")
    print(f"mean validation accuracy over {len(accs)} folds: ensemble of {len(args.runs)} {np.mean(accs):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

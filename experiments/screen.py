"""Read a screen of selection runs: the mean validation accuracy the adoption rule compares, and where the test
speakers' errors go.

A *screen* (docs/results.md, issue 15 follow-ups) is one ``experiments.fsdd --no-refit`` output folder per
validation offset and seed; each holds ``results.json`` (per fold and seed: ``val_accuracy``, the test accuracy,
the validation speaker) and one folder per fold with the training's ``metrics.json`` (confusion matrices)::

    python -m experiments.screen mean out/explore14/BEND3_off*_s*         # per folder, per offset, all runs
    python -m experiments.screen confusions out/explore14/BEND3_off*_s*   # test confusions summed per fold

The test accuracies are printed beside, never used: the rule decides on validation only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Run:
    """One selection run: a fold of one folder (one seed and validation offset)."""

    folder: str
    fold: str
    seed: str
    val_accuracy: float
    test_accuracy: float


def read_runs(folders: Sequence[str]) -> list[Run]:
    """The runs of every ``results.json`` under ``folders``, in folder, fold and seed order."""
    runs = []
    for folder in folders:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as fh:
            splits = json.load(fh)["splits"]
        for fold in sorted(splits):
            for seed, r in sorted(splits[fold].items()):
                runs.append(Run(folder, fold, seed, float(r["val_accuracy"]), float(r["offline_accuracy_torch"])))
    return runs


def offset_of(folder: str) -> str:
    """The validation offset in a folder's name (``..._off2_s1`` -> ``"2"``); ``"1"`` without one (the default)."""
    m = re.search(r"_off(\d+)", os.path.basename(os.path.normpath(folder)))
    return m.group(1) if m else "1"


def mean_report(runs: Sequence[Run]) -> list[str]:
    """Lines: each folder's validation accuracies by fold, the mean per validation offset, and over every run."""
    lines = []
    for folder in dict.fromkeys(r.folder for r in runs):
        mine = [r for r in runs if r.folder == folder]
        lines.append(f"{os.path.basename(os.path.normpath(folder))}: "
                     + " ".join(f"{r.fold.removeprefix('loso-')}={r.val_accuracy:.3f}" for r in mine))
    by_offset: dict[str, list[Run]] = {}
    for r in runs:
        by_offset.setdefault(offset_of(r.folder), []).append(r)
    for offset, mine in sorted(by_offset.items()):
        mean = np.mean([r.val_accuracy for r in mine])
        lines.append(f"offset {offset}: {len(mine)} runs, mean validation {mean:.4f}")
    lines.append(f"all {len(runs)} runs: mean validation {np.mean([r.val_accuracy for r in runs]):.4f} "
                 f"(test, printed and not used: {np.mean([r.test_accuracy for r in runs]):.4f})")
    return lines


def summed_confusions(folders: Sequence[str], split: str = "test") -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per fold, the ``split`` confusion matrices (rows: true label) of every folder's run summed, with the labels."""
    out: dict[str, tuple[np.ndarray, list[str]]] = {}
    for folder in folders:
        for fold in sorted(os.listdir(folder)):
            path = os.path.join(folder, fold, "metrics.json")
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as fh:
                m = json.load(fh)[split]
            c = np.asarray(m["confusion"], dtype=np.int64)
            total, labels = out.get(fold, (np.zeros_like(c), list(m["labels"])))
            out[fold] = (total + c, labels)
    return out


def confusion_report(confusions: dict[str, tuple[np.ndarray, list[str]]], top: int = 4) -> list[str]:
    """Lines: per fold, the recall of each label and the ``top`` largest confusions (true -> predicted: count)."""
    lines = []
    for fold, (c, labels) in sorted(confusions.items()):
        recall = np.diag(c) / np.maximum(c.sum(axis=1), 1)
        lines.append(f"{fold}: accuracy {np.trace(c) / max(c.sum(), 1):.3f}; recall "
                     + " ".join(f"{lab}={v:.2f}" for lab, v in zip(labels, recall)))
        off = c.copy()
        np.fill_diagonal(off, 0)
        worst = np.argsort(-off, axis=None, kind="stable")[:top]
        pairs = [np.unravel_index(k, c.shape) for k in worst if off.flat[k] > 0]
        lines.append("  most confused: " + ", ".join(f"{labels[i]} -> {labels[j]}: {off[i, j]} of {c[i].sum()}"
                                                    for i, j in pairs))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.screen", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["mean", "confusions"])
    p.add_argument("folders", nargs="+", help="experiments.fsdd output folders (one per validation offset and seed)")
    p.add_argument("--split", default="test", choices=["test", "val"], help="confusions: of which split")
    args = p.parse_args(argv)
    folders = [f for f in args.folders if os.path.isdir(f)]
    if len(folders) < len(args.folders):  # a shell glob such as BEND3_off*_s* also matches the runs' logs
        print(f"skipped {len(args.folders) - len(folders)} paths that are not folders", file=sys.stderr)
    if not folders:
        print(f"error: none of {args.folders} is a folder of experiments.fsdd runs", file=sys.stderr)
        return 1
    try:
        if args.command == "mean":
            lines = mean_report(read_runs(folders))
        else:
            lines = confusion_report(summed_confusions(folders, args.split))
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

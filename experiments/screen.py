"""Read a screen of selection runs: the mean validation accuracy the adoption rule compares, and where the test
speakers' errors go.

A *screen* (docs/results.md, issue 15 follow-ups) is one ``experiments.fsdd --no-refit`` output folder per
validation offset and seed; each holds ``results.json`` (per fold and seed: ``val_accuracy``, the test accuracy,
the validation speaker) and one folder per fold with the training's ``metrics.json`` (confusion matrices)::

    python -m experiments.screen mean out/explore14/BEND3_off*_s*         # per folder, per offset, all runs
    python -m experiments.screen confusions out/explore14/BEND3_off*_s*   # test confusions summed per fold
    python -m experiments.screen compare out/explore18/QH_off1_s? --base out/explore16/BASE_off1_s? \
        --gate 0.02 --min-higher 8                                        # the adoption rule, pair by pair

``compare`` pairs each candidate run with the base run of the same fold, seed and validation speaker, and applies
the rule: adopt only if the candidate's mean validation over the pairs is at least the base's plus ``--gate`` (and,
with ``--min-higher``, higher in at least that many pairs). The test accuracies are printed beside, never used: the
rule decides on validation only. With ``--refit`` runs the test printed is the selection run's; the refit's is
printed apart. It also says whether the two arms ran in one environment (``results.json``'s ``environment``:
packages, CPU): a run repeats to the digit only in its own (docs/results.md, follow-up 26).
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
    test_accuracy: float  #: the selection run's, also when the record is a refit's
    val_speaker: str = ""
    refit_accuracy: float | None = None  #: the refit's test accuracy (``--refit`` runs)

    @property
    def key(self) -> tuple[str, str, str]:
        """What pairs runs of two arms: fold, seed and validation speaker (the folder's offset without one)."""
        return self.fold, self.seed, self.val_speaker or f"offset {offset_of(self.folder)}"


def read_runs(folders: Sequence[str]) -> list[Run]:
    """The runs of every ``results.json`` under ``folders``, in folder, fold and seed order."""
    runs = []
    for folder in folders:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as fh:
            splits = json.load(fh)["splits"]
        for fold in sorted(splits):
            for seed, r in sorted(splits[fold].items()):
                selection = r.get("selection")
                test = (selection or r)["offline_accuracy_torch"]
                refit = float(r["offline_accuracy_torch"]) if selection else None
                runs.append(Run(folder, fold, seed, float(r["val_accuracy"]), float(test),
                                str(r.get("val_speaker") or ""), refit))
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


def pair_runs(base: Sequence[Run], candidate: Sequence[Run]) -> tuple[list[tuple[Run, Run]], list[Run]]:
    """``(pairs (base, candidate) in the candidate's order, runs of either arm without a partner)``.

    Raises:
        ValueError: an arm holds two runs of the same fold, seed and validation speaker.
    """
    arms = []
    for runs in (base, candidate):
        by_key: dict[tuple[str, str, str], Run] = {}
        for r in runs:
            if r.key in by_key:
                raise ValueError(f"two runs of {r.key} ({by_key[r.key].folder} and {r.folder}): one arm per folder set")
            by_key[r.key] = r
        arms.append(by_key)
    pairs = [(arms[0][k], c) for k, c in arms[1].items() if k in arms[0]]
    alone = [r for a, b in ((arms[0], arms[1]), (arms[1], arms[0])) for k, r in a.items() if k not in b]
    return pairs, alone


def compare_report(pairs: Sequence[tuple[Run, Run]], gate: float | None = None,
                   min_higher: int | None = None) -> list[str]:
    """Lines: each pair's validation accuracies, the difference per validation speaker, the means, a two-sided sign
    test over the untied pairs and, with ``gate``, the rule's verdict (test accuracies printed, not used)."""
    from scipy.stats import binomtest

    if not pairs:
        return ["no pairs: the two arms share no fold, seed and validation speaker"]
    lines = [f"{c.fold.removeprefix('loso-'):>10} s{c.seed} val {c.key[2]:>10}: base {b.val_accuracy:.4f}  "
             f"candidate {c.val_accuracy:.4f}  {c.val_accuracy - b.val_accuracy:+.4f}" for b, c in pairs]
    diffs = np.array([c.val_accuracy - b.val_accuracy for b, c in pairs])
    speakers = np.array([c.key[2] for _, c in pairs])
    for who in dict.fromkeys(speakers):
        d = diffs[speakers == who]
        lines.append(f"validated on {who}: {d.mean():+.4f} over {d.size} pairs, higher in {int((d > 0).sum())}")
    base = float(np.mean([b.val_accuracy for b, _ in pairs]))
    cand = float(np.mean([c.val_accuracy for _, c in pairs]))
    higher, lower = int((diffs > 0).sum()), int((diffs < 0).sum())
    p = binomtest(higher, higher + lower).pvalue if higher + lower else 1.0
    lines.append(f"{len(pairs)} pairs: mean validation base {base:.4f}, candidate {cand:.4f} ({cand - base:+.4f}); "
                 f"higher in {higher}, lower in {lower}, tied in {len(pairs) - higher - lower} "
                 f"(two-sided sign test p = {p:.3g})")
    lines.append(f"test of the selection runs, printed and not used: base "
                 f"{np.mean([b.test_accuracy for b, _ in pairs]):.4f}, candidate "
                 f"{np.mean([c.test_accuracy for _, c in pairs]):.4f}")
    refits = [c.refit_accuracy for _, c in pairs if c.refit_accuracy is not None]
    if refits:
        lines.append(f"candidate refits' test, printed and not used: {np.mean(refits):.4f} over {len(refits)} runs")
    if gate is not None:
        ok = cand >= base + gate and (min_higher is None or higher >= min_higher)
        need = f"mean >= {base + gate:.4f}" + (f" and higher in >= {min_higher}" if min_higher is not None else "")
        lines.append(f"verdict: {'ADOPT' if ok else 'NOT ADOPTED'} (the rule: {need})")
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


def environment_report(base: Sequence[str], candidate: Sequence[str]) -> list[str]:
    """One line on the environments the folders' runs recorded: the same for every folder, or which differ (the
    comparison is then between machines or package versions as well as options), or which folders recorded none."""
    envs = {}
    for folder in [*base, *candidate]:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as fh:
            envs[folder] = json.load(fh).get("environment")
    missing = [f for f, e in envs.items() if e is None]
    kinds = {json.dumps(e, sort_keys=True) for e in envs.values() if e is not None}
    lines = []
    if len(kinds) > 1:
        first = json.loads(sorted(kinds)[0])
        differ = sorted({k for kind in kinds for k, v in json.loads(kind).items() if first.get(k) != v})
        lines.append(f"WARNING: the runs recorded {len(kinds)} different environments (differing in "
                     f"{', '.join(differ)}): their numbers differ by machine as well as by options")
    elif kinds:
        env = json.loads(next(iter(kinds)))
        lines.append(f"environment: the same for all {len(envs) - len(missing)} folders that recorded one "
                     f"({env.get('cpu')}, {env.get('cpus')} CPUs, {'/'.join(env.get('cpu_flags') or [])})")
    if missing:
        lines.append(f"environment not recorded by {len(missing)} folder(s) (runs before 2026-12-02 17:00 UTC), e.g. "
                     f"{missing[0]}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.screen", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["mean", "confusions", "compare"])
    p.add_argument("folders", nargs="+", help="experiments.fsdd output folders (one per validation offset and seed); "
                                              "compare: the candidate's")
    p.add_argument("--split", default="test", choices=["test", "val"], help="confusions: of which split")
    p.add_argument("--base", nargs="+", default=[], metavar="FOLDER", help="compare: the base arm's folders")
    p.add_argument("--gate", type=float, default=None, help="compare: the candidate's mean must be the base's + GATE")
    p.add_argument("--min-higher", type=int, default=None, metavar="N",
                   help="compare: and the candidate higher in at least N pairs")
    args = p.parse_args(argv)
    if args.command == "compare" and not args.base:
        p.error("compare needs --base FOLDER ...")
    try:
        folders = _folders(args.folders)
        if args.command == "mean":
            lines = mean_report(read_runs(folders))
        elif args.command == "confusions":
            lines = confusion_report(summed_confusions(folders, args.split))
        else:
            pairs, alone = pair_runs(read_runs(_folders(args.base)), read_runs(folders))
            lines = compare_report(pairs, args.gate, args.min_higher)
            lines += environment_report(_folders(args.base), folders)
            if alone:
                lines.append(f"not paired (left out of the means): {len(alone)} runs, e.g. "
                             + ", ".join(f"{r.folder} {r.fold} s{r.seed}" for r in alone[:3]))
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _folders(paths: Sequence[str]) -> list[str]:
    """The folders among ``paths`` (a shell glob such as ``BEND3_off*_s*`` also matches the runs' logs).

    Raises:
        ValueError: none of ``paths`` is a folder.
    """
    folders = [f for f in paths if os.path.isdir(f)]
    if len(folders) < len(paths):
        print(f"skipped {len(paths) - len(folders)} paths that are not folders", file=sys.stderr)
    if not folders:
        raise ValueError(f"none of {list(paths)} is a folder of experiments.fsdd runs")
    return folders


if __name__ == "__main__":
    sys.exit(main())

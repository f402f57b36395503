"""Training an ensemble (``TrainConfig.ensemble = N``): ``N`` ordinary runs from different seeds, then one model.

Member ``i`` is the single-model run with seed :func:`member_seed` ``(seed, i)`` (member 0 is the run
``ensemble=1`` would make), the same data, schedule and validation; each keeps its own best epoch. The members are
joined by :func:`rnnstream.models.ensemble.ensemble_of` and the ensemble is scored on the validation and test data;
with a checkpoint path, each member's checkpoint, plots and ``metrics.json`` go to ``member<i>/`` beside it (beside
the ensemble's ``metrics_path`` when one is given) and the ensemble's checkpoint (loadable, exportable, streamable
like any model), ``metrics.json`` and task plots (the confusion matrix of a classifier) beside the path itself.
``best_epoch`` is the members' median best epoch (what a refit of the ensemble trains each member for).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Callable
from typing import Any

from rnnstream.models.checkpoint import save_checkpoint
from rnnstream.models.data import TaskData
from rnnstream.models.ensemble import ensemble_of
from rnnstream.models.evaluate import evaluate
from rnnstream.models.tasks import task_for
from rnnstream.pipeline.errors import ConfigError

#: Member ``i`` of the ensemble of seed ``s`` trains with seed ``s + SEED_STRIDE * i`` (distinct for seeds below it).
SEED_STRIDE = 1000


def member_seed(seed: int, member: int) -> int:
    """The training seed of ensemble member ``member`` (0-based) of a run with ``seed``."""
    return seed + SEED_STRIDE * member


def train_ensemble(train_data: TaskData, config: Any, train_one: Callable[..., Any], *, val_data: TaskData | None,
                   test_data: TaskData | None, model: Any, stats: Any, feature_config: Any, checkpoint: str | None,
                   resume: bool, plots_dir: str | None, metrics_path: str | None) -> Any:
    """Train ``config.ensemble`` members with ``train_one`` (:func:`rnnstream.models.train.train`'s single-model
    run, same keywords) and return a :class:`~rnnstream.models.train.TrainResult` whose model is the ensemble,
    whose metrics are the ensemble's and whose ``members`` are the members' results.

    Raises:
        ConfigError: ``resume`` or an initial ``model`` (an ensemble trains its members from scratch).
    """
    from rnnstream.models.train import TrainResult

    if resume or model is not None:
        raise ConfigError("an ensemble (ensemble > 1) trains its members from scratch: resume and an initial model "
                          "are not supported")
    feature_config = feature_config or train_data.feature_config
    stats = train_data.fit_stats() if stats is None else stats  # once, for every member and the checkpoint
    root = os.path.dirname(os.path.abspath(checkpoint)) if checkpoint else None
    # the members' folders sit beside the ensemble's metrics.json (rnnstream train --refit puts a selection run's
    # in selection/, so its members do not share folders with the refit's), else beside the checkpoint
    base = os.path.dirname(os.path.abspath(metrics_path)) if metrics_path else root
    members = []
    for i in range(config.ensemble):
        mdir = os.path.join(base, f"member{i}") if base else None
        members.append(train_one(
            train_data, dataclasses.replace(config, ensemble=1, seed=member_seed(config.seed, i)),
            val_data=val_data, test_data=test_data, stats=stats, feature_config=feature_config,
            checkpoint=os.path.join(mdir, "model.pt") if checkpoint and mdir else None,
            plots_dir=os.path.join(plots_dir, f"member{i}") if plots_dir else None,
            metrics_path=os.path.join(mdir, "metrics.json") if mdir else None))
    labels = members[0].labels
    ens = ensemble_of([r.model for r in members]).eval()
    metrics = {name: evaluate(ens, data, labels=labels)
               for name, data in (("val", val_data), ("test", test_data)) if data is not None}
    out_dir = plots_dir or root
    plots = task_for(ens.config).plots(ens, metrics, test_data or val_data, out_dir) if out_dir else []
    best = int(statistics.median_low(r.best_epoch for r in members))
    record = {"ensemble": config.ensemble, "model_config": ens.config.to_dict(),
              "train_config": dataclasses.asdict(config), "best_epoch": best, "checkpoint": checkpoint, "plots": plots,
              "members": [{"seed": member_seed(config.seed, i), "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                           **r.metrics} for i, r in enumerate(members)],
              **metrics}
    if checkpoint is not None:
        save_checkpoint(checkpoint, ens, feature_config, labels=list(labels), stats=stats.to_dict(),
                        extra={"best_epoch": best, "metrics": metrics})
    path = metrics_path or (os.path.join(root, "metrics.json") if root else None)
    if path is not None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
    return TrainResult(model=ens, history=[], metrics=metrics, best_epoch=best,
                       epochs_run=max(r.epochs_run for r in members), stopped_early=False, checkpoint=checkpoint,
                       plots=plots + [p for r in members for p in r.plots], labels=labels,
                       grad_warnings=[w for r in members for w in r.grad_warnings], members=members)


__all__ = ["SEED_STRIDE", "member_seed", "train_ensemble"]

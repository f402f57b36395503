"""Training recipes: named defaults for the options a user leaves unset.

A recipe is a :class:`TrainRecipe`, one typed field per ``rnnstream train`` option it sets (the option's ``dest``),
so a misspelt or stale option is an error where the recipe is declared, not a silently ignored key.
:func:`apply_recipe` writes a recipe's values onto parsed arguments, leaving every option given on the command line
alone (:func:`explicit_dests` finds those). ``experiments.fsdd`` applies its experiment recipes the same way.

::

    args = build_parser().parse_args(argv)
    apply_recipe(args, SPEECH_RECIPE, explicit_dests(build_parser(), argv))
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainRecipe:
    """Defaults for ``rnnstream train`` options, by the option's ``dest`` (see :func:`apply_recipe`).

    ``refit_epochs``: a number of epochs, ``"best"`` or ``"all"`` (``--refit-epochs``); a number belongs to the
    recipe's own ``epochs`` schedule (:func:`apply_recipe` turns it into ``"all"`` when ``--epochs`` is given)."""

    cell: str
    layers: int
    hidden: int
    dropout: float
    epochs: int
    lr: float
    lr_schedule: str
    pooling: str
    augment: str
    wave_copies: int
    conv_channels: tuple[int, ...]
    conv_kernel: tuple[int, int]
    conv_pool: int
    input_norm: str
    norm_decay: float
    refit: bool
    refit_epochs: int | str

    def options(self) -> dict[str, Any]:
        """``{dest: value}`` of every field."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


#: ``rnnstream train --recipe speech`` (the default ``--recipe auto`` picks it when the dataset's features are
#: audio), applied to every option not given on the command line. Chosen by validation accuracy on a held-out
#: *training* speaker of FSDD's leave-one-speaker-out folds, mean over 4 folds and 3 seeds (docs/results.md): PCEN of
#: the log-mel bands (smoothing decay 0.975, a 0.4 s time constant at a 10 ms hop) into a CRNN (32, 64 channels) into
#: a GRU 2x128 with mean pooling over time, SpecAugment, gain, a random equaliser and a band-axis warp
#: (:data:`rnnstream.models.augment.SPEECH_AUGMENT`); ``refit`` then trains again on every training speaker for 8
#: epochs, the count whose validation accuracy pooled over every fold and seed was best (one run's own best epoch is
#: too noisy a choice). With another ``--epochs`` the refit runs every epoch of that schedule instead
#: (:func:`apply_recipe`). PCEN needs log-mel features at one frame per model step: on other audio features the
#: recipe standardises them instead (``rnnstream train`` says so). ``experiments.fsdd --recipe speech`` is the same
#: recipe (tests/models/test_recipes.py checks that both build the same training configuration).
SPEECH_RECIPE = TrainRecipe(
    cell="gru", layers=2, hidden=128, dropout=0.1, epochs=10, lr=3e-3, lr_schedule="cosine", pooling="mean",
    augment="speech", wave_copies=2, conv_channels=(32, 64), conv_kernel=(3, 3), conv_pool=2, input_norm="pcen",
    norm_decay=0.975, refit=True, refit_epochs=8,
)


def explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The option dests that ``argv`` sets explicitly (parsed again with every default suppressed)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    ns, _ = probe.parse_known_args(list(argv))
    return set(vars(ns))


def apply_recipe(args: argparse.Namespace, recipe: TrainRecipe | Mapping[str, Any], explicit: set[str]) -> list[str]:
    """Set ``recipe``'s values on ``args`` for the options not in ``explicit``; returns the dests it set.

    ``recipe``: a :class:`TrainRecipe`, or ``{dest: value}`` (an experiment's own options). A recipe's fixed
    ``refit_epochs`` count belongs to the recipe's own schedule: when ``epochs`` is explicit, the refit runs every
    epoch of the given schedule (``"all"``) instead."""
    values = recipe.options() if isinstance(recipe, TrainRecipe) else recipe
    done = []
    for dest, value in values.items():
        if dest not in explicit and hasattr(args, dest):
            if dest == "refit_epochs" and isinstance(value, int) and "epochs" in explicit:
                value = "all"
            setattr(args, dest, value)
            done.append(dest)
    return done


__all__ = ["SPEECH_RECIPE", "TrainRecipe", "apply_recipe", "explicit_dests"]

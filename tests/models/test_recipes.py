"""Training recipes (rnnstream.models.recipes): every field is a real ``rnnstream train`` option, values reach only
the options left unset, and ``experiments.fsdd --recipe speech`` trains what ``rnnstream train`` does on audio."""

from __future__ import annotations

import argparse
import dataclasses


from rnnstream.models.augment import BatchAugment
from rnnstream.models.recipes import SPEECH_RECIPE, TrainRecipe, apply_recipe, explicit_dests


def _train_args(*extra: str) -> tuple[argparse.Namespace, set[str]]:
    from rnnstream.models.train_cli import build_parser

    argv = ["--data", "ds", "--out", "m.pt", *extra]
    return build_parser().parse_args(argv), explicit_dests(build_parser(), argv)


def test_every_recipe_field_is_a_train_option() -> None:
    args, _ = _train_args()
    missing = [f.name for f in dataclasses.fields(TrainRecipe) if not hasattr(args, f.name)]
    assert missing == []  # a stale or misspelt field would be skipped by apply_recipe without this check


def test_explicit_dests_are_the_options_given() -> None:
    _, given = _train_args("--epochs", "4", "--conv-channels", "")
    assert given == {"data", "out", "epochs", "conv_channels"}


def test_apply_recipe_fills_only_what_was_not_given() -> None:
    args, given = _train_args("--hidden", "8")
    done = apply_recipe(args, SPEECH_RECIPE, given)
    assert "hidden" not in done and args.hidden == 8
    assert (args.layers, args.pooling, args.input_norm, args.refit_epochs) == (2, "mean", "pcen", 8)
    assert sorted(done) == sorted(f.name for f in dataclasses.fields(TrainRecipe) if f.name != "hidden")
    # the recipe's refit count belongs to its own 10-epoch schedule: another --epochs refits for every epoch
    args, given = _train_args("--epochs", "4")
    apply_recipe(args, SPEECH_RECIPE, given)
    assert (args.epochs, args.refit_epochs) == (4, "all")
    # an experiment's own {dest: value} options, and a key its arguments lack (left alone)
    ns = argparse.Namespace(hidden=None, spec_augment=None)
    assert apply_recipe(ns, {"hidden": 64, "spec_augment": "speech", "nothing": 1}, set()) == ["hidden", "spec_augment"]
    assert (ns.hidden, ns.spec_augment) == (64, "speech") and not hasattr(ns, "nothing")


def test_the_fsdd_experiment_trains_the_speech_recipe() -> None:
    """``experiments.fsdd`` (its default recipe ``speech``) builds the training configuration ``rnnstream train``
    builds on audio from :data:`SPEECH_RECIPE`: the two are declared apart, so this keeps them from drifting."""
    from experiments.fsdd import _resolve, _train_config, build_parser
    from rnnstream.models.train_cli import _specs

    args, given = _train_args("--seed", "0")
    apply_recipe(args, SPEECH_RECIPE, given)
    _, ours = _specs(args)
    exp_args = _resolve(build_parser().parse_args([]))
    theirs = _train_config(exp_args, seed=0)
    fields = ("cell", "hidden_size", "num_layers", "dropout", "pooling", "input_norm", "norm_decay", "conv_channels",
              "conv_kernel", "conv_pool", "epochs", "batch_size", "lr", "lr_schedule", "weight_decay", "input_delta")
    assert {f: getattr(theirs, f) for f in fields} == {f: getattr(ours, f) for f in fields}
    assert BatchAugment.parse(theirs.augment) == BatchAugment.parse(ours.augment)
    assert (exp_args.wave_copies, exp_args.refit, exp_args.refit_epochs) == (
        SPEECH_RECIPE.wave_copies, SPEECH_RECIPE.refit, SPEECH_RECIPE.refit_epochs)

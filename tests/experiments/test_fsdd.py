"""experiments.fsdd: recipe defaults (no data needed)."""

from __future__ import annotations

import pytest

from experiments.fsdd import _resolve, build_parser


@pytest.mark.parametrize("argv,epochs,refit_epochs,spec_augment", [
    ([], 10, 9, "speech"),  # the speech recipe: its pooled refit count for its own 10-epoch schedule
    (["--epochs", "4"], 4, "all", "speech"),  # another schedule: every epoch of it
    (["--epochs", "4", "--refit-epochs", "best"], 4, "best", "speech"),
    (["--recipe", "speech-d"], 10, "best", "freq=2x4,time=2x8,gain=6"),  # D keeps its augmentation (no warp)
])
def test_recipe_defaults(argv, epochs, refit_epochs, spec_augment):
    args = _resolve(build_parser().parse_args(argv))
    assert (args.epochs, args.refit_epochs, args.spec_augment) == (epochs, refit_epochs, spec_augment)


def test_refit_epochs_refuses_bad_values(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--refit-epochs", "0"])
    assert "expected best, all or a number of epochs >= 1" in capsys.readouterr().err

"""The ``rnnstream train`` command: parse the options, then import the training code (torch) and run it.

Nothing heavy is imported at module level, so ``rnnstream train --help`` answers at once.
Exit status: 0 on success, 1 on a typed input error (the message goes to stderr), 2 on bad options.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from rnnstream._cli_support import Command, float_pair, new_parser
from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.model_config import CELLS, INPUT_NORMS, POOLINGS, TASK_NAMES, Architecture
from rnnstream.pipeline.task_kinds import task_kind

#: The architecture flags' defaults: :class:`Architecture`'s, declared there once.
_ARCH = Architecture()


def _rows(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", part)
        if not m:
            raise ConfigError(f"--split-rows expects START:STOP[,START:STOP...], got {text!r}")
        out.append((int(m.group(1)), int(m.group(2))))
    return tuple(out)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _architecture(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("architecture")
    a.add_argument("--cell", default=_ARCH.cell, choices=list(CELLS))
    a.add_argument("--layers", type=int, default=_ARCH.num_layers)
    a.add_argument("--hidden", type=int, default=_ARCH.hidden_size)
    a.add_argument("--dropout", type=float, default=_ARCH.dropout)
    a.add_argument("--bidirectional", action="store_true", help="offline only: cannot stream or use --tbptt")
    a.add_argument("--residual", action="store_true", help="forecast: predict the change from the current value")
    a.add_argument("--seasonal-period", type=int, default=_ARCH.seasonal_period,
                   help="forecast with --residual: predict the change from the value this many frames before each "
                        "step (seasonal-naive); -1: the data's daily period (24 for hourly data)")
    a.add_argument("--input-diff", action="store_true",
                   help="feed the network each feature's change since the previous frame (level-free inputs)")
    a.add_argument("--input-delta", action="store_true",
                   help="append each feature's change since the previous frame to the features (delta features)")
    a.add_argument("--pooling", default=_ARCH.pooling, choices=list(POOLINGS),
                   help="classify: last frame, running mean, or attention (a running mean weighted by a learned score)")
    a.add_argument("--input-norm", default=_ARCH.input_norm, choices=list(INPUT_NORMS),
                   help="causal_mean: subtract the running mean of the normalised features so far (streamable CMN); "
                        "pcen: per-channel energy normalisation of log-mel features (needs --norm-decay < 1)")
    a.add_argument("--norm-decay", type=float, default=_ARCH.norm_decay,
                   help="causal_mean: per-frame decay of the running mean (1: cumulative; 0.99: ~100-frame memory); "
                        "pcen: the energy smoother's decay (e.g. 0.975)")
    a.add_argument("--norm-prior", type=float, default=_ARCH.norm_prior,
                   help="causal_mean: the running mean starts at the training mean with this weight, in frames")
    a.add_argument("--conv-channels", type=_ints, default=_ARCH.conv_channels,
                   help="causal convolutional front end (CRNN): channels per conv layer, e.g. 16,32 (empty: none)")
    a.add_argument("--conv-kernel", type=_ints, default=_ARCH.conv_kernel,
                   help="conv kernel TIME,FREQ (FREQ 0: one kernel across every feature, a 1-D temporal conv for "
                        "sensor channels, with --conv-pool 1)")
    a.add_argument("--conv-pool", type=int, default=_ARCH.conv_pool,
                   help="max-pool over frequency after each conv layer")
    a.add_argument("--recipe", default="auto", choices=["auto", "speech", "none"],
                   help="defaults for the options not given: speech (speaker-robust: CRNN + GRU with mean pooling, "
                        "augmentation with a band warp and a random equaliser, PCEN of log-mel inputs, held-out-speaker "
                        "validation, then a refit on every speaker for 8 epochs; see docs/results.md); auto: speech when the data is audio")


def _optimisation(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=10)
    o.add_argument("--batch-size", type=int, default=32)
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    o.add_argument("--lr-schedule", default="none", choices=["none", "cosine", "step", "plateau"])
    o.add_argument("--lr-step", type=int, default=10)
    o.add_argument("--lr-gamma", type=float, default=0.5)
    o.add_argument("--clip", type=float, default=1.0, help="max total gradient norm (0: no clipping)")
    o.add_argument("--weight-average", type=float, default=0.0, metavar="EPOCHS",
                   help="validate and keep an exponential moving average of the weights with this half-life in "
                        "epochs (0: off)")
    o.add_argument("--ensemble", type=int, default=_ARCH.ensemble, metavar="N",
                   help="train N members from seeds SEED, SEED+1000, ... and keep them as one streaming model (the "
                        "log of their mean probability; N times the cost per chunk); member runs in member<i>/ "
                        "beside --out (default 1: one model)")
    o.add_argument("--tbptt", type=int, default=None, help="truncated BPTT window in frames")
    o.add_argument("--patience", type=int, default=None, help="early stopping patience in epochs")
    o.add_argument("--steps-per-epoch", type=int, default=None)
    o.add_argument("--explode-threshold", type=float, default=1e3)
    o.add_argument("--vanish-threshold", type=float, default=1e-7)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1...")
    o.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS",
                   help="classify/tag: smooth the training loss's targets by EPS (0: off)")
    o.add_argument("--level-shift", type=float, default=0.0,
                   help="forecast/generate: random level-offset augmentation, in normalisation stds")
    o.add_argument("--augment", default="none",
                   help="training-only per-batch augmentation: none, speech, or freq=NxW,time=NxW,gain=DB,eq=DB,"
                        "noise=STD,warp=A,bend=B,twarp=A,reverb=S,mixup=A (SpecAugment frequency/time masks, random "
                        "gain in dB, a random smooth equaliser of up to DB dB over the bands, feature noise in "
                        "training stds, a random band-axis warp by 1 +- A, a random bend of the band axis moving "
                        "three regions by up to B bands each, a time warp moving a mid-sequence point "
                        "by up to A of the length (classifiers), a random room with a reverberation time of up to "
                        "S seconds (log-mel audio), mixup of two sequences and their labels with a "
                        "Beta(A, A) weight (classifiers))")
    o.add_argument("--threads", type=int, default=None, help="torch CPU threads while training (default: torch's)")


def _data(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument("--val-by", help="metadata key (or id/path/label) for the validation split")
    d.add_argument("--val-match", help="regex: examples whose --val-by field fully matches are validation")
    d.add_argument("--test-by", help="metadata key for a held-out test split")
    d.add_argument("--test-match", help="regex for the test split (e.g. --test-by index --test-match '[0-4]')")
    d.add_argument("--frame-labels", default="frame_labels", help="tag: metadata key of the per-frame label list")
    d.add_argument("--channels", default="", help="input channels (names or indices, comma-separated)")
    d.add_argument("--targets", default="", help="forecast target channels (names or indices)")
    d.add_argument("--window", type=int, default=96, help="forecast input window (frames)")
    d.add_argument("--horizon", type=int, default=24, help="forecast horizon (frames)")
    d.add_argument("--split-rows", type=_rows, default=(),
                   help="forecast train,val[,test] rows, e.g. 0:8640,8640:11520,11520:14400")
    d.add_argument("--forecast-loss", default="all", choices=["all", "last"])
    d.add_argument("--extra-train", action="append", default=[], metavar="DIR",
                   help="a featurized dataset (same feature config) whose examples join the training split only, "
                        "never validation or test, e.g. synthetic speakers (repeatable)")
    d.add_argument("--wave-copies", type=int, default=0,
                   help="audio: waveform-perturbed copies (speed, noise) of each training file, re-featurized")
    d.add_argument("--wave-speed", type=float_pair, default=(0.9, 1.1),
                   help="audio: the copies' speed-perturbation range LO,HI (default 0.9,1.1)")
    d.add_argument("--wave-pitch", type=float_pair, default=(0.0, 0.0),
                   help="audio: the copies' pitch-shift range in semitones LO,HI, formants kept (default none; "
                        "a negative LO needs '=': --wave-pitch=-3,3)")
    d.add_argument("--wave-quiet", type=float_pair, default=(0.0, 0.0), metavar="LO,HI",
                   help="audio: seconds of quiet (a noise floor 30-60 dB below the recording) added before and after "
                        "each copy, each end drawn from LO-HI (default none)")
    d.add_argument("--stats", default="train", choices=["train", "dataset"], help="normalisation statistics source")


def build_parser() -> argparse.ArgumentParser:
    """The ``rnnstream train`` options (every default matches :class:`~rnnstream.models.train.TrainConfig`)."""
    p = new_parser("rnnstream train", "Train a stateful RNN on a featurized dataset.")
    p.add_argument("--data", required=True, help="featurized dataset directory (rnnstream featurize output)")
    p.add_argument("--out", required=True, help="checkpoint path (best weights + resume state)")
    p.add_argument("--task", default="classify", choices=list(TASK_NAMES))
    _architecture(p)
    _optimisation(p)
    _data(p)
    r = p.add_argument_group("output")
    r.add_argument("--plots", default=None, help="directory for PNG plots (default: beside the checkpoint)")
    r.add_argument("--resume", action="store_true", help="continue from --out's saved epoch")
    r.add_argument("--refit", action=argparse.BooleanOptionalAction, default=False,
                   help="after the run that validates, train again on the training and validation examples for the "
                        "epoch count it chose (its checkpoint is kept as OUT.selection.pt, its plots and metrics.json "
                        "in selection/)")
    r.add_argument("--refit-epochs", type=parse_refit_epochs, default="best", metavar="best|all|N",
                   help="with --refit, the refit's epoch count: best (the validating run's best epoch, default), all "
                        "(every --epochs: validation reports generalisation but chooses nothing), or a number")
    r.add_argument("--init", default=None, help="fine-tune: start from this checkpoint's weights")
    shown = r.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="show progress bars even when stderr is not a terminal (default: only on a terminal)")
    shown.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """``rnnstream train``: returns the exit status (the CLI's policy: 2 for usage and input errors, 1 for
    runtime failures, one ``rnnstream train: error: ...`` line on stderr)."""
    return TRAIN.main(argv)


def _run_and_report(args: argparse.Namespace, argv: list[str]) -> int:
    _recipe(args, argv)
    result, selection = _run(args)
    summary = {"checkpoint": args.out, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "stopped_early": result.stopped_early}
    summary.update(_scores(result.metrics))
    if selection is not None:
        summary["selection"] = {"checkpoint": selection.checkpoint, "best_epoch": selection.best_epoch,
                                **_scores(selection.metrics)}
    print(json.dumps(summary, indent=2))
    return 0


def _scores(metrics: dict) -> dict:
    """Each split's scalar metrics (no confusion matrix or label list)."""
    return {split: {k: v for k, v in m.items() if k not in ("confusion", "labels")} for split, m in metrics.items()}


def _specs(args: argparse.Namespace):  # -> tuple[DataSpec, TrainConfig]
    from rnnstream.models.train import DataSpec, TrainConfig

    spec = DataSpec(
        task=args.task, val_fraction=args.val_fraction, val_by=args.val_by, val_match=args.val_match,
        test_by=args.test_by, test_match=args.test_match, frame_labels=args.frame_labels,
        channels=tuple(c for c in args.channels.split(",") if c), targets=tuple(c for c in args.targets.split(",") if c),
        window=args.window, horizon=args.horizon, split_rows=args.split_rows, forecast_loss=args.forecast_loss,
        stats=args.stats, seed=args.seed, wave_copies=args.wave_copies, wave_speed=args.wave_speed,
        wave_pitch=args.wave_pitch, wave_quiet=args.wave_quiet, extra_train=tuple(args.extra_train),
    )
    cfg = TrainConfig(
        cell=args.cell, hidden_size=args.hidden, num_layers=args.layers, dropout=args.dropout,
        bidirectional=args.bidirectional, pooling=args.pooling, input_norm=args.input_norm,
        epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer, lr_schedule=args.lr_schedule,
        lr_step=args.lr_step, lr_gamma=args.lr_gamma, clip_norm=args.clip or None, tbptt=args.tbptt,
        patience=args.patience, seed=args.seed, device=args.device, explode_threshold=args.explode_threshold,
        vanish_threshold=args.vanish_threshold, steps_per_epoch=args.steps_per_epoch,
        progress=True if args.progress else False if args.no_progress else None, num_threads=args.threads, level_shift=args.level_shift, residual=args.residual,
        seasonal_period=args.seasonal_period, input_diff=args.input_diff, input_delta=args.input_delta,
        augment=args.augment, conv_channels=tuple(args.conv_channels), conv_kernel=tuple(args.conv_kernel),
        conv_pool=args.conv_pool, norm_decay=args.norm_decay, norm_prior=args.norm_prior,
        weight_average=args.weight_average, ensemble=args.ensemble, label_smoothing=args.label_smoothing,
    )
    return spec, cfg


def _recipe(args: argparse.Namespace, argv: list[str]) -> None:
    """``--recipe``: fill the options not given from the speech recipe (``auto``: when the data is audio), and
    validate on a held-out training speaker when the examples have a ``speaker`` and no validation split is given."""
    if args.recipe == "none" or not task_kind(args.task).per_sequence or args.resume or args.init:
        return
    from rnnstream.models.augment import BatchAugment
    from rnnstream.models.recipes import SPEECH_RECIPE, apply_recipe, explicit_dests
    from rnnstream.models.splits import held_out_speaker
    from rnnstream.pipeline.dataset import read_dataset

    ds = read_dataset(args.data)
    if args.recipe == "auto" and ds.config.kind != "audio":
        return
    given = explicit_dests(build_parser(), argv)
    apply_recipe(args, SPEECH_RECIPE, given)
    audio = ds.config.audio
    stack = audio.stack if audio is not None else 1
    if stack > 1 and "conv_channels" not in given:  # a frequency conv would cross the stacked copies' seams
        args.conv_channels = ()
        print(f"rnnstream train: recipe {args.recipe}: the features are stacked (stack={stack}), so no conv front "
              "end (the recipe's CRNN needs stack=1)", file=sys.stderr)
    pcen_fits = audio is not None and audio.feature == "logmel" and stack == 1
    if args.input_norm == "pcen" and not pcen_fits and not {"input_norm", "norm_decay"} & given:
        args.input_norm, args.norm_decay = "none", 1.0
        what = f"{audio.feature!r} features" if audio is not None and audio.feature != "logmel" else f"stack={stack}"
        print(f"rnnstream train: recipe {args.recipe}: {what}, so the inputs are standardised instead of PCEN "
              "(the recipe's PCEN was chosen on log-mel features at one frame per step)", file=sys.stderr)
    if audio is not None and audio.feature != "logmel" and "augment" not in given:
        args.augment = BatchAugment.parse(args.augment).without_band_options().spec()
        print(f"rnnstream train: recipe {args.recipe}: {audio.feature!r} features, so --augment {args.augment} (the "
              "recipe's gain, equaliser and band warp act on log-mel bands)", file=sys.stderr)
    if not ({"val_by", "val_match", "val_fraction"} & given):
        speaker = held_out_speaker(ds.examples, args.test_by, args.test_match)
        if speaker is not None:
            args.val_by, args.val_match = "speaker", re.escape(speaker)
            print(f"rnnstream train: recipe {args.recipe}: validation = held-out training speaker {speaker!r}",
                  file=sys.stderr)


def _run(args: argparse.Namespace):  # -> tuple[TrainResult, TrainResult | None]
    """Prepare the data, load ``--init`` (checked against the data), train; with ``--refit`` train again on the
    training and validation examples for the epoch count validation chose. Returns ``(result, selection run or
    None)``; typed errors propagate."""
    import dataclasses

    from rnnstream.models.train import prepare_data

    spec, cfg = _specs(args)
    if args.refit and args.resume:
        raise ConfigError("--refit trains twice from the start; it cannot be combined with --resume")
    data = prepare_data(args.data, spec)
    if not args.refit:
        return _train_once(args, data, cfg, args.out, args.plots), None
    if data.val is None:
        raise ConfigError("--refit needs a validation split to choose the epoch count (--val-by and --val-match, "
                          "or --val-fraction > 0)")
    root, ext = os.path.splitext(args.out)
    plots = os.path.join(args.plots or os.path.dirname(os.path.abspath(args.out)), "selection")
    # the selection run's plots and metrics.json go to selection/, so the refit's beside the checkpoint keep theirs
    selection = _train_once(args, data, cfg, f"{root}.selection{ext or '.pt'}", plots,
                            os.path.join(plots, "metrics.json"))
    full = prepare_data(args.data, dataclasses.replace(spec, val_fraction=0.0, val_by=None, val_match=None))
    epochs, why = refit_count(args.refit_epochs, selection.best_epoch, cfg.epochs)
    print(f"rnnstream train: --refit: training again on the training and validation examples "
          f"({len(full.train)} sequences) for {epochs} epochs, {why}", file=sys.stderr)
    refit = dataclasses.replace(cfg, epochs=epochs)
    return _train_once(args, full, refit, args.out, args.plots), selection


def parse_refit_epochs(text: str) -> str | int:
    """``--refit-epochs``: ``best``, ``all`` or a positive number."""
    if text in ("best", "all"):
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected best, all or a number of epochs >= 1, got {text!r}")
    return n


def refit_count(choice: str | int, best_epoch: int, epochs: int) -> tuple[int, str]:
    """The refit's epoch count for ``--refit-epochs choice`` and why (for the log)."""
    if choice == "best":
        return max(1, best_epoch), "the count validation chose"
    if choice == "all":
        return epochs, f"every epoch of the schedule (validation's best was {best_epoch})"
    return int(choice), f"as --refit-epochs says (validation's best was {best_epoch})"


def _train_once(args: argparse.Namespace, data, cfg, out: str, plots: str | None,
                metrics: str | None = None):  # -> TrainResult
    """One :func:`~rnnstream.models.train.train` run on prepared ``data`` into checkpoint ``out`` (plots into
    ``plots`` and ``metrics.json`` to ``metrics``, both by default beside it)."""
    from rnnstream.models.checkpoint import load_checkpoint
    from rnnstream.models.evaluate import check_compatible
    from rnnstream.models.train import train
    from rnnstream.pipeline.errors import DatasetError
    from rnnstream.pipeline.stats import RunningStats

    init = load_checkpoint(args.init) if args.init else None
    stats = data.stats
    if init is not None:
        check_compatible(init.model, data.train, where=f"checkpoint {args.init!r}")
        if init.labels and tuple(init.labels) != tuple(data.train.labels):
            raise DatasetError(
                f"checkpoint {args.init!r} was trained on labels {init.labels}, the training data has "
                f"{list(data.train.labels)}"
            )
        stats = RunningStats.from_dict(init.stats, where=f"checkpoint {args.init!r} stats") if init.stats else None
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    return train(data.train, cfg, val_data=data.val, test_data=data.test, model=init.model if init else None,
                 stats=stats, feature_config=data.feature_config, checkpoint=out, resume=args.resume,
                 plots_dir=plots, metrics_path=metrics)


TRAIN = Command("train", build_parser, _run_and_report)


if __name__ == "__main__":
    sys.exit(main())

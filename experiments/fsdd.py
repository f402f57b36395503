"""Spoken digits (FSDD): the documented split and leave-one-speaker-out, streamed through ONNX.

::

    .venv/bin/python -m experiments.fsdd --data-root ../shared/data --out out/experiments/fsdd --seeds 0,1,2

1. The Beam featurize job turns the 2,000 WAVs (8 kHz) into log-mel frames (25 ms / 10 ms; ``--n-mels``).
2. Splits: ``documented`` (takes 0-4 test, 5-49 train; FSDD's README) and ``loso-<speaker>`` for each of
   the four speakers (train on the other three). Validation (model selection: best epoch by validation loss)
   is, with ``--val-by speaker`` (the ``speech`` recipe), one held-out *training* speaker in a leave-one-speaker-out
   fold (the next speaker after the test speaker, in george, jackson, lucas, nicolas order; the fold trains on
   the other two), and a seeded 10% of the training files on the documented split. The test files are never
   seen in training or selection.
3. Training-only augmentation: ``--wave-copies`` speed-perturbed (+ noise) copies of each training WAV,
   re-featurized (:mod:`rnnstream.models.wave_augment`); ``--spec-augment`` SpecAugment masks, random gain,
   equaliser and band warp per batch (:mod:`rnnstream.models.augment`). More training voices:
   ``--synth-speakers N`` (the ``speech`` recipe: 48) synthetic espeak-ng speakers of the ten digits
   (:mod:`experiments.synth_digits`, written into ``--out`` once) and ``--extra-train DIR`` (more files named like
   FSDD's), featurized by the same job and added to every split's training examples (never to validation or test).
4. Each split and seed: a classifier trained with :func:`rnnstream.models.train.train`, exported to ONNX, and
   every test file streamed from its WAV in 100 ms chunks through onnxruntime; offline PyTorch accuracy,
   streamed accuracy and their agreement are reported, with mean and standard deviation over seeds.
5. ``--refit`` (the ``speech`` recipe): each leave-one-speaker-out fold trains again on all three training
   speakers, for ``--refit-epochs`` epochs (``speech``: 8, the count whose validation accuracy pooled over every
   fold and seed of its selection runs was best; ``all``: the whole schedule; ``best``: each selection run's own
   best epoch); the refit model's test accuracy is the fold's result.

``--recipe`` sets the defaults (``speech``: the configuration chosen on held-out-speaker validation;
``baseline``: the first configuration). Writes ``results.json`` (every number, updated after every run),
per-run folders (curves, confusion matrices, stream trace) and prints a table. Skips (exit 0, with the
reason) when the FSDD folder is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from experiments._common import (
    base_parser,
    environment,
    classification_run,
    featurized,
    int_list,
    log,
    mean_std,
    refit_run,
    setup_threads,
    write_json,
)
from experiments.synth_digits import N_VOICES as MAX_VOICES
from experiments.synth_digits import synth_set
from rnnstream._cli_support import float_pair
from rnnstream.models.train_cli import parse_refit_epochs

SPEAKERS = ("george", "jackson", "lucas", "nicolas")


#: Recipes: the experiment's defaults. ``speech`` is ``rnnstream train``'s audio recipe, chosen on held-out-speaker
#: validation (see docs/results.md; PCEN inputs since issue 15 follow-up 12, a random equaliser and an 8-epoch refit
#: since follow-up 13), plus 48 synthetic training speakers of the ten digits (follow-up 21:
#: :func:`experiments.synth_digits.synth_set`, made once in the output folder; data, not a training option, so
#: ``rnnstream train`` takes them only through ``--extra-train``); ``speech-std`` the recipe of follow-ups 3 to 11
#: (standardised inputs, no equaliser, a 9-epoch refit, no synthetic speakers); ``speech-d`` an older one
#: (configuration D: a smaller CRNN, last-frame pooling, no refit, SpecAugment without the band warp); ``baseline``
#: reproduces the first configuration's defaults (random 10% validation).
RECIPES: dict[str, dict] = {
    "baseline": dict(epochs=10, hidden=64, layers=1, dropout=0.1, pooling="last", input_norm="none", lr=3e-3,
                     n_mels=40, augment=2, wave_copies=0, spec_augment="none", conv_channels="", conv_kernel="3,3",
                     conv_pool=2, norm_prior=0.0, norm_decay=1.0, val_by="random", weight_decay=0.0, log_eps=1e-6,
                     refit=False, refit_epochs="best", synth_speakers=0, synth_takes=2),
    "speech": dict(epochs=10, hidden=128, layers=2, dropout=0.1, pooling="mean", input_norm="pcen", lr=3e-3,
                   n_mels=40, augment=0, wave_copies=2, spec_augment="speech", conv_channels="32,64", conv_kernel="3,3",
                   conv_pool=2, norm_prior=0.0, norm_decay=0.975, val_by="speaker", weight_decay=0.0, log_eps=1e-6,
                   refit=True, refit_epochs=8, synth_speakers=48, synth_takes=2),
    "speech-std": dict(epochs=10, hidden=128, layers=2, dropout=0.1, pooling="mean", input_norm="none", lr=3e-3,
                       n_mels=40, augment=0, wave_copies=2, spec_augment="freq=2x4,time=2x8,gain=6,warp=0.1",
                       conv_channels="32,64",
                       conv_kernel="3,3", conv_pool=2, norm_prior=0.0, norm_decay=1.0, val_by="speaker",
                       weight_decay=0.0, log_eps=1e-6, refit=True, refit_epochs=9, synth_speakers=0, synth_takes=2),
    "speech-d": dict(epochs=10, hidden=64, layers=1, dropout=0.1, pooling="last", input_norm="none", lr=3e-3,
                   n_mels=40, augment=0, wave_copies=2, spec_augment="freq=2x4,time=2x8,gain=6", conv_channels="16,32",
                   conv_kernel="3,3",
                   conv_pool=2, norm_prior=0.0, norm_decay=1.0, val_by="speaker", weight_decay=0.0, log_eps=1e-6,
                   refit=False, refit_epochs="best", synth_speakers=0, synth_takes=2),
}


def build_parser():
    p = base_parser("fsdd", "FSDD spoken digits: documented split + leave-one-speaker-out, streamed through ONNX")
    p.add_argument("--data-root", default=None, help="shared data folder (default: ../shared/data from the repo root)")
    p.add_argument("--splits", default="documented,loso", help="comma-separated: documented, loso, loso-<speaker>")
    p.add_argument("--recipe", default="speech", choices=sorted(RECIPES),
                   help="defaults of every option below left unset (default: %(default)s)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, one run per split and seed (default: --seed)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--weight-average", type=float, default=0.0,
                   help="keep an exponential moving average of the weights, half-life in epochs (0: off)")
    p.add_argument("--ensemble", type=int, default=1, metavar="N",
                   help="train N members from seeds SEED, SEED+1000, ... as one streaming model (default 1)")
    p.add_argument("--cell", default="gru", choices=["gru", "lstm"])
    p.add_argument("--pooling", default=None, choices=["last", "mean", "attention"])
    p.add_argument("--input-norm", default=None, choices=["none", "causal_mean", "pcen"],
                   help="causal_mean: subtract the running mean of the features so far (streamable CMN, in the model); "
                        "pcen: per-channel energy normalisation (with --norm-decay < 1)")
    p.add_argument("--norm-prior", type=float, default=None,
                   help="causal_mean: the running mean starts at the training mean with this weight in frames")
    p.add_argument("--norm-decay", type=float, default=None,
                   help="causal_mean: per-frame decay (1: cumulative); pcen: the energy smoother's decay (e.g. 0.975)")
    p.add_argument("--conv-channels", default=None, help="causal conv front end (CRNN), e.g. 16,32 (empty: none)")
    p.add_argument("--conv-kernel", default=None, help="conv kernel TIME,FREQ (default 3,3)")
    p.add_argument("--conv-pool", type=int, default=None, help="max-pool over frequency after each conv layer")
    p.add_argument("--input-delta", action="store_true",
                   help="the model also reads each feature's change since the previous frame (with a conv front end, "
                        "as its second input channel)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-mels", type=int, default=None)
    p.add_argument("--feature", default="logmel", choices=["logmel", "mfcc"])
    p.add_argument("--label-smoothing", type=float, default=0.0, help="training targets smoothed by this (0: off)")
    p.add_argument("--stack", type=int, default=1,
                   help="frames side by side per model frame (low frame rate; a CRNN needs 1: --conv-channels '')")
    p.add_argument("--f-min", type=float, default=100.0,
                   help="lowest mel frequency (Hz); 100 drops the rumble band whose level differs most between "
                        "FSDD's speakers' recordings")
    p.add_argument("--log-eps", type=float, default=None,
                   help="added to the mel power before the log (a floor: 1e-3 clips everything below the noisier "
                        "recordings' noise floor; the featurizer's default is 1e-6)")
    p.add_argument("--chunk-s", type=float, default=0.1)
    p.add_argument("--refeaturize", action="store_true", help="run the Beam job again even if OUT/features exists")
    p.add_argument("--val-by", default=None, choices=["speaker", "random"],
                   help="speaker: leave-one-speaker-out folds validate on one held-out *training* speaker (the next "
                        "one after the test speaker in george, jackson, lucas, nicolas order) and train on the other "
                        "two; random: a seeded 10%% of the training files. The documented split always uses random")
    p.add_argument("--val-offset", type=int, default=1, choices=[1, 2, 3],
                   help="with --val-by speaker: validate each fold on the training speaker this many places after the "
                        "test speaker (1, the default: the next); runs with 1, 2 and 3 validate on every training "
                        "speaker in turn, a steadier selection at three times the cost")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="with --val-by speaker: after the run that validates on the held-out training speaker, train "
                        "again on all three training speakers for its selected number of epochs (the epoch count is "
                        "the only thing taken from validation); both runs are reported, the refit one is the "
                        "fold's result")
    p.add_argument("--refit-from", default=None,
                   help="results.json of an earlier run with the same options and --val-by speaker: refit each of its "
                        "leave-one-speaker-out folds and seeds on all three training speakers for the epoch count it "
                        "selected, without running the selection again")
    p.add_argument("--refit-epochs", type=parse_refit_epochs, default=None, metavar="best|all|N",
                   help="with --refit or --refit-from, the refit's epoch count: best (each selection run's own best "
                        "epoch), all (every --epochs) or N (the speech recipe: 8, the count with the best validation "
                        "accuracy pooled over every fold and seed: python -m experiments._common pooled-epoch "
                        "RUN_DIR...; with an explicit --epochs it becomes all)")
    p.add_argument("--wave-copies", type=int, default=None,
                   help="waveform-perturbed copies of each training file (speed 0.9-1.1, white noise at 10-40 dB SNR "
                        "on half of them), re-featurized; test and validation files never")
    p.add_argument("--speed", type=float_pair, default=(0.9, 1.1), help="speed perturbation range LO,HI")
    p.add_argument("--pitch", type=float_pair, default=(0.0, 0.0),
                   help="the waveform copies' pitch-shift range in semitones LO,HI (formants kept; default none; "
                        "a negative LO needs '=': --pitch=-3,3)")
    p.add_argument("--quiet", type=float_pair, default=(0.0, 0.0), metavar="LO,HI",
                   help="seconds of quiet (white noise 30-60 dB below the recording) added before and after each "
                        "waveform copy, each end drawn from LO-HI (default none)")
    p.add_argument("--extra-train", default=None, metavar="DIR",
                   help="WAVs named like FSDD's (e.g. experiments.synth_digits' synthetic speakers) added to the "
                        "training examples of every split, never to validation or test")
    p.add_argument("--synth-speakers", type=_int_in(0, MAX_VOICES), default=None, metavar="N",
                   help="synthetic espeak-ng speakers of the ten digits (experiments.synth_digits, made once in --out) "
                        "added to every split's training examples, never to validation or test (0: none; the speech "
                        f"recipe: 48; at most {MAX_VOICES})")
    p.add_argument("--synth-takes", type=_int_in(1, 20), default=None, metavar="N",
                   help="takes of each digit per synthetic speaker (default 2)")
    p.add_argument("--extra-wave-copies", type=_int_in(0, 8), default=0, metavar="N",
                   help="waveform copies (as --wave-copies: --speed, noise, --pitch) of each synthetic or "
                        "--extra-train file too (default 0)")
    p.add_argument("--spec-augment", default=None,
                   help="per-batch SpecAugment masks + random gain (TrainConfig.augment): none, speech or "
                        "freq=NxW,time=NxW,gain=DB,eq=DB,noise=STD,warp=A,bend=B,twarp=A,reverb=S,mixup=A")
    p.add_argument("--augment", type=int, default=None,
                   help="add this many feature-level perturbed copies of each training file (random gain, random "
                        "smooth microphone-like EQ across mel bands, time stretch 0.85-1.15; the first configuration)")
    return p


def _int_in(lo: int, hi: int):
    """An argparse type: an integer from ``lo`` to ``hi``; anything else is refused naming the value and the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}, got {value}")
        return value

    return parse


def _resolve(args):
    """The recipe's values for every option not given (``None``), by the same rules as ``rnnstream train``."""
    from rnnstream.models.recipes import apply_recipe

    recipe = RECIPES[args.recipe]
    apply_recipe(args, recipe, {key for key in recipe if getattr(args, key) is not None})
    return args


def augment_examples(examples, copies: int, seed: int):
    """Training-only augmentation on log-mel frames: the originals plus ``copies`` perturbed copies each.

    A gain ``g`` and an equaliser ``e(band)`` multiply the power spectrum, i.e. *add* ``g + e(band)`` to log-mel
    (exactly, up to the featurizer's ``log_eps``): this simulates other microphones and levels, the main
    difference between FSDD's speakers' recordings. Time stretch resamples frames linearly (speaking rate).
    """
    import dataclasses

    import numpy as np

    rng = np.random.default_rng(seed)
    out = list(examples)
    for e in examples:
        x = np.asarray(e.features, dtype=np.float32)
        t, d = x.shape
        bands = np.linspace(0.0, 1.0, d)
        for k in range(copies):
            gain = rng.uniform(-2.0, 2.0)
            eq = sum(rng.normal(0.0, 1.0 / j) * np.cos(np.pi * j * bands) for j in range(1, 4))
            rate = rng.uniform(0.85, 1.15)
            n = max(2, int(round(t * rate)))
            pos = np.linspace(0.0, t - 1.0, n)
            lo = np.floor(pos).astype(int)
            hi = np.minimum(lo + 1, t - 1)
            w = (pos - lo)[:, None].astype(np.float32)
            y = (1.0 - w) * x[lo] + w * x[hi] + np.float32(gain) + eq.astype(np.float32)[None, :]
            out.append(dataclasses.replace(e, id=f"{e.id}#aug{k}", features=y.astype(np.float32)))
    return out


def wave_augment(args: argparse.Namespace) -> Any:
    """The waveform copies' perturbations (:class:`rnnstream.models.wave_augment.WaveAugment`) from the options."""
    from rnnstream.models.wave_augment import WaveAugment

    return WaveAugment(speed=args.speed, pitch=args.pitch, quiet_s=args.quiet)


def wave_copies_cached(out: str, examples, cfg, copies: int, seed: int, wave: Any,
                       name: str = "wave_copies") -> dict:
    """``{example id: [copy features, ...]}`` for every file (computed once per config, seed and ``wave``
    (:class:`~rnnstream.models.wave_augment.WaveAugment`), cached in ``out/features/<name>_<key>.pkl``: one ``name``
    per set of files)."""
    import pickle

    from rnnstream.models.wave_augment import augment_audio_examples

    key = hashlib.sha256(f"{cfg.to_dict()}|{copies}|{seed}|{wave}".encode()).hexdigest()[:12]
    path = os.path.join(out, "features", f"{name}_{key}.pkl")
    if os.path.exists(path):
        with open(path, "rb") as fh:
            return pickle.load(fh)
    t0 = time.perf_counter()
    got: dict[str, list] = {}
    for e in augment_audio_examples(examples, cfg, copies, seed, wave=wave)[len(examples):]:
        got.setdefault(e.id.rsplit("#wav", 1)[0], []).append(e)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(got, fh)
    log(f"waveform copies ({copies} per file, seed {seed}): {time.perf_counter() - t0:.0f} s -> {path}")
    return got


def main(argv: list[str] | None = None) -> int:
    args = _resolve(build_parser().parse_args(argv))
    setup_threads(args.threads)
    from rnnstream import datasets as D
    from rnnstream.pipeline.config import FeatureConfig

    rec = D.fsdd_dir(args.data_root)
    if not os.path.isdir(rec):
        print(f"SKIP: FSDD recordings not found at {rec} (pass --data-root)")
        return 0
    try:
        splits = _splits(args.splits)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    cfg = FeatureConfig.audio_default(sample_rate=8000, n_mels=args.n_mels, win_ms=25.0, hop_ms=10.0,
                                      feature=args.feature, f_min=args.f_min, log_eps=args.log_eps, stack=args.stack)
    t0 = time.perf_counter()
    ds = featurized([rec], os.path.join(out, "features"), cfg, label_pattern=D.FSDD_PATTERN,
                    refeaturize=args.refeaturize)
    featurize_s = time.perf_counter() - t0
    log(f"{len(ds.examples)} examples, {sum(e.features.shape[0] for e in ds.examples)} frames")
    extra = extra_examples(args, out, cfg)
    seeds = int_list(args.seeds) if args.seeds else (args.seed,)
    selected = None
    if args.refit_from:
        import json

        with open(args.refit_from, encoding="utf-8") as fh:
            selected = json.load(fh)["splits"]
    summary_path = os.path.join(out, "results.json")
    command = "python -m experiments.fsdd " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, dict] = {}
    tcfgs = {}
    wave = wave_augment(args)
    for seed in seeds:
        tcfgs[seed] = _train_config(args, seed)
        copies = wave_copies_cached(out, ds.examples, ds.config, args.wave_copies, seed, wave) \
            if args.wave_copies else {}
        extra_copies = wave_copies_cached(out, extra, ds.config, args.extra_wave_copies, seed, wave,
                                          name="extra_wave_copies") if args.extra_wave_copies and extra else {}
        train_extra = list(extra) + _copies_of(extra, extra_copies)
        for name, key, pattern in splits:
            r = _run_split(args, ds, name, key, pattern, seed, len(seeds) > 1, tcfgs[seed], copies, out, selected,
                           train_extra)
            results.setdefault(name, {})[seed] = r
            write_json(summary_path, _summary(command, ds, tcfgs, featurize_s, results, seeds))
    summ = _summary(command, ds, tcfgs, featurize_s, results, seeds)
    print(_table(results, summ))
    write_json(summary_path, summ)
    return 0


def extra_examples(args: argparse.Namespace, out: str, cfg: Any) -> list:
    """The training-only examples: the synthetic speakers (``--synth-speakers``, made in ``out`` the first time) and
    ``--extra-train``'s files, each featurized by the same Beam job with ``cfg`` (in its own features folder)."""
    from rnnstream import datasets as D

    sources = []
    if args.synth_speakers:
        folder = synth_set(out, args.synth_speakers, args.synth_takes)
        sources.append((folder, os.path.join(out, "features_" + os.path.basename(folder))))
    if args.extra_train:  # one features folder per extra folder: another --extra-train never reads stale features
        tag = hashlib.sha256(os.path.abspath(args.extra_train).encode()).hexdigest()[:8]
        sources.append((args.extra_train, os.path.join(out, f"features_extra_{tag}")))
    extra: list = []
    for folder, feat_dir in sources:
        got = featurized([folder], feat_dir, cfg, label_pattern=D.FSDD_PATTERN, refeaturize=args.refeaturize).examples
        log(f"{len(got)} extra training examples from {folder}")
        extra += got
    return extra


def validation_speaker(test_speaker: str, offset: int = 1) -> str:
    """The held-out *training* speaker that validates a leave-one-speaker-out fold: the ``offset``-th after the test
    speaker in :data:`SPEAKERS` (1, the default, is the next; 1 to 3 give each training speaker in turn)."""
    if not 1 <= offset < len(SPEAKERS):
        raise ValueError(f"the validation speaker offset must be 1 to {len(SPEAKERS) - 1}, got {offset}")
    return SPEAKERS[(SPEAKERS.index(test_speaker) + offset) % len(SPEAKERS)]


def _splits(spec: str) -> list[tuple[str, str, str]]:
    """``--splits`` -> ``(name, example key, test pattern)`` per split; ValueError names an unknown one."""
    splits: list[tuple[str, str, str]] = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item == "documented":
            splits.append(("documented (takes 0-4 test)", "take", "[0-4]"))
        elif item == "loso":
            splits += [(f"loso-{s}", "speaker", s) for s in SPEAKERS]
        elif item.startswith("loso-") and item[5:] in SPEAKERS:
            splits.append((item, "speaker", item[5:]))
        else:
            raise ValueError(f"unknown split {item!r}")
    return splits


def _train_config(args: argparse.Namespace, seed: int) -> Any:
    from rnnstream.models.train import TrainConfig

    return TrainConfig(cell=args.cell, hidden_size=args.hidden, num_layers=args.layers, dropout=args.dropout,
                       pooling=args.pooling, input_norm=args.input_norm, norm_prior=args.norm_prior,
                       norm_decay=args.norm_decay, conv_channels=int_list(args.conv_channels),
                       conv_kernel=int_list(args.conv_kernel), conv_pool=args.conv_pool, input_delta=args.input_delta,
                       augment=args.spec_augment, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, weight_average=args.weight_average, ensemble=args.ensemble,
                       lr_schedule="cosine", seed=seed, device="cpu", label_smoothing=args.label_smoothing,
                       progress=not args.no_progress)


def _copies_of(files: Sequence[Any], copies: dict) -> list:
    """The waveform copies of ``files`` (``copies``: :func:`wave_copies_cached`'s), in file order."""
    return [c for e in files for c in copies.get(e.id, [])]


def _training_set(args: argparse.Namespace, files: Sequence[Any], copies: dict, extra: Sequence[Any],
                  seed: int) -> list:
    """A split's training examples: ``files`` (with ``--augment``'s feature-level copies), their waveform copies,
    then the training-only ``extra`` examples."""
    out = augment_examples(files, args.augment, seed) if args.augment else list(files)
    return out + _copies_of(files, copies) + list(extra)


def _run_split(args: argparse.Namespace, ds: Any, name: str, key: str, pattern: str, seed: int, many_seeds: bool,
               tcfg: Any, copies: dict, out: str, selected: dict | None, extra: Sequence[Any] = ()) -> dict:
    """One split and seed: the selection run (or its record from ``--refit-from``), then the refit on all three
    training speakers when asked; the fold's result record. ``extra``: examples added to every training set."""
    from rnnstream.models.data import classify_data, split_by, split_fraction

    log(f"== split {name}, seed {seed}: test = {key} ~ {pattern}")
    rest, test_ex = split_by(ds.examples, key, pattern)
    val_speaker = None
    if key == "speaker" and args.val_by == "speaker":
        val_speaker = validation_speaker(pattern, args.val_offset)
        train_ex, val_ex = split_by(rest, "speaker", val_speaker)
    else:
        train_ex, val_ex = split_fraction(rest, 0.1, seed)
    n_files = len(train_ex)
    train_ex = _training_set(args, train_ex, copies, extra, seed)
    run_dir = os.path.join(out, name.split(" ")[0] + (f"-seed{seed}" if many_seeds else ""))
    if selected is not None:  # the selection runs were done by an earlier command: take their records
        r = dict(selected[name][str(seed)])
        val_speaker = r.get("val_speaker", val_speaker)  # as that run validated, whatever --val-offset says now
    else:
        train_d = classify_data(train_ex, feature_config=ds.config)
        val_d = classify_data(val_ex, train_d.labels, feature_config=ds.config)
        test_d = classify_data(test_ex, train_d.labels, feature_config=ds.config)
        r = classification_run(run_dir, train_d, val_d, test_d, test_ex, tcfg, chunk_s=args.chunk_s,
                               threads=args.threads, progress=not args.no_progress, trace_features=True)
        r.update(seed=seed, val_speaker=val_speaker, n_train_files=n_files)
    if (args.refit or selected is not None) and val_speaker is not None:
        all_ex = _training_set(args, rest, copies, extra, seed)  # the three training speakers' files
        all_d = classify_data(all_ex, feature_config=ds.config)
        test_d = classify_data(test_ex, all_d.labels, feature_config=ds.config)
        r = refit_run(r, all_d, test_d, test_ex, tcfg, run_dir + "-refit", epochs=args.refit_epochs,
                      chunk_s=args.chunk_s, threads=args.threads, progress=not args.no_progress,
                      trace_features=True)
        r.update(seed=seed, val_speaker=val_speaker, n_train_files=len(rest))
    log(f"   val {r['val_accuracy']:.4f} (loss {r['val_loss']:.4f}, {val_speaker or 'random 10%'})  "
        f"offline {r['offline_accuracy_torch']:.4f}  streamed {r['streaming_accuracy_onnx']:.4f}  "
        f"agreement {r['streaming']['label_agreement']:.4f}  ({r['train_seconds']:.0f} s training)")
    return r


def _table(results: dict[str, dict], summ: dict) -> str:
    """Every run's row, then each split's mean +- sd over seeds."""
    from rnnstream.stream_eval import format_table

    rows = []
    for name, by_seed in results.items():
        for seed, r in by_seed.items():
            s = r["streaming"]
            rows.append([name, seed, r["n_train"], r["n_val"], r["n_test"], r["val_accuracy"],
                         r["offline_accuracy_torch"], r["streaming_accuracy_onnx"], s["label_agreement"],
                         f"{s['max_abs_score_diff']:.1e}", f"{s['latency_ms_mean']:.2f}"])
    for name, agg in summ["aggregate"].items():
        rows.append([name, "mean+-sd", "", "", "", "", f"{agg['offline_mean']:.4f}+-{agg['offline_sd']:.4f}",
                     f"{agg['streamed_mean']:.4f}+-{agg['streamed_sd']:.4f}", "", "", ""])
    return format_table(rows, ["split", "seed", "train", "val", "test", "val acc", "acc offline (torch)",
                               "acc streamed (onnx)", "label agree", "max |dscore|", "ms/chunk"])


def _summary(command, ds, tcfgs, featurize_s, results, seeds) -> dict:
    """Every number: per split and seed, per split mean +- sd over seeds, the LOSO mean per seed and over seeds."""
    agg: dict[str, dict] = {}
    for name, by_seed in results.items():
        off = [r["offline_accuracy_torch"] for r in by_seed.values()]
        st = [r["streaming_accuracy_onnx"] for r in by_seed.values()]
        agg[name] = dict(zip(("offline_mean", "offline_sd"), mean_std(off)))
        agg[name].update(zip(("streamed_mean", "streamed_sd"), mean_std(st)))
        agg[name]["seeds"] = list(by_seed)
    loso_names = [n for n in results if n.startswith("loso-")]
    if len(loso_names) == len(SPEAKERS):
        per_seed = {}
        for seed in seeds:
            if all(seed in results[n] for n in loso_names):
                per_seed[seed] = {k: sum(results[n][seed][f] for n in loso_names) / len(loso_names)
                                  for k, f in (("offline", "offline_accuracy_torch"),
                                               ("streamed", "streaming_accuracy_onnx"), ("val", "val_accuracy"))}
        if per_seed:
            agg["loso mean (4 folds)"] = {
                **dict(zip(("offline_mean", "offline_sd"), mean_std([v["offline"] for v in per_seed.values()]))),
                **dict(zip(("streamed_mean", "streamed_sd"), mean_std([v["streamed"] for v in per_seed.values()]))),
                **dict(zip(("val_mean", "val_sd"), mean_std([v["val"] for v in per_seed.values()]))),
                "per_seed": per_seed, "seeds": list(per_seed),
            }
    return {
        "command": command, "environment": environment(), "feature_config": ds.config.to_dict(),
        "train_configs": {s: t.__dict__ for s, t in tcfgs.items()}, "featurize_seconds": featurize_s,
        "splits": {n: {s: {k: v for k, v in r.items() if k != "history"} for s, r in by_seed.items()}
                   for n, by_seed in results.items()},
        "aggregate": agg,
    }


if __name__ == "__main__":
    sys.exit(main())

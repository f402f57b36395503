"""The speech recipe of ``rnnstream train`` (rnnstream.models.train_cli) on a tiny audio dataset: held-out-speaker
validation, the refit, PCEN or standardised inputs by feature kind, waveform copies and stacked frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rnnstream.models.augment import BatchAugment
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import Example

from tests.models.test_augment import FC, tone


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory):
    """A tiny audio dataset: 2 'digits' (tones) x 3 speakers x 3 takes, WAVs plus their log-mel features."""
    import soundfile as sf

    from rnnstream.pipeline.dataset import write_dataset
    from rnnstream.pipeline.features import AudioFeaturizer

    root = tmp_path_factory.mktemp("speech")
    examples = []
    for label, freq in (("0", 400.0), ("1", 1200.0)):
        for s, speaker in enumerate(("ann", "bob", "cat")):
            for take in range(3):
                x = tone(0.25, freq * (1 + 0.05 * s), seed=take)
                path = root / f"{label}_{speaker}_{take}.wav"
                sf.write(path, x, 8000)
                examples.append(Example(f"{label}_{speaker}_{take}", str(path), AudioFeaturizer(FC).featurize(x),
                                        label=label, metadata={"speaker": speaker, "take": str(take)}))
    write_dataset(str(root / "features"), examples, FC)
    return str(root / "features")


def test_train_cli_speech_recipe_on_audio(speech_dir, tmp_path, capsys) -> None:
    from rnnstream.models.checkpoint import load_checkpoint
    from rnnstream.models.train_cli import main

    out = str(tmp_path / "m.pt")
    assert main(["--data", speech_dir, "--out", out, "--epochs", "1", "--hidden", "8", "--no-progress",
                 "--threads", "1", "--conv-channels", "4", "--conv-kernel", "3,3", "--conv-pool", "2"]) == 0
    err = capsys.readouterr().err
    assert "validation = held-out training speaker 'ann'" in err
    assert "--refit: training again" in err  # the recipe refits on every training speaker, the whole schedule
    assert "for 1 epochs, every epoch of the schedule" in err
    ck = load_checkpoint(out)
    assert ck.model.config.conv_channels == (4,) and ck.model.config.hidden_size == 8
    # the recipe's values (not given): 2 layers, mean pooling
    assert ck.model.config.num_layers == 2 and ck.model.config.pooling == "mean"
    assert (tmp_path / "m.selection.pt").exists()
    tc = json.loads(ck.extra["resume"]["train_config"]) if "resume" in ck.extra else None
    if tc is not None:
        assert tc["augment"] == "speech" and tc["epochs"] == 1
    # --recipe none keeps the plain defaults (last-frame pooling, random validation, no refit)
    assert main(["--data", speech_dir, "--out", out, "--epochs", "1", "--hidden", "8", "--no-progress",
                 "--threads", "1", "--recipe", "none"]) == 0
    err = capsys.readouterr().err
    assert "held-out training speaker" not in err and "--refit" not in err
    assert load_checkpoint(out).model.config.pooling == "last"


def test_speech_recipe_refit_count_follows_its_schedule(speech_dir) -> None:
    """The recipe refits for its pooled epoch count (8 of its 10); with another --epochs, for every epoch."""
    from rnnstream.models.train_cli import _recipe, build_parser

    for argv, epochs, refit_epochs in ((["--data", speech_dir, "--out", "m.pt"], 10, 8),
                                       (["--data", speech_dir, "--out", "m.pt", "--epochs", "4"], 4, "all"),
                                       (["--data", speech_dir, "--out", "m.pt", "--refit-epochs", "best"], 10, "best")):
        args = build_parser().parse_args(argv)
        _recipe(args, argv)
        assert (args.epochs, args.refit_epochs, args.refit) == (epochs, refit_epochs, True)
        assert args.augment == "speech" and BatchAugment.parse(args.augment).warp == 0.1
        assert BatchAugment.parse(args.augment).eq_db == 6.0
        assert (args.input_norm, args.norm_decay) == ("pcen", 0.975)  # log-mel features: the recipe's PCEN


def test_speech_recipe_standardises_features_pcen_does_not_fit(tmp_path, capsys) -> None:
    """PCEN divides band energies: on MFCCs (or stacked frames) the recipe standardises instead and says so; an
    explicit --input-norm is kept (training then refuses PCEN on MFCCs, tested in test_pcen.py)."""
    from rnnstream.models.train_cli import _recipe, build_parser
    from rnnstream.pipeline.dataset import write_dataset

    mfcc = FeatureConfig.audio_default(sample_rate=8000, n_mels=16, feature="mfcc", n_mfcc=8)
    rng = np.random.default_rng(0)
    write_dataset(str(tmp_path / "ds"), [Example(str(i), f"{i}.wav", rng.normal(size=(5, mfcc.dim)).astype(np.float32),
                                                 label=str(i % 2)) for i in range(4)], mfcc)
    argv = ["--data", str(tmp_path / "ds"), "--out", "m.pt"]
    args = build_parser().parse_args(argv)
    _recipe(args, argv)
    assert (args.input_norm, args.norm_decay) == ("none", 1.0) and args.pooling == "mean"
    # the recipe's gain, equaliser and band warp act on log-mel bands: on MFCCs only the masks stay
    assert args.augment == "freq=2x4,time=2x8"
    err = capsys.readouterr().err
    assert "standardised instead of PCEN" in err and "--augment freq=2x4,time=2x8" in err
    argv += ["--input-norm", "causal_mean", "--augment", "freq=1x2,noise=0.1"]
    args = build_parser().parse_args(argv)
    _recipe(args, argv)
    assert args.input_norm == "causal_mean" and args.augment == "freq=1x2,noise=0.1"


def test_speech_recipe_on_stacked_features_leaves_out_the_conv_front_end(tmp_path, capsys) -> None:
    """Features featurized with stack=3: the recipe's CRNN would convolve across the stacked copies, so ``auto``
    trains its GRU without the conv front end (and says so); an explicit --conv-channels is kept (and refused by
    training, tested above)."""
    from rnnstream.models.train_cli import _recipe, build_parser
    from rnnstream.pipeline.dataset import write_dataset

    fc3 = FeatureConfig.audio_default(sample_rate=8000, n_mels=8, stack=3)
    rng = np.random.default_rng(0)
    write_dataset(str(tmp_path / "ds"), [Example(str(i), f"{i}.wav", rng.normal(size=(5, 24)).astype(np.float32),
                                                 label=str(i % 2)) for i in range(4)], fc3)
    argv = ["--data", str(tmp_path / "ds"), "--out", "m.pt"]
    args = build_parser().parse_args(argv)
    _recipe(args, argv)
    assert args.conv_channels == () and args.pooling == "mean" and args.augment == "speech"
    assert "the features are stacked (stack=3), so no conv front end" in capsys.readouterr().err
    argv += ["--conv-channels", "4"]
    args = build_parser().parse_args(argv)
    _recipe(args, argv)
    assert tuple(args.conv_channels) == (4,)


def test_train_cli_wave_options_reach_the_copies(speech_dir, tmp_path, monkeypatch, capsys) -> None:
    import rnnstream.models.wave_augment as wave_mod
    from rnnstream.models.train_cli import main

    seen, pitches = [], []
    real = wave_mod.perturb_waveform

    def spy(samples, rate, rng, wave):
        y, info = real(samples, rate, rng, wave)
        seen.append((wave.speed, info["speed"]))
        pitches.append((wave.pitch, info.get("pitch")))
        return y, info

    monkeypatch.setattr(wave_mod, "perturb_waveform", spy)
    out = str(tmp_path / "m.pt")
    assert main(["--data", speech_dir, "--out", out, "--epochs", "1", "--hidden", "8", "--no-progress",
                 "--threads", "1", "--conv-channels", "", "--wave-copies", "1", "--wave-speed", "1.25,1.3"]) == 0
    assert seen and all(w == (1.25, 1.3) and 1.25 <= s <= 1.3 for w, s in seen)
    # outside [0.5, 2]: an error naming the range, exit 2
    assert main(["--data", speech_dir, "--out", out, "--epochs", "1", "--no-progress", "--wave-copies", "1",
                 "--wave-speed", "0.2,1.1"]) == 2
    assert "(0.2, 1.1)" in capsys.readouterr().err
    assert main(["--data", speech_dir, "--out", out, "--wave-speed", "fast"]) == 2
    assert "expected LO,HI" in capsys.readouterr().err
    seen.clear()
    pitches.clear()
    assert main(["--data", speech_dir, "--out", out, "--epochs", "1", "--hidden", "8", "--no-progress", "--threads",
                 "1", "--conv-channels", "", "--wave-copies", "1", "--wave-pitch=-2,-1"]) == 0
    assert seen and all(w == (0.9, 1.1) for w, _ in seen)  # the default speed range
    assert pitches and all(w == (-2.0, -1.0) and -2.0 <= p <= -1.0 for w, p in pitches)
    capsys.readouterr()
    assert main(["--data", speech_dir, "--out", out, "--epochs", "1", "--no-progress", "--wave-copies", "1",
                 "--wave-pitch", "2,1"]) == 2
    assert "pitch range" in capsys.readouterr().err
    quiet = []
    monkeypatch.setattr(wave_mod, "perturb_waveform",
                        lambda samples, rate, rng, wave: quiet.append(wave.quiet_s) or real(samples, rate, rng, wave))
    assert main(["--data", speech_dir, "--out", out, "--epochs", "1", "--hidden", "8", "--no-progress", "--threads",
                 "1", "--conv-channels", "", "--wave-copies", "1", "--wave-quiet", "0.05,0.1"]) == 0
    assert quiet and all(q == (0.05, 0.1) for q in quiet)
    capsys.readouterr()
    assert main(["--data", speech_dir, "--out", out, "--epochs", "1", "--no-progress", "--wave-copies", "1",
                 "--wave-quiet", "0.1,0.05"]) == 2
    assert "quiet_s range" in capsys.readouterr().err


def test_train_cli_refit_trains_again_on_train_and_validation(speech_dir, tmp_path, capsys) -> None:
    from rnnstream.models.checkpoint import load_checkpoint
    from rnnstream.models.train_cli import main

    out = str(tmp_path / "m.pt")
    assert main(["--data", speech_dir, "--out", out, "--epochs", "3", "--hidden", "8", "--no-progress",
                 "--threads", "1", "--conv-channels", "", "--wave-copies", "0", "--refit"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    chosen = summary["selection"]["best_epoch"]
    assert summary["selection"]["checkpoint"] == str(tmp_path / "m.selection.pt")
    assert "val" in summary["selection"] and "val" not in summary  # the refit has no validation split
    assert summary["epochs_run"] == chosen  # the refit ran the chosen number of epochs
    assert f"for {chosen} epochs" in captured.err
    # the selection model trained on two speakers (ann validates); the refit one on all three, 2 labels x 3 x 3
    sel, fin = load_checkpoint(str(tmp_path / "m.selection.pt")), load_checkpoint(out)
    assert fin.stats["count"] > sel.stats["count"]
    assert (tmp_path / "selection" / "curves.png").exists() and (tmp_path / "curves.png").exists()
    # each run keeps its own metrics.json: the selection's has the validation, the refit's only the test
    sel_metrics = json.loads((tmp_path / "selection" / "metrics.json").read_text())
    assert "val" in sel_metrics and sel_metrics["best_epoch"] == chosen
    assert "val" not in json.loads((tmp_path / "metrics.json").read_text())
    # --refit needs a validation split; --resume cannot follow it
    assert main(["--data", speech_dir, "--out", out, "--epochs", "1", "--no-progress", "--val-fraction", "0",
                 "--refit", "--recipe", "none"]) == 2
    assert "--refit needs a validation split" in capsys.readouterr().err
    assert main(["--data", speech_dir, "--out", out, "--refit", "--resume"]) == 2


def test_train_cli_refit_epochs_all_and_fixed(speech_dir, tmp_path, capsys) -> None:
    from rnnstream.models.train_cli import main

    out = str(tmp_path / "m.pt")
    base = ["--data", speech_dir, "--out", out, "--epochs", "3", "--hidden", "8", "--no-progress", "--threads", "1",
            "--conv-channels", "", "--wave-copies", "0", "--refit"]
    assert main([*base, "--refit-epochs", "all"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["epochs_run"] == 3 and "for 3 epochs, every epoch of the schedule" in captured.err
    assert main([*base, "--refit-epochs", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs_run"] == 2
    for bad in ("0", "most"):
        assert main([*base, "--refit-epochs", bad]) == 2
        assert "expected best, all or a number of epochs >= 1" in capsys.readouterr().err

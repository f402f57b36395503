"""experiments.fsdd: recipe defaults (no data needed)."""

from __future__ import annotations

import pytest

from experiments.fsdd import _resolve, build_parser


@pytest.mark.parametrize("argv,epochs,refit_epochs,spec_augment,input_norm", [
    ([], 10, 8, "speech", "pcen"),  # the speech recipe: its pooled refit count for its own 10-epoch schedule
    (["--epochs", "4"], 4, "all", "speech", "pcen"),  # another schedule: every epoch of it
    (["--epochs", "4", "--refit-epochs", "best"], 4, "best", "speech", "pcen"),
    (["--recipe", "speech-std"], 10, 9, "freq=2x4,time=2x8,gain=6,warp=0.1", "none"),  # the recipe of follow-ups 3 to 11
    (["--recipe", "speech-d"], 10, "best", "freq=2x4,time=2x8,gain=6", "none"),  # D keeps its augmentation (no warp)
])
def test_recipe_defaults(argv, epochs, refit_epochs, spec_augment, input_norm):
    args = _resolve(build_parser().parse_args(argv))
    assert (args.epochs, args.refit_epochs, args.spec_augment, args.input_norm) == (epochs, refit_epochs,
                                                                                   spec_augment, input_norm)


@pytest.mark.parametrize("argv,speakers", [([], 48), (["--synth-speakers", "0"], 0), (["--recipe", "speech-std"], 0),
                                           (["--recipe", "baseline"], 0)])
def test_the_speech_recipe_trains_on_48_synthetic_speakers(argv, speakers):
    args = _resolve(build_parser().parse_args(argv))
    assert (args.synth_speakers, args.synth_takes) == (speakers, 2)


@pytest.mark.parametrize("argv,message", [(["--synth-speakers", "129"], "from 0 to 128, got 129"),
                                           (["--synth-speakers", "-1"], "from 0 to 128, got -1"),
                                           (["--synth-takes", "0"], "from 1 to 20, got 0"),
                                           (["--synth-takes", "two"], "got 'two'")])
def test_synthetic_speaker_counts_out_of_range_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_extra_examples_are_the_synthetic_set_and_the_extra_folder_featurized_once(tmp_path):
    """The synthetic speakers are written into --out once and reused; --extra-train's files join them."""
    pytest.importorskip("espeakng_loader", reason="espeakng-loader (the dev extra) is not installed")
    pytest.importorskip("apache_beam", reason="the featurize job needs the beam extra")
    from experiments.fsdd import extra_examples
    from rnnstream.pipeline.config import FeatureConfig

    cfg = FeatureConfig.audio_default(sample_rate=8000, n_mels=20, win_ms=25.0, hop_ms=10.0)
    args = _resolve(build_parser().parse_args(["--synth-speakers", "1", "--synth-takes", "1"]))
    got = extra_examples(args, str(tmp_path), cfg)
    folder = tmp_path / "synth_digits_1x1_seed0"
    assert sorted(e.label for e in got) == [str(d) for d in range(10)]
    assert {e.metadata.get("speaker") for e in got} == {"synthaa"}
    assert all(e.features.shape[1] == 20 and e.features.shape[0] > 10 for e in got)
    stamp = (folder / "0_synthaa_0.wav").stat().st_mtime_ns
    args.extra_train = str(folder)  # the same files once more, as a user's extra folder
    both = extra_examples(args, str(tmp_path), cfg)
    assert len(both) == 20 and (folder / "0_synthaa_0.wav").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = tmp_path / "other"
    other.mkdir()
    for f in ("3_synthaa_0.wav", "7_synthaa_0.wav"):
        (other / f).write_bytes((folder / f).read_bytes())
    args.extra_train = str(other)  # another extra folder: featurized anew, not read from the first one's features
    assert sorted(e.label for e in extra_examples(args, str(tmp_path), cfg)[10:]) == ["3", "7"]


def test_refit_epochs_refuses_bad_values(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--refit-epochs", "0"])
    assert "expected best, all or a number of epochs >= 1" in capsys.readouterr().err


def test_the_validation_speaker_offset_rotates_through_the_training_speakers():
    from experiments.fsdd import SPEAKERS, validation_speaker

    for test in SPEAKERS:
        rotation = [validation_speaker(test, k) for k in (1, 2, 3)]
        assert sorted(rotation) == sorted(s for s in SPEAKERS if s != test)  # each training speaker once
    assert validation_speaker("george") == validation_speaker("george", 1) == "jackson"
    assert validation_speaker("nicolas", 2) == "jackson"
    with pytest.raises(ValueError, match="offset must be 1 to 3"):
        validation_speaker("george", 4)
    assert build_parser().parse_args(["--val-offset", "3"]).val_offset == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--val-offset", "0"])


def test_an_ensemble_of_runs_uses_their_recorded_validation_speaker_and_refuses_a_mix():
    from experiments.fsdd_ensemble import _validation_speaker

    one = {"loso-george": {"0": {"val_speaker": "jackson"}}}
    other = {"loso-george": {"1": {"val_speaker": "lucas"}}}
    assert _validation_speaker([one, one], "loso-george") == "jackson"
    with pytest.raises(SystemExit, match="different speakers"):
        _validation_speaker([one, other], "loso-george")


def test_input_delta_reaches_the_train_config():
    from experiments.fsdd import _train_config

    for argv, want in (([], False), (["--input-delta"], True)):
        cfg = _train_config(_resolve(build_parser().parse_args(argv)), seed=0)
        assert cfg.input_delta is want and cfg.conv_channels  # the recipe's CRNN: deltas as a second channel


def test_speed_and_pitch_ranges_parse_as_number_pairs(capsys):
    args = build_parser().parse_args(["--speed", "0.8,1.2", "--pitch=-3,3"])
    assert (args.speed, args.pitch) == ((0.8, 1.2), (-3.0, 3.0))
    assert build_parser().parse_args([]).pitch == (0.0, 0.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--pitch", "3"])
    assert "expected LO,HI" in capsys.readouterr().err


def test_quiet_option_reaches_the_waveform_copies():
    from experiments.fsdd import wave_augment

    args = build_parser().parse_args(["--quiet", "0,0.2", "--speed", "0.95,1.05"])
    wave = wave_augment(args)
    assert wave.quiet_s == (0.0, 0.2) and wave.speed == (0.95, 1.05)
    assert wave_augment(build_parser().parse_args([])).quiet_s == (0.0, 0.0)


def test_waveform_copies_of_two_file_sets_are_cached_apart(tmp_path):
    """The synthetic files' copies (--extra-wave-copies) never read the real files' cache of the same settings."""
    import numpy as np
    import soundfile as sf

    from experiments.fsdd import wave_copies_cached
    from rnnstream.models.wave_augment import WaveAugment
    from rnnstream.pipeline.config import FeatureConfig
    from rnnstream.pipeline.dataset import Example

    cfg = FeatureConfig.audio_default(sample_rate=8000, n_mels=20, win_ms=25.0, hop_ms=10.0)
    sets = []
    for name, hz in (("real", 300.0), ("synth", 900.0)):
        path = str(tmp_path / f"0_{name}_0.wav")
        sf.write(path, 0.3 * np.sin(2 * np.pi * hz * np.arange(4000) / 8000), 8000)
        sets.append([Example(id=path, path=path, features=np.zeros((1, 20), np.float32), label="0")])
    wave = WaveAugment(speed=(0.9, 1.1))
    real = wave_copies_cached(str(tmp_path), sets[0], cfg, 1, 0, wave)
    synth = wave_copies_cached(str(tmp_path), sets[1], cfg, 1, 0, wave, name="extra_wave_copies")
    assert list(real) == [sets[0][0].id] and list(synth) == [sets[1][0].id]
    assert sorted(p.name.split("_")[0] for p in (tmp_path / "features").iterdir()) == ["extra", "wave"]
    assert wave_copies_cached(str(tmp_path), sets[1], cfg, 1, 0, wave, name="extra_wave_copies").keys() \
        == synth.keys()  # read back from its own cache

"""``rnnstream train`` end to end on small datasets written with ``rnnstream.pipeline.dataset.write_dataset``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rnnstream.models.checkpoint import load_checkpoint
from rnnstream.models.train import main
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import FEATURE_CONFIG_FILE, PARQUET_SCHEMA, STATS_FILE, Example, read_dataset, write_dataset
from rnnstream.pipeline.stats import RunningStats
from rnnstream.cli import main as cli_main

FAST = ["--hidden", "8", "--layers", "1", "--batch-size", "16", "--lr", "0.01", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """3 classes x 2 speakers x 6 takes; the class shows as an offset on one channel."""
    rng = np.random.default_rng(0)
    examples = []
    for label in range(3):
        for speaker in ("ann", "bob"):
            for take in range(6):
                x = rng.normal(size=(int(rng.integers(5, 12)), 3)).astype(np.float32)
                x[:, label] += 2.0
                examples.append(Example(f"{label}_{speaker}_{take}", f"/d/{label}_{speaker}_{take}.wav", x,
                                        label=str(label), metadata={"speaker": speaker, "take": take}))
    root = tmp_path_factory.mktemp("digits")
    write_dataset(str(root), examples, FeatureConfig.sensor_default(["c0", "c1", "c2"]))
    return str(root)


def test_classify_with_metadata_splits_writes_checkpoint_metrics_and_plots(digits_dir, tmp_path, capsys):
    out = tmp_path / "run" / "model.pt"
    argv = ["train", "--data", digits_dir, "--out", str(out), "--epochs", "2", "--val-by", "speaker",
            "--val-match", "bob", "--test-by", "take", "--test-match", "[0-1]", *FAST]
    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] == 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 3 * 2 * 2  # takes 0-1 of both speakers
    assert metrics["val"]["n"] == 3 * 4  # speaker bob, takes 2-5
    assert len(metrics["history"]) == 2 and {"val_loss", "val_accuracy", "grad_norm_max"} <= set(metrics["history"][0])
    assert (tmp_path / "run" / "curves.png").exists() and (tmp_path / "run" / "confusion.png").exists()
    ck = load_checkpoint(str(out))
    assert ck.labels == ["0", "1", "2"] and ck.model.config.cell == "gru" and ck.model.config.input_dim == 3
    # normalisation statistics are the training split's: speaker ann, takes 2-5
    train_frames = sum(e.features.shape[0] for e in read_dataset(digits_dir).examples
                       if e.metadata["speaker"] == "ann" and e.metadata["take"] >= 2)
    assert RunningStats.from_dict(ck.stats).count == train_frames
    # resume continues from epoch 2 to 3
    assert main(argv[1:] + ["--resume", "--epochs", "3"]) == 0
    assert [h["epoch"] for h in json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]] == [1, 2, 3]


def test_forecast_with_informer_style_row_split_uses_train_rows_for_normalisation(tmp_path, capsys):
    n = 500
    t = np.arange(n)
    rng = np.random.default_rng(1)
    series = np.stack([rng.normal(size=n), t / 100.0, np.sin(t / 5) + t / 200.0], 1).astype(np.float32)
    root = tmp_path / "ett"
    write_dataset(str(root), [Example("ett", "ett.csv", series)], FeatureConfig.sensor_default(["a", "b", "OT"]))
    out = tmp_path / "fc" / "m.pt"
    rc = main(["--data", str(root), "--out", str(out), "--task", "forecast", "--channels", "OT", "--targets", "OT",
               "--window", "16", "--horizon", "4", "--split-rows", "0:300,300:400,400:500", "--epochs", "1", *FAST])
    assert rc == 0, capsys.readouterr().err
    ck = load_checkpoint(str(out))
    assert ck.feature_config.sensor.columns == ("OT",) and ck.model.config.input_dim == 1
    assert ck.model.config.horizon == 4 and ck.model.config.target_dims == (0,)
    assert float(ck.model.feat_mean[0]) == pytest.approx(series[:300, 2].mean(), rel=1e-5)
    assert float(ck.model.feat_std[0]) == pytest.approx(series[:300, 2].std(), rel=1e-4)
    metrics = json.loads((tmp_path / "fc" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 100 - 4 + 1 and {"mse", "mae", "persistence_mse"} <= set(metrics["test"])
    assert (tmp_path / "fc" / "forecast.png").exists()


def test_cli_errors_name_the_problem(digits_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    FeatureConfig.sensor_default(["c0"]).save(str(empty / FEATURE_CONFIG_FILE))
    RunningStats.empty(1).save(str(empty / STATS_FILE))
    pq.write_table(pa.Table.from_pylist([], schema=PARQUET_SCHEMA), str(empty / "examples-00000-of-00001.parquet"))
    assert main(["--data", str(empty), "--out", str(tmp_path / "m.pt"), *FAST]) == 2
    assert f"dataset {str(empty)!r} holds no examples" in capsys.readouterr().err

    assert main(["--data", digits_dir, "--out", str(tmp_path / "m.pt"), "--val-by", "speaker", "--val-match", "zed",
                 *FAST]) == 2
    assert "validation split speaker='zed' matched no example" in capsys.readouterr().err

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 garbage")
    assert main(["--data", digits_dir, "--out", str(bad), "--resume", *FAST]) == 2
    assert f"checkpoint {str(bad)!r} is corrupt" in capsys.readouterr().err

    assert main(["--data", digits_dir, "--out", str(tmp_path / "m.pt"), "--task", "tag", *FAST]) == 2
    assert "metadata key 'frame_labels'" in capsys.readouterr().err


def test_fine_tune_from_a_checkpoint_of_another_feature_dimension_is_refused(digits_dir, tmp_path, capsys):
    from rnnstream.models.checkpoint import save_checkpoint
    from rnnstream.models.rnn import rnn_classifier

    other = tmp_path / "five.pt"
    save_checkpoint(str(other), rnn_classifier(input_dim=5, num_classes=3, hidden_size=4, num_layers=1),
                    FeatureConfig.sensor_default([f"x{i}" for i in range(5)]), labels=["0", "1", "2"])
    assert main(["--data", digits_dir, "--out", str(tmp_path / "m.pt"), "--init", str(other), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {str(other)!r} takes 5 features per frame, but the data has feature dimension 3" in err
    assert not (tmp_path / "m.pt").exists()

    # the same dimension fine-tunes: the architecture and normalisation come from the initial checkpoint
    three = tmp_path / "three.pt"
    init = rnn_classifier(input_dim=3, num_classes=3, hidden_size=4, num_layers=1)
    save_checkpoint(str(three), init, FeatureConfig.sensor_default(["c0", "c1", "c2"]), labels=["0", "1", "2"])
    assert main(["--data", digits_dir, "--out", str(tmp_path / "m.pt"), "--init", str(three), "--epochs", "1",
                 *FAST]) == 0
    tuned = load_checkpoint(str(tmp_path / "m.pt"))
    assert tuned.model.config.hidden_size == 4 and tuned.labels == ["0", "1", "2"]
    assert not torch.equal(tuned.model.head.weight, init.head.weight)


def test_the_cli_module_imports_nothing_heavy_and_help_is_quick():
    import subprocess
    import sys

    code = ("import sys, time; t = time.perf_counter(); import rnnstream.models.train_cli as c; "
            "heavy = [m for m in ('torch', 'matplotlib', 'tqdm', 'pyarrow') if m in sys.modules]; "
            "print(heavy, time.perf_counter() - t)")
    heavy, seconds = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.rsplit(" ", 1)
    assert heavy == "[]" and float(seconds) < 1.0


def test_train_main_is_the_cli_main_and_progress_flags_exclude_each_other(capsys):
    from rnnstream.models import train, train_cli

    assert train.main is train_cli.main and train.build_parser is train_cli.build_parser
    args = train_cli.build_parser().parse_args(["--data", "d", "--out", "o"])
    assert (args.progress, args.no_progress) == (False, False)
    assert train_cli.main(["--data", "d", "--out", "o", "--progress", "--no-progress"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_ensemble_flag_trains_members_and_writes_one_streaming_checkpoint(digits_dir, tmp_path, capsys):
    from rnnstream.models.ensemble import StreamingEnsemble

    out = tmp_path / "run" / "model.pt"
    argv = ["--data", digits_dir, "--out", str(out), "--epochs", "2", "--val-by", "speaker", "--val-match", "bob",
            "--ensemble", "2", *FAST]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["ensemble"] == 2 and [m["seed"] for m in metrics["members"]] == [0, 1000]
    assert summary["best_epoch"] == metrics["best_epoch"] and metrics["val"]["n"] == 3 * 6
    for i in range(2):
        assert (tmp_path / "run" / f"member{i}" / "model.pt").exists()
        assert (tmp_path / "run" / f"member{i}" / "curves.png").exists()
    assert (tmp_path / "run" / "confusion.png").exists()
    ck = load_checkpoint(str(out))
    assert isinstance(ck.model, StreamingEnsemble) and ck.model.config.ensemble == 2 and ck.labels == ["0", "1", "2"]
    assert main(argv + ["--resume"]) == 2
    assert "resume and an initial model are not supported" in capsys.readouterr().err


def test_ensemble_with_refit_keeps_the_selection_members_apart(digits_dir, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--data", digits_dir, "--out", str(run / "model.pt"), "--epochs", "2", "--val-by", "speaker",
            "--val-match", "bob", "--ensemble", "2", "--refit", *FAST]
    assert main(argv) == 0
    capsys.readouterr()
    for i in range(2):
        selection = json.loads((run / "selection" / f"member{i}" / "metrics.json").read_text())
        refit = json.loads((run / f"member{i}" / "metrics.json").read_text())
        assert "val" in selection and "val" not in refit  # the refit trains on every example, no validation
        assert (run / "selection" / f"member{i}" / "model.pt").exists() and (run / f"member{i}" / "model.pt").exists()
    assert json.loads((run / "selection" / "metrics.json").read_text())["ensemble"] == 2
    assert load_checkpoint(str(run / "model.pt")).model.config.ensemble == 2


#: ``rnnstream train``'s flag (dest) for each :class:`Architecture` field.
ARCH_FLAGS = {"cell": "cell", "hidden_size": "hidden", "num_layers": "layers", "dropout": "dropout",
              "bidirectional": "bidirectional", "pooling": "pooling", "residual": "residual",
              "seasonal_period": "seasonal_period", "input_diff": "input_diff", "input_delta": "input_delta",
              "input_norm": "input_norm",
              "norm_decay": "norm_decay", "norm_prior": "norm_prior", "conv_channels": "conv_channels",
              "conv_kernel": "conv_kernel", "conv_pool": "conv_pool", "ensemble": "ensemble"}


def test_the_architecture_is_declared_once_for_the_model_the_training_and_the_flags():
    import dataclasses

    from rnnstream.models.train import TrainConfig, build_parser
    from rnnstream.pipeline.model_config import Architecture, ModelConfig

    names = [f.name for f in dataclasses.fields(Architecture)]
    assert set(names) == set(ARCH_FLAGS)  # a new field needs a flag (and a row here)
    for cls in (TrainConfig, ModelConfig):  # inherited, not repeated: the same defaults
        assert {f.name: f.default for f in dataclasses.fields(cls) if f.name in names} == \
            {f.name: f.default for f in dataclasses.fields(Architecture)}
    args = build_parser().parse_args(["--data", "d", "--out", "o"])
    assert {n: getattr(args, ARCH_FLAGS[n]) for n in names} == Architecture().architecture()

    class _Data:  # what model_config reads of a TaskData
        input_dim, output_dim, task, horizon, target_dims = 16, 3, "classify", 1, ()

    given = dict(cell="lstm", hidden_size=8, num_layers=1, dropout=0.1, pooling="mean", input_norm="causal_mean",
                 norm_decay=0.9, norm_prior=2.0, conv_channels=[4], conv_kernel=[3, 3], conv_pool=2, ensemble=3)
    mc = TrainConfig(**given).model_config(_Data())  # type: ignore[arg-type]
    # every architecture field reaches the model; an ensemble's model_config is one member's
    assert mc.architecture() == {**Architecture().architecture(), **given, "conv_channels": (4,),
                                 "conv_kernel": (3, 3), "ensemble": 1}


def test_architecture_errors_are_raised_when_the_train_config_is_made():
    from rnnstream.models.train import TrainConfig
    from rnnstream.pipeline.errors import ConfigError

    for bad, match in ((dict(cell="gruu"), "cell must be one of"), (dict(dropout=1.0), "dropout"),
                       (dict(conv_kernel=(3, 2)), "conv_kernel"), (dict(input_norm="cmn"), "input_norm"),
                       (dict(ensemble=0), "ensemble")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)

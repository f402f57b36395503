"""It learns on real data (slow; skipped with a reason when ../shared/data is absent).

* FSDD spoken digits: 40 log-mel, 25 ms / 10 ms at 8 kHz (``AudioFeaturizer`` over ``load_audio``), the
  documented split (takes 0-4 test), a GRU, about a CPU-minute of training: accuracy far above chance (10%).
* ETTh1 (Informer protocol): univariate OT, window 96, horizon 24, train [0, 8640), val [8640, 11520),
  test [11520, 14400), MSE/MAE on the train-split z-scored scale: beats the persistence baseline (repeat the
  last input value). OT drifts (the test period sits lower than the training one), so training uses the
  level-shift augmentation (``--level-shift 1``); without it the GRU loses to persistence.

Both go through ``rnnstream train`` on a dataset directory written with ``rnnstream.pipeline.dataset.write_dataset``.
Run with ``pytest -m slow -s tests/models/test_real_data.py`` to see the numbers.
"""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest

from rnnstream.models.checkpoint import load_checkpoint
from rnnstream.models.train import main
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import Example, write_dataset

pytestmark = pytest.mark.slow

FSDD_NAME = re.compile(r"(?P<digit>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav")


def build_fsdd(recordings: str, out: str) -> str:
    from rnnstream.pipeline.audio_io import load_audio
    from rnnstream.pipeline.features import AudioFeaturizer

    cfg = FeatureConfig.audio_default(sample_rate=8000, win_ms=25.0, hop_ms=10.0, n_mels=40, feature="logmel")
    fz = AudioFeaturizer(cfg)
    examples = []
    for name in sorted(os.listdir(recordings)):
        m = FSDD_NAME.fullmatch(name)
        if not m:
            continue
        path = os.path.join(recordings, name)
        feats = fz.featurize(load_audio(path, cfg))
        examples.append(Example(id=name[:-4], path=path, features=feats, label=m["digit"],
                                metadata={"speaker": m["speaker"], "take": int(m["take"])}))
    return write_dataset(out, examples, cfg)


def build_etth1(csv: str, out: str) -> str:
    from rnnstream.pipeline.sensors import SensorFeaturizer, read_sensor_table

    cfg = FeatureConfig.sensor_default(("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"), timestamp_column="date",
                                       rate_hz=1.0 / 3600.0, max_gap_s=2 * 3600.0)
    ts, values = read_sensor_table(csv, cfg)
    frames = SensorFeaturizer(cfg).featurize(ts, values)
    assert frames.values.shape[0] == values.shape[0]  # hourly rows: one frame per row, none dropped
    np.testing.assert_allclose(frames.values, values, rtol=1e-6)
    return write_dataset(out, [Example("ETTh1", csv, frames.values)], cfg)


def test_fsdd_digits_far_above_chance(fsdd_dir, tmp_path, capsys):
    t0 = time.process_time()
    data = build_fsdd(str(fsdd_dir), str(tmp_path / "fsdd"))
    featurize_cpu = time.process_time() - t0
    out = tmp_path / "run" / "digits.pt"
    t0 = time.process_time()
    rc = main(["--data", data, "--out", str(out), "--task", "classify", "--cell", "gru", "--layers", "1",
               "--hidden", "64", "--epochs", "12", "--batch-size", "32", "--lr", "3e-3", "--lr-schedule", "cosine",
               "--test-by", "take", "--test-match", "[0-4]", "--val-fraction", "0.1", "--threads", "1",
               "--no-progress"])
    train_cpu = time.process_time() - t0
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    test = metrics["test"]
    # the audio recipe validates (selection/metrics.json), then refits on training + validation files (metrics.json)
    selection = json.loads((tmp_path / "run" / "selection" / "metrics.json").read_text())
    with capsys.disabled():
        print(f"\nFSDD: featurize {featurize_cpu:.1f} CPU-s, train {train_cpu:.1f} CPU-s (selection + refit), "
              f"{metrics['epochs_run']} epochs; val acc {selection['val']['accuracy']:.3f}, test (takes 0-4, "
              f"n={test['n']}) acc {test['accuracy']:.3f}")
    assert test["n"] == 200
    assert test["accuracy"] > 0.8  # chance: 0.1
    assert load_checkpoint(str(out)).labels == [str(d) for d in range(10)]


def test_etth1_univariate_forecast_beats_persistence(etth1_csv, tmp_path, capsys):
    data = build_etth1(str(etth1_csv), str(tmp_path / "ett"))
    out = tmp_path / "run" / "ett.pt"
    t0 = time.process_time()
    rc = main(["--data", data, "--out", str(out), "--task", "forecast", "--channels", "OT", "--targets", "OT",
               "--window", "96", "--horizon", "24", "--split-rows", "0:8640,8640:11520,11520:14400",
               "--cell", "gru", "--layers", "1", "--hidden", "32", "--epochs", "5", "--batch-size", "64",
               "--lr", "3e-3", "--forecast-loss", "all", "--level-shift", "1.0", "--threads", "1", "--no-progress"])
    train_cpu = time.process_time() - t0
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    test = metrics["test"]
    with capsys.disabled():
        for split in ("val", "test"):
            m = metrics[split]
            print(f"\nETTh1 OT h=24 {split} (n={m['n']}): MSE {m['mse']:.4f} MAE {m['mae']:.4f}; persistence MSE "
                  f"{m['persistence_mse']:.4f} MAE {m['persistence_mae']:.4f}")
        print(f"ETTh1: train {train_cpu:.1f} CPU-s, best epoch {metrics['best_epoch']} of {metrics['epochs_run']}")
    assert test["n"] == 2880 - 24 + 1
    assert test["mse"] < test["persistence_mse"] and test["mae"] < test["persistence_mae"]
    ck = load_checkpoint(str(out))
    # the model's normalisation is the training rows' z-score (the protocol's scaler)
    assert ck.stats["count"] == 8640

"""experiments.uea and experiments.fsdd_ensemble: the cross-validated estimate of a seed ensemble and the ensemble
validation accuracy of finished runs (averaged class probabilities)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rnnstream.models.data import tensor_data
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig

from experiments.uea import (
    _train_config,
    build_parser,
    class_probabilities,
    seed_ensemble_scores,
    set_settings,
)


def test_seed_ensemble_scores_average_the_seeds_probabilities():
    truth = np.array([0, 1, 1])
    oof = np.array([
        [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]],  # seed A: recording 1 wrong
        [[0.4, 0.6], [0.1, 0.9], [0.3, 0.7]],  # seed B: recording 0 wrong
    ])
    s = seed_ensemble_scores(oof, truth)
    assert s["members"] == 2
    assert s["member_accuracy"] == pytest.approx([2 / 3, 2 / 3])
    assert s["accuracy"] == 1.0  # the means: [0.65, 0.35], [0.35, 0.65], [0.25, 0.75]
    assert s["loss"] == pytest.approx(-np.mean(np.log([0.65, 0.65, 0.75])))


def test_class_probabilities_are_the_softmax_of_the_last_frame_in_data_order():
    fc = FeatureConfig.sensor_default(["a", "b"])
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(n, 2)).astype(np.float32) for n in (3, 7, 5, 4)]
    data = tensor_data("classify", seqs, ["x", "y", "x", "z"], feature_config=fc)
    torch.manual_seed(0)
    model = rnn_classifier(input_dim=2, num_classes=3, hidden_size=6, num_layers=1).eval()
    probs = class_probabilities(model, data)
    assert probs.shape == (4, 3)
    with torch.no_grad():
        for i, x in enumerate(seqs):
            want = torch.softmax(model(torch.from_numpy(x)[None])[0, -1].double(), -1).numpy()
            np.testing.assert_allclose(probs[i], want, rtol=1e-5, atol=1e-6)


def test_fsdd_ensemble_accuracy_averages_the_members_probabilities():
    from experiments.fsdd_ensemble import ensemble_accuracy

    fc = FeatureConfig.sensor_default(["a", "b"])
    rng = np.random.default_rng(1)
    seqs = [rng.normal(size=(5, 2)).astype(np.float32) for _ in range(12)]
    data = tensor_data("classify", seqs, ["x", "y", "z"] * 4, feature_config=fc)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(rnn_classifier(input_dim=2, num_classes=3, hidden_size=6, num_layers=1).eval())
    acc, members = ensemble_accuracy(models, data)
    probs = np.mean([class_probabilities(m, data) for m in models], axis=0)
    assert acc == float((probs.argmax(1) == data.y.numpy()).mean())
    assert members == [float((class_probabilities(m, data).argmax(1) == data.y.numpy()).mean()) for m in models]


def test_command_line_overrides_reach_the_train_config():
    args = build_parser().parse_args(["--cell", "lstm", "--hidden", "256", "--augment", "noise=0.1", "--input-delta"])
    cfg = _train_config(set_settings("JapaneseVowels", args), seed=3, args=args)
    assert (cfg.cell, cfg.hidden_size, cfg.augment, cfg.seed, cfg.input_delta) == ("lstm", 256, "noise=0.1", 3, True)
    assert cfg.num_layers == 2 and cfg.epochs == 60  # the set's own settings where nothing overrides them
    default = _train_config(set_settings("JapaneseVowels", build_parser().parse_args([])), seed=0, args=args)
    assert default.cell == "gru" and not default.input_delta

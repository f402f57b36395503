"""experiments._common: the pooled epoch choice used for refits."""

from __future__ import annotations

import json

import pytest

from experiments._common import pooled_best_epoch
from rnnstream.pipeline.errors import DatasetError


def _run(tmp_path, name, accs, losses):
    d = tmp_path / name
    d.mkdir()
    history = [{"epoch": i + 1, "val_accuracy": a, "val_loss": v} for i, (a, v) in enumerate(zip(accs, losses))]
    (d / "metrics.json").write_text(json.dumps({"history": history}))
    return str(d)


def test_pooled_best_epoch_averages_runs_before_choosing(tmp_path):
    a = _run(tmp_path, "a", [0.5, 0.9, 0.6], [1.0, 0.2, 0.9])
    b = _run(tmp_path, "b", [0.5, 0.4, 0.8], [1.0, 0.9, 0.1])
    # each run alone would choose epoch 2 (a) or 3 (b); pooled accuracy: 0.5, 0.65, 0.7 -> 3
    assert pooled_best_epoch([a, b]) == (3, pytest.approx([0.5, 0.65, 0.7]))
    # pooled loss: 1.0, 0.55, 0.5 -> 3 as well; a alone by loss -> 2
    assert pooled_best_epoch([a, b], "val_loss")[0] == 3
    assert pooled_best_epoch([a], "val_loss")[0] == 2


def test_pooled_best_epoch_refuses_histories_of_different_length(tmp_path):
    a = _run(tmp_path, "a", [0.5, 0.9], [1.0, 0.2])
    b = _run(tmp_path, "b", [0.5, 0.4, 0.8], [1.0, 0.9, 0.1])
    with pytest.raises(DatasetError, match="equal length"):
        pooled_best_epoch([a, b])

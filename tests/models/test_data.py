"""Task data: masks and targets per task, splits, forecasting windows (Informer protocol), bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnstream.models.data import (
    batch_order,
    channel_names,
    classify_data,
    forecast_data,
    generate_data,
    resolve_channels,
    split_by,
    split_fraction,
    sub_config,
    tag_data,
)
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import Example
from rnnstream.pipeline.errors import ConfigError, DatasetError


def ex(i: int, n: int, d: int = 2, label: str | None = "a", **meta) -> Example:
    feats = np.arange(n * d, dtype=np.float32).reshape(n, d) + 100 * i
    return Example(id=f"e{i}", path=f"/x/e{i}.wav", features=feats, label=label, metadata=meta)


def test_classify_pads_and_scores_only_the_last_valid_frame():
    data = classify_data([ex(0, 3, label="b"), ex(1, 5, label="a")])
    assert data.labels == ("a", "b")
    b = data.batch(torch.tensor([0, 1]))
    assert b.x.shape == (2, 5, 2) and b.lengths.tolist() == [3, 5]
    assert b.y.tolist() == [1, 0]
    assert b.mask.tolist() == [[False, False, True, False, False], [False] * 4 + [True]]
    assert torch.equal(b.x[0, 3:], torch.zeros(2, 2))  # right padding
    # a batch of short sequences is trimmed to its own longest
    assert data.batch(torch.tensor([0])).x.shape == (1, 3, 2)


def test_label_unseen_in_training_is_named():
    train = classify_data([ex(0, 3, label="one"), ex(1, 3, label="two")])
    with pytest.raises(DatasetError, match=r"example 'e2' has label 'three'.*never occurs.*\['one', 'two'\]"):
        classify_data([ex(2, 3, label="three")], labels=train.labels)


def test_tag_reads_per_frame_labels_from_metadata_or_a_function():
    data = tag_data([ex(0, 3, frame_labels=[0, 1, 1]), ex(1, 2, frame_labels=["1", "0"])])
    assert data.labels == ("0", "1")
    b = data.batch(torch.tensor([0, 1]))
    assert b.mask.tolist() == [[True, True, True], [True, True, False]]
    assert b.y[b.mask].tolist() == [0, 1, 1, 1, 0]
    by_fn = tag_data([ex(0, 4)], frame_labels=lambda e: ["hi" if v > 3 else "lo" for v in e.features[:, 0]])
    assert by_fn.batch(torch.tensor([0])).y[0].tolist() == [by_fn.labels.index(x) for x in ["lo", "lo", "hi", "hi"]]
    with pytest.raises(DatasetError, match=r"example 'e0'.*2 labels, expected a list of 3"):
        tag_data([ex(0, 3, frame_labels=[0, 1])])
    with pytest.raises(DatasetError, match="metadata key 'frame_labels'.*'e0'"):
        tag_data([ex(0, 3)])


def test_generate_targets_are_the_next_frame():
    data = generate_data([ex(0, 4), ex(1, 2)])
    b = data.batch(torch.tensor([0, 1]))
    assert torch.equal(b.y[0, :3], b.x[0, 1:4])
    assert b.mask.tolist() == [[True, True, True, False], [True, False, False, False]]


def test_forecast_windows_follow_the_informer_split():
    n, L, H = 60, 8, 3
    series = np.stack([np.arange(n), -np.arange(n)], 1).astype(np.float32)
    e = Example("s", "", series)
    val = forecast_data([e], window=L, horizon=H, target_dims=[1], rows=(40, 50), last_only=True)
    # first window's forecast starts at row 40 exactly: its input [32, 40) reaches back before the split
    assert val.starts.tolist() == list(range(40 - L, 50 - L - H + 1))
    b = val.batch(torch.tensor([0, len(val) - 1]))
    assert b.x[0, :, 0].tolist() == list(range(32, 40))
    assert b.y[0, -1, :, 0].tolist() == [-40.0, -41.0, -42.0]  # channel 1 of rows 40..42
    assert b.y[1, -1, :, 0].tolist() == [-47.0, -48.0, -49.0]  # the last forecast ends at row 49 < 50
    assert b.mask[:, :-1].sum() == 0 and b.mask[:, -1].all()
    # statistics cover the split's own rows only (the scaler is fitted on training rows)
    assert val.fit_stats().count == 10 and val.fit_stats().mean[0] == pytest.approx(44.5)
    train = forecast_data([e], window=L, horizon=H, target_dims=[1], rows=(0, 40))
    assert train.starts.tolist() == list(range(0, 40 - L - H + 1))
    tb = train.batch(torch.arange(len(train)))
    # every frame of a training window has a whole horizon of in-split truth
    assert tb.mask.all()
    rows = train.starts[:, None] + torch.arange(L)[None, :]
    assert int((rows + H).max()) == 39


def test_forecast_rejects_empty_or_too_short_series():
    e = Example("s", "", np.zeros((10, 1), np.float32))
    with pytest.raises(DatasetError, match="no forecasting windows of 8 input \\+ 4 horizon"):
        forecast_data([e], window=8, horizon=4, target_dims=[0])
    with pytest.raises(ConfigError, match=r"target_dims \[3\]"):
        forecast_data([e], window=2, horizon=1, target_dims=[3])


def test_splits_by_metadata_regex_express_fsdd_protocols():
    examples = [ex(i, 2, speaker=s, take=t) for i, (s, t) in enumerate(
        [(s, t) for s in ("george", "lucas") for t in range(8)])]
    rest, test = split_by(examples, "take", r"[0-4]")  # FSDD's documented split: takes 0-4 are test
    assert sorted({e.metadata["take"] for e in test}) == [0, 1, 2, 3, 4] and len(rest) == 6
    rest, held = split_by(examples, "speaker", "george")  # leave one speaker out
    assert {e.metadata["speaker"] for e in held} == {"george"} and len(held) == 8
    with pytest.raises(DatasetError, match=r"example 'e0' has no metadata key 'age'"):
        split_by(examples, "age", "1")
    a, b = split_fraction(examples, 0.25, seed=3)
    assert len(b) == 4 and {e.id for e in a} | {e.id for e in b} == {e.id for e in examples}
    assert [e.id for e in split_fraction(examples, 0.25, seed=3)[1]] == [e.id for e in b]


def test_bad_examples_are_named():
    bad = Example("nan1", "", np.array([[0.0], [np.nan]], np.float32), label="a")
    with pytest.raises(DatasetError, match=r"example 'nan1' holds 1 NaN/Inf"):
        classify_data([bad])
    with pytest.raises(DatasetError, match="dataset or split is empty"):
        classify_data([])


def test_bucketed_batches_cover_every_example_once_and_are_seeded():
    data = classify_data([ex(i, 1 + i % 7) for i in range(50)])
    order = batch_order(data, 8, shuffle=True, generator=torch.Generator().manual_seed(1))
    assert sorted(torch.cat(order).tolist()) == list(range(50))
    again = batch_order(data, 8, shuffle=True, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(order, again))
    padded = sum(int(data.lengths[b].max()) * len(b) for b in order)
    plain = sum(int(data.lengths[b].max()) * len(b) for b in torch.split(torch.randperm(50, generator=torch.Generator().manual_seed(0)), 8))
    assert padded < plain


def test_channel_selection_on_sensor_configs():
    fc = FeatureConfig.sensor_default(["a", "b", "OT"])
    names = channel_names(fc)
    assert resolve_channels("OT", names) == [2] and resolve_channels(["0", "b"], names) == [0, 1]
    assert sub_config(fc, [2]).sensor.columns == ("OT",)
    with pytest.raises(ConfigError, match=r"unknown channel 'XX'"):
        resolve_channels("XX", names)


def test_splits_module_holds_the_split_functions_data_reexports_them():
    from rnnstream.models import data, splits

    assert data.split_by is splits.split_by and data.split_fraction is splits.split_fraction
    examples = [ex(i, 2, spk="ann" if i % 2 else "bob", take=i) for i in range(8)]
    train, val, test = splits.split_examples(examples, val_by="spk", val_match="bob", test_by="take",
                                             test_match="[01]")
    assert [e.id for e in test] == ["e0", "e1"]
    assert [e.id for e in val] == ["e2", "e4", "e6"] and [e.id for e in train] == ["e3", "e5", "e7"]
    with pytest.raises(ConfigError, match="validation split needs both val_by"):
        splits.split_examples(examples, val_by="spk")
    with pytest.raises(DatasetError, match=r"test split take='9' matched no example in 'here'"):
        splits.split_examples(examples, test_by="take", test_match="9", where="'here'")

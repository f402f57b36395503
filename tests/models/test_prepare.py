"""rnnstream.models.prepare: extra training datasets join the training split only, with the main one's config."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rnnstream.models.prepare import DataSpec, prepare_data
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import Example, write_dataset
from rnnstream.pipeline.errors import ConfigError

FC = FeatureConfig.audio_default(sample_rate=8000, n_mels=6)


def _write(root, speakers: list[str], config: FeatureConfig = FC, takes: int = 2) -> str:
    rng = np.random.default_rng(len(speakers))
    examples = [Example(f"{s}_{label}_{t}", f"{s}_{label}_{t}.wav",
                        rng.normal(size=(4, config.dim)).astype(np.float32), label=str(label),
                        metadata={"speaker": s}) for s in speakers for label in (0, 1) for t in range(takes)]
    write_dataset(str(root), examples, config)
    return str(root)


def test_extra_examples_train_and_never_validate_or_test(tmp_path) -> None:
    main = _write(tmp_path / "main", ["ann", "bob", "cat"])
    extra = _write(tmp_path / "extra", ["syn"], takes=3)
    spec = DataSpec(val_by="speaker", val_match="bob", test_by="speaker", test_match="cat")
    plain = prepare_data(main, spec)
    more = prepare_data(main, dataclasses.replace(spec, extra_train=(extra, extra)))
    assert len(plain.train) == 4 and len(more.train) == 4 + 2 * 6  # each extra dataset's 6 examples, twice
    assert (len(more.val), len(more.test)) == (len(plain.val), len(plain.test)) == (4, 4)
    assert more.stats.count > plain.stats.count  # normalisation statistics fit on what trains


def test_an_extra_dataset_of_another_config_or_with_row_splits_is_refused(tmp_path) -> None:
    main = _write(tmp_path / "main", ["ann", "bob", "cat"])
    other = _write(tmp_path / "other", ["syn"], FeatureConfig.audio_default(sample_rate=8000, n_mels=5))
    with pytest.raises(ConfigError, match="extra training dataset .*other.* featurized with .*same config"):
        prepare_data(main, DataSpec(extra_train=(other,)))
    with pytest.raises(ConfigError, match="row splits"):
        prepare_data(main, DataSpec(task="forecast", targets=("0",), window=2, horizon=1, split_rows=((0, 2), (2, 4)),
                                    extra_train=(main,)))


def test_train_cli_extra_train_reaches_the_data_spec(tmp_path, capsys) -> None:
    from rnnstream.models.train_cli import _specs, build_parser, main

    spec, _ = _specs(build_parser().parse_args(["--data", "d", "--out", "m.pt", "--extra-train", "a",
                                                "--extra-train", "b"]))
    assert spec.extra_train == ("a", "b")
    data = _write(tmp_path / "main", ["ann", "bob", "cat"])
    other = _write(tmp_path / "other", ["syn"], FeatureConfig.audio_default(sample_rate=8000, n_mels=5))
    assert main(["--data", data, "--out", str(tmp_path / "m.pt"), "--recipe", "none", "--epochs", "1",
                 "--no-progress", "--extra-train", other]) != 0  # refused, with the reason
    assert "extra training dataset" in capsys.readouterr().err

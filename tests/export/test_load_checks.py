"""OnnxBackend load-time checks (issue 13): metadata edited behind the graph's back is refused on load.

Each test edits one ``metadata_props`` value of an exported model with ``onnx`` and asserts the precise
:class:`CheckpointError`; an untouched export still loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from rnnstream.pipeline.errors import CheckpointError
from rnnstream.pipeline.onnx_backend import OnnxBackend


def edit(src: str, dst: Path, key: str, change: Callable[[dict], None]) -> Path:
    """Copy ``src`` to ``dst`` with the JSON value of metadata ``key`` changed in place by ``change``."""
    m = onnx.load(src)
    (prop,) = [p for p in m.metadata_props if p.key == key]
    value = json.loads(prop.value)
    change(value)
    prop.value = json.dumps(value)
    onnx.save(m, dst)
    return dst


def set_kind(src: str, dst: Path, kind: str) -> Path:
    m = onnx.load(src)
    (prop,) = [p for p in m.metadata_props if p.key == "rnnstream.input_kind"]
    prop.value = kind
    onnx.save(m, dst)
    return dst


def test_untouched_exports_load(exported) -> None:
    for args in (("gru", "classify_last"), ("lstm", "classify_mean", True), ("lstm", "forecast")):
        backend = OnnxBackend(exported(*args)[1])
        assert backend.info.input_kind == ("audio" if len(args) == 3 else "features")


def test_edited_state_shape_is_refused(exported, tmp_path) -> None:
    def widen(states: list) -> None:
        states[0]["shape"] = [2, 32]

    path = edit(exported("gru", "classify_last")[1], tmp_path / "h.onnx", "rnnstream.states", widen)
    with pytest.raises(CheckpointError, match=r"h\.onnx'.*: state 'h' is \[2, 12\] in the graph but \[2, 32\] in the "
                       r"metadata$"):
        OnnxBackend(path)


def test_edited_feature_dimension_is_refused(exported, tmp_path) -> None:
    def more_mels(cfg: dict) -> None:
        cfg["audio"]["n_mels"] = 13

    path = edit(exported("lstm", "forecast")[1], tmp_path / "f.onnx", "rnnstream.feature_config", more_mels)
    with pytest.raises(CheckpointError, match=r"f\.onnx'.*: feature dimension F is 8 in the graph but 13 in the "
                       r"metadata$"):
        OnnxBackend(path)


def test_edited_output_dimension_is_refused(exported, tmp_path) -> None:
    def more_classes(cfg: dict) -> None:
        cfg["output_dim"] = 5

    path = edit(exported("gru", "classify_last")[1], tmp_path / "o.onnx", "rnnstream.model_config", more_classes)
    with pytest.raises(CheckpointError, match=r"o\.onnx'.*: output dimension is 3 in the graph but 5 in the metadata$"):
        OnnxBackend(path)


def test_edited_sample_rate_of_a_raw_audio_graph_is_refused(exported, tmp_path) -> None:
    """16 kHz in the metadata means win 400 / hop 160: the graph carries 200 - 80 = 120 samples, not 240."""
    def faster(cfg: dict) -> None:
        cfg["audio"]["sample_rate"] = 16000

    path = edit(exported("lstm", "classify_mean", True)[1], tmp_path / "r.onnx", "rnnstream.feature_config", faster)
    with pytest.raises(CheckpointError, match=r"r\.onnx'.*: 'frontend_carry' \(win 400 - hop 160\) is \[120\] in the "
                       r"graph but \[240\] in the metadata$"):
        OnnxBackend(path)


def test_edited_hop_with_the_same_carry_is_caught_by_the_probe(exported, tmp_path) -> None:
    """win 35 ms / hop 20 ms at 8 kHz keeps win - hop = 120, so only a probe step shows the graph's hop of 80."""
    def longer(cfg: dict) -> None:
        cfg["audio"]["win_ms"], cfg["audio"]["hop_ms"] = 35.0, 20.0

    path = edit(exported("lstm", "classify_mean", True)[1], tmp_path / "hop.onnx", "rnnstream.feature_config", longer)
    with pytest.raises(CheckpointError, match=r"hop\.onnx'.*: metadata says 160 samples per frame \(hop x stack\) "
                       r"but the graph produced 4 frame\(s\) from 320 samples \(expected 2\)$"):
        OnnxBackend(path)


def test_edited_input_kind_is_refused(exported, tmp_path) -> None:
    path = set_kind(exported("lstm", "classify_mean", True)[1], tmp_path / "k.onnx", "features")
    with pytest.raises(CheckpointError, match=r"k\.onnx'.*: metadata says input kind 'features' but the graph takes "
                       r"raw audio \(its first input is 'audio'\)$"):
        OnnxBackend(path)
    path = set_kind(exported("gru", "classify_last")[1], tmp_path / "k2.onnx", "audio")
    with pytest.raises(CheckpointError, match=r"metadata says input kind 'audio' but the graph takes features"):
        OnnxBackend(path)

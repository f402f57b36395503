"""Checkpoints load with ``weights_only=True``: a pickle payload that would run code is refused, never executed."""

from __future__ import annotations

import os

import pytest
import torch

from rnnstream.models.checkpoint import load_checkpoint
from rnnstream.pipeline.errors import CheckpointError


class _Payload:
    """Unpickling this with full pickle would create a file (the attack a weights-only load refuses)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "rnnstream.checkpoint/1", "state_dict": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="corrupt or not a torch file: UnpicklingError"):
        load_checkpoint(str(path))
    assert not os.path.exists(marker)

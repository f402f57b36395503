"""Data splits (rnnstream.models.splits): the held-out validation speaker of the speech recipe."""

from __future__ import annotations

import numpy as np
import pytest

from rnnstream.models.splits import held_out_speaker
from rnnstream.pipeline.dataset import Example
from rnnstream.pipeline.errors import ConfigError


def _examples(speakers: list[str | None]) -> list[Example]:
    return [Example(f"e{i}", f"e{i}.wav", np.zeros((2, 3), np.float32), label="0",
                    metadata={} if s is None else {"speaker": s}) for i, s in enumerate(speakers)]


def test_the_first_training_speaker_when_three_remain() -> None:
    assert held_out_speaker(_examples(["cat", "bob", None, "ann"]), None, None) == "ann"  # no speaker: not counted
    examples = _examples(["cat", "bob", "ann", "dan", "bob"])
    # the test speaker is never the validation speaker; three others remain
    assert held_out_speaker(examples, "speaker", "ann") == "bob"
    # two training speakers only: no held-out speaker (both are needed for training)
    assert held_out_speaker(examples, "speaker", "ann|dan") is None
    assert held_out_speaker(_examples([None, None, None]), None, None) is None


def test_a_bad_test_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid regex"):
        held_out_speaker(_examples(["a", "b", "c"]), "speaker", "(")

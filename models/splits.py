"""Splitting examples into train / validation / test: by a regex over a field, or a seeded random fraction.

::

    rest, test = split_by(examples, "index", r"[0-4]")      # FSDD's documented test split
    train, val = split_fraction(rest, 0.1, seed=0)          # 10 % of the rest, chosen by a seeded permutation
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from rnnstream.pipeline.dataset import Example
from rnnstream.pipeline.errors import ConfigError, DatasetError


def example_field(example: Example, key: str) -> str:
    """``metadata[key]``, or the ``id``/``path``/``label`` field, as a string (for split regexes)."""
    if key in example.metadata:
        return str(example.metadata[key])
    if key in ("id", "path", "label"):
        return str(getattr(example, key))
    raise DatasetError(
        f"example {example.id!r} has no metadata key {key!r} (it has {sorted(example.metadata)}); "
        "split keys name a metadata key or one of id, path, label"
    )


def split_by(examples: Sequence[Example], key: str, pattern: str) -> tuple[list[Example], list[Example]]:
    """``(rest, matched)``: examples whose field ``key`` fully matches the regex ``pattern`` go to ``matched``.

    E.g. FSDD's documented test split is ``split_by(ex, "index", r"[0-4]")`` and leave-one-speaker-out is
    ``split_by(ex, "speaker", "george")``.
    """
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"split pattern {pattern!r} is not a valid regex: {exc}") from None
    rest: list[Example] = []
    matched: list[Example] = []
    for e in examples:
        (matched if rx.fullmatch(example_field(e, key)) else rest).append(e)
    return rest, matched


def split_fraction(examples: Sequence[Example], fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """``(rest, held_out)`` with ``round(fraction * N)`` examples held out, chosen by a seeded permutation."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    n_val = int(round(fraction * len(examples)))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def split_examples(examples: Sequence[Example], *, val_fraction: float = 0.1, val_by: str | None = None,
                   val_match: str | None = None, test_by: str | None = None, test_match: str | None = None,
                   seed: int = 0, where: str = "the dataset") -> tuple[list[Example], list[Example], list[Example]]:
    """``(train, val, test)``: the test split by ``test_by``/``test_match`` first (if given), then validation
    by ``val_by``/``val_match`` or else a random ``val_fraction`` of the rest.

    Raises:
        ConfigError: half a split given (a key without a regex or vice versa), a bad regex or fraction.
        DatasetError: a split matched nothing, or no training examples are left.
    """
    rest, test = list(examples), list[Example]()
    if test_by or test_match:
        if not (test_by and test_match):
            raise ConfigError("a test split needs both test_by (a metadata key) and test_match (a regex)")
        rest, test = split_by(examples, test_by, test_match)
        if not test:
            raise DatasetError(f"test split {test_by}={test_match!r} matched no example in {where}")
    if val_by or val_match:
        if not (val_by and val_match):
            raise ConfigError("a validation split needs both val_by (a metadata key) and val_match (a regex)")
        train, val = split_by(rest, val_by, val_match)
        if not val:
            raise DatasetError(f"validation split {val_by}={val_match!r} matched no example in {where}")
    else:
        train, val = split_fraction(rest, val_fraction, seed)
    if not train:
        raise DatasetError(f"no training examples left in {where} after the validation/test splits")
    return train, val, test


def held_out_speaker(examples: Sequence[Example], test_by: str | None, test_match: str | None,
                     key: str = "speaker") -> str | None:
    """A deterministic validation speaker: the first (sorted) value of metadata ``key`` among the examples that
    are not test examples (``test_by``/``test_match`` as in :func:`split_examples`), when there are at least three
    such speakers (two stay for training); else ``None``."""
    rest = split_by(examples, test_by, test_match)[0] if test_by and test_match else examples
    speakers = sorted({str(e.metadata[key]) for e in rest if e.metadata.get(key) is not None})
    return speakers[0] if len(speakers) >= 3 else None


__all__ = ["example_field", "held_out_speaker", "split_by", "split_examples", "split_fraction"]

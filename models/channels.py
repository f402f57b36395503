"""Feature channels by name: the names of a dataset's columns, picking a subset, the subset's feature config.

::

    names = channel_names(config)                       # ["HUFL", ..., "OT"] or ["mel0", ...]
    dims = resolve_channels("OT,HUFL", names)           # [6, 0]
    examples, config = select_channels(examples, dims), sub_config(config, dims)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import Example
from rnnstream.pipeline.errors import ConfigError


def select_channels(examples: Sequence[Example], dims: Sequence[int]) -> list[Example]:
    """The examples with only feature columns ``dims`` (in that order)."""
    dims = list(dims)
    out = []
    for e in examples:
        bad = [d for d in dims if not 0 <= d < e.features.shape[1]]
        if bad:
            raise ConfigError(f"channels {bad} out of range for example {e.id!r} with {e.features.shape[1]} features")
        out.append(replace(e, features=np.ascontiguousarray(e.features[:, dims])))
    return out


def channel_names(config: FeatureConfig) -> list[str]:
    """Names of the feature columns: sensor columns (+ ``gap``, + ``<covariate>_sin``/``_cos`` pairs), or
    ``mel0..``/``mfcc0..`` for audio."""
    if config.kind == "sensor":
        sensor = config.sensor
        names = list(sensor.columns) + (["gap"] if sensor.gap_policy == "flag" else [])  # type: ignore[union-attr]
        return names + [f"{t}_{f}" for t in sensor.time_features for f in ("sin", "cos")]  # type: ignore[union-attr]
    prefix = "mel" if config.audio.feature == "logmel" else "mfcc"  # type: ignore[union-attr]
    return [f"{prefix}{i}" for i in range(config.dim)]


def resolve_channels(spec: str | Sequence[str | int], names: Sequence[str]) -> list[int]:
    """Channel names or indices (a comma-separated string or a list) -> indices into ``names``."""
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.lstrip("-").isdigit()):
            i = int(item)
            if not 0 <= i < len(names):
                raise ConfigError(f"channel index {i} out of range: the data has {len(names)} channels {list(names)}")
            out.append(i)
        elif item in names:
            out.append(list(names).index(item))
        else:
            raise ConfigError(f"unknown channel {item!r}; the data's channels are {list(names)}")
    if not out:
        raise ConfigError(f"no channels selected by {spec!r}")
    return out


def sub_config(config: FeatureConfig, dims: Sequence[int]) -> FeatureConfig:
    """The feature config of a channel subset (sensor data only; audio features are all-or-nothing)."""
    dims = list(dims)
    if dims == list(range(config.dim)):
        return config
    if config.kind != "sensor":
        raise ConfigError("selecting feature channels is supported for sensor data only, not audio features")
    names = channel_names(config)
    sensor = config.sensor
    if sensor is None:
        raise ConfigError("a sensor feature config without its sensor section")
    n_cov = 2 * len(sensor.time_features)
    covariates = names[len(names) - n_cov:] if n_cov else []
    picked = [names[d] for d in dims]
    if n_cov and picked[len(picked) - n_cov:] != covariates and set(picked) & set(covariates):
        raise ConfigError(f"the calendar covariates {covariates} are kept all together and last; selected {picked}")
    keep_cov = bool(n_cov) and picked[len(picked) - n_cov:] == covariates
    picked = picked[: len(picked) - n_cov] if keep_cov else picked
    flag = sensor.gap_policy == "flag"
    if flag and picked[-1:] != ["gap"]:
        raise ConfigError(f"sensor data with gap_policy='flag' must keep the 'gap' channel last; selected {picked}")
    cols = tuple(p for p in picked if not (flag and p == "gap"))
    return replace(config, sensor=replace(sensor, columns=cols, time_features=sensor.time_features if keep_cov else ()))


__all__ = ["channel_names", "resolve_channels", "select_channels", "sub_config"]

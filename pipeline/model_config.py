"""Model config and state specs: the torch-free half of the model contract.

:class:`ModelConfig` describes a :class:`rnnstream.models.rnn.StreamingRNN` (its :class:`Architecture`, declared
once and shared with the training's config, plus the task and the data's sizes) and is stored as JSON in
checkpoints and in ONNX metadata; :meth:`ModelConfig.state_specs` names the per-stream state tensors
(``h``, ``c``, ``norm_sum``/``norm_count``, ``pool_sum``/``pool_count``) with their shapes, which the runtime
needs to carry a stream's state without importing PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from rnnstream.pipeline.errors import ConfigError
from rnnstream.pipeline.task_kinds import TaskKind, task_kind

Cell = Literal["rnn_tanh", "rnn_relu", "lstm", "gru"]
Task = Literal["classify", "tag", "forecast", "generate"]
Pooling = Literal["last", "mean", "attention"]
InputNorm = Literal["none", "causal_mean", "pcen"]


#: The values of each type above, for checks and command-line choices: the classify head's poolings over time
#: (:attr:`Architecture.pooling`), recurrent cells (:attr:`Architecture.cell`), tasks (:attr:`ModelConfig.task`),
#: input normalisations.
POOLINGS: tuple[str, ...] = get_args(Pooling)
CELLS: tuple[str, ...] = get_args(Cell)
TASK_NAMES: tuple[str, ...] = get_args(Task)
INPUT_NORMS: tuple[str, ...] = get_args(InputNorm)

#: ``pooling="attention"``: frame weights are ``exp(b * tanh(score))`` with ``b`` this bound, so one frame
#: weighs at most ``exp(2 b)`` (about 8.9e6) times another and the carried sums stay finite in float32.
ATTENTION_BOUND = 8.0


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """The network a config describes, apart from what the data decides (input and output sizes, task, forecast
    horizon and targets). Declared once: :class:`ModelConfig` (a model, stored with it) and the training's
    ``TrainConfig`` (what to train) both extend it, and ``rnnstream train``'s architecture flags take their defaults
    from it.

    ``residual`` forecasts predict the change from a naive forecast: from the current frame's target values
    (persistence), or with ``seasonal_period=P`` from the values ``P`` frames before each forecast step
    (seasonal-naive; the last ``P`` frames are carried as state ``season``; needs ``horizon <= P``).

    ``input_norm="causal_mean"`` subtracts from each (normalised) frame a causal running mean carried as state
    ``norm_sum``/``norm_count``. ``norm_decay`` (``0 < a <= 1``) makes it an exponential moving mean (frame
    ``k`` frames back weighs ``a^k``; 1: the plain cumulative mean). ``norm_prior`` (frames, ``>= 0``) is a
    prior from the training statistics: the running mean starts as the training mean (zero after the fitted
    normalisation) with the weight of ``norm_prior`` frames (decaying like a frame), so the first frames of a
    stream are not normalised by themselves alone. The state stays zero-initialised.
    ``input_norm="pcen"`` (log-mel inputs) replaces the standardisation by per-channel energy normalisation
    (``rnnstream.models.input_norm.CausalPCEN``): each band's energy divided by a power of its smoothed level
    (``norm_decay`` is the smoother's ``a``, below 1), then compressed, with trained exponents; state ``pcen_m``.

    ``pooling`` (classify): ``last`` reads the RNN's last output; ``mean`` the running mean of its outputs;
    ``attention`` a running weighted mean whose weight per frame is ``exp(ATTENTION_BOUND * tanh(w . out_t + b))``
    (a learned score, bounded so the carried sums stay finite without a running maximum). Both carry the weighted
    sum and the sum of weights as state ``pool_sum``/``pool_count``; ``mean`` is the case of equal weights.

    ``input_diff`` feeds the network the change of each normalised feature since the previous frame (level-free
    inputs for drifting series: the first frame's change is zero; the previous frame is carried as state
    ``prev_input`` with ``prev_seen``). ``input_delta`` keeps the features and appends that change to them (delta
    features, as in speech front ends): the RNN reads ``2 * input_dim`` values per frame, from the same state; a conv
    front end reads them as two input channels (features, deltas) over the same bands. With
    ``input_norm='causal_mean'`` the change is that of the features before the running mean is subtracted.

    ``conv_channels`` adds a causal convolutional front end (CRNN): one 2-D convolution per entry over (time,
    frequency) with kernel ``conv_kernel`` (time frames, frequency bands; frequency zero-padded to keep the band
    count), ReLU, and max-pooling over frequency by ``conv_pool``. A frequency size of 0 makes it a 1-D temporal
    convolution over every input feature at once (FCN-style, for sensor channels that are not a frequency axis):
    the first layer's kernel spans all ``input_dim`` features (no padding, one band out), later layers see that one
    band, and ``conv_pool`` must be 1. Each layer carries its last
    ``conv_kernel[0] - 1`` input frames as state ``conv<i>`` ``[kt - 1, channels_in, bands_in]``, so it streams.

    ``ensemble=N`` (``N >= 2``) describes ``N`` members of this architecture (each with its own weights, all with
    the same normalisation), run side by side on the same input and combined frame by frame
    (:class:`rnnstream.models.ensemble.StreamingEnsemble`): class logits (classify, tag) as the log of the
    members' mean softmax, so that a softmax of the output is their mean probability; forecasts as the mean.
    Member ``i``'s states are carried as ``m<i>_<name>``, so an ensemble streams like one model.
    """

    cell: Cell = "gru"
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.0
    bidirectional: bool = False
    pooling: Pooling = "last"
    residual: bool = False
    seasonal_period: int = 0
    input_diff: bool = False
    input_delta: bool = False
    input_norm: InputNorm = "none"
    norm_decay: float = 1.0
    norm_prior: float = 0.0
    conv_channels: tuple[int, ...] = ()
    conv_kernel: tuple[int, int] = (3, 3)
    conv_pool: int = 2
    ensemble: int = 1

    def __post_init__(self) -> None:
        for name in ("conv_channels", "conv_kernel"):  # lists from JSON or a command line
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        self.validate_architecture()

    def architecture(self) -> dict[str, Any]:
        """This config's :class:`Architecture` fields by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Architecture)}

    def validate_architecture(self) -> None:
        """The checks that need no data (cell, sizes, dropout, pooling, normalisation, conv layers, members); raises
        :class:`ConfigError` naming the value and what is expected."""
        if self.cell not in CELLS:
            raise ConfigError(f"cell must be one of {', '.join(CELLS)}; got {self.cell!r}")
        for name in ("hidden_size", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        if int(self.ensemble) < 1:
            raise ConfigError(f"ensemble (members) must be >= 1, got {self.ensemble}")
        if self.input_norm not in INPUT_NORMS:
            raise ConfigError(f"input_norm must be one of {', '.join(INPUT_NORMS)}; got {self.input_norm!r}")
        self._validate_norm()
        self._validate_inputs()
        self._validate_conv()

    def _validate_inputs(self) -> None:
        for name in ("input_diff", "input_delta"):
            if getattr(self, name) and self.bidirectional:
                raise ConfigError(f"{name} applies to streaming (unidirectional) models only")
        if self.input_diff and self.input_delta:
            raise ConfigError("input_diff (the change instead of the features) and input_delta (the change beside "
                              "them) exclude each other; choose one")

    def _validate_norm(self) -> None:
        if not 0.0 < float(self.norm_decay) <= 1.0:
            raise ConfigError(f"norm_decay must be in (0, 1], got {self.norm_decay}")
        if not 0.0 <= float(self.norm_prior) < float("inf"):
            raise ConfigError(f"norm_prior must be a finite number of frames >= 0, got {self.norm_prior}")
        if self.norm_prior and self.input_norm != "causal_mean":
            raise ConfigError(f"norm_prior applies to input_norm='causal_mean' only, not {self.input_norm!r}")
        if self.input_norm == "pcen" and not float(self.norm_decay) < 1.0:
            raise ConfigError("input_norm='pcen' smooths each band's energy with norm_decay a (0 < a < 1; e.g. 0.975, "
                              f"a 40-frame time constant); got {self.norm_decay}")
        if self.norm_decay != 1.0 and self.input_norm not in ("causal_mean", "pcen"):
            raise ConfigError(f"norm_decay applies to input_norm='causal_mean' or 'pcen' only, not {self.input_norm!r}")

    def _validate_conv(self) -> None:
        if any(int(c) < 1 for c in self.conv_channels):
            raise ConfigError(f"conv_channels must be positive, got {list(self.conv_channels)}")
        if (len(self.conv_kernel) != 2 or self.conv_kernel[0] < 1 or self.conv_kernel[1] < 0
                or (self.conv_kernel[1] and self.conv_kernel[1] % 2 == 0)):
            raise ConfigError(f"conv_kernel is (time, frequency): time >= 1, frequency odd, or 0 for a kernel across "
                              f"every feature; got {list(self.conv_kernel)}")
        if self.conv_pool < 1:
            raise ConfigError(f"conv_pool must be >= 1, got {self.conv_pool}")
        if self.conv_full_width and self.conv_pool != 1:
            raise ConfigError(f"conv_pool must be 1 with a kernel across every feature (conv_kernel "
                              f"{list(self.conv_kernel)} leaves one band to pool), got {self.conv_pool}")

    @property
    def conv_full_width(self) -> bool:
        """True when the conv kernel spans every input feature (``conv_kernel[1] == 0``): a 1-D temporal conv."""
        return len(self.conv_kernel) == 2 and self.conv_kernel[1] == 0


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Architecture):
    """Architecture (:class:`Architecture`, whose doc says what each field means) and task of a
    :class:`StreamingRNN`, with the sizes the data gives: JSON-serialisable, stored in checkpoints and ONNX.

    ``horizon`` and ``target_dims`` (forecast): steps ahead per frame, and the input channels forecast.
    """

    input_dim: int
    output_dim: int
    task: Task = "classify"
    horizon: int = 1
    target_dims: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_dims", tuple(self.target_dims))  # a list from JSON
        super().__post_init__()

    def validate(self) -> None:
        self.validate_architecture()
        kind = task_kind(self.task)  # ConfigError naming the tasks for an unknown one
        for name in ("input_dim", "output_dim", "horizon"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pooling != "last" and not kind.per_sequence:
            raise ConfigError(f"pooling={self.pooling!r} applies to task 'classify' only, not {self.task!r}")
        if self.conv_channels and self.conv_bands()[-1] < 1:
            raise ConfigError(f"{len(self.conv_channels)} conv layers pooling frequency by {self.conv_pool} leave no "
                              f"band of input_dim={self.input_dim}")
        if self.ensemble > 1 and kind.rolls_out:
            raise ConfigError(f"task {self.task!r} rolls out one model's own predictions; it has no ensemble "
                              "(ensemble=1)")
        if self.residual and not kind.residual:
            raise ConfigError(f"residual=True applies to task 'forecast' only, not {self.task!r}")
        if self.seasonal_period:
            if not self.residual or self.seasonal_period < 0:
                raise ConfigError(f"seasonal_period={self.seasonal_period} needs residual=True and a positive period")
            if self.horizon > self.seasonal_period:
                raise ConfigError(f"seasonal residuals need horizon <= seasonal_period, got horizon={self.horizon} "
                                  f"and seasonal_period={self.seasonal_period}")
        kind.validate(self)

    @property
    def kind(self) -> TaskKind:
        """This model's task as an object (:mod:`rnnstream.pipeline.task_kinds`): what its outputs mean and which
        options it allows."""
        return task_kind(self.task)

    @property
    def conv_in_channels(self) -> int:
        """Channels entering the first conv layer: the features, and their deltas with ``input_delta``."""
        return 2 if self.input_delta else 1

    def conv_bands(self) -> list[int]:
        """Frequency bands entering each conv layer, then leaving the last: ``[input_dim, ..., F_out]``."""
        if self.conv_full_width:
            return [self.input_dim] + [1] * len(self.conv_channels)
        bands = [self.input_dim]
        for _ in self.conv_channels:
            bands.append(bands[-1] // self.conv_pool)
        return bands

    @property
    def outputs_logits(self) -> bool:
        """Whether the outputs are class logits (classify, tag), read as probabilities by a softmax."""
        return self.kind.outputs_logits

    @property
    def rnn_input_size(self) -> int:
        """Width of the RNN's input: ``input_dim`` (twice that with ``input_delta``), or channels x bands out of the
        conv front end."""
        if self.conv_channels:
            return self.conv_channels[-1] * self.conv_bands()[-1]
        return 2 * self.input_dim if self.input_delta else self.input_dim

    @property
    def streamable(self) -> bool:
        return not self.bidirectional

    @property
    def member(self) -> "ModelConfig":
        """The config of one member of an ensemble (``ensemble=1``); the config itself when it is one model."""
        return self if self.ensemble == 1 else dataclasses.replace(self, ensemble=1)

    def state_specs(self) -> tuple["StateSpec", ...]:
        """Names and per-stream shapes of the state tensors, in graph order (an ensemble's: every member's,
        member by member, prefixed ``m<i>_``)."""
        if self.ensemble > 1:
            return tuple(StateSpec(f"m{i}_{s.name}", s.shape, s.dtype)
                         for i in range(self.ensemble) for s in self.member.state_specs())
        layers = self.num_layers * (2 if self.bidirectional else 1)
        specs = [StateSpec("h", (layers, self.hidden_size))]
        bands, chans = self.conv_bands(), (self.conv_in_channels, *self.conv_channels)
        if self.conv_kernel[0] > 1:  # each conv layer carries its last kernel-1 input frames
            specs += [StateSpec(f"conv{i}", (self.conv_kernel[0] - 1, chans[i], bands[i]))
                      for i in range(len(self.conv_channels))]
        if self.cell == "lstm":
            specs.append(StateSpec("c", (layers, self.hidden_size)))
        if self.input_norm == "causal_mean":
            specs += [StateSpec("norm_sum", (self.input_dim,)), StateSpec("norm_count", (1,))]
        elif self.input_norm == "pcen":
            specs.append(StateSpec("pcen_m", (self.input_dim,)))
        if self.pooling != "last":
            specs += [StateSpec("pool_sum", (self.hidden_size,)), StateSpec("pool_count", (1,))]
        if self.seasonal_period:
            specs.append(StateSpec("season", (self.seasonal_period, len(self.target_dims))))
        if self.input_diff or self.input_delta:
            specs += [StateSpec("prev_input", (self.input_dim,)), StateSpec("prev_seen", (1,))]
        return tuple(specs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_dims"] = list(self.target_dims)
        if self.conv_channels:
            d["conv_channels"] = list(self.conv_channels)
            d["conv_kernel"] = list(self.conv_kernel)
        else:  # configs (and so weights hashes) of models without a conv front end read as before it existed
            for key in ("conv_channels", "conv_kernel", "conv_pool"):
                d.pop(key)
        if not self.seasonal_period:
            d.pop("seasonal_period")
        for key in ("input_diff", "input_delta"):  # as before these fields existed
            if not d[key]:
                d.pop(key)
        if self.ensemble == 1:  # single models' configs (and weights hashes) read as before ensembles existed
            d.pop("ensemble")
        for key, default in (("norm_decay", 1.0), ("norm_prior", 0.0)):  # as before these fields existed
            if d[key] == default:
                d.pop(key)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_MEMBER_PREFIX = re.compile(r"m\d+_")


def base_state_name(name: str) -> str:
    """A state's name without an ensemble member's ``m<i>_`` prefix (``m1_pool_count`` -> ``pool_count``)."""
    m = _MEMBER_PREFIX.match(name)
    return name[m.end():] if m else name


@dataclass(frozen=True)
class StateSpec:
    """One state tensor: its name and per-stream shape (the full tensor is ``[batch, *shape]``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


__all__ = ["ATTENTION_BOUND", "CELLS", "INPUT_NORMS", "POOLINGS", "TASK_NAMES", "Architecture", "Cell", "InputNorm",
           "ModelConfig", "Pooling", "StateSpec", "Task", "base_state_name"]

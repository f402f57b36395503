"""Ensembles of streaming models: ``N`` members side by side, one streaming model to the runtime and to ONNX.

:class:`StreamingEnsemble` holds ``N`` :class:`~rnnstream.models.rnn.StreamingRNN` members of one architecture
(``ModelConfig.ensemble == N``) and one normalisation. Each member steps its own states, carried as
``m<i>_<name>`` (:meth:`~rnnstream.pipeline.model_config.ModelConfig.state_specs`), and :func:`combine_outputs`
joins their outputs frame by frame, so streaming equals offline for the ensemble exactly as it does for each member;
the exported graph has the same signature as one model's (``features``, the states in, ``output``, the states out).

Members are usually trained from different seeds on the same data (``TrainConfig.ensemble``,
``rnnstream train --ensemble N``), or joined afterwards with :func:`ensemble_of`. The cost of a step is the sum
of the members'.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import TypeAlias, cast

import numpy as np
import torch
from torch import Tensor, nn

from rnnstream.models.rnn import State, StreamingRNN, check_state_tensors
from rnnstream.pipeline.errors import ConfigError, ShapeError
from rnnstream.pipeline.model_config import ModelConfig, StateSpec


def combine_outputs(outputs: Sequence[Tensor], *, logits: bool) -> Tensor:
    """The members' outputs, ``N`` tensors ``[B, T, O]``, as one ``[B, T, O]``.

    ``logits`` (classify, tag): ``log(mean_i softmax(y_i))``, computed as ``logsumexp_i(log_softmax(y_i)) - log N``
    (finite for finite inputs): log probabilities, whose softmax is the members' mean probability. Otherwise
    (forecasts): the mean.
    """
    stacked = torch.stack(list(outputs), dim=0)  # [N, B, T, O]
    if not logits:
        return stacked.mean(dim=0)
    return torch.logsumexp(torch.log_softmax(stacked, dim=-1), dim=0) - float(np.log(stacked.shape[0]))


class StreamingEnsemble(nn.Module):
    """``N`` streaming models of one config, stepped side by side and combined by :func:`combine_outputs`.

    ``step(x [B, T, input_dim], state) -> (y [B, T, output_dim], new_state)`` and ``forward(x [B, T, input_dim])
    -> y [B, T, output_dim]``, like :class:`StreamingRNN`; ``state`` holds every member's tensors under
    ``m<i>_<name>``. ``feat_mean`` / ``feat_std`` are the members' (shared) normalisation statistics.
    """

    feat_mean: torch.Tensor  # buffers [input_dim]
    feat_std: torch.Tensor

    def __init__(self, members: Sequence[StreamingRNN]):
        super().__init__()
        members = list(members)
        _check_members(members)
        self.config = dataclasses.replace(members[0].config, ensemble=len(members))
        self.members = nn.ModuleList(members)
        self.register_buffer("feat_mean", members[0].feat_mean.detach().clone())
        self.register_buffer("feat_std", members[0].feat_std.detach().clone())
        self._member_names = [[(f"m{i}_{s.name}", s.name) for s in m.state_spec()] for i, m in enumerate(members)]

    @property
    def models(self) -> Sequence[StreamingRNN]:
        """The members, typed: ``self.members`` itself (the ``nn.ModuleList`` that registers them), nothing copied."""
        return cast(Sequence[StreamingRNN], self.members)

    # -- state API (as StreamingRNN's) ---------------------------------------------------------
    def state_spec(self) -> list[StateSpec]:
        """Every member's state tensors, member by member, named ``m<i>_<name>``."""
        return list(self.config.state_specs())

    def initial_state(self, batch_size: int) -> State:
        """Zeros for every state tensor: ``{name: [batch_size, *shape]}``."""
        device = self.feat_mean.device
        return {s.name: torch.zeros((batch_size, *s.shape), device=device) for s in self.state_spec()}

    def check_state(self, state: State, batch_size: int) -> None:
        """Raise :class:`StateError` unless ``state`` has exactly this ensemble's tensors and shapes."""
        check_state_tensors(self.state_spec(), state, batch_size)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One chunk for every member: ``x [B, T, input_dim]`` -> ``(y [B, T, output_dim], new_state)``."""
        if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            if not isinstance(x, Tensor) or x.dim() != 3:
                raise ShapeError(f"expected input [batch, time, {self.config.input_dim}], got "
                                 f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
            self.check_state(state, x.shape[0])
        outputs, new_state = [], {}
        for member, names in zip(self.models, self._member_names):
            y, new = member.step(x, {own: state[full] for full, own in names})
            outputs.append(y)
            new_state.update({full: new[own] for full, own in names})
        return combine_outputs(outputs, logits=self.config.outputs_logits), new_state

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The whole sequence, ``x [B, T, input_dim]`` -> ``[B, T, output_dim]`` (``lengths``: for bidirectional
        members)."""
        outputs = [m(x, lengths) for m in self.members]
        return combine_outputs(outputs, logits=self.config.outputs_logits)

    last_output = staticmethod(StreamingRNN.last_output)

    def forecast_view(self, y: Tensor) -> Tensor:
        """As :meth:`StreamingRNN.forecast_view` (the members share the config)."""
        return self.models[0].forecast_view(y)

    # -- identity ---------------------------------------------------------------------------------
    def weights_hash(self) -> str:
        """SHA-256 (hex, 16 chars) of the config and the members' weights hashes, in order."""
        h = hashlib.sha256(self.config.to_json().encode())
        for m in self.models:
            h.update(m.weights_hash().encode())
        return h.hexdigest()[:16]

    def stats_hash(self) -> str:
        """The members' (shared) normalisation statistics' hash."""
        return self.models[0].stats_hash()


#: What checkpoints, training and export hold: one :class:`StreamingRNN`, or a :class:`StreamingEnsemble` of them
#: (the same state, step and forward API).
StreamingModel: TypeAlias = StreamingRNN | StreamingEnsemble


def _check_members(members: list[StreamingRNN]) -> None:
    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
    first = members[0]
    for i, m in enumerate(members):
        if not isinstance(m, StreamingRNN):
            raise ConfigError(f"ensemble member {i} is a {type(m).__name__}, not a StreamingRNN")
        if m.config != first.config or m.config.ensemble != 1:
            raise ConfigError(f"ensemble members must share one single-model config; member {i} has "
                              f"{m.config.to_json()}, member 0 {first.config.to_json()}")
        if not (torch.equal(m.feat_mean, first.feat_mean) and torch.equal(m.feat_std, first.feat_std)):
            raise ConfigError(f"ensemble members must share their normalisation statistics (trained on the same "
                              f"data); member {i}'s differ from member 0's")


def ensemble_of(members: Sequence[StreamingRNN]) -> StreamingEnsemble:
    """Join trained models of one config and one normalisation into an ensemble (copies are not made: the
    ensemble holds these modules).

    Raises:
        ConfigError: fewer than 2 members, members of different configs or statistics, or an ensemble among them.
    """
    return StreamingEnsemble(members)


def build_ensemble(config: ModelConfig, *, feat_mean: np.ndarray | None = None,
                   feat_std: np.ndarray | None = None) -> StreamingEnsemble:
    """An ensemble of ``config.ensemble`` new members (weights to be loaded), e.g. from a checkpoint's config."""
    if config.ensemble < 2:
        raise ConfigError(f"build_ensemble needs config.ensemble >= 2, got {config.ensemble}")
    return StreamingEnsemble([StreamingRNN(config.member, feat_mean=feat_mean, feat_std=feat_std)
                              for _ in range(config.ensemble)])


__all__ = ["StreamingEnsemble", "StreamingModel", "build_ensemble", "combine_outputs", "ensemble_of"]

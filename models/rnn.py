"""Stateful RNNs with one explicit state API, for offline, training and streaming use alike.

The state API (the contract every backend, Beam job and server follows)::

    state = model.initial_state(batch_size)          # dict[str, Tensor], every tensor batch-first
    y, state = model.step(x_chunk, state)            # x_chunk [B, T, input_dim] -> y [B, T, output_dim]
    y = model(x)                                     # == step over the whole sequence from initial_state

``step`` over any chunking equals ``forward`` over the concatenation (a unidirectional RNN is causal).
Every state tensor has the batch on axis 0 (``[B, num_layers, hidden]`` for ``h``/``c``), so gathering the
states of several streams is a concatenation and scattering is a split. ``model.state_spec()`` names them
and gives their per-stream shapes; the ONNX graph uses the same names with ``_in``/``_out`` suffixes.

Outputs are per frame for every task; what a frame's output means depends on the task:

* ``classify`` (many-to-one): logits ``[C]`` for the stream *so far* (pooled ``last`` frame or running
  ``mean`` over frames, or ``attention``: a running mean weighted by a learned, bounded score per frame; the
  sums are carried as state, so both stream too). The sequence's prediction is the output at its last frame.
* ``tag`` (many-to-many): logits ``[C]`` for this frame (e.g. voice activity).
* ``forecast`` (many-to-many, seq2seq): the next ``horizon`` values of the ``target_dims`` channels, flat
  ``[horizon * len(target_dims)]``, in the *normalised* scale of those channels. With ``residual=True`` the
  head predicts the change from the current frame: the output is ``head(out_t) + z_t[target_dims]`` repeated
  over the horizon (``z_t`` the frame's normalised input; causal, so it streams and exports like the plain head).
* ``generate`` (one-to-many): the next frame (all channels, normalised); :meth:`StreamingRNN.rollout`
  feeds predictions back from a seed. ``one-to-one`` is any task over ``T = 1``.

Input normalisation from fitted statistics is part of the model (buffers ``feat_mean``/``feat_std``), so
every checkpoint and export carries it. ``input_norm="causal_mean"`` then subtracts the running mean of the
normalised features over the stream so far (current frame included): causal cepstral mean normalisation,
carried as state ``norm_sum``/``norm_count`` so it streams and exports like the rest; ``norm_decay`` makes it an
exponential moving mean and ``norm_prior`` starts it at the training mean with the weight of that many frames
(see :class:`ModelConfig`). ``input_norm="pcen"`` replaces the standardisation of log-mel inputs by per-channel
energy normalisation (:class:`rnnstream.models.input_norm.CausalPCEN`, state ``pcen_m``).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnstream.models.conv_frontend import CausalConvFrontend
from rnnstream.models.input_norm import CausalPCEN, decayed_sums
from rnnstream.pipeline.errors import ConfigError, ShapeError, StateError
from rnnstream.pipeline.model_config import ATTENTION_BOUND, Cell, InputNorm, ModelConfig, Pooling, StateSpec, Task

if TYPE_CHECKING:
    from rnnstream.models.ensemble import StreamingModel

State = dict[str, Tensor]

_STREAMING_REFUSAL = (
    "bidirectional models are offline only: a unidirectional RNN never looks at future frames, so it can run "
    "chunk by chunk; a bidirectional one reads each sequence backwards from its end, which a stream does not have "
    "yet. Train with bidirectional=False to stream or export for streaming."
)


class StreamingRNN(nn.Module):
    """Normalise -> RNN (RNN/LSTM/GRU) -> optional running (weighted) mean -> linear head. See the module docstring."""

    feat_mean: Tensor  # buffers [input_dim]: the normalisation statistics baked into the model
    feat_std: Tensor

    def __init__(self, config: ModelConfig, *, feat_mean: np.ndarray | Tensor | None = None,
                 feat_std: np.ndarray | Tensor | None = None):
        super().__init__()
        self.config = config
        c = config
        self.frontend = CausalConvFrontend(c) if c.conv_channels else None
        rnn_kwargs = dict(
            input_size=c.rnn_input_size,
            hidden_size=c.hidden_size,
            num_layers=c.num_layers,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
            bidirectional=c.bidirectional,
            batch_first=True,
        )
        if c.cell == "lstm":
            self.rnn: nn.Module = nn.LSTM(**rnn_kwargs)
        elif c.cell == "gru":
            self.rnn = nn.GRU(**rnn_kwargs)
        else:
            self.rnn = nn.RNN(nonlinearity="tanh" if c.cell == "rnn_tanh" else "relu", **rnn_kwargs)
        self.num_directions = 2 if c.bidirectional else 1
        self.head = nn.Linear(c.hidden_size * self.num_directions, c.output_dim)
        # pooling="attention": frame weight exp(ATTENTION_BOUND * tanh(score(out_t))), a weighted running mean
        self.pool_score = nn.Linear(c.hidden_size * self.num_directions, 1) if c.pooling == "attention" else None
        mean = torch.zeros(c.input_dim) if feat_mean is None else torch.as_tensor(np.asarray(feat_mean), dtype=torch.float32)
        std = torch.ones(c.input_dim) if feat_std is None else torch.as_tensor(np.asarray(feat_std), dtype=torch.float32)
        if mean.shape != (c.input_dim,) or std.shape != (c.input_dim,):
            raise ShapeError(
                f"normalisation statistics must have shape [{c.input_dim}], got mean {list(mean.shape)} std {list(std.shape)}"
            )
        if not bool(torch.all(std > 0)):
            raise ConfigError("normalisation std must be > 0 in every dimension")
        self.register_buffer("feat_mean", mean.clone())
        self.register_buffer("feat_std", std.clone())
        self.pcen = CausalPCEN(c.input_dim, c.norm_decay) if c.input_norm == "pcen" else None

    # ---------------------------------------------------------------------------------------
    # State API
    # ---------------------------------------------------------------------------------------
    def state_spec(self) -> list[StateSpec]:
        """Names and per-stream shapes of the state tensors, in graph order (:meth:`ModelConfig.state_specs`)."""
        return list(self.config.state_specs())

    def initial_state(self, batch_size: int) -> State:
        """Zeros for every state tensor: ``{name: [batch_size, *shape]}``."""
        device = self.feat_mean.device
        return {s.name: torch.zeros((batch_size, *s.shape), device=device) for s in self.state_spec()}

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[2] != self.config.input_dim:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(f"expected input [batch, time, {self.config.input_dim}], got {shape}")
        if not x.is_floating_point():
            raise ShapeError(f"expected a floating-point input, got dtype {x.dtype}")

    def check_state(self, state: State, batch_size: int) -> None:
        """Raise :class:`StateError` unless ``state`` has exactly this model's tensors and shapes."""
        check_state_tensors(self.state_spec(), state, batch_size)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One chunk: ``x [B, T, input_dim]`` (``T >= 0``) -> ``(y [B, T, output_dim], new_state)``."""
        if self.config.bidirectional:
            raise StateError(_STREAMING_REFUSAL)
        self._check_input(x)
        if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            self.check_state(state, x.shape[0])
        if x.shape[1] == 0:
            return x.new_zeros((x.shape[0], 0, self.config.output_dim)), dict(state)
        return self._step(x, state)

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        c = self.config
        new_state: State = {}
        if self.pcen is not None:  # PCEN reads the energies themselves, in place of the standardisation
            z, new_state["pcen_m"] = self.pcen(x, state["pcen_m"], self.feat_mean)
        else:
            z = (x - self.feat_mean) / self.feat_std
        delta = None
        if c.input_diff or c.input_delta:
            delta = self._delta(z, state, new_state)
            if c.input_diff:
                z, delta = delta, None
        if c.input_norm == "causal_mean":
            z, norm_sum, norm_count = self._causal_mean(z, state["norm_sum"], state["norm_count"])
            new_state.update(norm_sum=norm_sum, norm_count=norm_count)
        if self.frontend is not None:  # deltas, if any, as the conv's second input channel
            z, conv_state = self.frontend(z, state, delta)
            new_state.update(conv_state)
        elif delta is not None:
            z = torch.cat((z, delta), dim=2)  # [B, T, 2 * input_dim]
        h0 = state["h"].transpose(0, 1).contiguous()
        if c.cell == "lstm":
            out, (h, cc) = self.rnn(z, (h0, state["c"].transpose(0, 1).contiguous()))
            new_state.update(h=h.transpose(0, 1), c=cc.transpose(0, 1))
        else:
            out, h = self.rnn(z, h0)
            new_state["h"] = h.transpose(0, 1)
        if c.pooling != "last":
            out, new_state["pool_sum"], new_state["pool_count"] = self._pool(out, state["pool_sum"],
                                                                             state["pool_count"])
        y = self.head(out)
        if c.seasonal_period:
            y, new_state["season"] = self._seasonal(y, x, state["season"])
            return y, new_state
        return self._residual(y, x), new_state

    @staticmethod
    def _delta(z: Tensor, state: State, new_state: State) -> Tensor:
        """Each frame's change since the previous one, ``z [B, T, D] -> [B, T, D]``; zero at the stream's first frame.
        The previous frame is carried as ``prev_input [B, D]`` with ``prev_seen [B, 1]`` (0 before the first frame)."""
        seen = state["prev_seen"]
        first = seen * state["prev_input"] + (1.0 - seen) * z[:, 0]
        prev = torch.cat((first.unsqueeze(1), z[:, :-1]), dim=1)
        new_state.update(prev_input=z[:, -1], prev_seen=torch.ones_like(seen))
        return z - prev

    def _frame_weights(self, out: Tensor) -> Tensor:
        """Pooling weight of each frame, ``out [B, T, H] -> [B, T, 1]``: 1 (mean) or the bounded attention score."""
        if self.pool_score is None:
            return torch.ones_like(out[..., :1])
        return torch.exp(ATTENTION_BOUND * torch.tanh(self.pool_score(out)))

    def _pool(self, out: Tensor, s0: Tensor, n0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Running weighted mean of ``out [B, T, H]`` from the carried ``pool_sum [B, H]`` and ``pool_count
        [B, 1]``: returns ``(pooled [B, T, H], new pool_sum, new pool_count)``."""
        if self.pool_score is None:  # equal weights: the frame count (no weight tensor in the graph)
            csum = torch.cumsum(out, dim=1) + s0.unsqueeze(1)
            steps = torch.arange(1, out.shape[1] + 1, device=out.device, dtype=out.dtype).view(1, -1, 1)
            count = n0.unsqueeze(1) + steps  # [B, T, 1]
        else:
            w = self._frame_weights(out)
            csum = torch.cumsum(out * w, dim=1) + s0.unsqueeze(1)
            count = torch.cumsum(w, dim=1) + n0.unsqueeze(1)  # [B, T, 1]
        return csum / count, csum[:, -1], count[:, -1]

    def _causal_mean(self, z: Tensor, s0: Tensor, n0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Causal (decayed) mean normalisation of ``z [B, T, D]`` from the carried ``norm_sum [B, D]`` and
        ``norm_count [B, 1]``; returns ``(z - mean, new norm_sum, new norm_count)``.

        ``S_t = a S_{t-1} + z_t`` and ``N_t = a N_{t-1} + 1`` (``a = norm_decay``, both zero before the stream);
        the mean at frame ``t`` is ``S_t / (N_t + prior * a^t)`` with ``a^t = 1 - (1 - a) N_t`` (the prior
        ``norm_prior`` frames at the training mean, zero here, decaying like a frame).
        """
        c = self.config
        a, prior = float(c.norm_decay), float(c.norm_prior)
        steps_n = z.shape[1]
        if a == 1.0:
            zsum = torch.cumsum(z, dim=1) + s0.unsqueeze(1)
            steps = torch.arange(1, steps_n + 1, device=z.device, dtype=z.dtype).view(1, -1, 1)
            zcount = n0.unsqueeze(1) + steps  # [B, T, 1]
            denom = zcount + prior if prior else zcount
            return z - zsum / denom, zsum[:, -1], zcount[:, -1]
        zsum = decayed_sums(z, s0, a)
        zcount = decayed_sums(torch.ones_like(z[:, :, :1]), n0, a)  # [B, T, 1]
        denom = zcount
        if prior:
            denom = zcount + prior * (1.0 - (1.0 - a) * zcount).clamp(min=0.0)
        return z - zsum / denom, zsum[:, -1], zcount[:, -1]

    def _level(self, x: Tensor) -> Tensor:
        """The normalised target channels of each frame: ``x [B, T, input_dim] -> [B, T, Dt]``."""
        dims = list(self.config.target_dims)
        return (x[..., dims] - self.feat_mean[dims]) / self.feat_std[dims]

    def _residual(self, y: Tensor, x: Tensor) -> Tensor:
        """``residual`` forecasts: add each frame's normalised target values to every horizon step."""
        c = self.config
        if not c.residual:
            return y
        return y + self._level(x).repeat(1, 1, c.horizon)  # flat [horizon * Dt], horizon-major like the head

    def _seasonal(self, y: Tensor, x: Tensor, season: Tensor) -> tuple[Tensor, Tensor]:
        """Seasonal residuals: step ``k`` of frame ``t`` adds the target values of frame ``t + k - P``.

        ``season [B, P, Dt]`` holds the last ``P`` frames' normalised targets (zeros before the stream began).
        Returns ``(y [B, T, horizon * Dt], new season)``.
        """
        c, steps = self.config, x.shape[1]
        buf = torch.cat((season, self._level(x)), dim=1)  # [B, P + T, Dt]; frame t sits at P + t
        naive = torch.cat([buf[:, k : k + steps] for k in range(1, c.horizon + 1)], dim=2)  # [B, T, H * Dt]
        return y + naive, buf[:, buf.shape[1] - c.seasonal_period :]

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Offline: ``x [B, T, input_dim]`` -> ``y [B, T, output_dim]``.

        Unidirectional models run :meth:`step` from the initial state; right-padding does not change the
        outputs at valid frames (causality), so ``lengths`` is only needed by bidirectional models, which
        pack the batch so the backward direction starts at each sequence's true end.
        """
        self._check_input(x)
        if not self.config.bidirectional:
            return self._step(x, self.initial_state(x.shape[0]))[0]
        return self._forward_bidirectional(x, lengths)

    def _forward_bidirectional(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        if self.pcen is not None:  # causal: padding after a sequence's end never reaches it
            z = self.pcen(x, self.initial_state(x.shape[0])["pcen_m"], self.feat_mean)[0]
        else:
            z = (x - self.feat_mean) / self.feat_std
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        if self.config.input_norm == "causal_mean":  # causal: padding after a sequence's end never reaches it
            s0 = self.initial_state(x.shape[0])
            z = self._causal_mean(z, s0["norm_sum"], s0["norm_count"])[0]
        if self.frontend is not None:
            z = self.frontend(z, self.initial_state(x.shape[0]))[0]
        packed = nn.utils.rnn.pack_padded_sequence(z, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        if self.config.pooling != "last":
            mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]).to(out.dtype)
            w = self._frame_weights(out) * mask.unsqueeze(-1)
            out = torch.cumsum(out * w, 1) / torch.cumsum(w, 1).clamp(min=1e-30)
        y = self.head(out)
        if self.config.seasonal_period:
            return self._seasonal(y, x, self.initial_state(x.shape[0])["season"])[0]
        return self._residual(y, x)

    # ---------------------------------------------------------------------------------------
    # Task helpers
    # ---------------------------------------------------------------------------------------
    @staticmethod
    def last_output(y: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Output at each sequence's last valid frame: ``y [B, T, O] -> [B, O]``."""
        if lengths is None:
            return y[:, -1]
        idx = (lengths.to(y.device).long() - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, y.shape[2])
        return y.gather(1, idx).squeeze(1)

    def forecast_view(self, y: Tensor) -> Tensor:
        """Forecast outputs ``[B, T, horizon * D]`` -> ``[B, T, horizon, D]`` (normalised scale)."""
        return y.view(*y.shape[:-1], self.config.horizon, len(self.config.target_dims))

    @torch.no_grad()
    def rollout(self, seed: Tensor, steps: int, state: State | None = None) -> tuple[Tensor, State]:
        """One-to-many: consume ``seed [B, T0, input_dim]`` then feed back ``steps`` predicted frames.

        Returns the generated frames in the input scale ``[B, steps, input_dim]`` and the final state.
        Only for task ``generate``.
        """
        if not self.config.kind.rolls_out:
            raise ConfigError(f"rollout needs task 'generate', this model's task is {self.config.task!r}")
        state = self.initial_state(seed.shape[0]) if state is None else state
        y, state = self.step(seed, state)
        frames = []
        nxt = y[:, -1:] * self.feat_std + self.feat_mean
        for _ in range(steps):
            frames.append(nxt)
            y, state = self.step(nxt, state)
            nxt = y[:, -1:] * self.feat_std + self.feat_mean
        return torch.cat(frames, dim=1) if frames else seed.new_zeros((seed.shape[0], 0, seed.shape[2])), state

    # ---------------------------------------------------------------------------------------
    # Identity
    # ---------------------------------------------------------------------------------------
    def weights_hash(self) -> str:
        """SHA-256 (hex, 16 chars) of the parameters and config: identifies a model for state snapshots."""
        h = hashlib.sha256(self.config.to_json().encode())
        for name, t in sorted(self.state_dict().items()):
            if name in ("feat_mean", "feat_std"):
                continue
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def stats_hash(self) -> str:
        """SHA-256 (hex, 16 chars) of the normalisation statistics baked into the model."""
        h = hashlib.sha256(self.feat_mean.detach().cpu().numpy().tobytes())
        h.update(self.feat_std.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


# -------------------------------------------------------------------------------------------
# Factories (keyword-only, torchaudio style)
# -------------------------------------------------------------------------------------------


def check_state_tensors(specs: list[StateSpec], state: State, batch_size: int) -> None:
    """Raise :class:`StateError` unless ``state`` has exactly the tensors of ``specs``, each
    ``[batch_size, *shape]``."""
    if set(state) != {s.name for s in specs}:
        raise StateError(f"state has tensors {sorted(state)}, this model expects {[s.name for s in specs]}")
    for s in specs:
        if tuple(state[s.name].shape) != (batch_size, *s.shape):
            raise StateError(
                f"state {s.name!r} has shape {list(state[s.name].shape)}, expected {[batch_size, *s.shape]}"
            )


def _build(stats: Any | None, **kwargs: Any) -> StreamingRNN:
    mean = std = None
    if stats is not None:
        mean, std = np.asarray(stats.mean, dtype=np.float32), np.asarray(stats.std, dtype=np.float32)
    return StreamingRNN(ModelConfig(**kwargs), feat_mean=mean, feat_std=std)


def rnn_classifier(*, input_dim: int, num_classes: int, cell: Cell = "gru", hidden_size: int = 128,
                   num_layers: int = 2, dropout: float = 0.0, bidirectional: bool = False,
                   pooling: Pooling = "last", stats: Any | None = None) -> StreamingRNN:
    """Many-to-one sequence classifier (keyword, digit, activity). ``stats``: a fitted RunningStats."""
    return _build(stats, input_dim=input_dim, output_dim=num_classes, task="classify", cell=cell,
                  hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional,
                  pooling=pooling)


def crnn_classifier(*, input_dim: int, num_classes: int, conv_channels: tuple[int, ...] = (16, 32),
                    conv_kernel: tuple[int, int] = (3, 3), conv_pool: int = 2, cell: Cell = "gru",
                    hidden_size: int = 64, num_layers: int = 1, dropout: float = 0.0, pooling: Pooling = "last",
                    input_norm: InputNorm = "none", stats: Any | None = None) -> StreamingRNN:
    """Many-to-one classifier with a causal convolutional front end (CRNN, kws_streaming's strongest streaming
    family): ``[B, T, input_dim]`` -> conv layers over (time, frequency) -> RNN -> head. Streams like the RNNs."""
    return _build(stats, input_dim=input_dim, output_dim=num_classes, task="classify", cell=cell,
                  hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, pooling=pooling,
                  input_norm=input_norm, conv_channels=tuple(conv_channels), conv_kernel=tuple(conv_kernel),
                  conv_pool=conv_pool)


def rnn_tagger(*, input_dim: int, num_classes: int, cell: Cell = "gru", hidden_size: int = 128,
               num_layers: int = 2, dropout: float = 0.0, bidirectional: bool = False,
               stats: Any | None = None) -> StreamingRNN:
    """Many-to-many per-frame tagger (e.g. voice activity)."""
    return _build(stats, input_dim=input_dim, output_dim=num_classes, task="tag", cell=cell,
                  hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, bidirectional=bidirectional)


def rnn_forecaster(*, input_dim: int, horizon: int, target_dims: tuple[int, ...] | list[int],
                   cell: Cell = "gru", hidden_size: int = 128, num_layers: int = 2, dropout: float = 0.0,
                   residual: bool = False, seasonal_period: int = 0, stats: Any | None = None) -> StreamingRNN:
    """Many-to-many seq2seq forecaster: at every frame, the next ``horizon`` values of ``target_dims``.

    ``residual``: predict the change from persistence (the current values), or with ``seasonal_period=P`` from
    seasonal-naive (the values ``P`` frames before each forecast step)."""
    target_dims = tuple(int(d) for d in target_dims)
    return _build(stats, input_dim=input_dim, output_dim=horizon * len(target_dims), task="forecast", cell=cell,
                  hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, horizon=horizon,
                  target_dims=target_dims, residual=residual, seasonal_period=seasonal_period)


def rnn_generator(*, input_dim: int, cell: Cell = "gru", hidden_size: int = 128, num_layers: int = 2,
                  dropout: float = 0.0, stats: Any | None = None) -> StreamingRNN:
    """One-to-many autoregressive model: predicts the next frame; :meth:`StreamingRNN.rollout` generates."""
    return _build(stats, input_dim=input_dim, output_dim=input_dim, task="generate", cell=cell,
                  hidden_size=hidden_size, num_layers=num_layers, dropout=dropout)


def build_model(config: ModelConfig, *, feat_mean: np.ndarray | None = None,
                feat_std: np.ndarray | None = None) -> StreamingModel:
    """A model from a stored config (checkpoints, ONNX metadata): a :class:`StreamingRNN`, or for
    ``config.ensemble > 1`` a :class:`rnnstream.models.ensemble.StreamingEnsemble` of new members."""
    if config.ensemble > 1:
        from rnnstream.models.ensemble import build_ensemble  # it builds on this module

        return build_ensemble(config, feat_mean=feat_mean, feat_std=feat_std)
    return StreamingRNN(config, feat_mean=feat_mean, feat_std=feat_std)


__all__ = [
    "Cell",
    "InputNorm",
    "ModelConfig",
    "Pooling",
    "StateSpec",
    "StreamingRNN",
    "Task",
    "crnn_classifier",
    "build_model",
    "check_state_tensors",
    "rnn_classifier",
    "rnn_forecaster",
    "rnn_generator",
    "rnn_tagger",
]

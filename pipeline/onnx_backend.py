"""The onnxruntime backend of the streaming runtime (torch-free).

::

    backend = OnnxBackend("model.onnx", provider="cpu", threads=1)   # the file describes itself
    session = StreamSession(backend, sample_rate=16000)             # rnnstream.pipeline.streaming

``rnnstream.load`` / ``rnnstream.api.load_backend`` pick this backend for ``.onnx`` files and PyTorch's for
checkpoints.

:class:`OnnxBackend` implements ``rnnstream.pipeline.streaming.Backend`` over a graph written by
:mod:`rnnstream.export.onnx_export` (signature in ``docs/onnx.md``). It is stateless: ``step(x, states)`` maps a
batch of streams' input and states to outputs and new states; sessions own the states.

Input policy (checked on every call, typed errors naming the value and what was expected):

* ``x`` must be a floating-point array. float32 is used as is; float64 and float16 are *converted*
  to float32 (as ``TorchBackend`` does); integer, bool and complex inputs are refused with
  :class:`ShapeError` naming the dtype (int16 PCM passed as samples is a bug, not a format).
* features graphs: ``x [B, T, F]`` with ``F`` the feature dimension; raw-audio graphs: ``x [B, S]``
  with ``S`` a multiple of the hop (:class:`ShapeError` otherwise).
* ``states`` must hold exactly the graph's states (``frontend_carry`` too for raw audio), each
  ``[B, *shape]`` (:class:`StateError` naming the expected shape). States are converted to float32.
* ``T == 0`` (or ``S == 0``) returns ``y [B, 0, O]`` and the states unchanged without running the graph.

Execution providers: ``provider="auto"`` picks CUDA when onnxruntime offers ``CUDAExecutionProvider``
(the ``onnxruntime-gpu`` build) and CPU otherwise; ``"cuda"`` without it raises :class:`ConfigError`.
``threads``/``inter_threads`` set onnxruntime's intra-/inter-op thread pools (default: one intra-op thread, which costs 2-4x
less CPU per small batch than onnxruntime's default on few cores; ``None``: onnxruntime's
default). ``io_binding`` (default: on for CUDA) binds inputs and outputs through an ``IOBinding`` so
onnxruntime copies host arrays once per call instead of per run; untested here (no GPU on the
development machine).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnstream.pipeline.config import audio_config_of
from rnnstream.pipeline.errors import CheckpointError, ConfigError, ShapeError, StateError
from rnnstream.pipeline.model_info import FRONTEND_STATE, ModelInfo

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_provider(provider: str) -> str:
    """``"auto"`` | ``"cpu"`` | ``"cuda"`` -> an onnxruntime provider name (:class:`ConfigError` if unavailable)."""
    avail = available_providers()
    if provider == "auto":
        return PROVIDERS["cuda"] if PROVIDERS["cuda"] in avail else PROVIDERS["cpu"]
    if provider not in PROVIDERS:
        raise ConfigError(f"provider must be 'auto', 'cpu' or 'cuda', got {provider!r}")
    name = PROVIDERS[provider]
    if name not in avail:
        raise ConfigError(
            f"provider {provider!r} asked for, but this onnxruntime offers only {avail}; "
            "install onnxruntime-gpu (pip install 'rnnstream[gpu]') with a matching CUDA, or use provider='cpu'"
        )
    return name


class OnnxBackend:
    """``rnnstream.pipeline.streaming.Backend`` over an rnnstream ``.onnx`` graph, run by onnxruntime.

    ``info`` is rebuilt from the file's metadata (``ModelInfo.from_metadata``). ``step(x, states)``:
    ``x [B, T, F]`` features (or ``[B, S]`` audio for a raw-audio graph), ``states {name: [B, *shape]}``
    -> ``(y [B, T, output_dim], new_states)``, all float32. See the module docstring for the input policy.

    Raises (constructor): :class:`CheckpointError` for a missing, truncated or corrupt file, a file
    without rnnstream metadata, or a graph that disagrees with its metadata, checked on load: input and
    output names, the input kind, every static dim the graph declares (feature dimension F, output
    dimension, each state's shape, ``frontend_carry`` = win - hop), then one probe step of zeros (raw
    audio: two hops must give two frames; every output state must have the metadata's shape), so an
    edited sample rate, hop/window or state shape is refused with the mismatch named;
    :class:`ConfigError` for an unavailable provider.
    """

    def __init__(self, path: str | os.PathLike[str], *, provider: str = "auto", threads: int | None = 1,
                 inter_threads: int | None = None, io_binding: bool | None = None):
        import onnxruntime as ort

        self.path = os.fspath(path)
        self._options = {"provider": provider, "threads": threads, "inter_threads": inter_threads,
                         "io_binding": io_binding}
        if not os.path.isfile(self.path):
            raise CheckpointError(f"ONNX model {self.path!r} does not exist")
        self.provider = resolve_provider(provider)
        opts = ort.SessionOptions()
        if threads is not None:
            if int(threads) < 1:
                raise ConfigError(f"threads must be >= 1 (or None for onnxruntime's default), got {threads}")
            opts.intra_op_num_threads = int(threads)
        if inter_threads is not None:
            if int(inter_threads) < 1:
                raise ConfigError(f"inter_threads must be >= 1 (or None), got {inter_threads}")
            opts.inter_op_num_threads = int(inter_threads)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [self.provider] + ([PROVIDERS["cpu"]] if self.provider != PROVIDERS["cpu"] else [])
        try:
            self.session = ort.InferenceSession(self.path, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises InvalidProtobuf, Fail, InvalidGraph, RuntimeException...
            raise CheckpointError(
                f"ONNX model {self.path!r} is truncated, corrupt or not an ONNX graph: {type(exc).__name__}: "
                f"{str(exc).strip()[:300]}"
            ) from None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.info: ModelInfo = ModelInfo.from_metadata(meta)
        except StateError as exc:
            raise CheckpointError(f"ONNX model {self.path!r} has no rnnstream metadata: {exc}") from None
        except (ValueError, KeyError, TypeError) as exc:  # ConfigError is a ValueError
            raise CheckpointError(f"ONNX model {self.path!r} has unreadable rnnstream metadata: {exc}") from None
        self.quantization = meta.get("rnnstream.quantization", "none")
        self.io_binding = (self.provider == PROVIDERS["cuda"]) if io_binding is None else bool(io_binding)

        self._in = self.info.graph_inputs()
        self._out = self.info.graph_outputs()
        self._states = self.info.graph_states()
        self._check_graph()
        cfg = self.info.feature_config
        self._raw = self.info.input_kind == "audio"
        # samples per model frame (hop x stack) of a raw-audio graph
        self._hop = cfg.audio.step_length if self._raw else 1  # type: ignore[union-attr]
        self._dim = cfg.dim
        self._odim = self.info.model_config.output_dim
        self._shapes = self._state_shapes()

    def __getstate__(self) -> dict[str, Any]:
        """Pickles as its path and options (Beam ships DoFns pickled); the session is rebuilt on load."""
        return {"path": self.path, "options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], **state["options"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return (f"OnnxBackend({self.path!r}, provider={self.provider!r}, input_kind={self.info.input_kind!r}, "
                f"quantization={self.quantization!r})")

    def _check_graph(self) -> None:
        """The graph against its metadata: names and input kind, declared static dims, then a probe step."""
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        kinds = {"audio", "features"}
        if got_in and got_in[0] != self._in[0] and {got_in[0], self._in[0]} <= kinds:
            raise CheckpointError(
                f"ONNX model {self.path!r}: metadata says input kind {self.info.input_kind!r} but the graph takes "
                f"{'raw audio' if got_in[0] == 'audio' else 'features'} (its first input is {got_in[0]!r})"
            )
        if got_in != self._in or got_out != self._out:
            raise CheckpointError(
                f"ONNX model {self.path!r}: graph inputs {got_in} / outputs {got_out} do not match its metadata, "
                f"which expects inputs {self._in} / outputs {self._out}"
            )
        self._check_declared_shapes()
        self._probe()

    def _expected_dims(self) -> dict[str, tuple[list[int], str]]:
        """Graph input/output name -> (the metadata's static dims after the batch axis, how to name it).

        The time/samples axis of ``x`` and ``output`` is dynamic and left out (so are the batch axes).
        """
        cfg, specs = self.info.feature_config, self.info.state_specs
        out: dict[str, tuple[list[int], str]] = {"output": ([self.info.model_config.output_dim], "output dimension")}
        if self.info.input_kind == "audio":
            audio = audio_config_of(cfg, f"ONNX model {self.path!r} (raw-audio input)")
            out["audio"] = ([], "audio input")
            carry = ([audio.context], f"'{FRONTEND_STATE}' (win {audio.win_length} - hop {audio.hop_length})")
            out[f"{FRONTEND_STATE}_in"] = out[f"{FRONTEND_STATE}_out"] = carry
        else:
            out["features"] = ([cfg.dim], "feature dimension F")
        for spec in specs:
            out[f"{spec.name}_in"] = out[f"{spec.name}_out"] = (list(spec.shape), f"state {spec.name!r}")
        return out

    def _check_declared_shapes(self) -> None:
        """Static dims the graph declares must equal the metadata's (symbolic dims are left to the probe)."""
        expected = self._expected_dims()
        for arg in [*self.session.get_inputs(), *self.session.get_outputs()]:
            want, what = expected[arg.name]
            dynamic = 2 if arg.name in ("features", "output", "audio") else 1  # batch (and time / samples)
            dims = list(arg.shape)
            got = dims[dynamic:]
            if len(dims) != dynamic + len(want) or any(isinstance(g, int) and g != w for g, w in zip(got, want)):
                raise CheckpointError(
                    f"ONNX model {self.path!r}: {what} is {_dims_text(got, what)} in the graph but "
                    f"{_dims_text(want, what)} in the metadata"
                )

    def _probe(self) -> None:
        """One tiny step of zeros: frame count (raw audio: samples // (stack * hop)), output and state shapes."""
        samples = 2 * self._hop_of_metadata() if self.info.input_kind == "audio" else 0
        x = np.zeros((1, samples), np.float32) if samples else np.zeros((1, 1, self.info.feature_config.dim), np.float32)
        feeds: dict[str, np.ndarray] = {self._in[0]: x}
        shapes = self._state_shapes()
        feeds.update({f"{n}_in": np.zeros((1, *shapes[n]), np.float32) for n in self._states})
        try:
            res = self.session.run(self._out, feeds)
        except _ort_errors() as exc:
            raise CheckpointError(
                f"ONNX model {self.path!r}: a probe step of zeros shaped as its metadata says "
                f"({ {k: list(v.shape) for k, v in feeds.items()} }) fails: {type(exc).__name__}: {str(exc).strip()[:300]}"
            ) from None
        frames, want_frames = res[0].shape[1], samples // self._hop_of_metadata() if samples else 1
        if samples and frames != want_frames:
            raise CheckpointError(
                f"ONNX model {self.path!r}: metadata says {self._hop_of_metadata()} samples per frame (hop x stack) "
                f"but the graph produced {frames} frame(s) from {samples} samples (expected {want_frames})"
            )
        self._check_probe_outputs(res, shapes)

    def _check_probe_outputs(self, res: list[np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
        odim = self.info.model_config.output_dim
        if res[0].ndim != 3 or res[0].shape[2] != odim:
            raise CheckpointError(
                f"ONNX model {self.path!r}: output is {list(res[0].shape)} from a probe step, but the metadata "
                f"says [batch, time, {odim}]"
            )
        for name, arr in zip(self._states, res[1:]):
            if tuple(arr.shape) != (1, *shapes[name]):
                raise CheckpointError(
                    f"ONNX model {self.path!r}: state {name!r} comes out of a probe step as {list(arr.shape[1:])} "
                    f"but is {list(shapes[name])} in the metadata"
                )

    def _hop_of_metadata(self) -> int:
        """Samples per model frame by the metadata: ``stack * hop``."""
        return int(self.info.feature_config.audio.step_length)  # type: ignore[union-attr]

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{state: shape without batch}`` from the metadata, ``frontend_carry`` first for raw audio."""
        shapes = {s.name: tuple(s.shape) for s in self.info.state_specs}
        if self.info.input_kind == "audio":
            shapes = {FRONTEND_STATE: (self.info.feature_config.audio.context,), **shapes}  # type: ignore[union-attr]
        return shapes

    # -- Backend ---------------------------------------------------------------------------------
    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One streaming step for a batch: ``x [B, T, F]`` or audio ``[B, S]``; states ``{name: [B, *shape]}``.

        Returns ``(y [B, T, output_dim], {name: [B, *shape]})`` (``frontend_carry`` included for raw audio).
        """
        x = self._check_x(x)
        batch = x.shape[0]
        feeds = {self._in[0]: x}
        checked = self._check_states(states, batch)
        for name in self._states:
            feeds[f"{name}_in"] = checked[name]
        if x.shape[1] == 0:
            return np.zeros((batch, 0, self._odim), np.float32), {k: v.copy() for k, v in checked.items()}
        if self.io_binding:
            res = self._run_bound(feeds)
        else:
            res = self.session.run(self._out, feeds)
        return res[0], dict(zip(self._states, res[1:]))

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, arr)
        for name in self._out:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _check_x(self, x: Any) -> np.ndarray:
        arr = np.asarray(x)
        if arr.dtype != np.float32:
            if arr.dtype.kind != "f":
                raise ShapeError(
                    f"input has dtype {arr.dtype}; expected float32 (float64/float16 are converted) "
                    + ("audio samples in [-1, 1]" if self._raw else "features")
                )
            arr = arr.astype(np.float32)
        if self._raw:
            if arr.ndim != 2:
                raise ShapeError(f"a raw-audio graph takes audio [batch, samples], got shape {list(arr.shape)}")
            if arr.shape[1] % self._hop:
                raise ShapeError(
                    f"a raw-audio graph takes a multiple of the hop x stack ({self._hop}) samples, got {arr.shape[1]}; "
                    "StreamSession holds the remainder"
                )
        elif arr.ndim != 3 or arr.shape[2] != self._dim:
            raise ShapeError(f"expected features [batch, time, {self._dim}], got shape {list(arr.shape)}")
        if arr.shape[0] < 1:
            raise ShapeError(f"expected a batch of at least one stream, got shape {list(arr.shape)}")
        return np.ascontiguousarray(arr)

    def _check_states(self, states: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        if not isinstance(states, dict) or set(states) != set(self._states):
            got = sorted(states) if isinstance(states, dict) else type(states).__name__
            raise StateError(f"states {got} do not match this model's {self._states}")
        out = {}
        for name in self._states:
            arr = np.asarray(states[name])
            want = (batch, *self._shapes[name])
            if arr.shape != want:
                raise StateError(f"state {name!r} has shape {list(arr.shape)}, expected {list(want)}")
            if arr.dtype != np.float32:
                if arr.dtype.kind not in "fiu":
                    raise StateError(f"state {name!r} has dtype {arr.dtype}, expected float32")
                arr = arr.astype(np.float32)
            out[name] = np.ascontiguousarray(arr)
        return out


def _ort_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ``InferenceSession.run`` raises (onnxruntime's own derive from ``Exception`` directly)."""
    import onnxruntime.capi.onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException", "InvalidProtobuf",
             "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    found = tuple(c for c in (getattr(state, n, None) for n in names) if isinstance(c, type))
    return (*found, RuntimeError, ValueError)


def _dims_text(dims: Sequence[Any], what: str) -> str:
    """``[2, 64]`` for states and carries; the bare number for a single feature/output dimension."""
    if what.startswith(("feature", "output")) and len(dims) == 1:
        return str(dims[0])
    return "[" + ", ".join(str(d) for d in dims) + "]"


__all__: Sequence[str] = ["OnnxBackend", "PROVIDERS", "available_providers", "resolve_provider"]

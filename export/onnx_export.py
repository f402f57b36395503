"""Export a :class:`rnnstream.models.rnn.StreamingRNN` to a self-describing streaming ONNX graph.

The graph is one *streaming step* (see ``docs/onnx.md`` for the full signature)::

    features graph:  features [B, T, F], <state>_in ...            -> output [B, T, O], <state>_out ...
    raw-audio graph: audio [B, S], frontend_carry_in [B, win - hop],
                     <state>_in ...                                 -> output [B, T, O], frontend_carry_out,
                                                                       <state>_out ...

``B``, ``T`` and ``S`` are dynamic (``S`` a multiple of the hop, ``T = S // hop``); the state tensors
are batch-first with the per-stream shapes of ``ModelInfo.state_specs``, in that order. The file's
``metadata_props`` hold ``ModelInfo.to_metadata()`` (feature config, labels, task, state names and
shapes, weights and statistics hashes, version), so :class:`rnnstream.pipeline.onnx_backend.OnnxBackend` needs nothing
but the ``.onnx`` file.

Export verifies itself before the file appears at ``out``: ``onnx.checker.check_model``, then
onnxruntime against PyTorch on random inputs (several batch sizes and lengths, random states) and on
one stream fed in uneven chunks; any difference beyond the tolerance raises :class:`ExportError`
naming the difference and the tolerance. ``quantize="int8"`` then applies onnxruntime's dynamic
quantisation and measures the accuracy change against the float graph.

Command line::

    rnnstream export --checkpoint CKPT --out MODEL.onnx [--raw-audio] [--quantize int8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rnnstream.export.quantize import QuantizationReport, compare_quantized, quantize_int8
from rnnstream.models.ensemble import StreamingEnsemble, StreamingModel
from rnnstream.models.rnn import StreamingRNN
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ConfigError, ExportError, RnnstreamError
from rnnstream.pipeline.model_config import base_state_name
from rnnstream.pipeline.model_info import FRONTEND_STATE, ModelInfo

#: Relative tolerance of the export self-check: ``max|onnx - torch| <= TOLERANCE * max(1, max|torch|)``.
TOLERANCE = 1e-4
#: ONNX opset of the exported graphs (GRU/LSTM/RNN ops; the raw-audio front end is Slice/Concat/MatMul/Log).
OPSET = 17
#: Extra metadata keys written besides ``ModelInfo.to_metadata()``.
META_QUANTIZATION = "rnnstream.quantization"
META_GRAPH = "rnnstream.graph"
GRAPH_KIND = "step/1"


# ----------------------------------------------------------------------------------------------
# Graph names
# ----------------------------------------------------------------------------------------------


class StepGraph(torch.nn.Module):
    """The module that is traced: positional tensors in, positional tensors out (graph order above).

    ``forward(x, *states)``: ``x`` is ``features [B, T, F]`` or ``audio [B, S]``; ``states`` are
    ``(frontend_carry [B, win - hop],)`` for raw audio followed by the model states in
    ``model.state_spec()`` order. Returns ``(output [B, T, O], *new_states)`` in the same order.
    """

    def __init__(self, model: StreamingModel, frontend: torch.nn.Module | None = None):
        super().__init__()
        self.model = model
        self.frontend = frontend
        self.names = [s.name for s in model.state_spec()]

    def forward(self, x: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head: list[torch.Tensor] = []
        if self.frontend is not None:
            x, carry = self.frontend(x, states[0])
            head.append(carry)
            states = states[1:]
        y, new = self.model.step(x, dict(zip(self.names, states)))
        return (y, *head, *[new[n] for n in self.names])


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What :func:`export_with_report` wrote and what its self-check measured."""

    path: str
    info: ModelInfo
    inputs: list[tuple[str, list[str | int]]]
    outputs: list[tuple[str, list[str | int]]]
    checks: list[tuple[str, float]] = field(default_factory=list)  # (what, max relative difference)
    tolerance: float = TOLERANCE
    quantization: QuantizationReport | None = None

    def text(self) -> str:
        c = self.info.model_config
        lines = [
            f"exported {self.path}",
            f"  model   {c.cell} x{c.num_layers} hidden {c.hidden_size}, task {c.task}"
            + (f", an ensemble of {c.ensemble}" if c.ensemble > 1 else "")
            + (f" (pooling {c.pooling})" if c.kind.per_sequence else "")
            + f", input {self.info.input_kind}, weights {self.info.weights_hash}, stats {self.info.stats_hash}",
            "  inputs  " + ", ".join(f"{n} {s}" for n, s in self.inputs),
            "  outputs " + ", ".join(f"{n} {s}" for n, s in self.outputs),
            f"  self-check vs PyTorch (tolerance {self.tolerance:g}, relative to max(1, |torch|)):",
        ]
        lines += [f"    {what:<44} max diff {d:.2e}" for what, d in self.checks]
        if self.quantization is not None:
            lines += ["  " + line for line in self.quantization.lines()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def export_onnx(
    model_or_ckpt: StreamingRNN | str | os.PathLike[str],
    out: str | os.PathLike[str],
    feature_config: FeatureConfig | None = None,
    labels: Sequence[str] | None = None,
    raw_audio: bool = False,
    quantize: str | None = None,
) -> str:
    """Export, verify and write the streaming graph; returns ``out`` as a string.

    ``model_or_ckpt``: a :class:`StreamingRNN` (then ``feature_config`` is required) or a checkpoint
    path (its feature config and labels are used unless given). See :func:`export_with_report`.
    """
    return export_with_report(model_or_ckpt, out, feature_config, labels, raw_audio=raw_audio, quantize=quantize).path


def export_with_report(
    model_or_ckpt: StreamingRNN | str | os.PathLike[str],
    out: str | os.PathLike[str],
    feature_config: FeatureConfig | None = None,
    labels: Sequence[str] | None = None,
    *,
    raw_audio: bool = False,
    quantize: str | None = None,
    tolerance: float = TOLERANCE,
    seed: int = 0,
) -> ExportReport:
    """:func:`export_onnx`, returning the :class:`ExportReport` the command prints.

    Raises:
        StateError: a bidirectional model (offline only, cannot stream).
        ConfigError: no feature config for a bare model, ``raw_audio`` with a sensor config, an unknown
            ``quantize`` value.
        ShapeError: the model's input dimension differs from the feature config's.
        ExportError: onnxruntime and PyTorch differ beyond ``tolerance`` (nothing is written to ``out``).
    """
    model, feature_config, labels = _resolve(model_or_ckpt, feature_config, labels)
    model = _check_exportable(model, feature_config, labels, raw_audio=raw_audio, quantize=quantize)
    frontend = None
    if raw_audio:
        from rnnstream.models.frontend import AudioFrontend

        frontend = AudioFrontend(feature_config).eval()
    info = ModelInfo.from_model(model, feature_config, labels, input_kind="audio" if raw_audio else "features")
    graph = StepGraph(model, frontend).eval()

    out = os.fspath(out)
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".rnnstream-export-") as tmp:
        float_path = os.path.join(tmp, "float.onnx")
        _trace(graph, info, float_path)
        meta = {**info.to_metadata(), META_QUANTIZATION: "none", META_GRAPH: GRAPH_KIND}
        _set_metadata(float_path, meta, info)
        import onnx

        onnx.checker.check_model(float_path, full_check=True)
        checks = _verify(graph, info, float_path, tolerance, seed)
        final_path, qreport = float_path, None
        if quantize == "int8":
            final_path = os.path.join(tmp, "int8.onnx")
            quantize_int8(float_path, final_path)
            _set_metadata(final_path, {**meta, META_QUANTIZATION: "int8"}, info)
            onnx.checker.check_model(final_path)
            qreport = compare_quantized(float_path, final_path, info, seed=seed)
        os.replace(final_path, out)
    sess_io = _graph_io(out)
    return ExportReport(path=out, info=info, inputs=sess_io[0], outputs=sess_io[1], checks=checks,
                        tolerance=tolerance, quantization=qreport)


def _check_exportable(model: StreamingModel, feature_config: FeatureConfig, labels: list[str], *, raw_audio: bool,
                      quantize: str | None) -> StreamingModel:
    """The model on the CPU in eval mode, once it is known to export as asked (the errors of
    :func:`export_with_report`, before any tracing)."""
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be None or 'int8', got {quantize!r}")
    if model.config.bidirectional:
        model.step(torch.zeros(1, 0, model.config.input_dim), {})  # raises the explanatory StateError
    if raw_audio and feature_config.kind != "audio":
        raise ConfigError(f"raw_audio needs an audio feature config; this model's features are {feature_config.kind!r}")
    from rnnstream.models.backend import TorchBackend

    model = model.cpu().eval()
    TorchBackend(model, feature_config, labels)  # checks input_dim against the feature config (ShapeError)
    return model


def _resolve(model_or_ckpt: Any, feature_config: FeatureConfig | None,
             labels: Sequence[str] | None) -> tuple[StreamingModel, FeatureConfig, list[str]]:
    if isinstance(model_or_ckpt, (StreamingRNN, StreamingEnsemble)):
        if feature_config is None:
            raise ConfigError("export_onnx(model, ...) needs the model's feature_config (or pass a checkpoint path)")
        return model_or_ckpt, feature_config, list(labels or [])
    if isinstance(model_or_ckpt, (str, os.PathLike)):
        from rnnstream.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(os.fspath(model_or_ckpt))
        return ckpt.model, feature_config or ckpt.feature_config, list(ckpt.labels if labels is None else labels)
    raise ConfigError(f"export_onnx takes a StreamingRNN, a StreamingEnsemble or a checkpoint path, got "
                      f"{type(model_or_ckpt).__name__}")


def example_inputs(info: ModelInfo, batch: int, frames: int, rng: np.random.Generator,
                   random_states: bool = True) -> list[np.ndarray]:
    """Plausible graph inputs in graph order: features ``mean + std * N(0, 1)`` (the model's statistics
    are not in ``info``, so standard normal around zero scaled by 3) or noise audio, and random states
    (``pool_count`` a positive frame count; ``pcen_m``, a smoothed energy less its prior, non-negative, so the
    level stays above the prior rather than at the clamp)."""
    if info.input_kind == "audio":
        hop = info.feature_config.audio.step_length  # type: ignore[union-attr]
        ctx = info.feature_config.audio.context  # type: ignore[union-attr]
        x = (0.1 * rng.standard_normal((batch, frames * hop))).astype(np.float32)
        carry = 0.1 * rng.standard_normal((batch, ctx)) if random_states else np.zeros((batch, ctx))
        head = [x, carry.astype(np.float32)]
    else:
        head = [(3.0 * rng.standard_normal((batch, frames, info.feature_config.dim))).astype(np.float32)]
    states = []
    for s in info.state_specs:
        if not random_states:
            states.append(np.zeros((batch, *s.shape), np.float32))
        elif base_state_name(s.name) == "pool_count":
            states.append(rng.integers(1, 20, (batch, *s.shape)).astype(np.float32))
        elif base_state_name(s.name) == "pcen_m":
            states.append(np.abs(0.5 * rng.standard_normal((batch, *s.shape))).astype(np.float32))
        else:
            states.append((0.5 * rng.standard_normal((batch, *s.shape))).astype(np.float32))
    return head + states


def _trace(graph: StepGraph, info: ModelInfo, path: str) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``), whose dynamic axes hold
    for batch 1 as well; the example has batch 2 and several frames anyway."""
    example = [torch.from_numpy(a) for a in example_inputs(info, 2, 3, np.random.default_rng(0))]
    ins, outs = info.graph_inputs(), info.graph_outputs()
    time_axis = {0: "batch", 1: "samples"} if info.input_kind == "audio" else {0: "batch", 1: "time"}
    dynamic = {ins[0]: time_axis, outs[0]: {0: "batch", 1: "time"}}
    dynamic.update({n: {0: "batch"} for n in ins[1:] + outs[1:]})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python bools in shape checks, RNN batch_first notes
        try:
            torch.onnx.export(
                graph,
                tuple(example),
                path,
                input_names=ins,
                output_names=outs,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        except RnnstreamError:
            raise
        except (RuntimeError, TypeError, ValueError) as exc:  # torch.onnx errors derive from RuntimeError
            raise ExportError(f"torch.onnx.export failed for this model: {type(exc).__name__}: {exc}") from None


def _set_metadata(path: str, meta: dict[str, str], info: ModelInfo) -> None:
    import onnx

    m = onnx.load(path)
    # Declare the documented output shapes (the tracer names some static dims symbolically).
    o = info.model_config.output_dim
    shapes = {"output": ["batch", "time", o]}
    if info.input_kind == "audio":
        shapes[f"{FRONTEND_STATE}_out"] = ["batch", info.feature_config.audio.context]  # type: ignore[union-attr]
    shapes.update({f"{s.name}_out": ["batch", *s.shape] for s in info.state_specs})
    for v in m.graph.output:
        if v.name in shapes:
            dims = v.type.tensor_type.shape.dim
            for d, want in zip(dims, shapes[v.name]):
                if isinstance(want, str):
                    d.dim_param = want
                else:
                    d.dim_value = want
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, meta)
    m.producer_name = "rnnstream"
    m.doc_string = (
        f"rnnstream streaming step ({info.input_kind}). Inputs: {', '.join(info.graph_inputs())}; "
        f"outputs: {', '.join(info.graph_outputs())}. States are batch-first; see rnnstream.states metadata."
    )
    onnx.save(m, path)


def _graph_io(path: str) -> tuple[list[tuple[str, list[str | int]]], list[tuple[str, list[str | int]]]]:
    import onnx

    m = onnx.load(path, load_external_data=False)

    def dims(v: Any) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return [(v.name, dims(v)) for v in m.graph.input], [(v.name, dims(v)) for v in m.graph.output]


def _ort_session(path: str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def _rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    if a.shape != ref.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def _verify(graph: StepGraph, info: ModelInfo, path: str, tol: float, seed: int) -> list[tuple[str, float]]:
    """onnxruntime vs PyTorch: random inputs and states at several shapes, then one chunked stream."""
    sess = _ort_session(path)
    ins, outs = info.graph_inputs(), info.graph_outputs()
    rng = np.random.default_rng(seed)
    checks: list[tuple[str, float]] = []

    def fail(what: str, d: float) -> None:
        raise ExportError(
            f"exported graph differs from PyTorch on {what}: max |onnx - torch| = {d:.3g} "
            f"(relative to max(1, |torch|)) > tolerance {tol:g}; nothing was written"
        )

    for batch, frames in ((1, 1), (2, 7), (3, 23)):
        args = example_inputs(info, batch, frames, rng)
        got = sess.run(outs, dict(zip(ins, args)))
        with torch.no_grad():
            want = [t.numpy() for t in graph(*[torch.from_numpy(a) for a in args])]
        d = max(_rel_diff(g, w) for g, w in zip(got, want))
        what = f"random inputs and states, batch {batch}, {frames} frames"
        checks.append((what, d))
        if not d <= tol:
            fail(what, d)

    # One stream, uneven chunks, states carried by onnxruntime, against PyTorch offline (model.forward).
    chunks = [1, 5, 2, 13, 9]
    total = sum(chunks)
    full = example_inputs(info, 1, total, rng, random_states=False)
    if info.input_kind == "audio":
        from rnnstream.pipeline.features import AudioFeaturizer

        audio = full[0]
        feats = AudioFeaturizer(info.feature_config).featurize(audio[0])[None]
        hop = info.feature_config.audio.step_length  # type: ignore[union-attr]
        pieces = np.split(audio, np.cumsum(chunks)[:-1] * hop, axis=1)
    else:
        feats = full[0]
        pieces = np.split(feats, np.cumsum(chunks)[:-1], axis=1)
    with torch.no_grad():
        want_y = graph.model(torch.from_numpy(feats)).numpy()
    states = full[1:]
    ys = []
    for piece in pieces:
        res = sess.run(outs, dict(zip(ins, [piece, *states])))
        ys.append(res[0])
        states = res[1:]
    got_y = np.concatenate(ys, axis=1)
    d = _rel_diff(got_y, want_y)
    what = f"a stream in chunks of {chunks} frames vs PyTorch offline"
    if info.input_kind == "audio":
        what = f"a raw-audio stream in chunks of {chunks} hops vs Python featurizer + model"
    checks.append((what, d))
    if not d <= tol:
        fail(what, d)
    return checks


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``rnnstream export`` parser (declared in the light :mod:`rnnstream.export.cli`)."""
    from rnnstream.export.cli import build_export_parser

    return build_export_parser()


def run_from_args(args: argparse.Namespace) -> int:
    """Export as the parsed command line asks and print the report (errors propagate to the CLI's handler)."""
    rep = export_with_report(args.checkpoint, args.out, raw_audio=args.raw_audio, quantize=args.quantize,
                             tolerance=args.tolerance)
    if args.json:
        q = rep.quantization
        print(json.dumps({
            "path": rep.path,
            "inputs": rep.inputs,
            "outputs": rep.outputs,
            "checks": [{"what": w, "max_diff": d} for w, d in rep.checks],
            "tolerance": rep.tolerance,
            "quantization": None if q is None else q.__dict__,
        }))
    else:
        print(rep.text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """``rnnstream export``: parsing, logging and exit status are :data:`rnnstream.export.cli.EXPORT`'s."""
    from rnnstream.export.cli import EXPORT

    return EXPORT.main(argv)


__all__ = [
    "ExportReport",
    "StepGraph",
    "TOLERANCE",
    "export_onnx",
    "export_with_report",
    "main",
]

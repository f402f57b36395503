"""int8 export: dynamic quantisation where onnxruntime has int8 kernels, int8 weights for GRU and RNN cells.

``quantize_int8(src, dst)`` applies onnxruntime's ``quantize_dynamic`` (int8 ``MatMulInteger`` for the heads and
``DynamicQuantizeLSTM`` for LSTMs). onnxruntime has no int8 kernel for the ONNX ``GRU`` and ``RNN`` ops, so their
input and recurrent weights (``W``, ``R``) are stored as int8 with one symmetric scale per gate row and a
``DequantizeLinear`` in front of the op (weight-only quantisation): the file holds int8 weights, the cell computes in
float from the dequantised values, so the accuracy change is that of 8-bit weights. :func:`compare_quantized`
measures it against the float graph.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnstream.pipeline.model_info import ModelInfo

#: RNN ops whose weights are stored as int8 (no int8 kernel in onnxruntime).
_WEIGHT_ONLY_OPS = ("GRU", "RNN")


@dataclass
class QuantizationReport:
    """Accuracy of the int8 graph against the float graph on the same inputs."""

    frames: int
    max_score_diff: float  # max |p_int8 - p_float| over softmax scores (classify/tag) or raw outputs
    mean_score_diff: float
    agreement: float | None  # fraction of frames whose arg-max label agrees (classify/tag), else None
    float_bytes: int
    int8_bytes: int
    inputs: str  # what the comparison ran on
    quantized_ops: dict[str, int] = field(default_factory=dict)  # integer op types in the int8 graph
    float_rnn_ops: list[str] = field(default_factory=list)  # RNN ops left in float (no int8 kernel)

    def lines(self) -> list[str]:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(self.quantized_ops.items())) or "none"
        out = [
            f"int8 vs float on {self.frames} frames of {self.inputs}:",
            f"  quantised ops         {ops}"
            + (f"; left in float: {', '.join(self.float_rnn_ops)}" if self.float_rnn_ops else ""),
            f"  max score difference  {self.max_score_diff:.3g} (mean {self.mean_score_diff:.3g})",
        ]
        if self.agreement is not None:
            out.append(f"  arg-max agreement     {100 * self.agreement:.2f}%")
        out.append(f"  size                  {self.float_bytes / 1024:.1f} KiB -> {self.int8_bytes / 1024:.1f} KiB")
        return out




def quantize_int8(src: str, dst: str) -> None:
    """``src`` (float ONNX) -> ``dst`` with int8 weights (see the module docstring)."""
    import onnx

    _quantize_dynamic(src, dst)
    model = onnx.load(dst)
    quantize_rnn_weights(model)
    onnx.save(model, dst)


def quantize_rnn_weights(model: Any) -> int:
    """Replace the float ``W``/``R`` initializers of every GRU/RNN node by int8 + ``DequantizeLinear``.

    Scales are symmetric, one per gate row (axis 1 of ``[directions, gates * hidden, size]``), zero point 0.
    Returns the number of weight tensors quantised.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    count, new_nodes = 0, []
    for node in graph.node:
        if node.op_type not in _WEIGHT_ONLY_OPS:
            continue
        for slot in (1, 2):
            name = node.input[slot]
            if name not in inits:
                continue
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            scale = np.abs(w).max(axis=(0, 2)) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            q = np.clip(np.round(w / scale[None, :, None]), -127, 127).astype(np.int8)
            graph.initializer.remove(inits[name])
            graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                      numpy_helper.from_array(scale, f"{name}_scale"),
                                      numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{name}_zero")])
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                                              [f"{name}_dq"], axis=1, name=f"{name}_dequantize"))
            node.input[slot] = f"{name}_dq"
            count += 1
    for i, n in enumerate(new_nodes):  # dequantize first: nodes stay topologically sorted
        graph.node.insert(i, n)
    return count


def _quantize_dynamic(src: str, dst: str) -> None:
    """Dynamic int8 quantisation of the weights (``onnxruntime.quantization.quantize_dynamic``).

    The raw-audio front end (DFT conv and mel matmul) is excluded: dynamic quantisation of power spectra
    (dynamic range ~1e8) to 8 bits would wipe out the quiet bands before the log.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = [n.name for n in onnx.load(src).graph.node if n.name.startswith("/frontend/")]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint at WARNING on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    finally:
        root.setLevel(level)


def compare_quantized(float_path: str, int8_path: str, info: ModelInfo, *, streams: int = 8, frames: int = 100,
                      seed: int = 0, inputs: list[np.ndarray] | None = None) -> QuantizationReport:
    """Run both graphs on the same whole sequences (zero initial states) and compare their scores.

    ``inputs``: graph inputs ``[x]`` (features ``[N, T, F]`` or audio ``[N, S]``); random by default
    (features ``3 * N(0, 1)``, audio ``0.1 * N(0, 1)``). Scores are softmax probabilities for
    classify/tag models and raw outputs otherwise.
    """
    from rnnstream.export.onnx_export import _ort_session, example_inputs

    sf, sq = _ort_session(float_path), _ort_session(int8_path)
    ins, outs = info.graph_inputs(), info.graph_outputs()
    rng = np.random.default_rng(seed + 1)
    args = example_inputs(info, streams, frames, rng, random_states=False)
    if inputs is not None:
        args = [inputs[0].astype(np.float32), *[np.zeros((inputs[0].shape[0], *a.shape[1:]), np.float32)
                                                for a in args[1:]]]
    yf = sf.run(outs[:1], dict(zip(ins, args)))[0]
    yq = sq.run(outs[:1], dict(zip(ins, args)))[0]
    classify = info.model_config.outputs_logits
    if classify:
        from rnnstream.pipeline.streaming import softmax

        pf, pq = softmax(yf.astype(np.float64)), softmax(yq.astype(np.float64))
    else:
        pf, pq = yf.astype(np.float64), yq.astype(np.float64)
    diff = np.abs(pf - pq)
    agreement = float(np.mean(pf.argmax(-1) == pq.argmax(-1))) if classify else None
    import onnx

    qops: dict[str, int] = {}
    float_rnn = []
    graph = onnx.load(int8_path).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    for node in graph.node:
        if "Integer" in node.op_type or (node.op_type.startswith("DynamicQuantize")
                                          and node.op_type != "DynamicQuantizeLinear"):
            qops[node.op_type] = qops.get(node.op_type, 0) + 1
        elif node.op_type in _WEIGHT_ONLY_OPS and set(node.input[1:3]) <= dequantized:
            key = f"{node.op_type} (int8 weights)"
            qops[key] = qops.get(key, 0) + 1
        elif node.op_type in ("GRU", "RNN", "LSTM"):
            float_rnn.append(node.op_type)
    what = "given inputs" if inputs is not None else (
        "random noise audio" if info.input_kind == "audio" else "random features 3*N(0,1)")
    return QuantizationReport(
        frames=int(yf.shape[0] * yf.shape[1]),
        max_score_diff=float(diff.max()) if diff.size else 0.0,
        mean_score_diff=float(diff.mean()) if diff.size else 0.0,
        agreement=agreement,
        float_bytes=os.path.getsize(float_path),
        int8_bytes=os.path.getsize(int8_path),
        inputs=what,
        quantized_ops=qops,
        float_rnn_ops=float_rnn,
    )


__all__ = ["QuantizationReport", "compare_quantized", "quantize_int8", "quantize_rnn_weights"]

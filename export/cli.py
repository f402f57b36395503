"""``rnnstream export`` and ``rnnstream stream``: the light command-line side.

The parsers live here so that ``--help`` and usage errors are answered before torch, onnx or onnxruntime
are imported; the work is :func:`rnnstream.export.onnx_export.run_from_args` and
:func:`rnnstream.export.stream_cli.run_from_args`.
"""

from __future__ import annotations

import argparse

from rnnstream._cli_support import Command, new_parser

#: Relative tolerance of the export self-check; equals :data:`rnnstream.export.onnx_export.TOLERANCE`
#: (checked by the tests), repeated here so that ``--help`` shows it without importing torch.
DEFAULT_TOLERANCE = 1e-4


def build_export_parser() -> argparse.ArgumentParser:
    p = new_parser("rnnstream export", "Export a checkpoint to a self-describing streaming ONNX graph, verified "
                   "against PyTorch before the file appears.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `rnnstream train`")
    p.add_argument("--out", required=True, help="where to write MODEL.onnx")
    p.add_argument("--raw-audio", action="store_true",
                   help="put the audio front end in the graph: inputs audio [B, S] and frontend_carry_in")
    p.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 quantisation of the weights")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="self-check tolerance")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    return p


def _run_export(args: argparse.Namespace, argv: list[str]) -> int:
    from rnnstream.export.onnx_export import run_from_args

    return run_from_args(args)


EXPORT = Command("export", build_export_parser, _run_export)


def build_stream_parser() -> argparse.ArgumentParser:
    p = new_parser("rnnstream stream", "Stream a file through the runtime, one JSON object per line per chunk; "
                   "the last line is the final prediction.")
    p.add_argument("--model", required=True, help="an exported .onnx graph or a training checkpoint")
    p.add_argument("--input", required=True, help="audio file (wav/flac/ogg) or sensor table (csv/parquet)")
    p.add_argument("--chunk-ms", type=float, default=100.0,
                   help="chunk length in milliseconds of stream time; 0 = the whole file")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto", help="onnxruntime provider")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's)")
    p.add_argument("--raw-audio", action="store_true",
                   help="for a checkpoint: run the audio front end inside the backend (as a --raw-audio graph)")
    p.add_argument("--final-only", action="store_true", help="print only the final line")
    return p


def _run_stream(args: argparse.Namespace, argv: list[str]) -> int:
    from rnnstream.export.stream_cli import run_from_args

    return run_from_args(args)


STREAM = Command("stream", build_stream_parser, _run_stream)

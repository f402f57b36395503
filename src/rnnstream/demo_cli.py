"""``rnnstream demo``: the light command-line side (the work is :func:`rnnstream.demo.run_from_args`).

The parser lives here so that ``rnnstream demo --help`` and usage errors are answered before NumPy, torch,
apache_beam or matplotlib are imported.
"""

from __future__ import annotations

import argparse

from rnnstream._cli_support import Command, new_parser

DEFAULT_OUT = "demo_out"


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "rnnstream demo",
        "The main job end to end: featurize (Beam) -> train -> export ONNX -> stream held-out recordings "
        "through onnxruntime. Default data: aeon's embedded BasicMotions.")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    p.add_argument("--audio-dir", default=None, help="a folder of labelled WAV files to use instead of BasicMotions")
    p.add_argument("--label-pattern", default=None,
                   help="regex on file names with a (?P<label>...) group (audio; default: the FSDD pattern)")
    p.add_argument("--test-by", default=None,
                   help="metadata key of the held-out split (default: 'split' for BasicMotions; 'take' for audio "
                        "when the pattern has that group)")
    p.add_argument("--test-match", default=None,
                   help="regex for held-out examples (default: 'test' for BasicMotions, '[0-4]' for take)")
    p.add_argument("--sample-rate", type=int, default=8000, help="audio: feature sample rate (Hz)")
    p.add_argument("--n-mels", type=int, default=40, help="audio: mel bands")
    p.add_argument("--limit", type=int, default=None,
                   help="use at most this many recordings per class and split (quick smoke runs)")
    m = p.add_argument_group("model and training")
    m.add_argument("--cell", default="gru", choices=["gru", "lstm", "rnn_tanh"])
    m.add_argument("--hidden", type=int, default=64)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--dropout", type=float, default=0.1)
    m.add_argument("--epochs", type=int, default=None, help="default: 40 (sensors), 25 (audio)")
    m.add_argument("--batch-size", type=int, default=16)
    m.add_argument("--lr", type=float, default=3e-3)
    m.add_argument("--val-fraction", type=float, default=0.15)
    m.add_argument("--seed", type=int, default=0)
    s = p.add_argument_group("streaming")
    s.add_argument("--chunk-s", type=float, default=None, help="chunk length in seconds (default: 1.0 sensors, 0.1 audio)")
    s.add_argument("--raw-audio", action="store_true", help="audio: export the graph with the featurizer inside")
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch intra-op threads (default 1: small RNNs train fastest single-threaded, "
                        "especially on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they are shown only on a terminal)")
    return p


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from rnnstream.demo import run_from_args

    return run_from_args(args)


DEMO = Command("demo", build_parser, _run)

"""The ``rnnstream`` command: one subcommand per job, each living beside the code it runs.

Every subcommand module exposes ``main(argv: list[str] | None = None) -> int`` and parses its own
arguments, so Beam jobs can pass unknown options straight to ``PipelineOptions``.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "featurize": ("rnnstream.beam_jobs.featurize", "Beam batch job: featurize audio/sensor corpora to Parquet + stats"),
    "train": ("rnnstream.models.train", "train a stateful RNN on a featurized dataset"),
    "export": ("rnnstream.export.onnx_export", "export a checkpoint to a self-describing streaming ONNX graph"),
    "stream": ("rnnstream.export.stream_cli", "stream a file through the runtime, one JSON line per chunk"),
    "infer": ("rnnstream.beam_jobs.infer", "Beam batch inference (RunInference) over files or features"),
    "stream-job": ("rnnstream.beam_jobs.stream_job", "Beam streaming job: per-stream state, ordering, gaps, eviction"),
    "serve": ("rnnstream.serving.server", "WebSocket/HTTP streaming server with cross-stream batching"),
    "client": ("rnnstream.serving.client", "stream files to a running server and print predictions"),
    "demo": ("rnnstream.demo", "the main job end to end on embedded real data"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rnnstream COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`rnnstream COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from rnnstream import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rnnstream: unknown command {name!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

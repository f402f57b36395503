"""The ``rnnstream`` command: one subcommand per job.

Each entry names a *light* module (``module`` or ``module:OBJECT``) whose ``main(argv) -> int`` parses the
command line before importing anything heavy (torch, apache_beam, onnxruntime, websockets, ...), so
``rnnstream COMMAND --help`` answers at once. Beam jobs leave the options they do not know to
``PipelineOptions``.

The dispatcher owns what all commands share (:mod:`rnnstream._cli_support`): the global flags ``--quiet``
and ``--verbose`` (before or after the command), logging to stderr (INFO for ``rnnstream``, WARNING for
other libraries), and one error policy: ``rnnstream COMMAND: error: <message>`` on stderr, exit 2 for
usage and input errors, 1 for runtime failures (traceback only with ``--verbose``), 130 on Ctrl-C.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from rnnstream._cli_support import EXIT_USAGE, UsageError, apply_global_flags, guard

# name -> (light entry point, one-line help). Imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "featurize": ("rnnstream.beam_jobs.cli:FEATURIZE", "Beam batch job: featurize audio/sensor corpora to Parquet + stats"),
    "train": ("rnnstream.models.train_cli", "train a stateful RNN on a featurized dataset"),
    "export": ("rnnstream.export.cli:EXPORT", "export a checkpoint to a self-describing streaming ONNX graph"),
    "stream": ("rnnstream.export.cli:STREAM", "stream a file through the runtime, one JSON line per chunk"),
    "infer": ("rnnstream.beam_jobs.cli:INFER", "Beam batch inference (RunInference) over files or features"),
    "stream-job": ("rnnstream.beam_jobs.cli:STREAM_JOB", "Beam streaming job: per-stream state, ordering, gaps, eviction"),
    "serve": ("rnnstream.serving.cli:SERVE", "WebSocket/HTTP streaming server with cross-stream batching"),
    "client": ("rnnstream.serving.cli:CLIENT", "stream files to a running server and print predictions"),
    "demo": ("rnnstream.demo_cli:DEMO", "the main job end to end on embedded real data"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rnnstream [--quiet | --verbose] COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "global options (before or after the command):",
        "  --quiet    log warnings and errors only",
        "  --verbose  debug logging, and tracebacks on failures",
        "",
        "`rnnstream COMMAND --help` shows a command's options.",
    ]
    return "\n".join(lines)


def entry_point(name: str) -> Any:
    """The object whose ``main(argv)`` runs command ``name`` (imports only its light module)."""
    target = COMMANDS[name][0]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = apply_global_flags(args)  # logging configured here, once, before any job module is imported
    except UsageError as exc:
        print(f"rnnstream: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from rnnstream import __version__

        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"rnnstream: error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    return guard(name, lambda: entry_point(name).main(rest))


if __name__ == "__main__":
    sys.exit(main())

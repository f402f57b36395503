"""What every ``rnnstream`` command shares: global flags, logging, the help format and one error policy.

Light on purpose (standard library and :mod:`rnnstream.pipeline.errors` only): ``rnnstream COMMAND --help``
imports this, the command's parser module and nothing heavy.

Exit status of every command (:func:`guard`):

* 0: success;
* 2: a usage or input error, printed as ``rnnstream COMMAND: error: <message>`` without a traceback:
  argparse errors, :class:`~rnnstream.pipeline.errors.RnnstreamError` (bad input or config), and
  ``FileNotFoundError``/``IsADirectoryError``/``NotADirectoryError``/``PermissionError`` (a path given);
* 1: a runtime failure: :class:`CommandFailed` (an expected failure, e.g. every input became a dead
  letter), a busy port (``EADDRINUSE``), or any other exception (one line and a hint to rerun with
  ``--verbose``; the traceback only with ``--verbose``);
* 130: interrupted (Ctrl-C), quietly.

Global flags, accepted before or after the command: ``--quiet`` (warnings and errors only) and
``--verbose`` (DEBUG for the ``rnnstream`` loggers, and tracebacks).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rnnstream.pipeline.errors import RnnstreamError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Exceptions that mean "the user asked for something that cannot be done": exit 2, no traceback.
USAGE_ERRORS: tuple[type[BaseException], ...] = (
    RnnstreamError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
)
#: Optional dependencies -> the extra that installs them (``pip install 'rnnstream[EXTRA]'``).
EXTRA_OF: dict[str, str] = {
    "apache_beam": "beam", "torch": "train", "torchaudio": "train", "onnx": "train", "matplotlib": "train",
    "tqdm": "train", "websockets": "serve", "prometheus_client": "serve", "aiohttp": "serve", "pyarrow": "tables",
    "pandas": "tables", "aeon": "data", "dask": "dask", "distributed": "dask",
}
GLOBAL_FLAGS = ("--quiet", "--verbose")
#: The logger hierarchy whose INFO lines are shown by default; every other logger shows WARNING and up.
LOGGER = "rnnstream"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"
#: Records dropped whatever the level: ``(logger name, message prefix)``. apache_beam's import logs the
#: first one through the root logger when apitools (the GCP extra) is absent, which is the normal case.
NOISE: tuple[tuple[str, str], ...] = (
    ("root", "apitools not found, and bigquery client libraries are not available"),
)


def float_pair(text: str) -> tuple[float, float]:
    """``"LO,HI"`` -> ``(lo, hi)``: an argparse type (a malformed value is a usage error naming it)."""
    try:
        lo, hi = (float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    return lo, hi


class UsageError(Exception):
    """A command line argparse refused: exit 2 with the usage line."""

    def __init__(self, message: str, usage: str = ""):
        super().__init__(message)
        self.usage = usage


class CommandFailed(Exception):
    """An expected failure that needs no traceback (exit 1), e.g. every input became a dead letter."""


@dataclass
class Verbosity:
    quiet: bool = False
    verbose: bool = False
    configured: bool = False


_STATE = Verbosity()


# ----------------------------------------------------------------------------------------------
# Global flags and logging
# ----------------------------------------------------------------------------------------------


def split_global_flags(argv: Sequence[str]) -> tuple[list[str], Verbosity | None]:
    """``argv`` without ``--quiet``/``--verbose`` (anywhere before ``--``), and the verbosity they ask for.

    Returns ``None`` for the verbosity when neither flag is present. Raises :class:`UsageError` for both.
    """
    rest: list[str] = []
    found: set[str] = set()
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            rest += args[i:]
            break
        if arg in GLOBAL_FLAGS:
            found.add(arg)
        else:
            rest.append(arg)
    if not found:
        return rest, None
    if len(found) > 1:
        raise UsageError("--quiet and --verbose exclude each other")
    return rest, Verbosity(quiet="--quiet" in found, verbose="--verbose" in found)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest and callers may swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _not_noise(record: logging.LogRecord) -> bool:
    msg = str(record.msg)
    return not any(record.name == name and msg.startswith(prefix) for name, prefix in NOISE)


def configure_logging(verbosity: Verbosity | None = None) -> Verbosity:
    """One stderr handler on the root logger (replacing an earlier one of ours); INFO for ``rnnstream``
    (DEBUG with ``verbose``, WARNING with ``quiet``), WARNING for everything else. Returns the state."""
    if verbosity is not None:
        _STATE.quiet, _STATE.verbose = verbosity.quiet, verbosity.verbose
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_rnnstream", False)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler._rnnstream = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    handler.addFilter(_not_noise)
    root.addHandler(handler)  # with a handler in place, a library's logging.warning() adds no basicConfig one
    root.setLevel(logging.WARNING)
    level = logging.DEBUG if _STATE.verbose else logging.WARNING if _STATE.quiet else logging.INFO
    logging.getLogger(LOGGER).setLevel(level)
    _STATE.configured = True
    return _STATE


def apply_global_flags(argv: Sequence[str]) -> list[str]:
    """Strip the global flags from ``argv`` and configure logging (once, or again when flags are given)."""
    rest, verbosity = split_global_flags(argv)
    if verbosity is not None or not _STATE.configured:
        configure_logging(verbosity)
    return rest


def progress_enabled(no_progress: bool = False) -> bool:
    """Progress bars only on a terminal, and not with ``--no-progress`` or ``--quiet``."""
    return not no_progress and not _STATE.quiet and sys.stderr.isatty()


# ----------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends ``(default: X)`` to options that have one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        default = action.default
        if "%(default)" in help_ or not action.option_strings or default in (None, False, argparse.SUPPRESS):
            return help_
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return help_
        return f"{help_} (default: %(default)s)" if help_ else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`UsageError` (printed by :func:`guard`, exit 2)."""

    def error(self, message: str) -> Any:
        raise UsageError(message, self.format_usage())


def new_parser(prog: str, description: str, **kwargs: Any) -> Parser:
    """A command's parser: the shared help format, plus the global flags (shown in ``--help``)."""
    parser = Parser(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)
    group = parser.add_argument_group("global options (also accepted before the command)")
    group.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    group.add_argument("--verbose", action="store_true", help="debug logging, and tracebacks on failures")
    return parser


# ----------------------------------------------------------------------------------------------
# Running a command
# ----------------------------------------------------------------------------------------------


def report_error(command: str, message: str) -> None:
    print(f"rnnstream {command}: error: {message}", file=sys.stderr, flush=True)


def _describe_os_error(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return f"{text}: {exc.filename!r}" if exc.filename else text


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return int(exc.code or 0)
    print(exc.code, file=sys.stderr)
    return EXIT_FAILURE


def guard(command: str, fn: Callable[[], Any]) -> int:
    """Run ``fn()`` and turn what it raises into the exit status and one stderr line (see the module doc)."""
    try:
        return int(fn() or 0)
    except UsageError as exc:
        if exc.usage:
            sys.stderr.write(exc.usage)
        report_error(command, str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # argparse's --help (0), or a parser that is not ours
        return _exit_code(exc)
    except CommandFailed as exc:
        report_error(command, str(exc))
        return EXIT_FAILURE
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None:
            return _unexpected(command, exc)
        _traceback_if_verbose()
        report_error(command, f"this command needs {exc.name!r}, which is not installed: "
                              f"pip install 'rnnstream[{extra}]'")
        return EXIT_USAGE
    except USAGE_ERRORS as exc:
        _traceback_if_verbose()
        report_error(command, _describe_os_error(exc) if isinstance(exc, OSError) else str(exc))
        return EXIT_USAGE
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EPIPE):
            return _unexpected(command, exc)
        if exc.errno == errno.EADDRINUSE:
            _traceback_if_verbose()
            report_error(command, _describe_os_error(exc))
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, the traceback with --verbose
        return _unexpected(command, exc)


def _traceback_if_verbose() -> None:
    if _STATE.verbose:
        traceback.print_exc(file=sys.stderr)


def _unexpected(command: str, exc: BaseException) -> int:
    _traceback_if_verbose()
    report_error(command, f"{type(exc).__name__}: {exc}")
    if not _STATE.verbose:
        print(f"rnnstream {command}: rerun with --verbose for the traceback", file=sys.stderr, flush=True)
    return EXIT_FAILURE


@dataclass(frozen=True)
class Command:
    """A subcommand: a light parser and what runs once it parsed.

    ``run(args, argv)`` gets the namespace and the command line (global flags removed); it returns the exit
    status or ``None`` (0) and raises for failures (:func:`guard`). ``passthrough``: options the parser does
    not know are left for ``run`` (Beam pipeline options) instead of being refused here.
    """

    name: str
    build_parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace, list[str]], int | None]
    passthrough: bool = False

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        parser = self.build_parser()
        if self.passthrough:
            return parser.parse_known_args(list(argv))[0]
        return parser.parse_args(list(argv))

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv`` (default ``sys.argv[1:]``) and run; returns the exit status (never raises)."""
        args = list(sys.argv[1:] if argv is None else argv)

        def call() -> int | None:
            rest = apply_global_flags(args)
            return self.run(self.parse(rest), rest)

        return guard(self.name, call)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True), flush=True)


__all__ = [
    "Command", "CommandFailed", "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "HelpFormatter",
    "Parser", "USAGE_ERRORS", "UsageError", "Verbosity", "apply_global_flags", "configure_logging", "guard",
    "new_parser", "print_json", "progress_enabled", "report_error", "split_global_flags",
]

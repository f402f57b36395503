"""The ``rnnstream`` command line: fast ``--help``, one error format and exit status, logging, global flags."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rnnstream import cli
from rnnstream._cli_support import Verbosity, configure_logging, guard, split_global_flags

HEAVY = ("torch", "torchaudio", "apache_beam", "onnx", "onnxruntime", "websockets", "matplotlib", "pyarrow", "pandas")
#: What ``python -c`` runs: a finder that refuses the heavy packages, then the dispatcher.
BLOCKED_HELP = textwrap.dedent(
    """
    import sys
    HEAVY = {heavy!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError("heavy import during --help: " + name)
            return None

    sys.meta_path.insert(0, Block())
    from rnnstream.cli import main
    sys.exit(main([{command!r}, "--help"]))
    """
)
REPO = Path(__file__).resolve().parent.parent


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # show Python warnings too: none may leak
    return subprocess.run([sys.executable, *args, "-c", code] if code else [sys.executable, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _light(command: str) -> bool:
    return command != "train" or cli.COMMANDS["train"][0].endswith("train_cli")


@pytest.fixture(autouse=True)
def _default_logging():
    yield
    configure_logging(Verbosity())  # a test that passed --quiet/--verbose leaves the default behind


# ----------------------------------------------------------------------------------------------
# --help: before any heavy import, with defaults
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_prints_before_heavy_imports(command: str) -> None:
    if not _light(command):
        pytest.skip("`train` still points to rnnstream.models.train (torch); models/train_cli.py does not exist yet")
    proc = _python(BLOCKED_HELP.format(heavy=HEAVY, command=command))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: rnnstream {command}"), proc.stdout[:300]
    assert "(default:" in proc.stdout or command == "train"
    assert "Traceback" not in proc.stderr and "heavy import" not in proc.stderr


def test_help_shows_defaults_and_global_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["featurize", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--sample-rate" in out and "default: 16000" in out and "--quiet" in out and "--verbose" in out
    assert cli.main(["stream-job", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--on-gap {fill,reset}" in out and "(default: fill)" in out and "(default: 5.0)" in out
    assert cli.main(["serve", "--help"]) == 0
    assert "(default: 8765)" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS) and "--quiet" in out


def test_beam_options_and_help_parser_declare_the_same_flags() -> None:
    """The flags are declared once: the PipelineOptions subclasses and the fast parsers agree."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    from rnnstream.beam_jobs import cli as jobs_cli
    from rnnstream.beam_jobs.common import FeatureOptions, InputOptions
    from rnnstream.beam_jobs.featurize import FeaturizeOptions
    from rnnstream.beam_jobs.infer import InferOptions
    from rnnstream.beam_jobs.stream_job import StreamJobOptions

    def flags(parser) -> set[str]:
        return {s for a in parser._actions for s in a.option_strings} - {"-h", "--help", "--quiet", "--verbose"}

    for build, classes in ((jobs_cli.build_featurize_parser, (InputOptions, FeatureOptions, FeaturizeOptions)),
                           (jobs_cli.build_infer_parser, (InputOptions, InferOptions))):
        beam_parser = _BeamArgumentParser()
        for cls in classes:
            cls._add_argparse_args(beam_parser)
        assert flags(build()) == flags(beam_parser)
    beam_parser = _BeamArgumentParser()
    StreamJobOptions._add_argparse_args(beam_parser)
    assert flags(jobs_cli.build_stream_job_parser()) == flags(beam_parser) | {"--input", "--output"}


def test_repeated_defaults_match_their_source() -> None:
    import dataclasses

    from rnnstream.export import cli as export_cli
    from rnnstream.export.onnx_export import TOLERANCE
    from rnnstream.serving.cli import SERVE_DEFAULTS
    from rnnstream.serving.server import ServerConfig

    assert export_cli.DEFAULT_TOLERANCE == TOLERANCE
    defaults = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
    assert {k: defaults[k] for k in SERVE_DEFAULTS} == SERVE_DEFAULTS


# ----------------------------------------------------------------------------------------------
# Exit status and the one error format
# ----------------------------------------------------------------------------------------------


def test_missing_input_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["featurize", "--input", str(tmp_path / "missing.wav"), "--output", str(tmp_path / "o"),
                   "--runner=DirectRunner"])
    err = capsys.readouterr().err
    assert rc == 2 and "rnnstream featurize: error: " in err and "missing.wav" in err
    assert "Traceback" not in err
    rc = cli.main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("rnnstream export: error: ") and "missing.pt" in err
    assert "Traceback" not in err


def test_unknown_options_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", "--checkpoint", "c.pt", "--out", "m.onnx", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "rnnstream export: error: unrecognized arguments: --bogus" in err and err.startswith("usage:")
    assert cli.main(["featurize", "--num-shards", "two"]) == 2  # refused by the fast parser, before Beam
    assert "rnnstream featurize: error: argument --num-shards" in capsys.readouterr().err
    # an option neither the job nor Beam knows
    assert cli.main(["featurize", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--runner=DirectRunner",
                     "--bogus-flag=1"]) == 2
    err = capsys.readouterr().err
    assert "rnnstream featurize: error: " in err and "--bogus-flag=1" in err and "Traceback" not in err
    assert cli.main(["no-such-command"]) == 2
    assert "rnnstream: error: unknown command" in capsys.readouterr().err


def test_runtime_failures_exit_1_with_a_traceback_only_when_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    assert guard("demo", lambda: 1 / 0) == 1
    err = capsys.readouterr().err
    assert "rnnstream demo: error: ZeroDivisionError: division by zero" in err and "--verbose" in err
    assert "Traceback" not in err
    configure_logging(Verbosity(verbose=True))
    assert guard("demo", lambda: 1 / 0) == 1
    assert "Traceback" in capsys.readouterr().err


def test_interrupt_and_input_errors(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    assert guard("serve", interrupted) == 130
    assert capsys.readouterr().err == ""

    def missing() -> None:
        open("/nonexistent/rnnstream/file.wav", "rb")

    assert guard("stream", missing) == 2
    err = capsys.readouterr().err
    assert err == "rnnstream stream: error: No such file or directory: '/nonexistent/rnnstream/file.wav'\n"


def test_global_flags_anywhere_before_double_dash() -> None:
    rest, v = split_global_flags(["--quiet", "featurize", "--input", "x", "--", "--verbose"])
    assert rest == ["featurize", "--input", "x", "--", "--verbose"] and v == Verbosity(quiet=True)
    rest, v = split_global_flags(["stream", "--verbose"])
    assert rest == ["stream"] and v is not None and v.verbose
    assert split_global_flags(["stream"]) == (["stream"], None)
    assert cli.main(["--quiet", "--verbose", "stream"]) == 2


# ----------------------------------------------------------------------------------------------
# Batch jobs: every input a dead letter; logging
# ----------------------------------------------------------------------------------------------


def _corrupt_corpus(root: Path) -> Path:
    corpus = root / "corrupt"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"{i}_x_{i}.wav").write_text("not audio\n" * (i + 1))
    return corpus


def _featurize(corpus: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return _python("", "-m", "rnnstream.cli", *flags, "featurize", "--input", str(corpus), "--output", str(out),
                   "--sample-rate", "8000", "--n-mels", "8", "--runner=DirectRunner", timeout=300)


def test_featurize_fails_when_every_input_is_a_dead_letter(tmp_path: Path) -> None:
    corpus = _corrupt_corpus(tmp_path)
    out = tmp_path / "out"
    proc = _featurize(corpus, out)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == summary["dead_letters"] == 3 and summary["outputs"] == 0
    assert json.loads(proc.stdout)["dead_letters"] == 3  # the summary is still printed
    assert "rnnstream featurize: error: all 3 input(s) became dead letters" in proc.stderr
    assert str(out / "dead_letter.jsonl") in proc.stderr and "Traceback" not in proc.stderr
    # the job's own INFO lines are shown by default; Beam's import-time warning is not
    assert "INFO rnnstream.beam_jobs.featurize: featurize: 3 input(s)" in proc.stderr
    assert "apitools" not in proc.stderr


def test_quiet_suppresses_info(tmp_path: Path) -> None:
    corpus = _corrupt_corpus(tmp_path)
    proc = _featurize(corpus, tmp_path / "out", "--quiet")
    assert proc.returncode == 1
    assert " INFO " not in proc.stderr and "became dead letters" in proc.stderr, proc.stderr


def test_quiet_after_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rnnstream.beam_jobs import featurize

    corpus = _corrupt_corpus(tmp_path)
    rc = featurize.main(["--input", str(corpus), "--output", str(tmp_path / "o"), "--runner=DirectRunner",
                         "--sample-rate", "8000", "--n-mels", "8", "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert " INFO " not in err and "became dead letters" in err


# ----------------------------------------------------------------------------------------------
# serve: a busy port
# ----------------------------------------------------------------------------------------------


def test_serve_on_a_busy_port_fails_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from rnnstream.models.checkpoint import save_checkpoint
    from rnnstream.models.rnn import rnn_classifier
    from rnnstream.pipeline.config import FeatureConfig

    fc = FeatureConfig.audio_default(sample_rate=8000, n_mels=8)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(str(ckpt), rnn_classifier(input_dim=fc.dim, num_classes=2, hidden_size=4, num_layers=1), fc,
                    labels=["a", "b"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        rc = cli.main(["serve", "--model", str(ckpt), "--host", "127.0.0.1", "--port", str(port),
                       "--http-port", "-1"])  # no --threads: it would set torch's thread count for later tests
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "rnnstream serve: error: " in err and "Traceback" not in err
    assert os.strerror(errno.EADDRINUSE).lower() in err.lower() or "in use" in err


def test_a_missing_extra_is_named(tmp_path):
    """A command whose optional dependency is absent says which extra installs it (exit 2, no traceback)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import importlib.abc, sys
        class Blocked(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "apache_beam":
                    raise ModuleNotFoundError("No module named 'apache_beam'", name="apache_beam")
        sys.meta_path.insert(0, Blocked())
        from rnnstream import cli
        sys.exit(cli.main(["featurize", "--input", "x.wav", "--output", "out", "--runner", "DirectRunner"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'rnnstream[beam]'" in proc.stderr and "Traceback" not in proc.stderr

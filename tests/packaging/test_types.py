"""The whole package type-checks: ``mypy -p rnnstream`` (the runtime layer, the torch layers and the adapters).

The wheel ships ``py.typed``, so users' type checkers read these annotations; this keeps them consistent with the
code. mypy cannot follow the editable install's import hook, so the check runs on a tree of links that mirrors the
wheel's layout (``rnnstream/`` = ``src/rnnstream/`` + one link per subpackage folder), with the settings of
``[tool.mypy]`` in pyproject.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBPACKAGES = ("pipeline", "models", "export", "beam_jobs", "serving")


def _wheel_layout(root: Path) -> Path:
    """``root/rnnstream``: links to src/rnnstream's files and to the subpackage folders, as the wheel lays them out."""
    pkg = root / "rnnstream"
    pkg.mkdir()
    for item in (REPO / "src" / "rnnstream").iterdir():
        if item.name != "__pycache__":
            (pkg / item.name).symlink_to(item)
    for sub in SUBPACKAGES:
        (pkg / sub).symlink_to(REPO / sub, target_is_directory=True)
    return root


def _mypy(root: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--cache-dir",
         str(root / ".mypy_cache"), "--no-error-summary", *targets],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_package_type_checks(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the dev extra (make install)")
    root = _wheel_layout(tmp_path)
    res = _mypy(root, "-p", "rnnstream")
    assert res.returncode == 0, res.stdout + res.stderr


def test_type_check_catches_a_wrong_annotation(tmp_path):
    """The check is live: a module of the runtime layer with a type error fails it."""
    pytest.importorskip("mypy", reason="mypy is in the dev extra (make install)")
    root = _wheel_layout(tmp_path)
    bad = root / "rnnstream_bad.py"
    bad.write_text("from rnnstream.pipeline.codec import decode_samples\n\nx: int = decode_samples(b'')\n")
    res = _mypy(root, "-m", "rnnstream_bad")
    assert res.returncode == 1 and "rnnstream_bad.py:3: error: Incompatible types in assignment" in res.stdout, \
        res.stdout + res.stderr

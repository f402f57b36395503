"""One import namespace: the repository's folders install as ``rnnstream.<folder>`` and nothing imports the bare names.

A project with its own ``models/`` or ``pipeline/`` package, or a PyPI distribution called ``export``, must not be
able to shadow or delete rnnstream's modules, so no module of the project may import ``pipeline``, ``models``,
``export``, ``beam_jobs`` or ``serving`` as top-level names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OLD_NAMES = {"pipeline", "models", "export", "beam_jobs", "serving"}
SOURCE_DIRS = ["src", "pipeline", "models", "export", "beam_jobs", "serving", "tests", "bench", "experiments"]


def _python_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))


def _old_imports(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        bad += [f"{path.relative_to(root)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in OLD_NAMES]
    return bad


def test_no_module_imports_an_old_top_level_name():
    files = _python_files()
    assert len(files) > 50, "the source folders were not found"
    bad = [line for f in files for line in _old_imports(f)]
    assert not bad, "imports of bare top-level names (use rnnstream.*):\n" + "\n".join(bad)


def test_guard_catches_an_old_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom pipeline.config import FeatureConfig\nimport serving.server as s\n")
    found = [line.split(": ")[1] for line in _old_imports(probe, root=tmp_path)]
    assert found == ["pipeline.config", "serving.server"]


def test_installed_namespace_has_one_top_level_package(tmp_path):
    """From a folder with its own ``models`` and ``pipeline`` packages, rnnstream still imports its own."""
    for name in ("models", "pipeline", "export"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the user project package was imported')\n")
    code = (
        "import rnnstream.pipeline.streaming, rnnstream.models.rnn, rnnstream.export.onnx_export, sys;"
        "import models; print('user models shadowed nothing')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    # rnnstream's modules import fine; only the user's own `models` raises, as it should.
    assert "the user project package was imported" in proc.stderr, proc.stderr
    assert "rnnstream" not in proc.stderr.split("Traceback")[-1].splitlines()[-1]
    assert "File \"<string>\", line 1" in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "models/__init__.py" in ln]
    assert len(lines) == 1, proc.stderr


@pytest.mark.parametrize("folder", sorted(OLD_NAMES))
def test_each_folder_is_a_subpackage_of_rnnstream(folder):
    import importlib

    mod = importlib.import_module(f"rnnstream.{folder}")
    assert Path(mod.__file__).resolve().parent == REPO / folder

"""pyproject.toml: the runtime is the only base dependency, and `all` is every user-facing extra but gpu."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_base_dependencies_are_the_runtime():
    assert sorted(_name(r) for r in PROJECT["dependencies"]) == ["numpy", "onnxruntime", "scipy", "soundfile"]


def test_all_is_the_union_of_the_user_extras_except_gpu():
    users = set(EXTRAS) - {"all", "dev", "gpu"}
    union = {r for extra in users for r in EXTRAS[extra]}
    assert set(EXTRAS["all"]) == union, "keep `all` the exact union (same version specifiers) of: " + ", ".join(sorted(users))
    assert not any(_name(r) == "onnxruntime-gpu" for r in EXTRAS["all"])


def test_same_requirement_same_specifier_everywhere():
    seen: dict[str, str] = {}
    for extra, reqs in EXTRAS.items():
        for req in [*reqs, *PROJECT["dependencies"]]:
            name = re.split(r"[<>=!~; ]", req, maxsplit=1)[0].lower()
            assert seen.setdefault(name, req) == req, f"{extra}: {req!r} vs {seen[name]!r}"


def test_no_self_referencing_extras():
    assert not [r for reqs in EXTRAS.values() for r in reqs if _name(r) == "rnnstream"]


def test_license_is_spdx_and_the_file_is_the_full_text():
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert len(text.splitlines()) > 150

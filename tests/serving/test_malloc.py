"""The server keeps freed heap memory (``serving.server._keep_freed_memory``): a worker thread that allocates and
frees batch-sized arrays, as the batcher's featurizing does, stops page-faulting them in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import json, resource, sys, threading
import numpy as np
if sys.argv[1] == "tuned":
    from rnnstream.serving.server import _keep_freed_memory
    _keep_freed_memory()
faults = []
def batch():  # a batch's temporaries: 1.3 MB and 0.7 MB arrays, freed together
    a = np.ones((64, 10, 512), np.float32)
    b = np.ones((64, 10, 257), np.float32)
    (a[..., :257] * b).sum()
def work():
    for _ in range(20):  # warm up: the arena grows to its working size
        batch()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(200):
        batch()
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
t = threading.Thread(target=work)
t.start(); t.join()
print(json.dumps(faults[0]))
"""


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc's; other C libraries untouched")
def test_batch_sized_allocations_stop_faulting():
    default, tuned = _faults("default"), _faults("tuned")
    assert tuned < 50, f"{tuned} page faults over 200 batches with the server's malloc settings"
    assert default > 10 * max(tuned, 1), f"the probe should fault without them (default {default}, tuned {tuned})"


def test_leaves_explicit_malloc_tunables_alone(monkeypatch: pytest.MonkeyPatch):
    from rnnstream.serving import server

    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(server.ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(server.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    server._keep_freed_memory()
    assert calls == []
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    server._keep_freed_memory()
    assert calls == [(-1, server.TRIM_THRESHOLD_BYTES), (-3, server.MMAP_THRESHOLD_BYTES)]

"""Shared helpers for benchmark scripts: timing statistics and the BENCHMARKS.md writer."""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def single_thread() -> None:
    """Pin torch (and, for child processes, BLAS/OpenMP) to one thread."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import torch

    torch.set_num_threads(1)


def cpu_seconds(fn: Callable[[], object]) -> float:
    """CPU time of the calling process spent in ``fn()`` (seconds)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def median_spread(values: list[float]) -> tuple[float, float, float]:
    """``(median, min, max)`` of repeated measurements."""
    return statistics.median(values), min(values), max(values)


def fmt_ms(med: float, lo: float, hi: float, digits: int = 1) -> str:
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def machine_info() -> str:
    import numpy
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}; speed probe {speed_probe_ms():.1f} ms"
    )


def speed_probe_ms(rounds: int = 5) -> float:
    """CPU ms of one fixed single-thread workload (a Python loop, and NumPy FFTs and a matmul): the best of
    ``rounds``. Hosts with the same CPU name differ in speed (two "AMD EPYC" hosts here differed ~2x); the probe
    tells sections run on different hosts apart. Lower is faster."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    w = rng.standard_normal((512, 512)).astype(np.float32)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the probe then counts only the calling thread's share of a threaded matmul
        import contextlib

        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(limits=1)
    with limits:
        return _probe(x, w, rounds)


def _probe(x: Any, w: Any, rounds: int) -> float:
    import numpy as np

    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        total = 0
        for i in range(200_000):
            total += i & 7
        for _ in range(20):
            np.fft.rfft(x, axis=1)
            x @ w
        best = min(best, time.thread_time() - start)
    return 1000 * best


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(module: str, argv: list[str] | None) -> str:
    """The command a benchmark ran as: ``python -m module`` and its arguments (``sys.argv``'s when ``argv`` is None)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m " + module, *args])


def write_section(name: str, markdown: str, command: str | None = None) -> None:
    """Replace (or append) the section ``## name`` of BENCHMARKS.md with ``markdown`` plus run info."""
    command = command or "python -m " + Path(sys.argv[0]).with_suffix("").name if sys.argv else ""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = f"## {name}\n\nCommand: `{command}`  \nMachine: {machine_info()}  \nRun: {stamp}\n\n{markdown.strip()}\n"
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.exists() else "# Benchmarks\n\nWritten by `make bench`; each section by its script in `bench/`.\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: body + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    BENCHMARKS_MD.write_text(text, encoding="utf-8")

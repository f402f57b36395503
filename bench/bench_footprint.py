"""Footprint of ``rnnstream stream`` on an ONNX model: peak RSS, import time and wall time, runtime-only vs today.

Three ways to run the same command on the same ``.onnx`` model and the same WAV file:

* (a) **runtime-only**: a fresh venv holding only ``pip install rnnstream-*.whl`` (numpy, onnxruntime,
  soundfile, scipy; no torch, no Beam), built here from the working tree;
* (b) **before the namespace move** ("today" before this change): ``git archive OLD_REV`` unpacked into a
  folder and run from there with the full venv's Python (``python -m rnnstream.cli stream``; the folder
  on ``sys.path`` makes its bare packages ``export``, ``pipeline``... importable). The script checks that
  it really ran that code (the bare ``pipeline.streaming`` in the import log, and torch imported);
* (c) **full install, new code**: the project venv (``.venv``, every extra) on the working tree.

Every variant runs ``python -m rnnstream.cli stream --model M --input W --chunk-ms 100`` (what the
``rnnstream`` console script calls), in a folder outside the repository, ``--repeats`` times, the
variants interleaved (order rotating). Per run:

* peak RSS: maximum resident set size of that process (GNU ``/usr/bin/time -f %M``), MiB;
* wall time of the whole command (start-up, imports, model load, streaming, exit);
* import time: a second run of the same command under ``python -X importtime``, summing the cumulative
  time of every top-level import (everything the command imported, lazily or not; ``-X importtime`` itself
  adds some overhead, the same for all variants).

Cells: median (min-max) over repeats. The final JSON line of every variant must agree (same label, scores
within 1e-5), or the script stops. ``python -m bench.bench_footprint [--repeats 7] [--work DIR] [--no-write]``.
Only meaningful on a quiet machine: the 1-minute load average is printed and written beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECTION = "Footprint of rnnstream stream: runtime-only vs full install (bench_footprint)"
ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "a3b7126"  # the last commit before the one-namespace move (bare top-level packages)
HEAVY = ("torch", "torchaudio", "apache_beam", "pandas", "pyarrow", "onnx", "scipy", "onnxruntime", "soundfile")


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_footprint", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "rnnstream-footprint"),
                    help="folder for the wheel, the runtime-only venv, the old checkout and the model (kept)")
    ap.add_argument("--old-rev", default=OLD_REV, help="git revision of 'before' (default %(default)s)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the wheel venv and the old checkout")
    ap.add_argument("--variants", default="abc", help="which of (a), (b), (c) to run (default %(default)s; "
                    "BENCHMARKS.md is written only with all three and (b) as the reference)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    return ap.parse_args(argv)


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def _run(cmd: list[str], **kw) -> None:
    print("  $ " + " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kw)


# ------------------------------------------------------------------------------------------------
# Set-up: runtime-only venv, old checkout, model and WAV
# ------------------------------------------------------------------------------------------------


def _runtime_venv(work: Path, rebuild: bool) -> Path:
    venv = work / "venv"
    py = venv / "bin" / "python"
    if py.exists() and not rebuild:
        return py
    shutil.rmtree(work / "dist", ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work / "dist"), str(ROOT)])
    wheel = next((work / "dist").glob("rnnstream-*.whl"))
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)])
    _run([str(py), "-m", "pip", "install", "--quiet", str(wheel)])
    return py


def _old_checkout(work: Path, rev: str, rebuild: bool) -> Path:
    old = work / "old"
    if (old / "export" / "stream_cli.py").exists() and not rebuild:
        return old
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    return old


def _model_and_wav(work: Path) -> tuple[Path, Path]:
    """A 2-layer 128-unit GRU over 40 log-mels at 16 kHz (10 classes), exported by the new code; 10 s of audio."""
    model_path, wav_path = work / "model.onnx", work / "clip16k.wav"
    if model_path.exists() and wav_path.exists():
        return model_path, wav_path
    import numpy as np
    import soundfile as sf
    import torch

    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.models.rnn import rnn_classifier
    from rnnstream.pipeline.config import FeatureConfig

    torch.manual_seed(0)
    fc = FeatureConfig.audio_default(sample_rate=16000, n_mels=40)
    model = rnn_classifier(input_dim=fc.dim, num_classes=10, cell="gru", hidden_size=128, num_layers=2).eval()
    export_onnx(model, model_path, fc, tuple(str(i) for i in range(10)))
    rng = np.random.default_rng(0)
    t = np.arange(10 * 16000) / 16000
    x = 0.05 * rng.standard_normal(t.shape[0]) + 0.2 * np.sin(2 * np.pi * 440 * t)
    sf.write(wav_path, x.astype(np.float32), 16000, subtype="PCM_16")
    return model_path, wav_path


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


_RSS_WRAPPER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _measure(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Run ``cmd``: ``(peak RSS MiB, wall s, stdout)`` of that one child.

    The peak RSS is read by a small launcher (GNU ``/usr/bin/time -f %M``, else a bare Python that
    ``os.wait4``-s the command), never by this process: Linux carries a process's peak RSS across ``fork``
    and ``exec``, so a child forked from a benchmark that imported torch would report torch's footprint.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        if os.access("/usr/bin/time", os.X_OK):
            launcher = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name]
        else:
            launcher = ["/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else cmd[0], "-c",
                        _RSS_WRAPPER, rss_file.name]
        t0 = time.perf_counter()
        proc = subprocess.run([*launcher, *cmd], cwd=cwd, env=_env(), stdout=out, stderr=err)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        rss_text = rss_file.read().strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) exited {proc.returncode}:\n{stderr[-2000:]}")
    return int(rss_text[-1]) / 1024.0, wall, stdout  # KiB -> MiB


def _importtime(cmd: list[str], cwd: Path) -> tuple[float, set[str], set[str]]:
    """``(sum of top-level cumulative import times in ms, root packages of every imported module, all modules)``."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], cwd=cwd, env=_env(), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -X importtime exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    total_us, tops, modules = 0, set(), set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part for part in line[len("import time:"):].split("|"))
        modules.add(name.strip())
        tops.add(name.strip().split(".")[0])
        if not name[1:].startswith(" "):  # top level: one space after the bar, no nesting indent
            total_us += int(cumulative)
    return total_us / 1000.0, tops, modules


def _final(stdout: str) -> dict:
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    if not lines or lines[-1].get("final") is not True:
        raise RuntimeError(f"no final line in the output: {stdout[-500:]!r}")
    final = lines[-1]
    if "label" not in final:  # the label's key changed once; accept either
        final["label"] = final.get("predicted")
    scores = final.get("scores")
    if isinstance(scores, list):  # older CLIs print the scores as a list in label order
        final["scores"] = {str(i): s for i, s in enumerate(scores)}
    return final


def _agree(a: dict, b: dict) -> bool:
    sa, sb = list(a["scores"].values()), list(b["scores"].values())
    return a["label"] == b["label"] and len(sa) == len(sb) and max(abs(x - y) for x, y in zip(sa, sb)) <= 1e-5


def _cell(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


#: A variant: its command line and working folder.
Variant = tuple[list[str], Path]


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    load_start = _loadavg()
    print(f"bench_footprint: work folder {work}; load average {load_start:.2f}", flush=True)
    variants = _variants(args, work)
    names = list(variants)
    ref_name = next((n for n in names if n.startswith("(b)")), names[0])
    if args.variants != "abc":
        args.no_write = True
    imported = _warm_and_check(variants, ref_name)
    rss, wall, imp = _measure_all(variants, args.repeats)
    load_end = _loadavg()
    rows = []
    for name in names:
        heavy = ", ".join(h for h in HEAVY if h in imported[name]) or "-"
        rows.append([
            name,
            _cell(rss[name], 0),
            f"{statistics.median(rss[name]) / statistics.median(rss[ref_name]):.2f}x",
            _cell(imp[name], 0),
            f"{statistics.median(imp[name]) / statistics.median(imp[ref_name]):.2f}x",
            _cell(wall[name], 2),
            heavy,
        ])
    header = ["variant", "peak RSS MiB", "RSS vs before", "import ms (-X importtime)", "import vs before",
              "wall s (whole command)", "heavy packages imported"]
    from bench._report import markdown_table

    md = markdown_table(header, rows) + "\n\n" + _note(args, variants, load_start, load_end)
    print(md)
    if not args.no_write:
        from bench._report import write_section

        write_section(SECTION, md, "python -m bench.bench_footprint")
    return 0


def _variants(args: argparse.Namespace, work: Path) -> dict[str, Variant]:
    """The variants ``--variants`` asks for, their environments built (or reused) in ``work``."""
    runtime_py = _runtime_venv(work, args.rebuild)
    old = _old_checkout(work, args.old_rev, args.rebuild)
    if args.rebuild:
        for stale in ("model.onnx", "clip16k.wav"):
            (work / stale).unlink(missing_ok=True)
    model, wav = _model_and_wav(work)
    run_dir = work / "run"
    run_dir.mkdir(exist_ok=True)
    stream = ["-m", "rnnstream.cli", "stream", "--model", str(model), "--input", str(wav), "--chunk-ms", "100"]
    full_py = sys.executable
    variants = {
        "(a) runtime-only: pip install rnnstream (wheel, no extras)": ([str(runtime_py), *stream], run_dir),
        f"(b) before the namespace move ({args.old_rev}), full venv": ([full_py, *stream], old),
        "(c) full install (.venv, every extra), new code": ([full_py, *stream], run_dir),
    }
    return {k: v for k, v in variants.items() if k[1] in args.variants}


def _warm_and_check(variants: dict[str, Variant], ref_name: str) -> dict[str, set[str]]:
    """One warm-up run each (page cache, .pyc files) and the checks: every variant prints the same final
    prediction, (b) ran the old code, (a) did not import torch. Returns each variant's imported packages."""
    finals, imported = {}, {}
    for name, (cmd, cwd) in variants.items():
        _, _, stdout = _measure(cmd, cwd)
        finals[name] = _final(stdout)
        _, tops, modules = _importtime(cmd, cwd)
        imported[name] = tops
        if name.startswith("(b)") and not ("pipeline.streaming" in modules and "torch" in tops):
            raise RuntimeError(f"{name}: did not run the old code (the bare pipeline.streaming and torch expected "
                               f"in the import log; imported packages: {sorted(tops)})")
        if name.startswith("(a)") and "torch" in tops:
            raise RuntimeError(f"{name}: imported torch")
    ref = finals[ref_name]
    for name in variants:
        if not _agree(finals[name], ref):
            raise RuntimeError(f"final predictions differ: {name}: {finals[name]} vs {ref_name}: {ref}")
    return imported


def _measure_all(variants: dict[str, Variant], repeats: int) -> tuple[dict[str, list[float]], ...]:
    """``(peak RSS MiB, wall s, import ms)`` per variant over ``repeats`` rounds, the variants' order rotated."""
    names = list(variants)
    rss: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    imp: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            cmd, cwd = variants[name]
            m, w, _ = _measure(cmd, cwd)
            rss[name].append(m)
            wall[name].append(w)
            imp[name].append(_importtime(cmd, cwd)[0])
        print(f"  repeat {r + 1}/{repeats}: " + "; ".join(
            f"{n[:3]} {rss[n][-1]:.0f} MiB {wall[n][-1]:.2f} s {imp[n][-1]:.0f} ms" for n in names), flush=True)
    return rss, wall, imp


def _note(args: argparse.Namespace, variants: dict[str, Variant], load_start: float, load_end: float) -> str:
    """What was run and how it was measured, with the versions and the machine load."""
    names = list(variants)
    vers = {}
    for name, (cmd, _) in variants.items():
        vers[name] = subprocess.run([cmd[0], "-c", "import onnxruntime, numpy; print(onnxruntime.__version__, "
                                     "numpy.__version__)"], capture_output=True, text=True, env=_env()).stdout.split()
    return (
        f"`python -m rnnstream.cli stream --model model.onnx --input clip16k.wav --chunk-ms 100` (what the "
        f"`rnnstream` command runs) on a 2-layer 128-unit GRU over 40 log-mels at 16 kHz, 10 classes, exported "
        f"by the new code, and 10 s of 16 kHz audio (100 chunks); {args.repeats} repeats per variant, variants "
        f"interleaved, after one warm-up run each; cells: median (min-max). Peak RSS: the command's maximum "
        f"resident set size (GNU `/usr/bin/time -f %M`). Import ms: the same command under `python -X importtime`, the sum of "
        f"the cumulative times of all top-level imports (lazy ones included). Wall: the whole command, start-up "
        f"to exit. (b) runs `git archive {args.old_rev}` unpacked in a folder with the full venv's Python (its "
        f"bare packages on `sys.path`; checked: the bare `pipeline.streaming` and torch in its import log). All three "
        f"print the same final prediction (scores within 1e-5). onnxruntime/numpy: (a) "
        f"{' / '.join(vers[names[0]])}, (b)/(c) {' / '.join(vers[names[-1]])}. One thread (OMP/OpenBLAS/MKL = 1). "
        f"1-min load average {load_start:.2f} at start, {load_end:.2f} at end on {os.cpu_count()} cores"
        f"{' (above 2: other jobs shared the CPUs, times are pessimistic)' if max(load_start, load_end) > 2 else ''}."
    )


if __name__ == "__main__":
    sys.exit(main())

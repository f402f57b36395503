"""Check the runtime-only install (run by a fresh venv that holds ``pip install rnnstream-*.whl`` and nothing else).

Usage (from a folder outside the repository, so that nothing but the installed wheel is importable)::

    VENV/bin/python check_runtime_wheel.py --dir PREPARED [--rnnstream VENV/bin/rnnstream]

``PREPARED`` is what ``prepare_wheel_check.py`` wrote with the full install (models, WAVs, sensor data,
``reference.json``). Every reference case is recomputed here through the public API
(``rnnstream.load``, ``model.stream``, ``stream.push``/``end``/``prediction``, ``model.predict``) and
compared within ``--tol`` (1e-5): same label, every score. Then ``rnnstream stream --model M --input W``
runs as a subprocess and its last JSON line (the final prediction) is compared the same way.

Also asserted: ``import torch`` fails, rnnstream is imported from the venv (not a checkout), and after all
of it neither torch nor apache_beam was imported. Exit status 0 when everything holds, 1 otherwise,
with one line per failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        FAILURES.append(what)


def scores_dict(scores, labels) -> dict[str, float]:
    if isinstance(scores, dict):
        return {str(k): float(v) for k, v in scores.items()}
    return {str(k): float(v) for k, v in zip(labels, scores)}


def compare(name: str, label, scores: dict[str, float], ref: dict, tol: float) -> None:
    same_keys = set(scores) == set(ref["scores"])
    diff = max((abs(scores[k] - ref["scores"][k]) for k in ref["scores"] if k in scores), default=float("inf"))
    check(label == ref["label"] and same_keys and diff <= tol,
          f"{name}: label {label!r} (reference {ref['label']!r}), max score diff {diff:.2g} (tol {tol:g})")


def stream_chunks(model, chunks, **kw):
    stream = model.stream(**kw)
    n_out = 0
    for chunk in chunks:
        result = stream.push(chunk)
        n_out += int(np.asarray(result.outputs).shape[0]) if getattr(result, "outputs", None) is not None else 0
    stream.end()
    return stream.prediction, n_out


def api_audio(rnnstream, name: str, d: str, ref: dict, pcm16: np.ndarray, x8: np.ndarray, chunk: int,
              tol: float) -> None:
    """The public API on one audio model against the reference cases ``name/...``."""
    cases, labels = ref["cases"], ref["labels"]
    wav8 = os.path.join(d, "clip8k.wav")
    model = rnnstream.load(os.path.join(d, f"{name}.onnx"), provider="cpu", threads=1)
    check(list(model.labels) == labels, f"{name}: model.labels {list(model.labels)}")
    check(int(model.sample_rate) == 8000, f"{name}: model.sample_rate {model.sample_rate}")

    pred, n_out = stream_chunks(model, [x8[i : i + chunk] for i in range(0, x8.shape[0], chunk)], sample_rate=8000)
    compare(f"{name}: stream float32 {ref['chunk_ms']} ms chunks", pred.label, scores_dict(pred.scores, labels),
            cases[f"{name}/stream_float32"], tol)
    check(n_out > 0, f"{name}: push results carry outputs ({n_out} frames in all)")

    # int16 chunks of odd lengths (any length is allowed) = the same stream.
    cuts = np.cumsum(np.resize([1, 333, 80, 1201, 7], 200))
    cuts = cuts[cuts < pcm16.shape[0]]
    pred, _ = stream_chunks(model, np.split(pcm16, cuts), sample_rate=8000)
    compare(f"{name}: stream int16, uneven chunks", pred.label, scores_dict(pred.scores, labels),
            cases[f"{name}/stream_float32"], tol)

    pred = model.predict(wav8)
    compare(f"{name}: predict(8 kHz wav)", pred.label, scores_dict(pred.scores, labels),
            cases[f"{name}/predict_wav8k"], tol)
    pred = model.predict(x8, sample_rate=8000)
    compare(f"{name}: predict(array, sample_rate=8000)", pred.label, scores_dict(pred.scores, labels),
            cases[f"{name}/predict_wav8k"], tol)
    pred = model.predict(os.path.join(d, "clip16k.wav"))
    compare(f"{name}: predict(16 kHz wav, resampled)", pred.label, scores_dict(pred.scores, labels),
            cases[f"{name}/predict_wav16k"], tol)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True, help="the folder prepare_wheel_check.py wrote")
    ap.add_argument("--rnnstream", default=os.path.join(os.path.dirname(sys.executable), "rnnstream"),
                    help="the rnnstream command of this venv (default: beside this python)")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args(argv)
    d = os.path.abspath(args.dir)
    with open(os.path.join(d, "reference.json")) as f:
        ref = json.load(f)
    cases = ref["cases"]
    tol = args.tol

    print("environment:")
    try:
        import torch  # noqa: F401
    except ImportError:
        check(True, "import torch fails (runtime-only install)")
    else:
        check(False, f"import torch fails (runtime-only install) -- torch found at {torch.__file__}")

    import rnnstream

    where = os.path.dirname(os.path.abspath(rnnstream.__file__))
    check("site-packages" in where and os.path.commonpath([where, sys.prefix]) == sys.prefix,
          f"rnnstream imported from this venv: {where}")
    check(hasattr(rnnstream, "load"), "rnnstream.load exists (public API)")
    if FAILURES:
        return 1

    print("public API:")
    labels = ref["labels"]
    wav8 = os.path.join(d, "clip8k.wav")
    import soundfile as sf

    pcm16, rate = sf.read(wav8, dtype="int16")
    x8 = pcm16.astype(np.float32) / 32768.0
    chunk = rate * int(ref["chunk_ms"]) // 1000
    for name in ("audio", "audio_raw"):
        try:
            api_audio(rnnstream, name, d, ref, pcm16, x8, chunk, tol)
        except Exception as exc:  # one failure line per model, then go on
            check(False, f"{name}: {type(exc).__name__}: {exc}")

    try:
        sensor = np.load(os.path.join(d, "sensor.npz"))
        ts, vals = sensor["timestamps"], sensor["values"]
        smodel = rnnstream.load(os.path.join(d, "sensor.onnx"))
        pred, _ = stream_chunks(smodel, [(ts[i : i + 7], vals[i : i + 7]) for i in range(0, ts.shape[0], 7)])
        compare("sensor: stream (timestamps, values)", pred.label, scores_dict(pred.scores, ref["sensor_labels"]),
                cases["sensor/stream"], tol)
    except Exception as exc:
        check(False, f"sensor: {type(exc).__name__}: {exc}")

    print("command line:")
    for name in ("audio", "audio_raw"):
        cmd = [args.rnnstream, "stream", "--model", os.path.join(d, f"{name}.onnx"), "--input", wav8,
               "--chunk-ms", str(ref["chunk_ms"])]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=d, timeout=120)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            check(False, f"{' '.join(cmd[1:3])} ({name}) exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
            continue
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        final = lines[-1] if lines else {}
        check(final.get("final") is True and len(lines) > 1,
              f"rnnstream stream ({name}): {len(lines)} JSON lines, the last final, {wall:.2f} s")
        label = final["label"] if "label" in final else final.get("predicted")
        compare(f"rnnstream stream ({name}): final line", label,
                scores_dict(final.get("scores", {}), labels), cases[f"{name}/stream_float32"], tol)

    print("imports:")
    check("torch" not in sys.modules, "torch never imported")
    check("apache_beam" not in sys.modules, "apache_beam never imported")
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        return 1
    print("runtime-only wheel: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

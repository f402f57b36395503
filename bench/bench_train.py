"""Training throughput: ``rnnstream.models.train.train`` (the ``rnnstream train`` code path) vs a bare PyTorch loop.

Both train a 2-layer, 128-unit GRU classifier (40 input features, 10 classes) on the same tensors, with
the same batch size, the same optimizer (Adam, lr 1e-3) and the same number of steps, on one thread:

* ours: ``train(data, TrainConfig(cell="gru", hidden_size=128, num_layers=2, ...))`` with its defaults:
  bucketed, seeded batches gathered from the padded dataset, input normalisation inside the model, the
  masked last-frame loss, gradient clipping (1.0) with per-layer gradient norms, the NaN check, the
  tqdm bar (to a null stream) and the model/optimizer/statistics setup. No validation, checkpoint or plots.
* bare: ``nn.GRU`` + ``nn.Linear`` built fresh, the same batches (as index tensors), loss on the last frame,
  ``zero_grad / backward / step``; nothing else.

Throughput is frames per CPU-second (``time.process_time``, one thread) over the whole call, setup included.
The two take turns within each repeat (the order alternates); the table gives the median (min-max) over
repeats and the overhead ratio bare / ours throughput (= ours / bare time) as the median of per-repeat
ratios. Target: ratio <= 1.15. ``python -m bench.bench_train [--repeats 5] [--steps 16] [--no-write]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

SECTION = "Training throughput (bench_train)"
TARGET = 1.15


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps per run (batches)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=100, help="frames per sequence")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    return ap.parse_args(argv)


def _data(n: int, frames: int):
    import numpy as np

    from rnnstream.models.data import tensor_data
    from rnnstream.pipeline.config import FeatureConfig

    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(frames, 40)).astype(np.float32) for _ in range(n)]
    labels = [str(int(v)) for v in rng.integers(0, 10, size=n)]
    return tensor_data("classify", seqs, labels, feature_config=FeatureConfig.audio_default(n_mels=40))


def _ours(data, args):
    from rnnstream.models.train import TrainConfig, train

    cfg = TrainConfig(cell="gru", hidden_size=128, num_layers=2, epochs=1, batch_size=args.batch_size, lr=1e-3,
                      optimizer="adam", seed=0, device="cpu", progress=True)

    def run() -> int:
        with contextlib.redirect_stderr(io.StringIO()):
            train(data, cfg)
        return data.num_frames

    return run


def _bare(data, args):
    import torch
    from torch import nn

    from rnnstream.models.data import batch_order

    batches = batch_order(data, args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(1))

    def run() -> int:
        torch.manual_seed(0)
        rnn = nn.GRU(40, 128, num_layers=2, batch_first=True)
        head = nn.Linear(128, 10)
        opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)
        frames = 0
        for idx in batches:
            x, y = data.x[idx], data.y[idx]
            out, _ = rnn(x)
            loss = nn.functional.cross_entropy(head(out[:, -1]), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            frames += x.shape[0] * x.shape[1]
        return frames

    return run


def run_benchmark(args: argparse.Namespace) -> tuple[list[list[object]], float]:
    from bench._report import median_spread

    data = _data(args.steps * args.batch_size, args.frames)
    impls = {"ours (rnnstream.models.train.train)": _ours(data, args), "bare PyTorch loop": _bare(data, args)}
    for fn in impls.values():  # warm-up: lazy imports, allocator, oneDNN kernels
        fn()
    tput: dict[str, list[float]] = {name: [] for name in impls}
    ratios: list[float] = []
    names = list(impls)
    for rep in range(args.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        got = {}
        for name in order:
            start = time.process_time()
            frames = impls[name]()
            got[name] = frames / (time.process_time() - start)
        for name in names:
            tput[name].append(got[name])
        ratios.append(got[names[1]] / got[names[0]])
    rows = []
    for name in names:
        med, lo, hi = median_spread(tput[name])
        rows.append([name, f"{med:,.0f} ({lo:,.0f}-{hi:,.0f})"])
    ratio, rlo, rhi = median_spread(ratios)
    rows.append(["overhead ratio bare / ours", f"{ratio:.3f} ({rlo:.3f}-{rhi:.3f}), target <= {TARGET}"])
    return rows, ratio


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from bench._report import markdown_table, single_thread, write_section

    single_thread()
    load0 = os.getloadavg()[0]
    rows, ratio = run_benchmark(args)
    table = markdown_table(["implementation", "frames / CPU-second, median (min-max)"], rows)
    note = (f"2-layer 128-unit GRU classifier, 40 features, 10 classes; {args.steps} steps of batch {args.batch_size} "
            f"x {args.frames} frames per run, Adam lr 1e-3, one thread, {args.repeats} repeats (order alternating). "
            f"Ratio = bare throughput / ours (1.0 = no overhead). 1-min load average {load0:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores (throughput is per CPU-second).")
    print(table)
    print(note)
    if not args.no_write:
        write_section(SECTION, table + "\n\n" + note, command="python -m bench.bench_train")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

"""ETTh1 forecasting with the Informer protocol: a GRU seq2seq forecast head, streamed through ONNX.

::

    .venv/bin/python -m experiments.etth1 --data-root ../shared/data --out out/experiments/etth1

Protocol (Informer, AAAI 2021): train rows [0, 8640), validation [8640, 11520), test [11520, 14400); a
window's input may reach back before its split's first row; z-score per column fitted on the training
rows; stride-1 windows; MSE/MAE on the normalised scale. ``univariate``: OT in, OT out; ``multivariate``:
all 7 columns in and out. Horizons 24 and 48.

Model: a stateful GRU whose head predicts, at every frame, the next ``H`` values of the targets
(``rnnstream.models.rnn`` task ``forecast``). Training windows are ``--window`` frames with the loss on every frame
(``forecast_loss="all"``); validation and test score the forecast made at the window's last frame, i.e.
from the stream's state after consuming the ``--window`` input rows. Model selection (best epoch) uses the
validation loss only. ``--residual``: the head predicts the change from the current (normalised) value
(``ModelConfig.residual``); with ``--seasonal-period P`` (``-1``: the data's daily period, 24) the change from
seasonal-naive; ``--time-features hour_of_day,day_of_week``: calendar covariates derived from each row's
timestamp (streamable; inputs only, never targets); ``--input-diff``: the GRU sees each value's change since the
previous hour (level-free inputs: ETTh1's test period sits at other levels than its training period);
``--level-shift S``: training-only augmentation adding a random level ``N(0, S^2)`` (in training standard
deviations) to each window's inputs and targets. ``--seeds 0,1,2``:
one run per seed; tables give the mean and the spread (min-max).

Streaming check: every test window is a stream of raw table rows (the CSV read by the sensor featurizer)
pushed in 24-row chunks through an onnxruntime StreamSession (all windows batched with ``step_streams``);
its final forecast is scored like the offline PyTorch one, and the max difference is reported.
Baselines, scored on the same test windows: persistence (repeat each window's last value) and seasonal-naive
(each step's value 24 hours earlier). Skips when ETTh1.csv is absent.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from experiments._common import base_parser, featurized, log, setup_threads, write_json

PUBLISHED = {  # Informer paper (updated tables), MSE/MAE on the normalised scale; see ../shared/data/README.md
    ("univariate", 24): {"Informer": (0.098, 0.247), "LSTMa": (0.114, 0.272)},
    ("univariate", 48): {"Informer": (0.158, 0.319), "LSTMa": (0.193, 0.358)},
    ("multivariate", 24): {"Informer": (0.577, 0.549), "LSTMa": (0.650, 0.624)},
    ("multivariate", 48): {"Informer": (0.685, 0.625), "LSTMa": (0.702, 0.675)},
}


def build_parser():
    p = base_parser("etth1", "ETTh1 forecasting (Informer protocol) with a streaming GRU, checked through ONNX")
    p.add_argument("--data-root", default=None, help="shared data folder (default: ../shared/data from the repo root)")
    p.add_argument("--settings", default="univariate,multivariate")
    p.add_argument("--horizons", default="24,48")
    p.add_argument("--window", type=int, default=96, help="input length (frames = hours)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--residual", action="store_true", help="head predicts the change from the current value")
    p.add_argument("--level-shift", type=float, default=0.0, help="level-shift augmentation sigma (training only)")
    p.add_argument("--seasonal-period", type=int, default=0,
                   help="with --residual: predict the change from the value this many frames earlier (-1: daily)")
    p.add_argument("--input-diff", action="store_true", help="feed the GRU each value's change since the last hour")
    p.add_argument("--time-features", default="", help="calendar covariates, e.g. hour_of_day,day_of_week")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: --seed)")
    p.add_argument("--forecast-loss", default="all", choices=["all", "last"])
    p.add_argument("--chunk-rows", type=int, default=24, help="rows per streamed chunk")
    return p


def stream_windows(onnx_backend: Any, ts: np.ndarray, values: np.ndarray, starts: np.ndarray, window: int,
                   chunk_rows: int, progress: bool) -> tuple[np.ndarray, list[float]]:
    """Push each window's raw rows through its own session, ``chunk_rows`` at a time, all windows batched.

    Returns the final forecasts ``[N, H, Dt]`` (normalised scale) and the wall time of each batched round (ms).
    """
    from tqdm.auto import tqdm

    from rnnstream.pipeline.batching import step_streams
    from rnnstream.pipeline.streaming import SensorChunk, StreamSession

    info = onnx_backend.info
    h, d = info.model_config.horizon, len(info.model_config.target_dims)
    sessions = [StreamSession(onnx_backend, stream_id=str(s)) for s in starts]
    rounds = []
    for a in tqdm(range(0, window, chunk_rows), desc="stream test windows (onnxruntime)",
                  disable=not (progress and sys.stderr.isatty()),
                  file=sys.stderr, dynamic_ncols=True):
        b = min(a + chunk_rows, window)
        chunks = [SensorChunk(ts[s + a: s + b], values[s + a: s + b]) for s in starts]
        t0 = time.perf_counter()
        step_streams(sessions, chunks)
        rounds.append((time.perf_counter() - t0) * 1e3)
    out = np.stack([np.asarray(s.last_output, dtype=np.float64) for s in sessions])
    return out.reshape(len(sessions), h, d), rounds


def run_setting(name: str, horizon: int, example: Any, fc: Any, ts: np.ndarray, raw: np.ndarray, args: Any,
                out_dir: str, seed: int) -> dict[str, Any]:
    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.api import load_backend
    from rnnstream.models.data import forecast_data
    from rnnstream.models.train import TrainConfig, forecast_predictions, train
    from rnnstream.datasets import ETT_SPLITS

    dims = list(range(len(fc.sensor.columns)))  # the table's channels; calendar covariates are inputs only
    common = dict(window=args.window, horizon=horizon, target_dims=dims, feature_config=fc)
    train_d = forecast_data([example], rows=ETT_SPLITS["train"], last_only=args.forecast_loss == "last", **common)
    val_d = forecast_data([example], rows=ETT_SPLITS["val"], last_only=True, **common)
    test_d = forecast_data([example], rows=ETT_SPLITS["test"], last_only=True, **common)
    stats = train_d.fit_stats()  # the Informer scaler: training rows only
    tcfg = TrainConfig(cell="gru", hidden_size=args.hidden, num_layers=args.layers, dropout=args.dropout,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       lr_schedule="cosine", patience=args.patience, seed=seed, device="cpu",
                       progress=False if args.no_progress else None, residual=args.residual,
                       seasonal_period=args.seasonal_period, input_diff=args.input_diff,
                       level_shift=args.level_shift)
    os.makedirs(out_dir, exist_ok=True)
    ckpt = os.path.join(out_dir, "model.pt")
    t0 = time.perf_counter()
    result = train(train_d, tcfg, val_data=val_d, test_data=test_d, stats=stats, feature_config=fc,
                   checkpoint=ckpt, plots_dir=out_dir)
    train_s = time.perf_counter() - t0
    test_m = result.metrics["test"]
    val_m = result.metrics["val"]
    pred_off, truth = forecast_predictions(result.model, test_d)

    onnx_path = os.path.join(out_dir, "model.onnx")
    export_onnx(ckpt, onnx_path)
    backend = load_backend(onnx_path, provider="cpu", threads=args.threads)
    starts = test_d.starts.numpy()
    t0 = time.perf_counter()
    pred_stream, rounds = stream_windows(backend, ts, raw, starts, args.window, args.chunk_rows,
                                         progress=not args.no_progress)
    stream_s = time.perf_counter() - t0
    mse_s = float(np.mean((pred_stream - truth) ** 2))
    mae_s = float(np.mean(np.abs(pred_stream - truth)))
    return {
        "setting": name, "horizon": horizon, "window": args.window, "channels": list(fc.sensor.columns),
        "n_train_windows": len(train_d), "n_val_windows": len(val_d), "n_test_windows": len(test_d),
        "test_mse_offline_torch": test_m["mse"], "test_mae_offline_torch": test_m["mae"],
        "test_mse_streaming_onnx": mse_s, "test_mae_streaming_onnx": mae_s,
        "max_abs_forecast_diff_stream_vs_offline": float(np.max(np.abs(pred_stream - pred_off))),
        "persistence_mse": test_m["persistence_mse"], "persistence_mae": test_m["persistence_mae"],
        "seasonal_naive_mse": test_m.get("seasonal_naive_mse"), "seasonal_naive_mae": test_m.get("seasonal_naive_mae"),
        "seed": seed,
        "val_mse": val_m["mse"], "val_mae": val_m["mae"],
        "published": {k: {"mse": v[0], "mae": v[1]} for k, v in PUBLISHED[(name, horizon)].items()},
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
        "train_seconds": train_s, "stream_seconds": stream_s, "stream_round_ms": rounds,
        "model": result.model.config.to_dict(), "history": result.history,
    }


def _features(args: Any, csv: str, out: str) -> tuple[Any, Any]:
    """The Beam-featurized ETTh1 dataset (cached under ``OUT/features-<covariates>``) and its feature config."""
    from dataclasses import replace

    from rnnstream import datasets as D

    covariates = tuple(c.strip() for c in args.time_features.split(",") if c.strip())
    base = D.ett_feature_config()
    cfg = replace(base, sensor=replace(base.sensor, time_features=covariates))
    feat_dir = os.path.join(out, "features" + ("-" + "-".join(covariates) if covariates else ""))
    return featurized([csv], feat_dir, cfg), cfg


def _spread(values: list[float]) -> str:
    mean = float(np.mean(values))
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ({min(values):.4f}-{max(values):.4f})"


def _table(results: list[dict[str, Any]]) -> str:
    from rnnstream.stream_eval import format_table

    rows = []
    for key in dict.fromkeys((r["setting"], r["horizon"]) for r in results):
        rs = [r for r in results if (r["setting"], r["horizon"]) == key]
        inf = rs[0]["published"]["Informer"]
        sn = rs[0]["seasonal_naive_mse"]
        rows.append([f"{key[0]} h{key[1]}", _spread([r["test_mse_offline_torch"] for r in rs]),
                     _spread([r["test_mae_offline_torch"] for r in rs]),
                     _spread([r["test_mse_streaming_onnx"] for r in rs]),
                     f"{max(r['max_abs_forecast_diff_stream_vs_offline'] for r in rs):.1e}",
                     f"{rs[0]['persistence_mse']:.4f}", "-" if sn is None else f"{sn:.4f}", f"{inf['mse']:.3f}",
                     f"{len(rs)}"])
    return format_table(rows, ["setting", "GRU MSE (test)", "GRU MAE", "streamed MSE (onnx)", "max |diff|",
                               "persistence MSE", "seasonal-naive MSE", "Informer MSE", "seeds"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_threads(args.threads)
    from rnnstream import datasets as D
    from rnnstream.models.data import select_channels, sub_config
    from rnnstream.pipeline.sensors import read_sensor_table

    try:
        csv = D.etth1_path(args.data_root)
    except ValueError as exc:
        print(f"SKIP: {exc}")
        return 0
    out = os.path.abspath(args.out)
    ds, cfg = _features(args, csv, out)
    if len(ds.examples) != 1:
        print(f"error: expected ETTh1 as one gap-free series, got {len(ds.examples)} segments", file=sys.stderr)
        return 2
    ts_all, raw_all = read_sensor_table(csv, cfg)
    n_cols, seeds = len(cfg.sensor.columns), [int(x) for x in (args.seeds or str(args.seed)).split(",")]
    covariates = list(range(n_cols, cfg.dim))
    results = []
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        if setting not in ("univariate", "multivariate"):
            print(f"error: unknown setting {setting!r}", file=sys.stderr)
            return 2
        cols = [n_cols - 1] if setting == "univariate" else list(range(n_cols))  # OT is the last column
        example = select_channels(ds.examples, cols + covariates)[0]
        fc = sub_config(ds.config, cols + covariates)
        for h in [int(x) for x in args.horizons.split(",") if x.strip()]:
            for seed in seeds:
                log(f"== {setting} h{h} seed {seed}: window {args.window}, GRU {args.layers}x{args.hidden}, residual "
                    f"{args.residual} (period {args.seasonal_period}), covariates {args.time_features or '-'}")
                run_dir = os.path.join(out, f"{setting}_h{h}", f"seed{seed}")
                r = run_setting(setting, h, example, fc, ts_all, raw_all[:, cols], args, run_dir, seed)
                log(f"   test MSE/MAE {r['test_mse_offline_torch']:.4f}/{r['test_mae_offline_torch']:.4f} "
                    f"(streamed {r['test_mse_streaming_onnx']:.4f}); val {r['val_mse']:.4f}; persistence "
                    f"{r['persistence_mse']:.4f}, seasonal-naive {r['seasonal_naive_mse']:.4f} "
                    f"({r['train_seconds']:.0f} s)")
                results.append(r)
                write_json(os.path.join(run_dir, "result.json"), r)
    print(_table(results))
    write_json(os.path.join(out, "results.json"), {
        "command": "python -m experiments.etth1 " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": [{k: v for k, v in r.items() if k not in ("history", "stream_round_ms")} for r in results],
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

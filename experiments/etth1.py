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
(``ModelConfig.residual``); ``--level-shift S``: training-only augmentation adding a random level
``N(0, S^2)`` (in training standard deviations) to each window's inputs and targets.

Streaming check: every test window is a stream of raw table rows (the CSV read by the sensor featurizer)
pushed in 24-row chunks through an onnxruntime StreamSession (all windows batched with ``step_streams``);
its final forecast is scored like the offline PyTorch one, and the max difference is reported.
Baseline: persistence (repeat each window's last value). Skips when ETTh1.csv is absent.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from experiments._common import base_parser, log, setup_threads, write_json

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
    p.add_argument("--forecast-loss", default="all", choices=["all", "last"])
    p.add_argument("--chunk-rows", type=int, default=24, help="rows per streamed chunk")
    return p


def stream_windows(onnx_backend: Any, ts: np.ndarray, values: np.ndarray, starts: np.ndarray, window: int,
                   chunk_rows: int, progress: bool) -> tuple[np.ndarray, list[float]]:
    """Push each window's raw rows through its own session, ``chunk_rows`` at a time, all windows batched.

    Returns the final forecasts ``[N, H, Dt]`` (normalised scale) and the wall time of each batched round (ms).
    """
    from tqdm.auto import tqdm

    from rnnstream.pipeline.streaming import SensorChunk, StreamSession, step_streams

    info = onnx_backend.info
    h, d = info.model_config.horizon, len(info.model_config.target_dims)
    sessions = [StreamSession(onnx_backend, stream_id=str(s)) for s in starts]
    rounds = []
    for a in tqdm(range(0, window, chunk_rows), desc="stream test windows (onnxruntime)", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True):
        b = min(a + chunk_rows, window)
        chunks = [SensorChunk(ts[s + a: s + b], values[s + a: s + b]) for s in starts]
        t0 = time.perf_counter()
        step_streams(sessions, chunks)
        rounds.append((time.perf_counter() - t0) * 1e3)
    out = np.stack([np.asarray(s.last_output, dtype=np.float64) for s in sessions])
    return out.reshape(len(sessions), h, d), rounds


def run_setting(name: str, horizon: int, example: Any, fc: Any, ts: np.ndarray, raw: np.ndarray, args: Any,
                out_dir: str) -> dict[str, Any]:
    from rnnstream.export.onnx_export import export_onnx
    from rnnstream.api import load_backend
    from rnnstream.models.data import forecast_data
    from rnnstream.models.train import TrainConfig, forecast_predictions, train
    from rnnstream.datasets import ETT_SPLITS

    dims = list(range(fc.dim))
    common = dict(window=args.window, horizon=horizon, target_dims=dims, feature_config=fc)
    train_d = forecast_data([example], rows=ETT_SPLITS["train"], last_only=args.forecast_loss == "last", **common)
    val_d = forecast_data([example], rows=ETT_SPLITS["val"], last_only=True, **common)
    test_d = forecast_data([example], rows=ETT_SPLITS["test"], last_only=True, **common)
    stats = train_d.fit_stats()  # the Informer scaler: training rows only
    tcfg = TrainConfig(cell="gru", hidden_size=args.hidden, num_layers=args.layers, dropout=args.dropout,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       lr_schedule="cosine", patience=args.patience, seed=args.seed, device="cpu",
                       progress=not args.no_progress, residual=args.residual, level_shift=args.level_shift)
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
        "val_mse": val_m["mse"], "val_mae": val_m["mae"],
        "published": {k: {"mse": v[0], "mae": v[1]} for k, v in PUBLISHED[(name, horizon)].items()},
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
        "train_seconds": train_s, "stream_seconds": stream_s, "stream_round_ms": rounds,
        "model": result.model.config.to_dict(), "history": result.history,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_threads(args.threads)
    from rnnstream.models.data import select_channels, sub_config
    from rnnstream.pipeline.dataset import read_dataset
    from rnnstream.pipeline.sensors import read_sensor_table
    from rnnstream import datasets as D
    from rnnstream.demo import featurize_dataset, format_table

    try:
        csv = D.etth1_path(args.data_root)
    except ValueError as exc:
        print(f"SKIP: {exc}")
        return 0
    out = os.path.abspath(args.out)
    feat_dir = os.path.join(out, "features")
    cfg = D.ett_feature_config()
    if os.path.exists(os.path.join(feat_dir, "summary.json")):
        ds = read_dataset(feat_dir)
    else:
        log(f"featurize (Beam): {csv} -> {feat_dir}")
        ds = featurize_dataset([csv], feat_dir, cfg)
    if len(ds.examples) != 1:
        print(f"error: expected ETTh1 as one gap-free series, got {len(ds.examples)} segments", file=sys.stderr)
        return 2
    ts_all, raw_all = read_sensor_table(csv, cfg)
    results = []
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        if setting not in ("univariate", "multivariate"):
            print(f"error: unknown setting {setting!r}", file=sys.stderr)
            return 2
        dims = [cfg.dim - 1] if setting == "univariate" else list(range(cfg.dim))  # OT is the last column
        example = select_channels(ds.examples, dims)[0]
        fc = sub_config(ds.config, dims)
        for h in [int(x) for x in args.horizons.split(",") if x.strip()]:
            log(f"== {setting} h{h}: window {args.window}, GRU {args.layers}x{args.hidden}, residual {args.residual}, "
                f"level shift {args.level_shift}")
            r = run_setting(setting, h, example, fc, ts_all, raw_all[:, dims], args,
                            os.path.join(out, f"{setting}_h{h}"))
            log(f"   test MSE/MAE offline {r['test_mse_offline_torch']:.4f}/{r['test_mae_offline_torch']:.4f}  "
                f"streamed {r['test_mse_streaming_onnx']:.4f}/{r['test_mae_streaming_onnx']:.4f}  "
                f"persistence {r['persistence_mse']:.4f}/{r['persistence_mae']:.4f}  ({r['train_seconds']:.0f} s)")
            results.append(r)
            write_json(os.path.join(out, f"{setting}_h{h}", "result.json"), r)

    rows = []
    for r in results:
        inf = r["published"]["Informer"]
        rows.append([f"{r['setting']} h{r['horizon']}", f"{r['test_mse_offline_torch']:.4f}/{r['test_mae_offline_torch']:.4f}",
                     f"{r['test_mse_streaming_onnx']:.4f}/{r['test_mae_streaming_onnx']:.4f}",
                     f"{r['max_abs_forecast_diff_stream_vs_offline']:.1e}",
                     f"{r['persistence_mse']:.4f}/{r['persistence_mae']:.4f}", f"{inf['mse']:.3f}/{inf['mae']:.3f}"])
    print(format_table(rows, ["setting", "GRU offline MSE/MAE", "GRU streamed (onnx)", "max |diff|",
                              "persistence", "Informer (published)"]))
    write_json(os.path.join(out, "results.json"), {
        "command": "python -m experiments.etth1 " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": [{k: v for k, v in r.items() if k not in ("history", "stream_round_ms")} for r in results],
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

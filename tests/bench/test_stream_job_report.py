"""bench_stream_job's row: marginal costs per chunk, the worker processes' part of the job's CPU, the verdict."""

from __future__ import annotations

import pytest

from bench.bench_stream_job import summarize_mode


def _round(job_full: float, job_small: float, workers_full: float, workers_small: float) -> dict:
    summary = {"model_step_us": 50, "stateful_fn_us": 200}
    return {"job_full": 5.0, "job_small": 1.0, "job_cpu_full": job_full, "job_cpu_small": job_small,
            "job_workers_cpu_full": workers_full, "job_workers_cpu_small": workers_small,
            "floor_cpu_full": 1.9, "floor_cpu_small": 1.0, "push_cpu_us": 50.0,
            "load_before": 0.5, "load_after": 0.7, "summary_full": summary}


def test_marginal_costs_and_the_workers_part():
    # 9,000 more chunks in the full run: 4.5 s more CPU = 500 us per chunk, 3.6 s of it in the workers = 400 us
    rs = {"rounds": [_round(6.0, 1.5, 4.5, 0.9)] * 3}
    row, verdict = summarize_mode("multi_processing", rs, 10000, 1000)
    assert row[5] == "2000 (2000-2000)"  # chunks per CPU-second
    assert row[6] == "500 (500-500)" and row[7] == "400 (400-400)"
    assert row[8] == "100 (100-100)"  # floor (1): 0.9 s / 9,000
    assert verdict["ratio"] == pytest.approx(500 / 150)
    assert verdict["per_core"] == pytest.approx(2000)


def test_one_process_has_no_workers_column():
    row, _ = summarize_mode("in_memory", {"rounds": [_round(6.0, 1.5, 0.0, 0.0)]}, 10000, 1000)
    assert row[7] == "-"

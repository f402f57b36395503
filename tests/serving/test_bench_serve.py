"""The load benchmark runs end to end (tiny levels; no timing asserted here: targets live in bench/)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_bench_serve_tiny_run(capsys):
    from bench import bench_serve

    rc = bench_serve.main(["--levels", "4", "--levels-batch1", "", "--saturate-streams", "4", "--window", "2",
                           "--seconds", "1", "--no-write"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line for line in out.splitlines() if line.startswith("| realtime") or line.startswith("| saturate")]
    assert len(rows) >= 3
    realtime = rows[0].split("|")
    assert realtime[2].strip() == "4" and realtime[15].strip() == "0"  # 4 streams, nothing lost

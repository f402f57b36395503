"""The load benchmark runs end to end (tiny levels; no timing asserted here: targets live in bench/)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_bench_serve_tiny_run(capsys):
    from bench import bench_serve

    rc = bench_serve.main(["--levels", "4", "--levels-json", "4", "--saturate-streams", "4", "--window", "2",
                           "--seconds", "1", "--idle", "32", "--repeats", "2", "--no-write"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line.split("|") for line in out.splitlines() if line.startswith(("| realtime", "| saturate"))]
    assert len(rows) >= 5  # two realtime rows, three saturation rows (defaults, --workers 1, --max-batch 1)
    realtime = rows[0]
    assert realtime[4].strip() == "4" and realtime[18].strip() == "0"  # 4 streams, nothing lost
    assert "Idle streams: 32 open ->" in out
    assert "- 4 real-time streams, 2 run(s): kept up in 2;" in out  # the target rows twice: median (min-max)
    assert "- saturation, 2 run(s): " in out and "Repeats of the target rows" in out


def test_plot_of_the_levels_is_a_png(tmp_path):
    from bench import bench_serve

    rows = [dict(mode="realtime", server="defaults", replies="binary", streams=n, server_us=us, floor_us=30.0,
                 p50_ms=5.0, p99_ms=p99) for n, us, p99 in ((1, 900.0, 7.0), (64, 250.0, 8.0), (1000, 100.0, 14.0),
                                                           (1000, 110.0, 15.0))]
    rows.append(dict(mode="saturate", server="defaults", replies="binary", streams=512, server_us=75.0, floor_us=30.0,
                     p50_ms=90.0, p99_ms=120.0))  # not a real-time level: not plotted
    path = bench_serve.plot_levels(rows, tmp_path / "img" / "serve.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

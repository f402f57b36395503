"""bench_beam_featurize's extrapolation line: a line through each mode's fixed-cost and full runs."""

from __future__ import annotations

import pytest

from bench.bench_beam_featurize import SMALL, _extrapolation

MEM, MP = "direct in_memory", "direct multi_processing (2 workers)"


def _times(mem_full: float, mem_small: float, mp_full: float, mp_small: float) -> dict:
    return {MEM: [mem_full], f"{MEM}, {SMALL} files (fixed cost)": [mem_small],
            MP: [mp_full], f"{MP}, {SMALL} files (fixed cost)": [mp_small]}


def test_the_speed_up_limit_and_the_corpus_size_where_it_reaches_the_target():
    n, hours = 1000 + SMALL, 10.0
    # in_memory: 0 s fixed + 10 ms per file; multi_processing: 2 s fixed + 5 ms per file (limit 2x)
    line = _extrapolation(_times(10.0 + 0.2, 0.2, 2.0 + 5.1, 2.0 + 0.1), n, hours * 3600)
    assert "tends to 2.00x" in line
    # 0.01 f = 1.6 (2 + 0.005 f) -> f = 3.2 / 0.002 = 1600 files = 1600 / 1020 * 10 h
    assert f"from about {1600 / n * hours:.0f} h" in line


def test_no_size_is_claimed_when_the_limit_is_below_the_target():
    line = _extrapolation(_times(10.2, 0.2, 2.0 + 7.1, 2.0 + 0.1), 1020, 36000)
    assert "tends to 1.43x" in line and "would reach" not in line


@pytest.mark.parametrize("drop", [f"{MEM}, {SMALL} files (fixed cost)", f"{MP}, {SMALL} files (fixed cost)"])
def test_nothing_without_the_fixed_cost_runs(drop):
    times = _times(10.2, 0.2, 7.1, 2.1)
    del times[drop]
    assert _extrapolation(times, 1020, 36000) == ""


def test_a_corpus_of_another_size_writes_its_own_section():
    from bench.bench_beam_featurize import DEFAULT_HOURS, SECTION, section_name

    assert section_name(DEFAULT_HOURS) == SECTION
    assert section_name(24.0) == f"{SECTION}, 24 h corpus" != SECTION


def test_the_recorded_command_has_the_arguments_given(monkeypatch):
    from bench._report import command_line

    assert command_line("bench.x", ["--hours", "24"]) == "python -m bench.x --hours 24"
    monkeypatch.setattr("sys.argv", ["bench/x.py", "--hours", "24"])  # python -m bench.x --hours 24
    assert command_line("bench.x", None) == "python -m bench.x --hours 24"
    monkeypatch.setattr("sys.argv", ["bench/x.py"])
    assert command_line("bench.x", None) == "python -m bench.x"

"""Unit tests of the shared Beam pieces: stats CombineFn, Parquet table, inputs, options."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from rnnstream.beam_jobs.common import (
    DASK_RUNNER,
    FeatureOptions,
    InputRecord,
    StatsCombineFn,
    examples_table,
    feature_config_from_options,
    in_memory_state_cache,
    resolve_runner_aliases,
    shard_of,
)
from rnnstream.beam_jobs.inputs import apply_label_pattern, compile_label_pattern, list_inputs, read_manifest
from rnnstream.pipeline.dataset import PARQUET_SCHEMA, Example
from rnnstream.pipeline.errors import ConfigError, DatasetError
from rnnstream.pipeline.stats import RunningStats

from .conftest import LABEL_PATTERN


def test_stats_combine_fn_merges_any_split_exactly():
    rng = np.random.default_rng(0)
    parts = [rng.normal(loc=3.0, scale=2.0, size=(n, 5)) for n in (1, 7, 30, 2, 11)]
    fn = StatsCombineFn(5)
    accs = []
    for chunk in (parts[:2], parts[2:3], parts[3:]):  # three "bundles"
        acc = fn.create_accumulator()
        for x in chunk:
            acc = fn.add_input(acc, x)
        accs.append(acc)
    merged = fn.extract_output(fn.merge_accumulators(accs))
    allx = np.concatenate(parts)
    assert merged.count == len(allx)
    np.testing.assert_allclose(merged.mean, allx.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.var, allx.var(axis=0), rtol=1e-12)
    # partial RunningStats are inputs too (per-shard statistics)
    again = fn.add_input(fn.create_accumulator(), RunningStats.of(allx))
    np.testing.assert_allclose(again.var, merged.var, rtol=1e-12)


def test_examples_table_equals_rows_from_to_row():
    rng = np.random.default_rng(1)
    examples = [Example(id=f"e{i}", path=f"p{i}.wav", features=rng.standard_normal((i + 1, 3)).astype(np.float32),
                        label=None if i == 1 else str(i), metadata={"k": i}) for i in range(4)]
    want = pa.Table.from_pylist([e.to_row() for e in examples], schema=PARQUET_SCHEMA)
    assert examples_table(examples).equals(want)


def test_runner_alias_and_stable_shards():
    assert resolve_runner_aliases(["--runner=DaskRunner", "--x"]) == [f"--runner={DASK_RUNNER}", "--x"]
    assert resolve_runner_aliases(["--runner", "DaskRunner"]) == ["--runner", DASK_RUNNER]
    assert resolve_runner_aliases(["--runner=DirectRunner"]) == ["--runner=DirectRunner"]
    # a default runner only where none is named
    assert resolve_runner_aliases(["--x"], "FnApiRunner") == ["--x", "--runner=FnApiRunner"]
    assert resolve_runner_aliases(["--runner", "DirectRunner"], "FnApiRunner") == ["--runner", "DirectRunner"]
    assert resolve_runner_aliases(["--runner=DaskRunner"], "FnApiRunner") == [f"--runner={DASK_RUNNER}"]
    assert shard_of("a/b.wav", 7) == shard_of("a/b.wav", 7) and 0 <= shard_of("a/b.wav", 7) < 7


def test_feature_flags_override_a_config_file(tmp_path):
    base = tmp_path / "fc.json"
    from rnnstream.pipeline.config import FeatureConfig

    FeatureConfig.audio_default(sample_rate=8000, n_mels=30, feature="mfcc").save(str(base))
    opts = PipelineOptions(["--feature-config", str(base), "--n-mfcc", "10", "--no-resample", "--stack", "3"]
                           ).view_as(FeatureOptions)
    cfg = feature_config_from_options(opts)
    assert (cfg.audio.sample_rate, cfg.audio.n_mels, cfg.audio.feature, cfg.audio.n_mfcc, cfg.audio.resample) == (
        8000, 30, "mfcc", 10, False)
    assert cfg.audio.stack == 3 and cfg.dim == 30  # 3 frames of 10 MFCCs side by side
    sensor = feature_config_from_options(
        PipelineOptions(["--sensor-columns", "a, b", "--rate-hz", "4", "--gap-policy", "flag"]).view_as(FeatureOptions))
    assert sensor.kind == "sensor" and sensor.sensor.columns == ("a", "b") and sensor.dim == 3
    with pytest.raises(ConfigError, match="do not apply to sensor"):
        feature_config_from_options(PipelineOptions(["--sensor-columns", "a", "--n-mels", "4"]).view_as(FeatureOptions))


def test_label_pattern_and_manifest(tmp_path):
    regex = compile_label_pattern(LABEL_PATTERN)
    rec = apply_label_pattern(InputRecord("/x/3_ann_12.wav", metadata={"split": "a"}), regex)
    assert (rec.label, rec.metadata) == ("3", {"split": "a", "speaker": "ann", "take": "12"})
    with pytest.raises(DatasetError, match="does not match"):
        apply_label_pattern(InputRecord("/x/readme.wav"), regex)
    with pytest.raises(ConfigError, match="not a valid regex"):
        compile_label_pattern("(?P<label>")
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "m.csv").write_text("path,label,speaker\na.wav,yes,ann\n")
    (rec,) = read_manifest(str(tmp_path / "m.csv"))
    assert (rec.path, rec.label, rec.metadata) == (str(tmp_path / "a.wav"), "yes", {"speaker": "ann"})
    # with --input, labels are joined from the manifest by path; unlisted files get none
    (tmp_path / "b.wav").write_bytes(b"")
    got = {r.path: r.label for r in list_inputs([str(tmp_path / "*.wav")], manifest=str(tmp_path / "m.csv"))}
    assert got == {str(tmp_path / "a.wav"): "yes", str(tmp_path / "b.wav"): None}
    (tmp_path / "dup.jsonl").write_text(json.dumps({"path": "a.wav"}) + "\n" + json.dumps({"path": "a.wav"}) + "\n")
    with pytest.raises(DatasetError, match="listed twice"):
        read_manifest(str(tmp_path / "dup.jsonl"))
    with pytest.raises(DatasetError, match="no 'path' column"):
        (tmp_path / "np.csv").write_text("file,label\na.wav,1\n")
        read_manifest(str(tmp_path / "np.csv"))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_with_a_byte_order_mark_is_read(tmp_path, suffix):
    """Spreadsheet exports start with a UTF-8 BOM; it must not hide the 'path' column or break the JSON."""
    manifest = tmp_path / f"m{suffix}"
    text = "path,label\na.wav,yes\n" if suffix == ".csv" else json.dumps({"path": "a.wav", "label": "yes"}) + "\n"
    manifest.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    (record,) = read_manifest(str(manifest))
    assert (record.path, record.label, record.metadata) == (str(tmp_path / "a.wav"), "yes", {})


def test_broken_links_are_listed_not_dropped(tmp_path):
    """Beam's local listing skips what it cannot stat; dangling links and loops must become inputs."""
    import os

    (tmp_path / "a.wav").write_bytes(b"x")
    os.symlink("gone.wav", tmp_path / "dangling.wav")
    os.symlink("loop2.wav", tmp_path / "loop1.wav")
    os.symlink("loop1.wav", tmp_path / "loop2.wav")
    names = ["a.wav", "dangling.wav", "loop1.wav", "loop2.wav"]
    assert [r.path for r in list_inputs([str(tmp_path)])] == [str(tmp_path / n) for n in names]
    assert [r.path for r in list_inputs([str(tmp_path / "*.wav")])] == [str(tmp_path / n) for n in names]
    assert [r.path for r in list_inputs([str(tmp_path / "dangling.wav")])] == [str(tmp_path / "dangling.wav")]


def test_check_input_path_refuses_names_and_special_files(tmp_path):
    import os

    from rnnstream.beam_jobs.inputs import check_input_path
    from rnnstream.pipeline.errors import FileNameError, SpecialFileError

    bad = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff.wav")
    with open(bad, "wb") as fh:
        fh.write(b"RIFF")
    with pytest.raises(FileNameError, match=r"bad\\xff\.wav: the file name is not valid UTF-8"):
        check_input_path(bad)
    assert 0 <= shard_of(bad, 4) < 4  # hashing the name does not fail either
    os.mkfifo(tmp_path / "p.wav")
    with pytest.raises(SpecialFileError, match="FIFO"):
        check_input_path(str(tmp_path / "p.wav"))
    assert check_input_path("gs://bucket/p.wav") is None  # remote paths are not stat-ed
    (tmp_path / "ok.wav").write_bytes(b"12345")
    assert check_input_path(str(tmp_path / "ok.wav")) == 5


def test_decode_limit_flags():
    import argparse

    from rnnstream.beam_jobs.options import DECODE_DEFAULTS, add_decode_arguments, audio_limits_from_options
    from rnnstream.pipeline.audio_io import DEFAULT_LIMITS, AudioLimits

    parser = argparse.ArgumentParser()
    add_decode_arguments(parser)
    assert audio_limits_from_options(parser.parse_args([])) == DEFAULT_LIMITS
    assert DECODE_DEFAULTS == {"max_seconds": DEFAULT_LIMITS.max_seconds, "max_decoded_mb": DEFAULT_LIMITS.max_bytes / 2**20,
                               "min_sample_rate": DEFAULT_LIMITS.min_rate}  # what --help says
    got = audio_limits_from_options(parser.parse_args(["--max-seconds", "0", "--max-decoded-mb", "2",
                                                       "--min-sample-rate", "0"]))
    assert got == AudioLimits(max_seconds=None, max_bytes=2 * 2**20, min_rate=1)
    with pytest.raises(ConfigError, match="--max-seconds must be >= 0"):
        audio_limits_from_options(parser.parse_args(["--max-seconds", "-1"]))


class _KeyedCount(beam.DoFn):
    """A keyed stateful DoFn: reads and writes a running count per key (what the stream job does per stream)."""

    STATE = ReadModifyWriteStateSpec("n", PickleCoder())

    def process(self, element, state=beam.DoFn.StateParam(STATE)):  # type: ignore[no-untyped-def]
        n = (state.read() or 0) + 1
        state.write(n)
        yield element[0], n


def _sizings_of_keyed_run(monkeypatch: pytest.MonkeyPatch, size_mb: int) -> int:
    """objsize sizings of a 3-key, 12-element stateful pipeline on the in-memory FnApiRunner; its outputs checked."""
    from apache_beam.runners.worker import statecache
    from apache_beam.testing.util import assert_that, equal_to

    calls = []
    real = statecache.get_deep_size
    monkeypatch.setattr(statecache, "get_deep_size", lambda *objs: calls.append(1) or real(*objs))
    want = [(f"k{k}", n) for k in range(3) for n in range(1, 5)]
    with in_memory_state_cache(size_mb):
        with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=in_memory"])) as p:
            counts = p | beam.Create([(f"k{i % 3}", i) for i in range(12)]) | beam.ParDo(_KeyedCount())
            assert_that(counts, equal_to(want))
    return len(calls)


def test_in_memory_state_cache_off_skips_the_sizing_and_changes_no_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    before = worker_handlers.STATE_CACHE_SIZE_MB
    sized_on = _sizings_of_keyed_run(monkeypatch, 100)  # the same counts either way (checked inside)
    sized_off = _sizings_of_keyed_run(monkeypatch, 0)
    assert worker_handlers.STATE_CACHE_SIZE_MB == before  # restored after each
    assert sized_on > 0 and sized_off == 0, (sized_on, sized_off)
    with pytest.raises(ConfigError, match="got -1"):
        with in_memory_state_cache(-1):
            pass

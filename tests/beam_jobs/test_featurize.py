"""`rnnstream featurize` on the DirectRunner: dead letters, parity with the offline featurizer, exact stats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rnnstream.beam_jobs import featurize, shards
from rnnstream.beam_jobs.common import DeadLetter
from rnnstream.pipeline.audio_io import load_audio
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import PARQUET_SCHEMA, read_dataset, shard_paths
from rnnstream.pipeline.errors import ConfigError, DatasetError
from rnnstream.pipeline.features import AudioFeaturizer
from rnnstream.pipeline.sensors import SensorFeaturizer, read_sensor_table

from .conftest import AUDIO_FLAGS, LABEL_PATTERN, RATE, label_of, read_jsonl, write_bad_audio, write_good_audio, write_sensor_table


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """One CLI run over 4 good files + 5 bad ones + 1 too-short file, into 2 shards."""
    root = tmp_path_factory.mktemp("mixed")
    corpus = root / "corpus"
    corpus.mkdir()
    good = write_good_audio(corpus)
    bad = write_bad_audio(corpus)
    short = corpus / "8_short_0.wav"  # 50 samples < one 10 ms hop (80 samples): no frame
    import soundfile as sf

    sf.write(short, np.zeros(50, np.float32), RATE, subtype="PCM_16")
    bad[short] = "EmptyAudioError"
    out = root / "out"
    argv = ["--input", str(corpus), "--output", str(out), *AUDIO_FLAGS, "--label-pattern", LABEL_PATTERN,
            "--num-shards", "2"]
    rc = featurize.main(argv)
    return rc, out, good, bad


def test_mixed_corpus_outputs_good_files_and_dead_letters_bad_ones(mixed_run, capsys):
    rc, out, good, bad = mixed_run
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (10, 4, 6)
    assert summary["inputs"] == summary["outputs"] + summary["dead_letters"]
    assert summary["examples"] == 4
    ds = read_dataset(str(out))
    assert sorted(e.path for e in ds.examples) == sorted(str(p) for p in good)
    dead = {d["path"]: d for d in read_jsonl(out / "dead_letter.jsonl")}
    assert set(dead) == {str(p) for p in bad}
    for path, kind in bad.items():
        letter = dead[str(path)]
        assert letter["kind"] == kind, letter
        assert path.name in letter["reason"]  # every reason names its file
    assert "SampleRateError" in summary["dead_letter_kinds"] and summary["dead_letter_kinds"]["CorruptAudioError"] == 2
    assert "NaN" in dead[str(next(p for p in bad if "nan" in p.name))]["reason"]


def test_features_equal_offline_featurizer_and_labels_come_from_the_name(mixed_run):
    _, out, good, _ = mixed_run
    ds = read_dataset(str(out))
    cfg = FeatureConfig.audio_default(sample_rate=RATE, n_mels=20, resample=False)
    assert ds.config == cfg
    fz = AudioFeaturizer(cfg)
    by_path = {e.path: e for e in ds.examples}
    for p in good:
        e = by_path[str(p)]
        np.testing.assert_array_equal(e.features, fz.featurize(load_audio(p, cfg)))
        label, meta = label_of(p)
        assert e.id == str(p) and e.label == label and e.metadata == meta
    # rows spread over the 2 shards, each a valid PARQUET_SCHEMA file
    shards = shard_paths(str(out))
    assert len(shards) == 2 and all(pq.read_schema(s).equals(PARQUET_SCHEMA) for s in shards)


def test_stats_json_equals_numpy_over_all_frames(mixed_run):
    _, out, _, _ = mixed_run
    ds = read_dataset(str(out))
    frames = np.concatenate([e.features for e in ds.examples]).astype(np.float64)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["count"] == frames.shape[0] == json.loads((out / "summary.json").read_text())["frames"]
    np.testing.assert_allclose(stats["mean"], frames.mean(axis=0), rtol=1e-6, atol=0)
    np.testing.assert_allclose(stats["var"], frames.var(axis=0), rtol=1e-6, atol=0)


def test_api_rerun_replaces_the_previous_output(mixed_run):
    _, out, good, _ = mixed_run
    cfg = FeatureConfig.audio_default(sample_rate=RATE, n_mels=20)
    summary = featurize.featurize_corpus([str(p) for p in good[:2]], str(out), cfg, num_shards=1)
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (2, 2, 0)
    assert summary["metrics"] == {"inputs": 2, "outputs": 2, "dead_letters": 0, "examples": 2,
                                  "frames": summary["frames"]}
    assert [Path(s).name for s in shard_paths(str(out))] == ["examples-00000-of-00001.parquet"]  # stale shards gone
    assert read_jsonl(out / "dead_letter.jsonl") == []
    assert {e.label for e in read_dataset(str(out)).examples} == {None}


def test_manifest_labels_metadata_and_missing_files(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    good = write_good_audio(corpus, n=2)
    manifest = tmp_path / "m.jsonl"
    rows = [{"path": f"c/{good[0].name}", "label": "yes", "split": "train"},
            {"path": str(good[1]), "label": "no", "split": "test"},
            {"path": "c/missing.wav", "label": "yes", "split": "train"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = FeatureConfig.audio_default(sample_rate=RATE, n_mels=20)
    summary = featurize.featurize_corpus(None, str(out), cfg, manifest=str(manifest))
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (3, 2, 1)
    ds = read_dataset(str(out))
    got = {Path(e.path).name: (e.label, e.metadata) for e in ds.examples}
    assert got == {good[0].name: ("yes", {"split": "train"}), good[1].name: ("no", {"split": "test"})}
    (dead,) = read_jsonl(out / "dead_letter.jsonl")
    assert dead["path"].endswith("missing.wav") and "missing.wav" in dead["reason"]


def test_sensor_tables_one_example_per_segment(tmp_path):
    corpus = tmp_path / "s"
    corpus.mkdir()
    write_sensor_table(corpus / "a.csv", gap_at=30, seed=1)
    write_sensor_table(corpus / "b.parquet", seed=2)
    (corpus / "c.csv").write_text("t,ax\n0.1,1.0\n0.2,2.0\n")  # no 'ay' column
    out = tmp_path / "out"
    rc = featurize.main(["--input", str(corpus), "--output", str(out), "--sensor-columns", "ax,ay",
                         "--timestamp-column", "t", "--rate-hz", "20", "--max-gap-s", "1.0"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"], summary["examples"]) == (3, 2, 1, 3)
    (dead,) = read_jsonl(out / "dead_letter.jsonl")
    assert dead["kind"] == "MissingColumnsError" and "'ay'" in dead["reason"]
    ds = read_dataset(str(out))
    cfg = FeatureConfig.sensor_default(["ax", "ay"], timestamp_column="t", rate_hz=20.0, max_gap_s=1.0)
    assert ds.config == cfg
    by_id = {e.id: e for e in ds.examples}
    assert set(by_id) == {f"{corpus / 'a.csv'}#seg0", f"{corpus / 'a.csv'}#seg1", f"{corpus / 'b.parquet'}#seg0"}
    for name in ("a.csv", "b.parquet"):
        segments = SensorFeaturizer(cfg).segments(*read_sensor_table(corpus / name, cfg))
        for k, seg in enumerate(segments):
            e = by_id[f"{corpus / name}#seg{k}"]
            np.testing.assert_array_equal(e.features, seg.values)
            assert e.metadata == {"segment": k, "start_time": float(seg.times[0])}


def test_bad_command_lines_fail_with_typed_errors(tmp_path, capsys):
    assert featurize.main(["--input", str(tmp_path / "nothing*.wav"), "--output", str(tmp_path / "o")]) == 2
    assert "matches no file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="label"):
        featurize.run(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--label-pattern", r"(\d)"])
    with pytest.raises(ConfigError, match="--output"):
        featurize.run(["--input", str(tmp_path)])
    with pytest.raises(ConfigError, match="n_mels"):
        featurize.run(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--n-mels", "0"])
    with pytest.raises(ConfigError, match="--no-such-flag"):
        featurize.run(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--no-such-flag", "3"])
    with pytest.raises(DatasetError, match="no inputs"):
        featurize.run(["--output", str(tmp_path / "o")])
    assert featurize.main(["--help"]) == 0 and "--label-pattern" in capsys.readouterr().out


def test_dead_letter_record_shape():
    err = ValueError("x.wav: broken")
    assert DeadLetter.of("x.wav", err).to_dict() == {"path": "x.wav", "reason": "x.wav: broken", "kind": "ValueError"}


def test_all_bad_corpus_writes_no_shard_but_accounts_for_every_input(tmp_path):
    corpus = tmp_path / "bad"
    corpus.mkdir()
    bad = write_bad_audio(corpus)
    out = tmp_path / "out"
    summary = featurize.featurize_corpus([str(corpus)], str(out), FeatureConfig.audio_default(sample_rate=RATE, n_mels=20,
                                                                                               resample=False))
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"], summary["shards"]) == (5, 0, 5, [])
    assert shard_paths(str(out)) == []
    assert json.loads((out / "stats.json").read_text())["count"] == 0
    assert {d["path"] for d in read_jsonl(out / "dead_letter.jsonl")} == {str(p) for p in bad}


@pytest.mark.slow
def test_real_fsdd_recordings_equal_offline_features(fsdd_dir, tmp_path):
    """200 real FSDD recordings (8 kHz): every row equals the offline featurizer; labels from the names."""
    files = sorted(fsdd_dir.glob("*.wav"))[::10]
    cfg = FeatureConfig.audio_default(sample_rate=8000, n_mels=40)
    summary = featurize.featurize_corpus([str(p) for p in files], str(tmp_path / "out"), cfg,
                                         label_pattern=LABEL_PATTERN)
    assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (len(files), len(files), 0)
    ds = read_dataset(str(tmp_path / "out"))
    fz = AudioFeaturizer(cfg)
    for e in ds.examples:
        np.testing.assert_array_equal(e.features, fz.featurize(load_audio(e.path, cfg)))
        assert e.label == Path(e.path).name.split("_")[0]
    frames = np.concatenate([e.features for e in ds.examples]).astype(np.float64)
    np.testing.assert_allclose(ds.stats.mean, frames.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ds.stats.var, frames.var(axis=0), rtol=1e-6)


def _records(n: int) -> list:
    from rnnstream.beam_jobs.common import InputRecord

    return [InputRecord(f"/c/{i:03d}.wav") for i in reversed(range(n))]


def test_plan_shards_deals_every_record_to_exactly_one_balanced_task():
    tasks = shards.plan_shards(_records(10), 3)
    assert [t.index for t in tasks] == [0, 1, 2]
    assert [len(t.records) for t in tasks] == [4, 3, 3]
    paths = [r.path for t in tasks for r in t.records]
    assert sorted(paths) == sorted(r.path for r in _records(10)) and len(set(paths)) == 10
    assert [r.path for r in tasks[1].records] == ["/c/001.wav", "/c/004.wav", "/c/007.wav"]  # round-robin, sorted
    assert [len(t.records) for t in shards.plan_shards(_records(2), 4)] == [1, 1, 0, 0]
    with pytest.raises(ConfigError, match="num_shards must be >= 1, got 0"):
        shards.plan_shards(_records(2), 0)


@pytest.mark.parametrize("paths", [["gs://bucket/a/x.wav", "gs://bucket/a/b/y.wav", "gs://bucket/ab.wav"],
                                   ["/d/one.wav"], ["rel.wav", "sub/rel2.wav"], [], ["/d/odd\0name.wav", "/d/n.wav"]])
def test_a_shard_task_keeps_its_records_exactly_through_pickling(paths):
    import pickle

    from rnnstream.beam_jobs.common import InputRecord

    records = tuple(InputRecord(p, None if i % 2 else f"L{i}", {"k": i} if i == 1 else {}) for i, p in enumerate(paths))
    task = shards.ShardTask(7, records)
    back = pickle.loads(pickle.dumps(task))
    assert back == task and back.index == 7 and len(back) == len(paths)
    assert back.records == records
    plain = shards.ShardTask(1, tuple(InputRecord(p) for p in paths))
    assert pickle.loads(pickle.dumps(plain)).records == tuple(InputRecord(p) for p in paths)


def test_default_shards_follow_the_corpus_size_and_the_workers():
    assert shards.default_num_shards(8000) == 32  # one per 250 inputs
    assert shards.default_num_shards(10) == 1
    assert shards.default_num_shards(10, min_shards=8) == 8  # e.g. 4 per worker, so both finish together
    assert shards.default_num_shards(3, min_shards=8) == 3  # never more shards than inputs
    assert shards.default_num_shards(0) == 1
    assert shards.default_num_shards(10**6) == 64 and shards.default_num_shards(10**6, min_shards=128) == 128
    assert shards.default_num_shards(1000, inputs_per_shard=100) == 10
    with pytest.raises(ConfigError, match="--inputs-per-shard must be >= 1, got 0"):
        shards.default_num_shards(10, inputs_per_shard=0)


def test_shards_resolved_from_the_beam_options():
    from apache_beam.options.pipeline_options import PipelineOptions

    from rnnstream.beam_jobs.options import resolve_runner_aliases

    def resolved(args: list[str], n: int = 100, **kw) -> int:
        return shards.resolve_num_shards(n, kw.get("num_shards"), kw.get("per"),
                                         PipelineOptions(resolve_runner_aliases(args)))

    assert resolved([]) == 1
    assert resolved(["--direct_num_workers=2", "--direct_running_mode=multi_processing"]) == 8
    assert resolved(["--direct_num_workers=2", "--direct_running_mode=multi_processing"], n=8000) == 32
    assert resolved(["--runner=DaskRunner", "--dask_client_address=tcp://h:1", "--dask_npartitions=3"]) == 3
    assert resolved([], per=10) == 10 and resolved([], num_shards=5) == 5
    with pytest.raises(ConfigError, match="--num-shards must be >= 1, got 0"):
        resolved([], num_shards=0)


def test_inputs_per_shard_flag_sets_the_shards(audio_corpus, tmp_path):
    root, _, _ = audio_corpus
    out = tmp_path / "out"
    assert featurize.main(["--input", str(root), "--output", str(out), *AUDIO_FLAGS, "--inputs-per-shard", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["outputs"] + summary["dead_letters"]) == (9, 9)
    assert all(name.endswith("-of-00003.parquet") for name in summary["shards"])  # ceil(9 / 3)


def test_jobs_without_a_runner_leave_no_temporary_folders(audio_corpus, tmp_path, monkeypatch):
    """No --runner: the batch jobs run on the FnApiRunner directly; the DirectRunner's first try at the
    PrismRunner (a binary it would download) left three folders in the temporary directory per run."""
    import tempfile

    from rnnstream.beam_jobs import infer

    root, _, _ = audio_corpus
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    summary = featurize.featurize_corpus([str(root)], str(tmp_path / "out"), FeatureConfig.audio_default(
        sample_rate=RATE, n_mels=20), label_pattern=LABEL_PATTERN)
    assert summary["inputs"] == 9 and summary["outputs"] + summary["dead_letters"] == 9
    assert sorted(p.name for p in temp.iterdir()) == []
    assert infer.BATCH_DEFAULT_RUNNER == featurize.BATCH_DEFAULT_RUNNER == "FnApiRunner"


def test_featurize_corpus_transform_on_a_pcollection_equals_the_job(audio_corpus, tmp_path):
    """FeaturizeCorpus (records already in a PCollection, grouped by crc32 shard) gives the job's dataset."""
    import apache_beam as beam

    from rnnstream.beam_jobs.inputs import list_inputs

    root, good, _ = audio_corpus
    cfg = FeatureConfig.audio_default(sample_rate=RATE, n_mels=20, resample=False)
    job = featurize.featurize_corpus([str(root)], str(tmp_path / "job"), cfg, num_shards=2)
    with beam.Pipeline() as p:
        _ = (p | beam.Create(list_inputs([str(root)]))
             | featurize.FeaturizeCorpus(str(tmp_path / "t"), cfg, num_shards=2))
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert {k: summary[k] for k in ("inputs", "outputs", "dead_letters", "frames")} == {
        k: job[k] for k in ("inputs", "outputs", "dead_letters", "frames")} and job["outputs"] == len(good)
    a, b = read_dataset(str(tmp_path / "job")), read_dataset(str(tmp_path / "t"))
    assert {e.id: e.features.tobytes() for e in a.examples} == {e.id: e.features.tobytes() for e in b.examples}
    np.testing.assert_allclose(a.stats.mean, b.stats.mean, rtol=1e-12)
    np.testing.assert_allclose(a.stats.var, b.stats.var, rtol=1e-12)
    assert read_jsonl(tmp_path / "job" / "dead_letter.jsonl") == read_jsonl(tmp_path / "t" / "dead_letter.jsonl")


def test_the_featurize_path_in_a_fresh_worker_imports_no_torch(audio_corpus, tmp_path):
    """What a Beam worker runs: unpickle the shard DoFn, set it up, featurize a shard. torch stays out."""
    import subprocess
    import sys

    _, good, bad = audio_corpus
    code = f"""
import sys
from apache_beam.internal import pickler
from rnnstream.beam_jobs import featurize, shards
from rnnstream.beam_jobs.common import InputRecord
from rnnstream.pipeline.config import FeatureConfig
cfg = FeatureConfig.audio_default(sample_rate={RATE}, n_mels=20, resample=False)
fn = pickler.loads(pickler.dumps(featurize._FeaturizeShardFn(cfg, None, {str(tmp_path / 'x')!r}, 1)))
fn.setup()
task = shards.ShardTask(0, tuple(InputRecord(p) for p in {[str(p) for p in good + list(bad)]!r}))
out = list(fn.process(task))
print(len(out), sorted(m for m in ("torch", "torchaudio", "onnxruntime") if m in sys.modules))
"""
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[-2] == f"{1 + len(bad)} []"  # one shard report + a dead letter per bad file

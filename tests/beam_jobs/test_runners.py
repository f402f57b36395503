"""The batch jobs on real parallel runners give the DirectRunner's (in-memory) output.

* Beam's DaskRunner on a ``distributed.LocalCluster`` of 2 worker processes on loopback;
* the DirectRunner with ``--direct_num_workers=2 --direct_running_mode=multi_processing``.

Slow: the worker processes import Beam (and torch for the infer test's ``.pt`` checkpoint; featurize
never imports it), tens of seconds on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnstream.beam_jobs import featurize, infer
from rnnstream.models.checkpoint import save_checkpoint
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.dataset import read_dataset

from .conftest import LABEL_PATTERN, RATE, read_jsonl, write_bad_audio, write_good_audio

pytestmark = pytest.mark.slow

CFG = FeatureConfig.audio_default(sample_rate=RATE, n_mels=20, resample=False)


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.WARNING) as c:
        yield c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Path], dict[Path, str]]:
    root = tmp_path_factory.mktemp("runners") / "corpus"
    root.mkdir()
    return root, write_good_audio(root, n=6), write_bad_audio(root)


def _dataset_view(out: Path) -> tuple[dict, list[dict], dict[str, tuple]]:
    summary = json.loads((out / "summary.json").read_text())
    ds = read_dataset(str(out))
    examples = {e.id: (e.features, e.label, e.metadata) for e in ds.examples}
    return summary, read_jsonl(out / "dead_letter.jsonl"), examples


def _assert_same_dataset(a: Path, b: Path) -> None:
    sa, da, ea = _dataset_view(a)
    sb, db, eb = _dataset_view(b)
    assert sa == sb  # counts, shard names, dead letter kinds
    assert da == db
    assert ea.keys() == eb.keys()
    for k in ea:
        np.testing.assert_array_equal(ea[k][0], eb[k][0])
        assert ea[k][1:] == eb[k][1:]
    stats_a, stats_b = (json.loads((d / "stats.json").read_text()) for d in (a, b))
    assert stats_a["count"] == stats_b["count"]
    np.testing.assert_allclose(stats_a["mean"], stats_b["mean"], rtol=1e-12)
    np.testing.assert_allclose(stats_a["var"], stats_b["var"], rtol=1e-12)


def _featurize(corpus_dir: Path, out: Path, pipeline_args: list[str]) -> dict:
    return featurize.featurize_corpus([str(corpus_dir)], str(out), CFG, label_pattern=LABEL_PATTERN,
                                      pipeline_args=pipeline_args, num_shards=2)


def test_featurize_on_dask_equals_direct(cluster, corpus, tmp_path):
    root, good, bad = corpus
    direct = _featurize(root, tmp_path / "direct", [])
    dask = _featurize(root, tmp_path / "dask", ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}",
                                                "--dask_npartitions=3"])
    assert (dask["inputs"], dask["outputs"], dask["dead_letters"]) == (len(good) + len(bad), len(good), len(bad))
    assert dask["metrics"] is None  # the DaskRunner reports no metrics; the summary comes from the data
    _assert_same_dataset(tmp_path / "direct", tmp_path / "dask")
    assert direct["metrics"]["inputs"] == dask["inputs"]


def test_featurize_multi_processing_equals_in_memory(corpus, tmp_path):
    root, good, bad = corpus
    _featurize(root, tmp_path / "mem", ["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    mp = _featurize(root, tmp_path / "mp", ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert (mp["inputs"], mp["outputs"], mp["dead_letters"]) == (len(good) + len(bad), len(good), len(bad))
    _assert_same_dataset(tmp_path / "mem", tmp_path / "mp")


def test_infer_on_dask_equals_direct(cluster, corpus, tmp_path):
    root, good, bad = corpus
    torch.manual_seed(1)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(str(ckpt), rnn_classifier(input_dim=CFG.dim, num_classes=3, hidden_size=8, num_layers=1), CFG,
                    labels=["0", "1", "2"])
    runs = {}
    for name, args in {"direct": [], "dask": ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}",
                                              "--dask_npartitions=3"]}.items():
        summary = infer.infer_corpus(str(ckpt), [str(root)], str(tmp_path / name), label_pattern=LABEL_PATTERN,
                                     pipeline_args=args)
        assert (summary["inputs"], summary["outputs"], summary["dead_letters"]) == (len(good) + len(bad), len(good), len(bad))
        runs[name] = (read_jsonl(tmp_path / name / "predictions.jsonl"), read_jsonl(tmp_path / name / "dead_letter.jsonl"))
    (pd, dd), (pk, dk) = runs["direct"], runs["dask"]
    assert dd == dk
    assert [p["id"] for p in pd] == [p["id"] for p in pk] == sorted(str(p) for p in good)
    for a, b in zip(pd, pk):
        assert (a["predicted"], a["frames"], a["label"]) == (b["predicted"], b["frames"], b["label"])
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-6)

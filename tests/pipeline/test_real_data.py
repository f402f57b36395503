"""The readers and featurizers on the real data in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import numpy as np
import pytest

from rnnstream.pipeline.audio_io import load_audio
from rnnstream.pipeline.config import AudioConfig, SensorConfig
from rnnstream.pipeline.features import AudioFeaturizer
from rnnstream.pipeline.sensors import SensorFeaturizer, read_sensor_table

ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")


@pytest.mark.shared_data
def test_fsdd_recordings_load_resampled_and_featurize(fsdd_dir):
    import soundfile as sf

    paths = sorted(fsdd_dir.glob("*.wav"))[:12]
    assert paths, f"no WAV files in {fsdd_dir}"
    cfg = AudioConfig(sample_rate=16000)
    fz = AudioFeaturizer(cfg)
    for path in paths:
        info = sf.info(str(path))
        assert info.samplerate == 8000
        x = load_audio(path, cfg)
        assert x.dtype == np.float32 and x.ndim == 1 and np.isfinite(x).all()
        assert len(x) == info.frames * 2  # 8 kHz -> 16 kHz
        feats = fz.featurize(x)
        assert feats.shape == (len(x) // cfg.hop_length, 80) and np.isfinite(feats).all()
    native = load_audio(paths[0], AudioConfig(sample_rate=8000, resample=False))
    assert len(native) == sf.info(str(paths[0])).frames


@pytest.mark.shared_data
def test_etth1_table_on_its_hourly_grid_is_the_table_itself(etth1_csv):
    cfg = SensorConfig(columns=ETT_COLUMNS, timestamp_column="date", rate_hz=1 / 3600, max_gap_s=3 * 3600)
    ts, vals = read_sensor_table(etth1_csv, cfg)
    assert vals.shape == (17420, 7) and vals.dtype == np.float32
    assert ts[0] == 1467331200.0  # 2016-07-01 00:00 (naive datetimes are read as UTC)
    np.testing.assert_array_equal(np.diff(ts), 3600.0)
    out = SensorFeaturizer(cfg).featurize(ts, vals)
    # readings sit exactly on the hourly grid: one frame per row, equal to the row
    np.testing.assert_array_equal(out.times, ts)
    np.testing.assert_array_equal(out.values, vals)
    assert out.segment_starts == ()

"""Forecast baselines: persistence and seasonal-naive scored beside the model on the same windows."""

from __future__ import annotations

import pytest
import torch

from rnnstream.models.data import Batch
from rnnstream.models.metrics import ForecastMeter, seasonal_period_of
from rnnstream.models.rnn import rnn_forecaster
from rnnstream.pipeline.config import FeatureConfig


def test_seasonal_period_from_the_grid():
    assert seasonal_period_of(FeatureConfig.sensor_default(["x"], rate_hz=1 / 3600)) == 24
    assert seasonal_period_of(FeatureConfig.sensor_default(["x"], rate_hz=1 / 60)) == 1440
    assert seasonal_period_of(FeatureConfig.sensor_default(["x"], rate_hz=10.0)) == 0  # no daily period in frames
    assert seasonal_period_of(FeatureConfig.audio_default()) == 0 and seasonal_period_of(None) == 0


@pytest.mark.parametrize("period", [0, 4])
def test_baselines_by_hand(period):
    model = rnn_forecaster(input_dim=1, horizon=2, target_dims=(0,), hidden_size=4, num_layers=1).eval()
    series = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    x = series[:6].view(1, 6, 1)  # window: frames 0..5; the forecast is made at frame 5 (value 6)
    y = torch.zeros(1, 6, 2, 1)
    y[0, 5, :, 0] = series[6:8]  # truth: 7, 8
    batch = Batch(x=x, lengths=torch.tensor([6]), y=y, mask=torch.zeros(1, 6, dtype=torch.bool))
    out = torch.zeros(1, 6, 2)  # the model forecasts 0 (the normalised mean) everywhere
    meter = ForecastMeter(period)
    meter.update(model, batch, out, out, out)
    res = meter.result()
    assert res["mse"] == pytest.approx((7**2 + 8**2) / 2)
    assert res["persistence_mse"] == pytest.approx((1**2 + 2**2) / 2)  # 6 vs 7 and 8
    if period:  # steps 1, 2 take frames 5 + k - 4 = 2, 3 (values 3, 4): errors 4 and 4
        assert res["seasonal_naive_mse"] == pytest.approx(16.0) and res["seasonal_period"] == 4
    else:
        assert "seasonal_naive_mse" not in res


def test_seasonal_naive_beyond_one_period_repeats_the_last_period():
    model = rnn_forecaster(input_dim=1, horizon=5, target_dims=(0,), hidden_size=4, num_layers=1).eval()
    x = torch.arange(1.0, 11.0).view(1, 10, 1)  # frames 0..9 hold 1..10; forecast made at frame 9
    y = torch.zeros(1, 10, 5, 1)
    y[0, 9, :, 0] = torch.tensor([11.0, 12.0, 13.0, 14.0, 15.0])
    batch = Batch(x=x, lengths=torch.tensor([10]), y=y, mask=torch.zeros(1, 10, dtype=torch.bool))
    out = torch.zeros(1, 10, 5)
    meter = ForecastMeter(2)
    meter.update(model, batch, out, out, out)
    # P=2: steps 1..5 repeat frames 8, 9, 8, 9, 8 (values 9, 10, 9, 10, 9): errors 2, 2, 4, 4, 6
    assert meter.result()["seasonal_naive_mse"] == pytest.approx((4 + 4 + 16 + 16 + 36) / 5)

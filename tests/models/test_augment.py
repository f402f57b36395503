"""Training-only feature augmentation per batch (rnnstream.models.augment): shapes, seeded determinism, and that no
model, evaluation or export path ever applies it."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from rnnstream.models.augment import (REVERB_DRR_DB, REVERB_MIN_S, SPEECH_AUGMENT, BatchAugment, batch_transform,
                                      mix_sequences, reverberate)
from rnnstream.models.data import Batch, tensor_data
from rnnstream.models.train import TrainConfig, evaluate, train
from rnnstream.pipeline.config import FeatureConfig
from rnnstream.pipeline.errors import ConfigError

FC = FeatureConfig.audio_default(sample_rate=8000, n_mels=8)


def tone(seconds: float, freq: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(8000 * seconds)) / 8000.0
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)).astype(
        np.float32)


def test_parse_and_spec_round_trip() -> None:
    assert BatchAugment.parse("none") == BatchAugment() and not BatchAugment().active
    assert BatchAugment.parse("speech") == SPEECH_AUGMENT
    a = BatchAugment.parse("freq=2x4,time=3x10,gain=6")
    assert (a.freq_masks, a.freq_width, a.time_masks, a.time_width, a.gain_db) == (2, 4, 3, 10, 6.0)
    assert BatchAugment.parse(a.spec()) == a
    n = BatchAugment.parse("time=1x2,noise=0.2")
    assert n.noise == 0.2 and BatchAugment.parse(n.spec()) == n
    for bad in ("freq=2", "loud", "gain=-3", "noise=-1"):
        with pytest.raises(ConfigError):
            BatchAugment.parse(bad)
    with pytest.raises(ConfigError, match="augment"):
        TrainConfig(augment="wobble")


def test_batch_augment_shapes_masks_gain_and_determinism() -> None:
    x = torch.randn(5, 40, 20) - 3.0
    fill = torch.linspace(-4.0, 1.0, 20)
    torch.manual_seed(7)
    y = SPEECH_AUGMENT(x, fill)
    torch.manual_seed(7)
    assert torch.equal(SPEECH_AUGMENT(x, fill), y)  # seeded: the same draw
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(SPEECH_AUGMENT(x, fill), y)  # a new draw differs
    masks_only = BatchAugment(freq_masks=2, freq_width=4, time_masks=2, time_width=8)
    torch.manual_seed(3)
    m = masks_only(x, fill)
    changed = m != x
    assert changed.any()
    torch.testing.assert_close(m[changed], fill.expand_as(x)[changed])  # masked cells hold the band's fill value
    assert changed.float().mean() < 0.6
    gain = BatchAugment(gain_db=6.0)
    g = gain(x) - x  # one constant per sequence, within +-6 dB in log power
    per_seq = g[:, :1, :1]
    torch.testing.assert_close(g, per_seq.expand_as(g))
    assert float(per_seq.abs().max()) <= 6.0 * math.log(10) / 10 + 1e-6
    assert torch.equal(BatchAugment()(x), x)
    noisy = BatchAugment(noise=0.5)(x, scale=torch.full((20,), 2.0)) - x  # std 0.5 x the band's scale 2
    assert noisy.shape == x.shape and 0.8 < float(noisy.std()) < 1.2


def test_warp_moves_bands_by_the_factor_and_parses() -> None:
    from rnnstream.models.augment import warp_bands

    ramp = torch.arange(10, dtype=torch.float32).expand(2, 3, 10)  # band f holds the value f
    out = warp_bands(ramp, 0.2, alpha=torch.tensor([1.25, 0.8]))
    torch.testing.assert_close(out[0, 0], torch.arange(10) / 1.25)  # content moved up: band f reads f / 1.25
    torch.testing.assert_close(out[1, 0], (torch.arange(10) / 0.8).clamp(max=9))  # moved down, edge band held
    torch.testing.assert_close(warp_bands(ramp, 0.2, alpha=torch.ones(2)), ramp)
    a = BatchAugment.parse("warp=0.1,noise=0.05")
    assert a.warp == 0.1 and a.active and BatchAugment.parse(a.spec()) == a
    torch.manual_seed(0)
    x = torch.randn(4, 7, 20)
    y = BatchAugment(warp=0.15)(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    for bad in ("warp=1.5", "warp=1"):
        with pytest.raises(ConfigError, match="warp must be in"):
            BatchAugment.parse(bad)


def test_bend_moves_each_region_of_the_band_axis_by_its_knot_shift_and_keeps_the_order() -> None:
    from rnnstream.models.augment import bend_bands

    ramp = torch.arange(9, dtype=torch.float32).expand(2, 3, 9)  # band f holds the value f
    # knots at bands 0, 4 and 8: band 4 reads band 4 + 1.5, the shift falling linearly to 0 at both edges
    out = bend_bands(ramp, 1.5, shifts=torch.tensor([[1.5], [-1.0]]), knots=3)
    up = torch.tensor([0, .375, .75, 1.125, 1.5, 1.125, .75, .375, 0])
    torch.testing.assert_close(out[0, 0], torch.arange(9.0) + up)
    torch.testing.assert_close(out[1, 0], torch.arange(9.0) - torch.tensor([0, .25, .5, .75, 1, .75, .5, .25, 0]))
    torch.testing.assert_close(out[:, 1], out[:, 0])  # the same bend on every frame of a sequence
    torch.testing.assert_close(bend_bands(ramp, 1.5, shifts=torch.zeros(2, 1), knots=3), ramp)
    torch.manual_seed(0)
    x = torch.arange(40, dtype=torch.float32).expand(64, 2, 40)
    y = bend_bands(x, 4.0)  # 5 knots over 40 bands: spacing 9.75
    assert float((y - x).abs().max()) <= 4.0 + 1e-5 and float((y - x).abs().max()) > 1.0
    assert bool((y[:, :, 1:] > y[:, :, :-1]).all())  # monotone: the bands keep their order
    torch.testing.assert_close(y[:, :, [0, -1]], x[:, :, [0, -1]])  # the edges stay
    assert not torch.equal(y[0], y[1])  # a bend per sequence
    with pytest.raises(ConfigError, match=r"bend=5 bands: .* spacing of its 5 knots over 40 bands \(9.75\)"):
        bend_bands(x, 5.0)
    a = BatchAugment.parse("warp=0.1,bend=2.5")
    assert a.bend == 2.5 and a.changes_features and "bend=2.5" in a.spec() and BatchAugment.parse(a.spec()) == a
    assert a.band_options == "warp=0.1,bend=2.5" and not a.without_band_options().active
    z = BatchAugment(bend=2.0)(torch.randn(3, 5, 40))
    assert z.shape == (3, 5, 40)
    with pytest.raises(ConfigError, match="bend"):
        BatchAugment(bend=-1.0)


def test_random_eq_is_a_smooth_per_sequence_curve_through_its_knot_gains() -> None:
    from rnnstream.models.augment import EQ_KNOTS, random_eq

    per_db = math.log(10) / 10
    gains = torch.tensor([[6.0, -6.0, 0.0], [0.0, 0.0, 0.0]])
    curve = random_eq(2, 9, 6.0, knots=3, gains_db=gains)
    assert curve.shape == (2, 9)
    # knots at bands 0, 4 and 8; linear between them
    expected = torch.tensor([6.0, 3.0, 0.0, -3.0, -6.0, -4.5, -3.0, -1.5, 0.0]) * per_db
    torch.testing.assert_close(curve[0], expected)
    torch.testing.assert_close(curve[1], torch.zeros(9))
    torch.manual_seed(1)
    drawn = random_eq(64, 40, 10.0)
    assert float(drawn.abs().max()) <= 10.0 * per_db + 1e-6
    assert float(drawn.std(dim=0).min()) > 0.5 * per_db  # every band moves, sequence to sequence
    steps = (drawn[:, 1:] - drawn[:, :-1]).abs()  # smooth: neighbouring bands differ by at most 2 x 10 dB / gap
    assert float(steps.max()) <= 2 * 10.0 * per_db * (EQ_KNOTS - 1) / 39 + 1e-5
    with pytest.raises(ConfigError, match="knots"):
        random_eq(1, 8, 6.0, knots=1)


def test_eq_augment_adds_one_curve_per_sequence_to_every_frame_and_parses() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 7, 20)
    y = BatchAugment(eq_db=6.0)(x) - x
    torch.testing.assert_close(y, y[:, :1, :].expand_as(y))  # the same curve on every frame of a sequence
    assert not torch.allclose(y[0, 0], y[1, 0])  # another sequence, another curve
    assert float(y.abs().max()) <= 6.0 * math.log(10) / 10 + 1e-6
    assert float((y[:, 0, 1:] - y[:, 0, :1]).abs().max()) > 0  # not a plain gain
    a = BatchAugment.parse("freq=2x4,gain=6,eq=4.5")
    assert a.eq_db == 4.5 and a.active and a.changes_features and BatchAugment.parse(a.spec()) == a
    assert "eq=4.5" in a.spec()
    with pytest.raises(ConfigError):
        BatchAugment.parse("eq=-2")
    with pytest.raises(ConfigError, match="eq"):
        BatchAugment(eq_db=float("inf"))


def test_reverberate_adds_a_causal_exponential_tail_of_the_stated_energy_to_each_band() -> None:
    """Power p[t] -> p[t] + g sum_k r^k p[t - k] per band and sequence, against a plain loop; an impulse's tail
    holds the stated direct-to-reverberant ratio and falls by 60 dB in RT60; later frames never reach earlier ones."""
    torch.manual_seed(0)
    x = torch.randn(3, 40, 5, dtype=torch.float64)
    frame_s, rt60, drr = 0.01, torch.tensor([0.1, 0.2, 0.35]), torch.tensor([0.0, 6.0, 12.0])
    y = reverberate(x, frame_s, rt60, drr)
    p = x.exp().numpy()
    for b in range(3):
        r = 10.0 ** (-6.0 * frame_s / float(rt60[b]))
        g = 10.0 ** (-float(drr[b]) / 10.0) * (1 - r) / r
        taps = math.ceil(0.35 / frame_s) + 1  # the longest room of the batch sets the cut
        want = np.array([[p[b, t, f] + sum(g * r ** k * p[b, t - k, f] for k in range(1, min(t, taps - 1) + 1))
                          for f in range(5)] for t in range(40)])
        np.testing.assert_allclose(y[b].numpy(), np.log(want), rtol=1e-10)
    impulse = torch.full((1, 60, 1), -60.0, dtype=torch.float64)
    impulse[0, 0, 0] = 0.0
    tail = reverberate(impulse, frame_s, torch.tensor([0.3]), torch.tensor([6.0]))[0, :, 0].exp() - math.exp(-60)
    assert float(tail[0]) == pytest.approx(1.0)
    assert float(tail[1:].sum()) == pytest.approx(10 ** -0.6, rel=1e-5)  # the direct-to-reverberant ratio, 6 dB
    assert float(tail[30] / tail[1]) == pytest.approx(10 ** (-6 * 0.29 / 0.3), rel=1e-9)  # 60 dB per 0.3 s
    later = x.clone()
    later[:, 20:] += 3.0
    torch.testing.assert_close(reverberate(later, frame_s, rt60, drr)[:, :20], y[:, :20])


def test_reverb_augment_draws_a_room_per_sequence_within_its_ranges_and_parses() -> None:
    torch.manual_seed(1)
    x = torch.full((64, 30, 4), -5.0)
    x[:, 0] = 2.0  # an onset in silence: what follows it is the room's tail
    y = BatchAugment(reverb_s=0.5)(x, frame_s=0.01)
    tail = (y[:, 1:, 0].exp() - math.exp(-5.0)).sum(1) / math.exp(2.0)  # tail energy / direct energy
    drr = -10 * torch.log10(tail)
    assert float(drr.min()) >= REVERB_DRR_DB[0] - 0.5 and float(drr.max()) <= REVERB_DRR_DB[1] + 0.1
    assert float(drr.std()) > 1.0  # one room per sequence, not one per batch
    torch.testing.assert_close(y, y[:, :, :1].expand_as(y))  # the same room in every band
    torch.testing.assert_close(y[:, 0], x[:, 0])  # the direct sound unchanged
    a = BatchAugment.parse("freq=2x4,reverb=0.4")
    assert a.reverb_s == 0.4 and a.changes_features and BatchAugment.parse(a.spec()) == a and "reverb=0.4" in a.spec()
    assert a.band_options == "reverb=0.4" and not a.without_band_options().reverb_s
    for bad in ("reverb=-1", f"reverb={REVERB_MIN_S / 2}", "reverb=11"):
        with pytest.raises(ConfigError, match="reverb"):
            BatchAugment.parse(bad)


def test_time_warp_moves_one_point_and_keeps_ends_lengths_and_padding() -> None:
    from rnnstream.models.augment import warp_time

    ramp = torch.arange(10, dtype=torch.float32)[None, :, None].repeat(3, 1, 2)  # frame t holds the value t
    lengths = torch.tensor([10, 6, 2])
    out = warp_time(ramp, lengths, 0.2, centre=torch.tensor([4.0, 2.0, 0.5]), shift=torch.tensor([2.0, -1.0, 1.0]))
    # sequence 0: frame 6 now reads frame 4; before it t * 4/6, after it 4 + (t - 6) * 5/3
    want0 = torch.tensor([0, 4 / 6, 8 / 6, 2, 16 / 6, 20 / 6, 4, 4 + 5 / 3, 4 + 10 / 3, 9])
    torch.testing.assert_close(out[0, :, 0], want0)
    # sequence 1 (6 frames): frame 1 reads frame 2, the end stays at 5, the padding (frames 6-9) untouched
    torch.testing.assert_close(out[1, :, 0], torch.tensor([0, 2, 2.75, 3.5, 4.25, 5, 6, 7, 8, 9]))
    torch.testing.assert_close(out[2], ramp[2])  # 2 frames: too short to warp
    same = warp_time(ramp, lengths, 0.2, centre=torch.tensor([4.0, 2.0, 0.5]), shift=torch.zeros(3))
    torch.testing.assert_close(same, ramp)
    torch.manual_seed(0)
    rnd = warp_time(ramp, lengths, 0.3)
    assert torch.equal(rnd[:, 0], ramp[:, 0]) and torch.equal(rnd[0, 9], ramp[0, 9]) and torch.equal(rnd[1, 5], ramp[1, 5])
    assert bool((rnd[0, 1:, 0] >= rnd[0, :-1, 0]).all())  # monotone: order of events kept
    a = BatchAugment.parse("noise=0.1,twarp=0.1")
    assert a.time_warp == 0.1 and a.active and BatchAugment.parse(a.spec()) == a
    with pytest.raises(ConfigError, match="twarp must be in"):
        BatchAugment.parse("twarp=0.5")


def test_time_warp_is_for_classifiers_only() -> None:
    from rnnstream.models.rnn import ModelConfig, StreamingRNN

    tagger = StreamingRNN(ModelConfig(input_dim=4, output_dim=2, task="tag"))
    with pytest.raises(ConfigError, match="classifiers only"):
        batch_transform(tagger, BatchAugment(time_warp=0.1))
    classifier = StreamingRNN(ModelConfig(input_dim=4, output_dim=2))
    b = Batch(torch.randn(2, 8, 4), torch.tensor([8, 5]), torch.tensor([0, 1]), torch.zeros(2, 8, dtype=torch.bool))
    out = batch_transform(classifier, BatchAugment(time_warp=0.2))(b)
    assert out.x.shape == b.x.shape and torch.equal(out.x[1, 5:], b.x[1, 5:]) and out.lengths is b.lengths


def test_mix_sequences_stretches_the_partner_and_mixes_one_hot_targets() -> None:
    ramp = torch.arange(5, dtype=torch.float32)  # sequence 1: 5 frames 0..4 (in every feature)
    x = torch.zeros(2, 9, 3)
    x[0, :9] = 10.0 + torch.arange(9, dtype=torch.float32)[:, None]  # sequence 0: 9 frames 10..18
    x[1, :5] = ramp[:, None]
    x[1, 5:] = -1.0  # padding of sequence 1
    lengths, y = torch.tensor([9, 5]), torch.tensor([2, 0])
    # weight 1: each sequence is itself, its target one-hot
    same, t = mix_sequences(x, lengths, y, 3, torch.ones(2), torch.tensor([1, 0]))
    assert torch.equal(same, x) and torch.equal(t, torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    # weight 0: sequence 0 becomes sequence 1 stretched over its 9 frames (first and last frames meet), and back
    mixed, t = mix_sequences(x, lengths, y, 3, torch.zeros(2), torch.tensor([1, 0]))
    assert torch.allclose(mixed[0, :, 0], torch.arange(9, dtype=torch.float32) / 2)  # 0, 0.5, ..., 4
    assert torch.allclose(mixed[1, :5, 0], 10.0 + 2 * ramp)  # 10, 12, ..., 18: sequence 0 squeezed into 5 frames
    assert torch.equal(t, torch.tensor([[1.0, 0, 0], [0, 0, 1]]))
    # a weight in between: the same mix of inputs and of targets; rows of the target sum to 1
    lam = torch.tensor([0.25, 0.6])
    mixed, t = mix_sequences(x, lengths, y, 3, lam, torch.tensor([1, 0]))
    assert torch.allclose(mixed[0, :, 1], 0.25 * x[0, :, 1] + 0.75 * torch.arange(9, dtype=torch.float32) / 2)
    assert torch.allclose(t, torch.tensor([[0.75, 0, 0.25], [0.6, 0, 0.4]])) and torch.allclose(t.sum(1), torch.ones(2))


def test_mixup_parses_is_for_classifiers_and_trains_on_soft_targets() -> None:
    from rnnstream.models.rnn import ModelConfig, StreamingRNN

    a = BatchAugment.parse("freq=1x2,mixup=0.2")
    assert a.mixup == 0.2 and a.active and BatchAugment.parse(a.spec()) == a
    assert BatchAugment(mixup=0.4).active and not BatchAugment(mixup=0.4).changes_features
    with pytest.raises(ConfigError, match="mixup"):
        BatchAugment.parse("mixup=-1")
    with pytest.raises(ConfigError, match="classifiers only"):
        batch_transform(StreamingRNN(ModelConfig(input_dim=4, output_dim=2, task="tag")), BatchAugment(mixup=0.2))
    classifier = StreamingRNN(ModelConfig(input_dim=4, output_dim=3))
    b = Batch(torch.randn(4, 8, 4), torch.tensor([8, 5, 3, 8]), torch.tensor([0, 1, 2, 1]),
              torch.zeros(4, 8, dtype=torch.bool))
    out = batch_transform(classifier, BatchAugment(mixup=1.0))(b)
    assert out.y.shape == (4, 3) and torch.allclose(out.y.sum(1), torch.ones(4))
    assert out.lengths is b.lengths and out.mask is b.mask and not torch.equal(out.x, b.x)
    # a whole training run with mixup: soft targets reach the loss, the result is seeded and evaluates as usual
    data = _toy_data()
    cfg = TrainConfig(hidden_size=8, num_layers=1, epochs=2, batch_size=8, lr=1e-2, device="cpu", progress=False,
                      augment="mixup=0.4", seed=1)
    r1, r2 = train(data, cfg), train(data, cfg)
    assert all(torch.equal(p, q) for p, q in zip(r1.model.parameters(), r2.model.parameters()))
    plain = train(data, dataclasses.replace(cfg, augment="none"))
    assert any(not torch.equal(p, q) for p, q in zip(plain.model.parameters(), r1.model.parameters()))
    assert math.isfinite(r1.history[-1]["train_loss"]) and 0.0 <= evaluate(r1.model, data)["accuracy"] <= 1.0


def test_batch_transform_keeps_targets() -> None:
    class M:
        feat_mean = torch.zeros(4)
        feat_std = torch.ones(4)

    b = Batch(torch.randn(3, 6, 4), torch.tensor([6, 4, 2]), torch.tensor([0, 1, 2]), torch.ones(3, 6, dtype=torch.bool))
    out = batch_transform(M(), SPEECH_AUGMENT)(b)
    assert out.x.shape == b.x.shape and out.y is b.y and out.lengths is b.lengths and out.mask is b.mask


def _toy_data(n: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(loc=float(i % 2), size=(int(rng.integers(5, 12)), 6)).astype(np.float32) for i in range(n)]
    return tensor_data("classify", seqs, [str(i % 2) for i in range(n)])


def test_augmentation_is_training_only() -> None:
    data = _toy_data()
    small = dict(hidden_size=8, num_layers=1, epochs=2, batch_size=8, lr=1e-2, device="cpu", progress=False)
    plain = train(data, TrainConfig(**small))
    aug = train(data, TrainConfig(**small, augment="freq=1x2,time=1x3,gain=6"))
    # training saw augmented batches (different weights) ...
    assert any(not torch.equal(p, q) for p, q in zip(plain.model.parameters(), aug.model.parameters()))
    # ... the model never applies it: eval is deterministic, the config carries no augmentation, and a fresh
    # model from the config and weights (what checkpoints and the ONNX export rebuild) gives the same outputs
    model = aug.model.eval()
    assert "augment" not in json.dumps(model.config.to_dict())
    x = torch.randn(3, 10, 6)
    with torch.no_grad():
        y1, y2 = model(x), model(x)
        state = model.initial_state(3)
        ys, state = model.step(x, state)
    assert torch.equal(y1, y2) and torch.allclose(ys, y1, atol=1e-6)
    rebuilt = type(model)(model.config)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), y1)
    assert evaluate(model, data)["accuracy"] == evaluate(model, data)["accuracy"]


def test_training_with_augmentation_is_seeded() -> None:
    data = _toy_data()
    cfg = TrainConfig(hidden_size=8, num_layers=1, epochs=2, batch_size=8, device="cpu", progress=False,
                      augment="speech", seed=3)
    a, b = train(data, cfg), train(data, cfg)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert dataclasses.replace(cfg, augment="none").augment == "none"


@pytest.mark.parametrize("augment", ["gain=6", "freq=1x2,eq=3", "warp=0.1", "bend=1", "reverb=0.3"])
def test_band_augmentations_are_refused_on_mfcc_features(augment) -> None:
    """A gain or equaliser adds log band energies and a warp reads bands at other frequencies: on MFCCs they would
    offset or mix cepstral coefficients, so training refuses them, naming the option and the features."""
    mfcc = FeatureConfig.audio_default(sample_rate=8000, n_mels=16, feature="mfcc", n_mfcc=6)
    rng = np.random.default_rng(0)
    seqs = [rng.normal(loc=float(i % 2), size=(8, mfcc.dim)).astype(np.float32) for i in range(8)]
    data = tensor_data("classify", seqs, [str(i % 2) for i in range(8)], feature_config=mfcc)
    small = {"hidden_size": 8, "num_layers": 1, "epochs": 1, "batch_size": 8, "device": "cpu", "progress": False}
    band = augment.split(",")[-1]
    with pytest.raises(ConfigError, match=rf"augment {band} acts on log-mel band energies; the features are 'mfcc'"):
        train(data, TrainConfig(**small, augment=augment))
    train(data, TrainConfig(**small, augment="freq=1x2,time=1x3,noise=0.1"))  # masks and noise fit any features


def test_reverb_augment_is_refused_without_audio_frames() -> None:
    """A room's tail is timed in seconds of audio frames: sensor features (no audio config) refuse it by name."""
    rng = np.random.default_rng(0)
    data = tensor_data("classify", [rng.normal(size=(8, 3)).astype(np.float32) for _ in range(8)],
                       [str(i % 2) for i in range(8)])
    small = {"hidden_size": 8, "num_layers": 1, "epochs": 1, "batch_size": 8, "device": "cpu", "progress": False}
    with pytest.raises(ConfigError, match=r"reverb=0.3 reverberates log-mel audio frames"):
        train(data, TrainConfig(**small, augment="reverb=0.3"))


def test_a_bend_too_large_for_the_mel_bands_is_refused_before_training() -> None:
    rng = np.random.default_rng(0)
    data = tensor_data("classify", [rng.normal(size=(8, FC.dim)).astype(np.float32) for _ in range(8)],
                       [str(i % 2) for i in range(8)], feature_config=FC)
    small = {"hidden_size": 8, "num_layers": 1, "epochs": 1, "batch_size": 8, "device": "cpu", "progress": False}
    with pytest.raises(ConfigError, match=r"bend=1 bands: .* 5 knots over 8 bands \(1.75\).* below 0.875"):
        train(data, TrainConfig(**small, augment="bend=1"))
    train(data, TrainConfig(**small, augment="bend=0.8"))


def test_stacked_features_are_masked_by_band_in_every_stacked_frame() -> None:
    """stack=3: a frequency mask covers the same bands in each of the 3 frames side by side (the [B, 3T, bands]
    frames are augmented, then stacked again); fills are the per-band mean over the stacked copies."""
    from rnnstream.models.rnn import ModelConfig, StreamingRNN

    torch.manual_seed(0)
    model = StreamingRNN(ModelConfig(input_dim=24, output_dim=2))
    with torch.no_grad():
        model.feat_mean.copy_(torch.arange(8, dtype=torch.float32).repeat(3) + 100.0)  # band b: 100 + b
    b = Batch(torch.randn(4, 5, 24), torch.tensor([5, 5, 4, 3]), torch.tensor([0, 1, 0, 1]),
              torch.zeros(4, 5, dtype=torch.bool))
    out = batch_transform(model, BatchAugment(freq_masks=1, freq_width=4), stack=3)(b).x
    assert out.shape == b.x.shape
    frames = out.reshape(4, 15, 8)  # the frames the stacked features are made of
    masked = frames >= 100.0  # filled with the band's mean (100 + b); the data are N(0, 1)
    assert masked.any()
    for seq in range(4):  # a sequence's mask is the same set of bands in every frame
        assert torch.equal(masked[seq], masked[seq, :1].expand(15, 8))
        assert torch.equal(frames[seq][masked[seq]], (100.0 + torch.arange(8.0)).expand(15, 8)[masked[seq]])


def test_training_on_stacked_frames_augments_them_and_refuses_a_frequency_conv() -> None:
    """stack=2 over 3 bands: training runs with SpecAugment on the frames the stacked vectors are made of; a conv
    over frequency would slide across the stacked copies' seams and is refused; a full-width temporal conv is not."""
    fc = FeatureConfig.audio_default(sample_rate=8000, n_mels=3, stack=2)
    rng = np.random.default_rng(0)
    seqs = [rng.normal(loc=float(i % 2), size=(int(rng.integers(5, 12)), fc.dim)).astype(np.float32) for i in range(16)]
    data = tensor_data("classify", seqs, [str(i % 2) for i in range(16)], feature_config=fc)
    small = {"hidden_size": 8, "num_layers": 1, "epochs": 1, "batch_size": 8, "device": "cpu", "progress": False,
             "augment": "freq=1x2,time=1x3,warp=0.1"}
    assert train(data, TrainConfig(**small)).model.config.input_dim == 6
    with pytest.raises(ConfigError, match=r"frequency convolution \(conv_kernel \[3, 3\]\) over stacked frames "
                                          r"\(stack=2\)"):
        train(data, TrainConfig(**small, conv_channels=(4,), conv_pool=1))
    train(data, TrainConfig(**small, conv_channels=(4,), conv_kernel=(3, 0), conv_pool=1))

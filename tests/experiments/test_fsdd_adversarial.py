"""The speaker-adversarial screen's parts: speakers from ids, the gradient reversal, DANN's ramp, the loss term."""

from __future__ import annotations

import pytest
import torch

from experiments.fsdd_adversarial import SpeakerAdversary, ramp, reverse_gradient, speaker_of


def test_speakers_come_from_fsdd_ids_and_a_bad_id_is_named():
    assert speaker_of("3_jackson_12") == "jackson" and speaker_of("0_george_7#aug1") == "george"
    with pytest.raises(ValueError, match="'nospeaker'"):
        speaker_of("nospeaker")


def test_synthetic_speakers_come_from_the_file_name_not_the_folder():
    """The synthetic speakers' ids are paths whose folders hold underscores (out/x/RUN_off1_s0/synth_.../...)."""
    path = "/w/out/repro/ADV03_off1_s0/synth_digits_48x2_seed0/3_synthab_1.wav"
    assert speaker_of(path) == "synthab" and speaker_of(path + "#aug0") == "synthab"


def test_the_reversal_is_the_identity_forward_and_negates_and_scales_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * torch.arange(4.0).expand(3, 4))


def test_the_ramp_goes_from_zero_to_the_weight():
    assert ramp(0.0, 0.3) == 0.0 and abs(ramp(1.0, 0.3) - 0.3) < 1e-4 and ramp(0.1, 1.0) < ramp(0.5, 1.0)


def test_the_adversary_scores_the_masked_frames_with_each_examples_speaker():
    torch.manual_seed(0)
    adv = SpeakerAdversary(("1_a_0", "2_b_0", "3_b_1"), features=5, weight=1.0, steps=10)
    assert adv.loss() is None  # outside a training step
    adv.batch_ids = ["1_a_0", "2_b_0"]
    adv.mask = torch.tensor([[False, True, True], [True, False, False]])
    adv.pooled = torch.randn(2, 3, 5, requires_grad=True)
    loss = adv.loss()
    logits = adv.net(adv.pooled[adv.mask])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(loss, expected)
    loss.backward()  # the reversal at step 0 has scale 0: the features get no gradient yet, the classifier does
    assert torch.count_nonzero(adv.pooled.grad) == 0 and adv.net[0].weight.grad.abs().sum() > 0

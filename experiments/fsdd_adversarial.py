"""Screen of speaker-adversarial training on FSDD (issue 15, follow-up 10): :mod:`experiments.fsdd` with a speaker
classifier on the pooled features behind a gradient reversal.

::

    .venv/bin/python -m experiments.fsdd_adversarial --adversary-weight 0.3 -- --data-root ../shared/data \\
        --out out/explore10/ADV03_s0 --splits loso --seeds 0 --threads 1 --no-progress --no-refit --val-offset 1 \\
        --spec-augment freq=2x4,time=2x8,gain=6,warp=0.1

A screening script, not a training option: it wraps :func:`rnnstream.models.fit.fit` and its optimizer step for
the run (the library's loop has no auxiliary-loss hook, and the screen did not earn one: docs/results.md,
follow-up 10). What it adds to each training batch:

* the input of ``model.head`` (a forward hook): the pooled features ``[B, T, H]`` the classifier reads, taken at
  the frames the task scores (``batch.mask``);
* a speaker classifier (``H -> hidden -> speakers``, ReLU) on them behind a gradient reversal layer (DANN, Ganin
  and Lempitsky 2015): its cross-entropy trains the classifier and, reversed and scaled by ``lambda``, pushes the
  encoder towards features the classifier cannot tell apart; ``lambda`` ramps from 0 to ``--adversary-weight``
  as ``2 / (1 + exp(-10 p)) - 1`` over the run's progress ``p``;
* speakers from the example ids (``<digit>_<speaker>_<take>``, augmented copies keep the prefix).

The exported model is unchanged (the classifier only exists in training). Validation and test are as in
:mod:`experiments.fsdd`; the training loss it reports is the task's alone.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import Any

import torch
from torch import Tensor, nn

_SPEAKER = re.compile(r"^[^_#]+_([^_#]+)_")


def speaker_of(example_id: str) -> str:
    """The speaker in an FSDD example id (``"3_jackson_12"``, ``"3_jackson_12#aug0"`` -> ``"jackson"``), read from
    its file name (the synthetic speakers' ids are paths: ``".../synth_digits_48x2_seed0/3_synthab_1.wav"`` ->
    ``"synthab"``)."""
    found = _SPEAKER.match(os.path.basename(example_id))
    if found is None:
        raise ValueError(f"no speaker in example id {example_id!r}; expected <digit>_<speaker>_<take>")
    return found.group(1)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float) -> Tensor:
    """Identity forward; the gradient multiplied by ``-scale`` backward."""
    return _Reverse.apply(x, scale)


def ramp(progress: float, weight: float) -> float:
    """DANN's schedule: 0 at the start, ``weight`` at the end (``2 / (1 + exp(-10 p)) - 1`` of it)."""
    return weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


class SpeakerAdversary:
    """The speaker classifier and what one training step needs of it (ids, pooled features, progress)."""

    def __init__(self, ids: tuple[str, ...], features: int, weight: float, hidden: int = 64, steps: int = 1):
        self.speakers = {s: k for k, s in enumerate(sorted({speaker_of(i) for i in ids}))}
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, len(self.speakers)))
        self.weight, self.steps, self.step = weight, max(steps, 1), 0
        self.batch_ids: list[str] = []
        self.mask: Tensor | None = None
        self.pooled: Tensor | None = None
        self.losses: list[float] = []

    def loss(self) -> Tensor | None:
        """The adversarial term of the current batch (None outside training steps)."""
        if self.pooled is None or self.mask is None or self.pooled.shape[:2] != self.mask.shape:
            return None
        labels = torch.tensor([self.speakers[speaker_of(i)] for i in self.batch_ids], device=self.pooled.device)
        rows = self.pooled[self.mask]  # [K, H] at the scored frames
        scale = ramp(self.step / self.steps, self.weight)
        self.step += 1
        out = nn.functional.cross_entropy(self.net(reverse_gradient(rows, scale)),
                                          labels[:, None].expand(self.mask.shape)[self.mask])
        self.losses.append(float(out.detach()))
        return out


def install(weight: float, hidden: int) -> None:
    """Wrap ``fit`` (as ``rnnstream.models.train`` calls it), the batch gathering and the optimizer step."""
    import rnnstream.models.data as D
    import rnnstream.models.fit as F
    import rnnstream.models.train as T

    current: dict[str, SpeakerAdversary] = {}
    gather, train_batch, fit = D.SequenceData.batch, F._train_batch, T.fit

    def batch(self: Any, idx: Tensor) -> Any:
        if "adv" in current:
            current["adv"].batch_ids = [self.ids[int(i)] for i in idx]
        return gather(self, idx)

    def adversarial_fit(model: Any, loader: Any, val_data: Any = None, **kw: Any) -> Any:
        adv = SpeakerAdversary(loader.data.ids, model.head.in_features, weight, hidden,
                               steps=kw["epochs"] * len(loader))
        kw["optimizer"].add_param_group({"params": list(adv.net.parameters())})
        hook = model.head.register_forward_hook(lambda mod, inp, out: setattr(adv, "pooled", inp[0]))
        current["adv"] = adv
        print(f"adversary: speakers {sorted(adv.speakers)}, weight {weight}, hidden {hidden}", file=sys.stderr)
        try:
            return fit(model, loader, val_data, **kw)
        finally:
            hook.remove()
            current.pop("adv", None)
            if adv.losses:
                tail = adv.losses[-100:]
                print(f"adversary: last {len(tail)} steps' loss {sum(tail) / len(tail):.3f} "
                      f"(chance {math.log(len(adv.speakers)):.3f})", file=sys.stderr)

    def adversarial_batch(state: Any, b: Any, tbptt: Any) -> None:
        current["adv"].mask = b.mask
        train_batch(state, b, tbptt)

    def step(state: Any, pred: Tensor, target: Tensor) -> None:
        task_loss = state.task.loss(pred, target)
        extra = current["adv"].loss() if state.model.training else None
        loss = task_loss if extra is None else task_loss + extra
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = state.grads()
        lv, nv = float(loss.detach()), float(norm)
        if not (math.isfinite(lv) and math.isfinite(nv)):
            raise F._divergence(state, lv, nv)
        state.optimizer.step()
        state.loss_sum += float(task_loss.detach()) * pred.shape[0]
        state.count += pred.shape[0]

    D.SequenceData.batch = batch
    F._train_batch = adversarial_batch
    F._optimizer_step = step
    T.fit = adversarial_fit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.fsdd_adversarial", description=__doc__.split("\n\n")[0])
    p.add_argument("--adversary-weight", type=float, default=0.3, help="largest gradient-reversal scale")
    p.add_argument("--adversary-hidden", type=int, default=64)
    p.add_argument("fsdd_args", nargs=argparse.REMAINDER, help="-- then the options of experiments.fsdd")
    args = p.parse_args(argv)
    install(args.adversary_weight, args.adversary_hidden)
    from experiments.fsdd import main as fsdd_main

    return fsdd_main([a for a in args.fsdd_args if a != "--"])


if __name__ == "__main__":
    sys.exit(main())

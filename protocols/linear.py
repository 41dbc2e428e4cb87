"""``linear``: per-layer linear probes on the frozen encoder (Zhang 2016; Split-Brain 2017; Goyal et al. 2019).

Follows the released protocols: the encoder is frozen in eval mode (batch norm uses its running statistics); each
tapped map is reduced to about 9k dimensions, by bilinear resize (Zhang's released protocol, also Split-Brain's) or
average pooling (Goyal et al.; the ECCV paper), ``reduction`` chooses; then a non-affine batch norm and a linear
layer, trained with SGD momentum 0.9, weight decay 5e-4 and a step schedule (×0.1 at 50% and 75% of training).
Every step goes through the :class:`~sslbench.runtime.Runtime` (autocast, finite-loss check, scaled backward), so a
NaN or infinite loss stops the protocol with :class:`~sslbench.errors.NonFiniteLossError` naming the tap and the
step; a probe whose weights or logits end up non-finite is never scored either.

Reports, per tap, the top-1 (%) on the evaluation split (``layer/<tap>/top1``) and on the held-out validation
part of the training split (``layer/<tap>/val_top1``); the tap with the best validation top-1 (ties: the earlier
tap) as ``best/layer``, its evaluation top-1 as ``best/top1`` and its validation top-1 as ``best/val_top1``; and
the sizes of the probe's training and validation parts (``train/probe_images``, ``train/val_images``). Per-image
correctness on the evaluation split (``layer/<tap>/top1``, ``best/top1``) is kept for bootstrap intervals.

Departures from the papers, and why:

- Small data: they train 140k iterations at batch 256 on ImageNet; sslbench trains ``epochs`` passes over the
  cached features of the training split (default 30) with lr 0.05.
- Layer selection: the papers' tables report, for each method, its best layer's accuracy on the very split the
  layer was picked on (ImageNet/Places val), which biases every best-layer number upwards (most for methods whose
  layers are close, and more on small evaluation splits). sslbench holds out a seeded ``val_fraction`` (default 10%)
  of the training split (:func:`validation_split`, fixed by the run's seed and the same for every tap and pretext),
  trains every probe on the rest, picks the layer on the held-out part and reports its evaluation-split top-1, so
  ``best/top1`` is an unbiased estimate. Probes therefore see 10% fewer images than in the papers. There is no
  hyperparameter search; should one be added, it must be scored on the validation part too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from sslbench.errors import UsageError
from sslbench.fit import fit as fit_loop
from sslbench.progress import Progress
from sslbench.protocol import (PerLayerProbe, TapContext, check_finite, choose_best, correct_values,
                               validation_split)
from sslbench.registry import register_protocol
from sslbench.runtime import Runtime

# validation_split, correct_values, check_finite and choose_best live in sslbench.protocol; still importable here.
__all__ = ["LinearConfig", "LinearProbe", "train_linear_probe", "validation_split", "correct_values",
           "check_finite", "choose_best"]

@dataclass
class LinearConfig:
    #: How a tapped map becomes a vector: ``avg`` (average pooling, Goyal et al.), ``bilinear`` (Zhang's release) or
    #: ``global``.
    reduction: str = "avg"
    #: Feature size aimed at by ``avg`` / ``bilinear`` (the papers: about 9k).
    target_dims: int = 9000
    #: Training epochs of each probe over the cached features; ``--eval-epochs`` overrides it.
    epochs: float = 30.0
    #: Probe training batch size.
    batch_size: int = 256
    #: SGD learning rate (x0.1 at 50% and 75% of training).
    lr: float = 0.05
    #: SGD momentum.
    momentum: float = 0.9
    #: SGD weight decay.
    weight_decay: float = 5e-4
    #: Store the extracted features under the run's cache folder and reuse them.
    cache_features: bool = False
    #: Fraction of the training split held out (seeded by the run's seed) to choose the best layer on.
    val_fraction: float = 0.1


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, config: LinearConfig,
                       seed: int, *, runtime: Runtime, tap: str = "features",
                       progress: Progress | None = None) -> nn.Module:
    """A non-affine batch norm + linear classifier trained on fixed features with the one training loop
    (:func:`sslbench.fit.fit`) through ``runtime``; ``progress`` shows its steps.

    Raises :class:`UsageError` when batch norm cannot train (fewer than 2 samples, or batches of fewer than 2) and
    :class:`NonFiniteLossError` naming ``tap`` and the step when the loss, or the trained weights, are not finite.
    """
    size = train_x.shape[0]
    if size < 2:
        raise UsageError(f"linear probe on {tap}: {size} training image(s); its batch norm needs at least 2 (use a "
                         "larger --subset or a smaller linear.val_fraction)")
    if config.batch_size < 2:
        raise UsageError(f"linear.batch_size={config.batch_size}: the probe's batch norm needs batches of at "
                         "least 2 samples")
    hint = f"lower linear.lr (now {config.lr:g})"
    probe = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes))
    probe.to(train_x.device)
    opt = torch.optim.SGD(probe.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    steps_per_epoch = max(1, -(-size // config.batch_size))
    total = max(1, round(config.epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(total * 0.5), int(total * 0.75)], gamma=0.1)
    generator = torch.Generator().manual_seed(seed)

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # One generator for every epoch, drawn in turn: fit_loop asks for epochs 0, 1, ... in order. Only an epoch's
        # last batch can be shorter than 2 samples (fit_loop skips it); the first has at least 2.
        order = torch.randperm(size, generator=generator).to(train_x.device)
        for start in range(0, size, config.batch_size):
            index = order[start:start + config.batch_size]
            yield train_x[index], train_y[index]

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        features, targets = batch
        with runtime.autocast():
            logits = probe(features)
        return F.cross_entropy(logits.float(), targets)

    probe.train()
    step = fit_loop(loss_of, epoch_batches, total=total, runtime=runtime, progress=progress,
                    description=f"linear probe {tap}", optimizer=opt, min_batch=2, where=f"linear probe on {tap}",
                    hint=hint, on_step_end=lambda _: sched.step()).step
    check_finite(f"linear probe on {tap} after step {step} of {total}", probe, hint=hint)
    return probe.eval()


@register_protocol("linear")
class LinearProbe(PerLayerProbe):
    """Frozen encoder, linear classifier per tapped layer: top-1 per layer and of the validation-chosen layer."""

    Config = LinearConfig
    option_prefix = "linear"

    def score(self, train_x: torch.Tensor, train_y: torch.Tensor, queries: Sequence[torch.Tensor],
              num_classes: int, context: TapContext) -> list[torch.Tensor]:
        cfg: LinearConfig = self.config
        probe = train_linear_probe(train_x, train_y, num_classes, cfg, context.seed, runtime=context.runtime,
                                   tap=context.tap, progress=context.progress)
        with torch.no_grad(), context.runtime.autocast():
            logits = [probe(query).float() for query in queries]
        check_finite(f"linear probe on {context.tap}", outputs=torch.cat(logits),
                     hint=f"lower linear.lr (now {cfg.lr:g})")
        return logits

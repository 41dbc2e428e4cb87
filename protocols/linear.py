"""``linear``: per-layer linear probes on the frozen encoder (Zhang 2016; Split-Brain 2017; Goyal et al. 2019).

Follows the released protocols: the encoder is frozen in eval mode (batch norm uses its running statistics); each
tapped map is reduced to about 9k dimensions, by bilinear resize (Zhang's released protocol, also Split-Brain's) or
average pooling (Goyal et al.; the ECCV paper), ``reduction`` chooses; then a non-affine batch norm and a linear
layer, trained with SGD momentum 0.9, weight decay 5e-4 and a step schedule (×0.1 at 50% and 75% of training).
Reports top-1 (%) per tap (``layer/<tap>/top1``) and the best tap (``best/top1``, ``best/layer``).

Departs from the papers for small data: they train 140k iterations at batch 256 on ImageNet; sslbench trains
``epochs`` passes over the cached features of the training split (default 30) with lr 0.05, and selects the best
layer on the evaluation split as the papers' tables do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sslbench.features import extract_features
from sslbench.metrics import top1_accuracy
from sslbench.pretext import Pretext
from sslbench.progress import Progress
from sslbench.protocol import EvalData, Protocol
from sslbench.registry import register_protocol
from sslbench.runtime import Runtime


@dataclass
class LinearConfig:
    reduction: str = "avg"
    target_dims: int = 9000
    epochs: float = 30.0
    batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    cache_features: bool = False


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, config: LinearConfig,
                       seed: int) -> nn.Module:
    """A non-affine batch norm + linear classifier trained on fixed features."""
    probe = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes))
    probe.to(train_x.device)
    opt = torch.optim.SGD(probe.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    steps_per_epoch = max(1, -(-train_x.shape[0] // config.batch_size))
    total = max(1, round(config.epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(total * 0.5), int(total * 0.75)], gamma=0.1)
    generator = torch.Generator().manual_seed(seed)
    probe.train()
    step = 0
    while step < total:
        order = torch.randperm(train_x.shape[0], generator=generator).to(train_x.device)
        for start in range(0, train_x.shape[0], config.batch_size):
            index = order[start:start + config.batch_size]
            if index.numel() < 2:
                continue
            loss = F.cross_entropy(probe(train_x[index]), train_y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= total:
                break
    return probe.eval()


@register_protocol("linear")
class LinearProbe(Protocol):
    """Frozen encoder, linear classifier per tapped layer: top-1 per layer and best."""

    requires = frozenset({"label"})
    Config = LinearConfig
    headline = "best/top1"

    def evaluate(self, pretext: Pretext, data: EvalData, runtime: Runtime, progress: Progress) -> dict[str, Any]:
        cfg: LinearConfig = self.config
        representation = pretext.representation().to(runtime.device).eval()
        cache = data.cache_dir if cfg.cache_features else None
        common = dict(batch_size=data.batch_size, reduction=cfg.reduction, target_dims=cfg.target_dims,
                      progress=progress, cache_dir=cache)
        train_x, train_y = extract_features(representation, data.train, runtime, split="train", **common)
        test_x, test_y = extract_features(representation, data.test, runtime, split="test", **common)
        metrics: dict[str, Any] = {}
        for tap in progress.track(representation.taps, "linear probes"):
            probe = train_linear_probe(train_x[tap.name], train_y, data.train.num_classes, cfg, data.seed)
            with torch.no_grad():
                logits = probe(test_x[tap.name])
            metrics[f"layer/{tap.name}/top1"] = 100.0 * float(top1_accuracy(logits, test_y))
            metrics[f"layer/{tap.name}/dims"] = int(train_x[tap.name].shape[1])
        best = max(representation.taps, key=lambda t: metrics[f"layer/{t.name}/top1"])
        metrics["best/top1"] = metrics[f"layer/{best.name}/top1"]
        metrics["best/layer"] = best.name
        return metrics

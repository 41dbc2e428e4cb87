"""``knn``: weighted k-nearest-neighbour classification on frozen features, per tapped layer.

The rule is the one of Wu et al. (CVPR 2018, instance discrimination) as VISSL runs it and as the Goyal et al.
benchmark's successors report it (REFERENCE.md: k = 200, cosine, temperature 0.1): training-split features form the
memory bank, both sides are L2-normalised, the k most cosine-similar training samples each vote for their label
with weight exp(similarity / T), and the class with the largest vote is the prediction
(:func:`sslbench.metrics.knn_classify`). Reports top-1 (%) per tap (``layer/<tap>/top1``, with the feature size as
``layer/<tap>/dims``) and the best tap (``best/top1``, ``best/layer``).

Choices and departures:

- Features: VISSL takes the globally average-pooled trunk output; sslbench does the same for every tap by default
  (``reduction="global"``, one value per channel). ``reduction="avg"`` or ``"bilinear"`` keeps a small spatial grid
  of about ``target_dims`` dimensions instead, the reduction of the ``linear`` protocol (Goyal et al. / Zhang's
  release), through the same :func:`sslbench.features.extract_features` (so the frozen encoder runs in eval mode
  and features are stored in float16, cached per checkpoint when ``cache_features`` is on).
- The memory bank is the whole training split without augmentation, and the test split is the dataset's evaluation
  split; the best layer is selected on the evaluation split, as the papers' tables do.
- No training, hence no ``epochs`` option: ``--eval-epochs`` does not affect this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sslbench.features import REDUCTIONS, extract_features
from sslbench.metrics import knn_classify, top1_accuracy
from sslbench.pretext import Pretext
from sslbench.progress import Progress
from sslbench.protocol import EvalData, Protocol
from sslbench.registry import register_protocol
from sslbench.runtime import Runtime


@dataclass
class KNNConfig:
    """Options of the ``knn`` protocol."""

    #: Neighbours that vote (clamped to the size of the training split).
    k: int = 200
    #: Temperature T of the vote weights exp(cosine / T).
    temperature: float = 0.1
    #: ``global`` (average over all positions), ``avg`` or ``bilinear`` (a grid of about ``target_dims``).
    reduction: str = "global"
    #: Feature size aimed at by ``avg`` / ``bilinear``.
    target_dims: int = 9000
    #: Store the extracted features under the run's cache folder and reuse them.
    cache_features: bool = False


@register_protocol("knn")
class KNNProtocol(Protocol):
    """Frozen encoder, weighted kNN (k = 200, cosine, T = 0.1) per tapped layer: top-1 per layer and best."""

    requires = frozenset({"label"})
    Config = KNNConfig
    headline = "best/top1"

    def evaluate(self, pretext: Pretext, data: EvalData, runtime: Runtime, progress: Progress) -> dict[str, Any]:
        cfg: KNNConfig = self.config
        if cfg.reduction not in REDUCTIONS:
            raise ValueError(f"knn.reduction={cfg.reduction!r}: choose one of {', '.join(REDUCTIONS)}")
        if cfg.k < 1 or cfg.temperature <= 0:
            raise ValueError(f"knn needs k >= 1 and temperature > 0, got k={cfg.k}, temperature={cfg.temperature}")
        representation = pretext.representation().to(runtime.device).eval()
        common = dict(batch_size=data.batch_size, reduction=cfg.reduction, target_dims=cfg.target_dims,
                      progress=progress, cache_dir=data.cache_dir if cfg.cache_features else None)
        train_x, train_y = extract_features(representation, data.train, runtime, split="train", **common)
        test_x, test_y = extract_features(representation, data.test, runtime, split="test", **common)
        if train_y is None or test_y is None:
            raise ValueError("knn needs a 'label' for every image of both splits")
        metrics: dict[str, Any] = {}
        for tap in progress.track(representation.taps, "knn"):
            scores = knn_classify(train_x[tap.name], train_y, test_x[tap.name], data.train.num_classes,
                                  k=cfg.k, temperature=cfg.temperature)
            metrics[f"layer/{tap.name}/top1"] = 100.0 * top1_accuracy(scores, test_y)
            metrics[f"layer/{tap.name}/dims"] = int(train_x[tap.name].shape[1])
        best = max(representation.taps, key=lambda t: metrics[f"layer/{t.name}/top1"])
        metrics["best/top1"] = metrics[f"layer/{best.name}/top1"]
        metrics["best/layer"] = best.name
        return metrics

"""``knn``: weighted k-nearest-neighbour classification on frozen features, per tapped layer.

The rule is the one of Wu et al. (CVPR 2018, instance discrimination) as VISSL runs it and as the Goyal et al.
benchmark's successors report it (REFERENCE.md: k = 200, cosine, temperature 0.1): training-split features form the
memory bank, both sides are L2-normalised, the k most cosine-similar training samples each vote for their label
with weight exp(similarity / T), and the class with the largest vote is the prediction
(:func:`sslbench.metrics.knn_classify`). Reports, per tap, top-1 (%) on the evaluation split (``layer/<tap>/top1``,
with the feature size as ``layer/<tap>/dims``) and on a held-out validation part of the training split
(``layer/<tap>/val_top1``); the tap with the best validation top-1 (ties: the earlier tap) as ``best/layer``, with
its evaluation top-1 ``best/top1`` and validation top-1 ``best/val_top1``; and the size of the validation part
(``train/val_images``). Per-image correctness on the evaluation split is kept for bootstrap
intervals.

Choices and departures:

- Features: VISSL takes the globally average-pooled trunk output; sslbench does the same for every tap by default
  (``reduction="global"``, one value per channel). ``reduction="avg"`` or ``"bilinear"`` keeps a small spatial grid
  of about ``target_dims`` dimensions instead, the reduction of the ``linear`` protocol (Goyal et al. / Zhang's
  release), through the same shared :class:`sslbench.features.FeatureStore` (so the frozen encoder runs in eval mode
  and features are stored in float16, cached per checkpoint when ``cache_features`` is on).
- Layer selection: the papers' tables pick the best layer on the evaluation split they report, which biases
  best-layer numbers upwards. sslbench holds out the seeded ``val_fraction`` of the training split that ``linear``
  holds out (:func:`sslbench.protocol.validation_split`), scores each tap's kNN on it with the rest of the
  training split as the memory bank, and picks the layer there. The evaluation-split top-1 then uses the whole
  training split without augmentation as the memory bank, as in the papers (a kNN classifier has nothing to fit, so
  using the held-out images as neighbours after the choice leaks nothing about the evaluation split), so
  ``layer/<tap>/top1`` stays the papers' number and ``best/top1`` is unbiased by the choice.
- No training, hence no ``epochs`` option: ``--eval-epochs`` does not affect this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sslbench.metrics import knn_classify
from sslbench.protocol import PerLayerProbe, TapContext
from sslbench.registry import register_protocol


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
    #: Fraction of the training split held out (seeded by the run's seed) to choose the best layer on.
    val_fraction: float = 0.1


@register_protocol("knn")
class KNNProtocol(PerLayerProbe):
    """Frozen encoder, weighted kNN (k = 200, cosine, T = 0.1) per tapped layer: top-1 per layer and of the
    validation-chosen layer."""

    Config = KNNConfig
    option_prefix = "knn"
    refit_for_test = True  # the evaluation split's memory bank is the whole training split

    def check_config(self) -> None:
        super().check_config()
        cfg: KNNConfig = self.config
        if cfg.k < 1 or cfg.temperature <= 0:
            raise ValueError(f"knn needs k >= 1 and temperature > 0, got k={cfg.k}, temperature={cfg.temperature}")

    def score(self, train_x: torch.Tensor, train_y: torch.Tensor, queries: Sequence[torch.Tensor],
              num_classes: int, context: TapContext) -> list[torch.Tensor]:
        cfg: KNNConfig = self.config
        return [knn_classify(train_x, train_y, query, num_classes=num_classes, k=cfg.k, temperature=cfg.temperature)
                for query in queries]

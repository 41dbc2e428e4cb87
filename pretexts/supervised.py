"""``supervised``: the encoder trained with the dataset's class labels, the upper bound of every comparison.

Cross-entropy on a linear classifier over the globally pooled deepest tap, from the L channel only, so it sees the
same input as the colorization pretexts. Adam, as the other pretexts, so budgets compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from sslbench.colour import normalize_l, rgb_to_lab
from sslbench.pretext import DataInfo, EncoderSpec, Pretext, images_to_rgb
from sslbench.registry import register_pretext
from sslbench.heads import ClassifierHead


@dataclass
class SupervisedConfig:
    #: Adam's learning rate.
    lr: float = 1e-3
    #: Adam's weight decay.
    weight_decay: float = 1e-4


@register_pretext("supervised")
class Supervised(Pretext):
    """Encoder trained with class labels on L input (upper bound)."""

    requires = frozenset({"label"})
    Config = SupervisedConfig

    def __init__(self, config: SupervisedConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        if data.num_classes < 2:
            raise ValueError(f"supervised needs class labels; dataset {data.dataset!r} has {data.num_classes}")
        self.encoder = encoder.build(in_chans=1)
        self.head = ClassifierHead(self.encoder.out_channels, data.num_classes)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": torch.optim.Adam(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)}

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lightness = rgb_to_lab(images_to_rgb(batch["image"]))[:, :1]
        logits = self.head(self.encoder(normalize_l(lightness))[-1])
        loss = F.cross_entropy(logits, batch["label"])
        accuracy = (logits.argmax(1) == batch["label"]).float().mean()
        return loss, {"train_top1": accuracy}

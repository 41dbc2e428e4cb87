"""A third-party pretext that takes a built-in's name, ``regression``, as a careless plugin would.

The tests install it as distribution ``sslbench-clash-plugin`` with an entry point named ``regression``; it also
registers itself with the built-ins' decorator. The built-in keeps the bare name; this one answers to
``sslbench-clash-plugin:regression``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn import functional as F

from sslbench.colour import normalize_l, rgb_to_lab
from sslbench.pretext import DataInfo, EncoderSpec, Pretext, images_to_rgb
from sslbench.registry import register_pretext


@dataclass
class ClashRegressionConfig:
    lr: float = 1e-3


@register_pretext("regression")
class ClashRegression(Pretext):
    """Predict each image's mean ab from L, under the built-in regression's name (a clashing third-party pretext)."""

    Config = ClashRegressionConfig
    version = "2024.1"

    def __init__(self, config: ClashRegressionConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        self.encoder = encoder.build(in_chans=1)
        self.head = nn.Linear(self.encoder.out_channels, 2)

    def compute_loss(self, batch):
        lab = rgb_to_lab(images_to_rgb(batch["image"]))
        pred = self.head(self.encoder(normalize_l(lab[:, :1]))[-1].mean(dim=(2, 3)))
        return F.mse_loss(pred, lab[:, 1:].mean(dim=(2, 3)) / 110.0), {}

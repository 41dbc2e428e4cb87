"""A third-party sslbench plugin, as another package would ship it: one pretext and one protocol.

It is installed by the tests as a real distribution (a dist-info with entry_points.txt on the path), so the harness
must find it through the ``sslbench.pretexts`` and ``sslbench.protocols`` entry-point groups, with no edit to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sslbench.colour import normalize_l, rgb_to_lab
from sslbench.pretext import DataInfo, EncoderSpec, Pretext, images_to_rgb
from sslbench.protocol import EvalData, Protocol


@dataclass
class MeanAbConfig:
    lr: float = 1e-3


class MeanAbPretext(Pretext):
    """Predict each image's mean ab colour from its L channel (a demo third-party pretext)."""

    Config = MeanAbConfig

    def __init__(self, config: MeanAbConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        self.encoder = encoder.build(in_chans=1)
        self.head = nn.Linear(self.encoder.out_channels, 2)

    def compute_loss(self, batch):
        lab = rgb_to_lab(images_to_rgb(batch["image"]))
        pred = self.head(self.encoder(normalize_l(lab[:, :1]))[-1].mean(dim=(2, 3)))
        return F.mse_loss(pred, lab[:, 1:].mean(dim=(2, 3)) / 110.0), {}


@dataclass
class FeatureNormConfig:
    max_images: int = 64


class FeatureNormProtocol(Protocol):
    """Mean L2 norm of the deepest tap's pooled features on the evaluation split (a demo third-party protocol)."""

    Config = FeatureNormConfig

    @torch.no_grad()
    def evaluate(self, pretext, data: EvalData, runtime, progress):
        rep = pretext.representation().to(runtime.device).eval()
        images = torch.stack([data.test[i]["image"] for i in range(min(len(data.test), self.config.max_images))])
        deepest = rep(images_to_rgb(images.to(runtime.device)))[-1].mean(dim=(2, 3))
        return {"feature_norm": float(deepest.norm(dim=1).mean())}

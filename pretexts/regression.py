"""``regression``: predict the ab channels from L with a regression loss (Zhang et al. 2016's L2 baseline).

Follows the paper: ab is predicted at 1/4 of the input resolution from the deepest tap and compared with the
ground-truth ab point-sampled at the same stride; ab is scaled by 1/110. Options: ``loss`` = ``l2`` (the paper's
baseline, which averages plausible colours into grey), ``l1`` or ``huber`` (the common fixes; ``huber_delta`` in
ab/110 units). Adam lr 3e-5 in the paper's 450k-iteration schedule; sslbench defaults to 1e-3 for short budgets.
``colorize`` upsamples the predicted ab bilinearly and recombines it with the input's full-resolution L.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from sslbench.colour import AB_SCALE, normalize_l, rgb_to_lab
from sslbench.pretext import DataInfo, EncoderSpec, Pretext, images_to_rgb, merge_l_ab
from sslbench.registry import register_pretext
from sslbench.heads import DenseHead, point_sample


@dataclass
class RegressionConfig:
    #: ``l2`` (the paper's baseline), ``l1`` or ``huber``.
    loss: str = "l2"
    #: Huber threshold in ab/110 units (``loss=huber`` only).
    huber_delta: float = 0.1
    #: The predicted ab's stride relative to the input (the paper: 4).
    output_stride: int = 4
    #: Adam's learning rate (the paper: 3e-5 over 450k iterations; higher for short budgets).
    lr: float = 1e-3
    #: Adam's weight decay.
    weight_decay: float = 1e-3


LOSSES = ("l2", "l1", "huber")


@register_pretext("regression")
class Regression(Pretext):
    """Predict ab from L with an L2 (or L1 / Huber) loss (Zhang 2016's regression baseline)."""

    Config = RegressionConfig

    def __init__(self, config: RegressionConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        if config.loss not in LOSSES:
            raise ValueError(f"regression.loss={config.loss!r}: choose one of {', '.join(LOSSES)}")
        self.encoder = encoder.build(in_chans=1)
        self.head = DenseHead(self.encoder.out_channels, 2)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": torch.optim.Adam(self.parameters(), lr=self.config.lr, betas=(0.9, 0.99),
                                        weight_decay=self.config.weight_decay)}

    def predict_ab(self, lightness: torch.Tensor) -> torch.Tensor:
        """ab/110 at 1/``output_stride`` resolution from L (N, 1, H, W) in [0, 100]."""
        stride = self.config.output_stride
        size = (-(-lightness.shape[-2] // stride), -(-lightness.shape[-1] // stride))
        return self.head(self.encoder(normalize_l(lightness))[-1], size)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lab = rgb_to_lab(images_to_rgb(batch["image"]))
        pred = self.predict_ab(lab[:, :1])
        target = point_sample(lab[:, 1:], self.config.output_stride) / AB_SCALE
        if self.config.loss == "l2":
            loss = F.mse_loss(pred, target)
        elif self.config.loss == "l1":
            loss = F.l1_loss(pred, target)
        else:
            loss = F.huber_loss(pred, target, delta=self.config.huber_delta)
        return loss, {}

    @torch.no_grad()
    def colorize(self, rgb: torch.Tensor) -> torch.Tensor:
        lightness = rgb_to_lab(rgb.float())[:, :1]
        return merge_l_ab(lightness, self.predict_ab(lightness).float() * AB_SCALE)

"""Small prediction heads for pretext plugins: the public place to import them from.

A pretext puts one of these on its encoder's deepest tap (``encoder.taps[-1].channels`` gives its width):
:class:`DenseHead` for per-pixel colour predictions, :class:`ClassifierHead` for image-level labels, and
:func:`point_sample` to subsample a per-pixel target the way Zhang et al. do. Not a plugin; built-in and third-party
pretexts import it alike.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DenseHead", "ClassifierHead", "point_sample"]


class DenseHead(nn.Module):
    """A per-pixel predictor on an encoder's deepest tap, producing ``out_channels`` maps at a requested size.

    conv3x3-BN-ReLU on the deep map, bilinear upsampling to the output size (Zhang's network predicts at 1/4 of the
    input), then conv3x3-BN-ReLU and a 1x1 projection. Used where a pretext predicts colour from one deep map.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 128) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True))
        self.refine = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True))
        self.project = nn.Conv2d(width, out_channels, 1)

    def forward(self, feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.reduce(feature)
        if x.shape[-2:] != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.project(self.refine(x))


class ClassifierHead(nn.Module):
    """Global average pooling and a linear layer on the deepest tap."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(feature.mean(dim=(2, 3)))


def point_sample(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Every ``stride``-th pixel, starting at the first (Zhang subsamples ground-truth ab this way, not by averaging)."""
    return x[..., ::stride, ::stride] if stride > 1 else x

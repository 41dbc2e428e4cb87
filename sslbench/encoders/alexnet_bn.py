"""AlexNet with batch norm, as trained by Zhang et al.'s colorization and evaluated by Goyal et al.'s benchmark.

The architecture follows the AlexNet of Zhang, Isola & Efros, "Colorful Image Colorization" (ECCV 2016), in the form
released with Goyal, Mahajan, Gupta & Misra, "Scaling and Benchmarking Self-Supervised Visual Representation
Learning" (ICCV 2019; ``fair_self_supervision_benchmark``, later VISSL's ``alexnet_colorization`` trunk)::

    conv1  96 11x11 stride 4 - BN - ReLU      tap conv1 (96)
    pool1  3x3 max stride 2
    conv2 256  5x5 groups 2  - BN - ReLU      tap conv2 (256)
    pool2  3x3 max stride 2
    conv3 384  3x3           - BN - ReLU      tap conv3 (384)
    conv4 384  3x3 groups 2  - BN - ReLU      tap conv4 (384)
    conv5 256  3x3 groups 2  - BN - ReLU      tap conv5 (256)

The taps are the outputs of each conv's BN+ReLU, the maps Goyal et al. probe with linear classifiers; pool5 and the
fully connected layers are not part of the encoder.

Differences from the release:

- Paddings are chosen so every map is exactly input/stride (conv1 pads 5, the max-pools pad 1): at 224x224 the maps
  are 56 (conv1), 28 (conv2) and 14 (conv3-5) where the unpadded Caffe geometry gives 54/27/13 at 224 (55/27/13 at
  227). Padding has no parameters, so weights are interchangeable.
- Convolutions feeding a batch norm have no bias (the norm's shift makes it redundant). Initialisation is He-normal
  (fan-out) for convolutions, weight 1 / bias 0 for batch norms.
- ``groups`` (default 2, the original two-GPU split of conv2/4/5) can be set to 1 for dense convolutions.
- ``width_mult`` scales every width, rounded to a multiple of ``groups``; split-brain autoencoders use two halves
  with ``width_mult=0.5`` (48-128-192-192-128).

Small-input variant (``small_input``, default for ``image_size <= 64``): an 11x11 stride-4 conv1 followed by two
pools leaves a 32x32 image with 2x2 maps at conv3-5. The variant replaces conv1 by a 3x3 stride-1 convolution (same
96 channels) and keeps both pools, so the taps are at strides 1 (conv1), 2 (conv2) and 4 (conv3-5): 32, 16 and 8
pixels on a 32x32 image. Everything else is unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from sslbench.encoders.base import Encoder, Tap
from sslbench.registry import register_encoder

__all__ = ["AlexNetBN", "alexnet_bn"]

ALEXNET_WIDTHS: tuple[int, ...] = (96, 256, 384, 384, 256)


def _scaled(channels: int, width_mult: float, divisor: int = 1) -> int:
    """``channels * width_mult`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(round(channels * width_mult / divisor)) * divisor)


class AlexNetBN(Encoder):
    """AlexNet-BN trunk conv1..conv5 with one tap per convolution (after its BN and ReLU).

    Args:
        in_chans: input channels (1 for the L channel, 2 for ab).
        widths: output channels of conv1..conv5 (already scaled; conv2, conv4, conv5 divisible by ``groups``).
        groups: groups of conv2, conv4 and conv5 (2 as in the original, or 1).
        small_input: conv1 is 3x3 stride 1 instead of 11x11 stride 4 (see the module docstring).
    """

    def __init__(
        self,
        in_chans: int = 1,
        widths: tuple[int, ...] = ALEXNET_WIDTHS,
        groups: int = 2,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"AlexNetBN needs 5 widths, got {widths!r}")
        c1, c2, c3, c4, c5 = widths
        self.in_chans = in_chans
        conv1 = (3, 1, 1) if small_input else (11, 4, 5)
        s1 = conv1[1]
        self.conv1 = _conv_bn_relu(in_chans, c1, *conv1)
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.conv2 = _conv_bn_relu(c1, c2, 5, 1, 2, groups)
        self.pool2 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.conv3 = _conv_bn_relu(c2, c3, 3, 1, 1)
        self.conv4 = _conv_bn_relu(c3, c4, 3, 1, 1, groups)
        self.conv5 = _conv_bn_relu(c4, c5, 3, 1, 1, groups)
        self.taps = (
            Tap("conv1", c1, s1),
            Tap("conv2", c2, s1 * 2),
            Tap("conv3", c3, s1 * 4),
            Tap("conv4", c4, s1 * 4),
            Tap("conv5", c5, s1 * 4),
        )
        self.config: dict[str, Any] = {}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps conv1..conv5 (after BN and ReLU)."""
        f1 = self.conv1(x)
        f2 = self.conv2(self.pool1(f1))
        f3 = self.conv3(self.pool2(f2))
        f4 = self.conv4(f3)
        f5 = self.conv5(f4)
        return [f1, f2, f3, f4, f5]


def _conv_bn_relu(
    in_chans: int, out_chans: int, kernel: int, stride: int, padding: int, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_chans, out_chans, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            bn=nn.BatchNorm2d(out_chans),
            relu=nn.ReLU(inplace=True),
        )
    )


@register_encoder("alexnet_bn")
def alexnet_bn(
    *,
    in_chans: int = 1,
    image_size: int = 224,
    width_mult: float = 1.0,
    small_input: bool | None = None,
    groups: int = 2,
) -> AlexNetBN:
    """AlexNet with batch norm (Zhang et al. colorization / Goyal et al. benchmark); taps conv1..conv5.

    Args:
        in_chans: input channels (1: normalised L; 2: ab for split-brain).
        image_size: side of the square input the encoder is built for.
        width_mult: multiplies every width (96-256-384-384-256), rounded to a multiple of ``groups``.
        small_input: 3x3 stride-1 conv1 (taps at strides 1, 2, 4, 4, 4) instead of 11x11 stride 4 (4, 8, 16, 16,
            16); default ``image_size <= 64``.
        groups: groups of conv2, conv4 and conv5: 2 (original) or 1.
    """
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"alexnet_bn: in_chans must be a positive int, got {in_chans!r}")
    if not width_mult > 0:
        raise ValueError(f"alexnet_bn: width_mult must be > 0, got {width_mult!r}")
    if groups not in (1, 2):
        raise ValueError(f"alexnet_bn: groups must be 1 or 2, got {groups!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"alexnet_bn: image_size must be a positive int, got {image_size!r}")
    small = image_size <= 64 if small_input is None else bool(small_input)
    min_size = 4 if small else 16
    if image_size < min_size:
        raise ValueError(f"alexnet_bn: image_size {image_size} is smaller than the deepest tap's stride {min_size}")
    widths = tuple(_scaled(c, width_mult, groups) for c in ALEXNET_WIDTHS)
    encoder = AlexNetBN(in_chans=in_chans, widths=widths, groups=groups, small_input=small)
    encoder.config = {
        "in_chans": in_chans,
        "image_size": image_size,
        "width_mult": width_mult,
        "small_input": small,
        "groups": groups,
    }
    return encoder

"""VGG-style encoders: Larsson et al.'s VGG-16 hypercolumn base and the small CPU-scale default.

``vgg16_bn`` follows the VGG-16 configuration "D" of Simonyan & Zisserman (2015) with batch norm after every
convolution (torchvision's ``vgg16_bn`` feature extractor), the base network of Larsson, Maire & Shakhnarovich,
"Learning Representations for Automatic Colorization" (ECCV 2016) and "Colorization as a Proxy Task for Visual
Understanding" (CVPR 2017). Thirteen 3x3 convolutions in five blocks of 64-128-256-512-512 channels, a 2x2 max-pool
between blocks. The taps are the last convolution of each block (``conv1_2``, ``conv2_2``, ``conv3_3``, ``conv4_3``,
``conv5_3``, after its BN and ReLU) taken BEFORE the block's max-pool, so a hypercolumn gathers maps at strides
1, 2, 4, 8 and 16; the fifth pool and the fully connected layers (fc6/fc7, which Larsson also convolutionalises
into the hypercolumn) are not part of this encoder.

``vgg_small`` is the harness's default encoder for CPU-scale runs on 32x32 data: four stages of two
[conv3x3-BN-ReLU] with 32-64-128-256 channels and a 2x2 max-pool between stages; taps ``stage1``..``stage4``.

Differences from the references, and small-input variants:

- Convolutions that feed a batch norm have no bias (the norm's shift makes it redundant; the function class is
  unchanged). Initialisation is He-normal (fan-out) for convolutions and weight 1 / bias 0 for batch norms, as
  torchvision's VGG.
- ``vgg16_bn`` at small inputs (``small_input``, default for ``image_size <= 64``) drops the max-pool between block
  4 and block 5, so ``conv5_3`` runs at stride 8 (4x4 on 32x32 images) instead of 16 (2x2, where a 3x3 convolution
  mostly sees its zero padding); taps are then at strides 1, 2, 4, 8, 8. It is heavy on CPU at any size.
- ``vgg_small`` at larger inputs (``small_input=False``, default for ``image_size > 64``) gives its first
  convolution stride 2, so the taps sit at strides 2, 4, 8, 16 (14x14 at the deepest tap for 224x224 images)
  instead of 1, 2, 4, 8, which keeps the cost of a 224x224 image near that of a 112x112 one.
- ``width_mult`` scales every width (rounded, at least 1 channel).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import nn

from sslbench.encoders.base import BlockEncoder, Tap
from sslbench.registry import register_encoder

__all__ = ["VGGEncoder", "vgg16_bn", "vgg_small"]

VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG_SMALL_STAGES: tuple[tuple[int, ...], ...] = ((32, 32), (64, 64), (128, 128), (256, 256))


def _scaled(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to the nearest integer, at least 1."""
    return max(1, int(round(channels * width_mult)))


def _check_common(in_chans: int, image_size: int, width_mult: float) -> None:
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")


class VGGEncoder(BlockEncoder):
    """A plain VGG trunk: blocks of [conv3x3-BN-ReLU], optionally a 2x2 max-pool before a block, one tap per block.

    Args:
        blocks: output widths of the convolutions of each block (already scaled).
        tap_names: one name per block; the tap is the block's last convolution (after BN and ReLU).
        in_chans: input channels (1 for the L channel, 2 for ab).
        pool_before: for each block, whether a 2x2 stride-2 max-pool precedes it (the first entry must be False).
        first_stride: stride of the very first convolution (1, or 2 for an early downsampling).
        conv_names: optional names for the convolutions of each block (``conv1_1``...); default ``conv{j}``.
    """

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        tap_names: Sequence[str],
        *,
        in_chans: int = 1,
        pool_before: Sequence[bool] | None = None,
        first_stride: int = 1,
        conv_names: Sequence[Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        if len(tap_names) != len(blocks):
            raise ValueError(f"{len(blocks)} blocks but {len(tap_names)} tap names")
        pool_before = [False] + [True] * (len(blocks) - 1) if pool_before is None else list(pool_before)
        if len(pool_before) != len(blocks) or pool_before[0]:
            raise ValueError("pool_before needs one flag per block and no pool before the first block")
        self.in_chans = in_chans
        self.blocks = nn.ModuleList()
        taps: list[Tap] = []
        channels, stride = in_chans, first_stride
        for index, (widths, tap_name) in enumerate(zip(blocks, tap_names)):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            if pool_before[index]:
                layers["pool"] = nn.MaxPool2d(kernel_size=2, stride=2)
                stride *= 2
            names = conv_names[index] if conv_names is not None else [f"conv{j + 1}" for j in range(len(widths))]
            for j, (width, name) in enumerate(zip(widths, names)):
                conv_stride = first_stride if index == 0 and j == 0 else 1
                layers[name] = _conv_bn_relu(channels, width, conv_stride)
                channels = width
            self.blocks.append(nn.Sequential(layers))
            taps.append(Tap(tap_name, channels, stride))
        self.taps = tuple(taps)
        self.config: dict[str, Any] = {}
        _init_weights(self)



def _conv_bn_relu(in_chans: int, out_chans: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=stride, padding=1, bias=False),
            bn=nn.BatchNorm2d(out_chans),
            relu=nn.ReLU(inplace=True),
        )
    )


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_size(encoder: VGGEncoder, name: str, image_size: int) -> None:
    deepest = encoder.taps[-1].stride
    if image_size < deepest:
        raise ValueError(f"{name}: image_size {image_size} is smaller than the deepest tap's stride {deepest}")


@register_encoder("vgg16_bn")
def vgg16_bn(
    *, in_chans: int = 1, image_size: int = 224, width_mult: float = 1.0, small_input: bool | None = None
) -> VGGEncoder:
    """VGG-16 with batch norm (Larsson et al.'s hypercolumn base); taps conv1_2..conv5_3 before each max-pool.

    Args:
        in_chans: input channels (1: normalised L; 2: ab for split-brain).
        image_size: side of the square input the encoder is built for.
        width_mult: multiplies every width (64-128-256-512-512).
        small_input: drop the max-pool before block 5 so ``conv5_3`` stays at stride 8; default
            ``image_size <= 64``.
    """
    _check_common(in_chans, image_size, width_mult)
    small = image_size <= 64 if small_input is None else bool(small_input)
    blocks = [[_scaled(c, width_mult) for c in block] for block in VGG16_BLOCKS]
    conv_names = [[f"conv{b + 1}_{j + 1}" for j in range(len(block))] for b, block in enumerate(VGG16_BLOCKS)]
    encoder = VGGEncoder(
        blocks,
        [names[-1] for names in conv_names],
        in_chans=in_chans,
        pool_before=[False, True, True, True, not small],
        conv_names=conv_names,
    )
    _check_size(encoder, "vgg16_bn", image_size)
    encoder.config = {"in_chans": in_chans, "image_size": image_size, "width_mult": width_mult, "small_input": small}
    return encoder


@register_encoder("vgg_small")
def vgg_small(
    *, in_chans: int = 1, image_size: int = 224, width_mult: float = 1.0, small_input: bool | None = None
) -> VGGEncoder:
    """Small VGG (default for 32x32 data): 4 stages of 2x[conv3x3-BN-ReLU], 32-64-128-256 wide; taps stage1..4.

    Args:
        in_chans: input channels (1: normalised L; 2: ab for split-brain).
        image_size: side of the square input the encoder is built for.
        width_mult: multiplies every width.
        small_input: first convolution at stride 1 (taps at strides 1, 2, 4, 8); False gives it stride 2 (taps at
            2, 4, 8, 16); default ``image_size <= 64``.
    """
    _check_common(in_chans, image_size, width_mult)
    small = image_size <= 64 if small_input is None else bool(small_input)
    blocks = [[_scaled(c, width_mult) for c in stage] for stage in VGG_SMALL_STAGES]
    encoder = VGGEncoder(
        blocks,
        [f"stage{i + 1}" for i in range(len(blocks))],
        in_chans=in_chans,
        first_stride=1 if small else 2,
    )
    _check_size(encoder, "vgg_small", image_size)
    encoder.config = {"in_chans": in_chans, "image_size": image_size, "width_mult": width_mult, "small_input": small}
    return encoder

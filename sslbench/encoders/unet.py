"""The pix2pix U-Net generator and its down path as an encoder (cGAN colorization, Treneska et al. 2022).

The architecture follows ``UnetGenerator`` / ``UnetSkipConnectionBlock`` of the official pix2pix release (Isola, Zhu,
Zhou & Efros, "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017; the
``pytorch-CycleGAN-and-pix2pix`` repository), the generator Treneska, Zdravevski, Pires, Lameski & Gievska,
"GAN-Based Image Colorization for Self-Supervised Visual Feature Learning" (Sensors 2022) train to predict ab from L
and whose encoder they transfer.

Down path (:class:`UNetEncoder`): 4x4 stride-2 convolutions C64 - C128 - C256 - C512 x (num_downs - 3) (widths are
``ngf * min(2**i, 8)``); the first block is a bare convolution, every later block starts with LeakyReLU(0.2); every
block except the first and the innermost ends with a norm. Taps ``down1``..``downN`` are the block outputs (after the
norm, before the next block's LeakyReLU) at strides 2, 4, ..., 2**N.

Up path (:class:`UNetGenerator`): from the innermost map, ReLU - 4x4 stride-2 ConvTranspose - norm [- dropout], then
concatenation with the skip of the same level, up to the outermost ReLU - ConvTranspose (with bias) to ``out_chans``
- tanh. In pix2pix, the LeakyReLU that opens each down block is in place, so the skips it concatenates actually carry
LeakyReLU(down_i); :meth:`UNetGenerator.decode` applies that activation to the skips explicitly, which computes the
same function without altering the encoder's taps. Initialisation is pix2pix's "normal" scheme: N(0, 0.02) for
(transposed) convolution weights, N(1, 0.02) for batch-norm weights, zero biases.

Changes for other image sizes, and why:

- Depth follows the input: ``num_downs = log2(image_size)`` by default (8 for 256, as pix2pix's ``unet_256``; 7 for
  128, as ``unet_128``; 5 for 32), so the innermost map is 1x1. The generator needs ``image_size`` divisible by
  ``2**num_downs``, so for a size that is not a power of two the default is the number of exact halvings instead
  (224 -> 5 downs, innermost 7x7; 96 -> 5, innermost 3x3). The encoder alone accepts any size of at least
  ``2**num_downs`` (its maps are floor(size / stride)).
- Dropout: pix2pix puts it (p=0.5, its only source of noise) in the decoder blocks of the C512 levels between the
  innermost and the C256 level: ``num_downs - 5`` blocks, the three decoder blocks right after the innermost for 8
  downs, two for 7. With 5 or 6 downs that rule gives none, so we keep ``max(num_downs - 5, 1)`` blocks (never more
  than the ``num_downs - 2`` middle levels): 32x32 images get dropout in the one decoder block after the innermost.
- Biases (not size related, pix2pix's rule): (transposed) convolutions have a bias only when the norm is not batch
  norm (``norm="instance"`` or ``"none"``); the final ConvTranspose always has one. So with ``norm="batch"`` the
  first and innermost down convolutions have neither norm nor bias, as in pix2pix.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.encoders.base import BlockEncoder, Tap
from sslbench.registry import register_encoder

__all__ = ["UNetEncoder", "UNetGenerator", "unet", "default_num_downs", "pix2pix_init"]

NORMS: tuple[str, ...] = ("batch", "instance", "none")
FINAL_ACTIVATIONS: tuple[str | None, ...] = ("tanh", None)


def default_num_downs(image_size: int) -> int:
    """Default depth: ``log2(image_size)`` for a power of two (1x1 innermost map).

    For other sizes, the number of times ``image_size`` halves exactly (224 -> 5, innermost 7x7), so the generator's
    skips line up; where that is below 2 (odd sizes), ``floor(log2(image_size))``, usable by the encoder alone.
    """
    if not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"the U-Net needs an int image_size >= 4, got {image_size!r}")
    deepest = int(math.floor(math.log2(image_size)))
    exact = min((image_size & -image_size).bit_length() - 1, deepest)
    return exact if exact >= 2 else deepest


def pix2pix_init(module: nn.Module, gain: float = 0.02) -> None:
    """pix2pix's "normal" init: conv weights N(0, gain), batch-norm weights N(1, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def _norm(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _check_num_downs(num_downs: int) -> None:
    if not isinstance(num_downs, int) or num_downs < 2:
        raise ValueError(f"num_downs must be an int >= 2, got {num_downs!r}")


class UNetEncoder(BlockEncoder):
    """The pix2pix U-Net down path; taps ``down1``..``downN`` at strides 2..2**N.

    Args:
        in_chans: input channels (1 for the L channel, 2 for ab).
        ngf: width of the first block; block i has ``ngf * min(2**(i-1), 8)`` channels.
        num_downs: number of 4x4 stride-2 down blocks (>= 2).
        norm: "batch" (pix2pix default), "instance" or "none"; never applied to the first and innermost blocks.
    """

    def __init__(self, in_chans: int = 1, ngf: int = 64, num_downs: int = 8, norm: str = "batch") -> None:
        super().__init__()
        _check_norm(norm)
        _check_num_downs(num_downs)
        if not isinstance(ngf, int) or ngf < 1:
            raise ValueError(f"ngf must be a positive int, got {ngf!r}")
        self.in_chans = in_chans
        self.ngf = ngf
        self.num_downs = num_downs
        self.norm = norm
        use_bias = norm != "batch"
        self.blocks = nn.ModuleList()
        taps: list[Tap] = []
        channels = in_chans
        for i in range(num_downs):
            width = ngf * min(2**i, 8)
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            if i > 0:
                layers["act"] = nn.LeakyReLU(0.2)
            layers["conv"] = nn.Conv2d(channels, width, kernel_size=4, stride=2, padding=1, bias=use_bias)
            if 0 < i < num_downs - 1:
                layers["norm"] = _norm(norm, width)
            self.blocks.append(nn.Sequential(layers))
            taps.append(Tap(f"down{i + 1}", width, 2 ** (i + 1)))
            channels = width
        self.taps = tuple(taps)
        self.config: dict[str, Any] = {}
        pix2pix_init(self)



class UNetGenerator(nn.Module):
    """pix2pix U-Net generator: :class:`UNetEncoder` plus the mirrored decoder with skip connections.

    Args:
        in_chans: input channels (1: normalised L).
        out_chans: output channels (2: ab).
        image_size: side of the square input; sets the default depth and must be divisible by ``2**num_downs``.
        ngf: width of the outermost block.
        num_downs: down blocks; default :func:`default_num_downs` (``log2(image_size)``: innermost map 1x1).
        norm: "batch", "instance" or "none".
        dropout: dropout probability in the decoder blocks after the innermost (0 disables it).
        final_activation: "tanh" (outputs in [-1, 1]) or None (raw outputs, e.g. segmentation logits).
    """

    def __init__(
        self,
        in_chans: int = 1,
        out_chans: int = 2,
        image_size: int = 256,
        ngf: int = 64,
        num_downs: int | None = None,
        norm: str = "batch",
        dropout: float = 0.5,
        final_activation: str | None = "tanh",
    ) -> None:
        super().__init__()
        num_downs = default_num_downs(image_size) if num_downs is None else num_downs
        _check_num_downs(num_downs)
        if image_size % 2**num_downs:
            fitting = (image_size & -image_size).bit_length() - 1
            raise ValueError(
                f"UNetGenerator: image_size {image_size} is not divisible by 2**{num_downs}; the skips would not "
                f"line up. Use an image_size that is a multiple of {2**num_downs} or num_downs <= {fitting}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        _check_final_activation(final_activation)
        self.encoder = UNetEncoder(in_chans=in_chans, ngf=ngf, num_downs=num_downs, norm=norm)
        self.num_downs = num_downs
        self.image_size = image_size
        self.out_chans = out_chans
        self.final_activation = final_activation
        self.dropout_levels = _dropout_levels(num_downs) if dropout > 0 else ()
        widths = [tap.channels for tap in self.encoder.taps]
        use_bias = norm != "batch"
        self.up_blocks = nn.ModuleList()
        for level in range(num_downs, 1, -1):
            in_ch = widths[level - 1] * (1 if level == num_downs else 2)
            layers: OrderedDict[str, nn.Module] = OrderedDict(
                act=nn.ReLU(),
                conv=nn.ConvTranspose2d(in_ch, widths[level - 2], kernel_size=4, stride=2, padding=1, bias=use_bias),
                norm=_norm(norm, widths[level - 2]),
            )
            if level in self.dropout_levels:
                layers["dropout"] = nn.Dropout(dropout)
            self.up_blocks.append(nn.Sequential(layers))
        self.head = nn.Sequential(
            OrderedDict(
                act=nn.ReLU(),
                conv=nn.ConvTranspose2d(2 * widths[0], out_chans, kernel_size=4, stride=2, padding=1, bias=True),
            )
        )
        self.final = _final_activation(final_activation)
        pix2pix_init(self.up_blocks)
        pix2pix_init(self.head)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The decoder: maps the encoder's taps (``down1``..``downN``) to the output (N, out_chans, H, W)."""
        if len(features) != self.num_downs:
            raise ValueError(f"decode needs the {self.num_downs} encoder maps, got {len(features)}")
        h = features[-1]
        for j, block in enumerate(self.up_blocks):
            if j > 0:
                h = self._with_skip(features[self.num_downs - 1 - j], h)
            h = block(h)
        h = self._with_skip(features[0], h)
        return self.final(self.head(h))

    @staticmethod
    def _with_skip(skip: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if skip.shape[-2:] != h.shape[-2:]:
            raise ValueError(
                f"U-Net skip of size {tuple(skip.shape[-2:])} meets a decoder map of size {tuple(h.shape[-2:])}: "
                "the input side must be a multiple of 2**num_downs"
            )
        return torch.cat([F.leaky_relu(skip, 0.2), h], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encoder(x))``."""
        return self.decode(self.encoder(x))

    def replace_head(self, out_chans: int, final_activation: str | None = None) -> None:
        """Swap the outermost ConvTranspose for a freshly initialised one with ``out_chans`` outputs.

        Reuses the whole generator for another dense task, e.g. segmentation logits (``final_activation=None``).
        """
        _check_final_activation(final_activation)
        old = self.head.conv
        new = nn.ConvTranspose2d(old.in_channels, out_chans, kernel_size=4, stride=2, padding=1, bias=True)
        pix2pix_init(new)
        self.head.conv = new.to(device=old.weight.device, dtype=old.weight.dtype)
        self.final = _final_activation(final_activation)
        self.out_chans = out_chans
        self.final_activation = final_activation


def _dropout_levels(num_downs: int) -> tuple[int, ...]:
    """Levels whose decoder block ends with dropout: the ``max(n - 5, 1)`` levels just outside the innermost."""
    count = min(max(num_downs - 5, 1), num_downs - 2)
    return tuple(range(num_downs - 1, num_downs - 1 - count, -1))


def _check_final_activation(final_activation: str | None) -> None:
    if final_activation not in FINAL_ACTIVATIONS:
        raise ValueError(f"final_activation must be one of {FINAL_ACTIVATIONS}, got {final_activation!r}")


def _final_activation(final_activation: str | None) -> nn.Module:
    return nn.Tanh() if final_activation == "tanh" else nn.Identity()


@register_encoder("unet")
def unet(
    *,
    in_chans: int = 1,
    image_size: int = 224,
    width_mult: float = 1.0,
    small_input: bool | None = None,
    num_downs: int | None = None,
    norm: str = "batch",
) -> UNetEncoder:
    """pix2pix U-Net encoder (down path of the cGAN generator); taps down1..downN at strides 2..2**N.

    Args:
        in_chans: input channels (1: normalised L; 2: ab for split-brain).
        image_size: side of the square input; sets the default depth.
        width_mult: ``ngf = round(64 * width_mult)``.
        small_input: accepted for the uniform encoder interface and recorded; it changes nothing, because the
            U-Net's depth already follows ``image_size`` (there is no early downsampling to remove).
        num_downs: down blocks; default :func:`default_num_downs` (``log2(image_size)``: innermost map 1x1).
        norm: "batch" (pix2pix), "instance" or "none".
    """
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"unet: in_chans must be a positive int, got {in_chans!r}")
    if not width_mult > 0:
        raise ValueError(f"unet: width_mult must be > 0, got {width_mult!r}")
    resolved = default_num_downs(image_size) if num_downs is None else num_downs
    _check_num_downs(resolved)
    if image_size < 2**resolved:
        raise ValueError(f"unet: image_size {image_size} is smaller than 2**num_downs = {2**resolved}")
    ngf = max(1, int(round(64 * width_mult)))
    encoder = UNetEncoder(in_chans=in_chans, ngf=ngf, num_downs=resolved, norm=norm)
    encoder.config = {
        "in_chans": in_chans,
        "image_size": image_size,
        "width_mult": width_mult,
        "small_input": small_input,
        "num_downs": resolved,
        "norm": norm,
    }
    return encoder

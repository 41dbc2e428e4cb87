"""``cgan``: pix2pix conditional-GAN colorization as a pretext (Isola et al. 2017; Treneska et al., Sensors 2022).

A generator maps L to ab; a PatchGAN discriminator, conditioned on L, tells real (L, ab) pairs from generated ones.
Treneska, Zdravevski, Pires, Lameski & Gievska ("GAN-Based Image Colorization for Self-Supervised Visual Feature
Learning") pretrain the pix2pix U-Net this way and transfer its encoder (classification) or the whole generator with
a new output layer (segmentation).

Follows the paper (Isola et al.; the official ``pytorch-CycleGAN-and-pix2pix`` release where the paper is silent):

- Data: input ``normalize_l(L)`` = L/50 - 1 (the harness's one normalisation is exactly pix2pix's); target ab /
  ``ab_scale``, default 110 (pix2pix's colorization mode). Treneska divide by 128, which keeps the tanh away from
  +-1: ``--set cgan.ab_scale=128`` reproduces them.
- Generator with ``--encoder unet``: :class:`~sslbench.encoders.unet.UNetGenerator`, whose depth follows the input
  (8 stride-2 downsamplings for 256x256 as pix2pix's ``unet_256``, 7 for 128, 5 for 32), dropout 0.5 in the inner
  decoder blocks, tanh output. Its ``.encoder`` is the run's encoder, built from the encoder spec (so encoder options
  such as ``width_mult``, ``num_downs`` or ``norm`` apply to the generator too).
- Discriminator: PatchGAN C64 (no norm) - C128 - C256 (4x4 stride 2) - C512 (4x4 stride 1) - 1 channel, LeakyReLU 0.2,
  batch norm, fed concat(L, ab), as pix2pix's ``NLayerDiscriminator`` (three stride-2 layers: 70x70 receptive field).
- Losses: BCE-with-logits GAN loss (pix2pix's ``vanilla``) + lambda * L1 with lambda = 100 for the generator; the
  discriminator's loss is 0.5 * (BCE(real) + BCE(fake)). One discriminator step then one generator step per batch,
  the generator's adversarial term through a discriminator whose parameters are frozen for that step, as pix2pix's
  ``set_requires_grad``. Adam lr 2e-4, betas (0.5, 0.999) for both (``lr_d`` can
  set the discriminator's apart, as two-timescale GAN training does); weights N(0, 0.02), batch-norm weights N(1, 0.02).
- Transfer: :meth:`CGAN.representation` is the generator's encoder on L (Treneska's classification transfer);
  :meth:`CGAN.segmentation_model` is a deep copy of the whole generator with a new output layer giving logits
  (Treneska's segmentation transfer), taking RGB and computing L itself.

Departures, and why:

- Any encoder, not only the U-Net: with another encoder (the CLI default ``vgg_small``, ``timm/resnet18``, ...) the
  generator is that encoder plus :class:`TapUNetDecoder`, a U-Net decoder over the encoder's taps: from the deepest
  tap, upsample bilinearly to the next shallower tap's size, concatenate it (the skip connection), conv3x3-BN-ReLU to
  that tap's width; dropout 0.5 in the deepest decoder block; at the end upsample to the input size and a conv3x3 to
  ab with tanh. Bilinear upsampling to the skip's measured size (instead of pix2pix's 4x4 stride-2 transposed
  convolutions) makes it work for any strides, equal strides (two taps at stride 1) and odd sizes. So the pretext
  runs "on any encoder" and compares with the others on the same encoder; the U-Net path stays the paper's.
- Small images: the 70x70 receptive field exceeds a 32x32 image. ``d_layers`` (stride-2 layers of the
  discriminator) defaults to the largest of 3, 2, 1 (70x70, 34x34, 16x16 patches) whose receptive field spans at
  most 60% of the shorter image side: 3 from 117 pixels up (pix2pix's 70x70 at 128 and 256), 2 at 64 (34x34),
  1 at 32 (16x16), so the discriminator still judges local patches rather than whole images.
- Test time: pix2pix keeps dropout active when generating (its only noise source), so its outputs vary from call to
  call. sslbench's :meth:`CGAN.colorize` runs the generator in eval mode (dropout off, batch norm on running
  statistics), which makes colorization metrics reproducible; ``test_dropout=true`` restores pix2pix's behaviour.
- Sizes the U-Net cannot take: the U-Net needs sides that are multiples of 2**num_downs. ``colorize`` and the
  segmentation model resize L to the nearest such size, predict there and upsample the output bilinearly to the
  input's size (ab is then recombined with the full-resolution L), as the reference's note on inference at another
  resolution advises. Training images must already fit (the generator's constructor says so otherwise).
- Schedules: pix2pix trains 200 epochs (100 at a constant lr, 100 decaying linearly to 0); sslbench trains within
  the harness's budget at a constant lr.
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from sslbench.colour import AB_SCALE, normalize_l, rgb_to_lab
from sslbench.encoders.base import Encoder
from sslbench.encoders.unet import UNetEncoder, UNetGenerator, pix2pix_init
from sslbench.pretext import DataInfo, EncoderSpec, LRepresentation, Pretext, Representation, images_to_rgb, merge_l_ab
from sslbench.registry import register_pretext
from sslbench.runtime import Runtime

__all__ = ["CGAN", "CGANConfig", "PatchDiscriminator", "TapUNetDecoder", "GeneratorSegmenter", "patch_receptive_field"]


@dataclass
class CGANConfig:
    #: Weight of the L1 term in the generator's loss (pix2pix: 100).
    lambda_l1: float = 100.0
    #: Adam learning rate of both networks (pix2pix: 2e-4).
    lr: float = 2e-4
    #: Adam learning rate of the discriminator; None: ``lr`` (pix2pix uses one rate for both).
    lr_d: float | None = None
    #: Adam's beta1 for both networks (pix2pix: 0.5).
    beta1: float = 0.5
    #: Adam's beta2 for both networks (pix2pix: 0.999).
    beta2: float = 0.999
    #: ab is divided by this to give the tanh target (pix2pix 110; Treneska et al. 128).
    ab_scale: float = float(AB_SCALE)
    #: Dropout in the inner decoder blocks of the generator (pix2pix: 0.5).
    dropout: float = 0.5
    #: Width of the discriminator's first layer (pix2pix: 64).
    ndf: int = 64
    #: Stride-2 layers of the PatchGAN (3: 70x70, 2: 34x34, 1: 16x16 patches); None picks by image size.
    d_layers: int | None = None
    #: Keep dropout active in ``colorize`` as pix2pix does at test time (makes outputs random).
    test_dropout: bool = False


def patch_receptive_field(d_layers: int) -> int:
    """Receptive field (pixels) of a PatchGAN with ``d_layers`` 4x4 stride-2 layers and two 4x4 stride-1 layers."""
    field = 1
    for stride in reversed([2] * d_layers + [1, 1]):
        field = (field - 1) * stride + 4
    return field


def default_d_layers(image_size: int | tuple[int, int]) -> int:
    """The largest of 3, 2, 1 stride-2 layers whose receptive field spans at most 60% of the shorter side."""
    side = min(image_size) if isinstance(image_size, tuple) else image_size
    for layers in (3, 2, 1):
        if patch_receptive_field(layers) <= 0.6 * side:
            return layers
    return 1


class PatchDiscriminator(nn.Module):
    """pix2pix's ``NLayerDiscriminator``: one logit per (overlapping) patch of the conditioned input.

    Args:
        in_chans: input channels (3: L and ab).
        ndf: width of the first layer; layer n has ``ndf * min(2**n, 8)`` channels.
        n_layers: 4x4 stride-2 layers (the first without norm); then a 4x4 stride-1 layer and the 1-channel output.
    """

    def __init__(self, in_chans: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"cgan: d_layers must be an int >= 1, got {n_layers!r}")
        layers: list[nn.Module] = [nn.Conv2d(in_chans, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        self.receptive_field = patch_receptive_field(n_layers)
        pix2pix_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _conv_bn_relu(in_chans: int, out_chans: int, dropout: float) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False), norm=nn.BatchNorm2d(out_chans), act=nn.ReLU()
    )
    if dropout > 0:
        layers["dropout"] = nn.Dropout(dropout)
    return nn.Sequential(layers)


class TapUNetDecoder(nn.Module):
    """Any encoder plus a U-Net decoder over its taps: L (normalised) -> ab/scale, with skip connections.

    Mirrors :class:`~sslbench.encoders.unet.UNetGenerator`'s interface (``encoder``, ``forward``,
    ``replace_head``, ``size_multiple``). Decoder block i (deep to shallow): bilinear upsampling of the running map
    to tap i's measured size, concatenation with tap i, conv3x3-BN-ReLU to tap i's width (dropout in the deepest
    block). Head: bilinear upsampling to the input size, conv3x3 to ``out_chans``, tanh. Decoder weights are
    initialised N(0, 0.02) (pix2pix); the encoder keeps its own initialisation.
    """

    #: Any input size works: every upsampling goes to a measured size.
    size_multiple = 1

    def __init__(self, encoder: Encoder, out_chans: int = 2, dropout: float = 0.5,
                 final_activation: str | None = "tanh") -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"cgan: dropout must be in [0, 1), got {dropout!r}")
        self.encoder = encoder
        widths = [tap.channels for tap in encoder.taps]
        self.up_blocks = nn.ModuleList()
        running = widths[-1]
        for depth, index in enumerate(range(len(widths) - 2, -1, -1)):
            self.up_blocks.append(_conv_bn_relu(running + widths[index], widths[index], dropout if depth == 0 else 0))
            running = widths[index]
        self.head = nn.Sequential(OrderedDict(conv=nn.Conv2d(running, out_chans, 3, padding=1)))
        self.final = nn.Tanh() if final_activation == "tanh" else nn.Identity()
        pix2pix_init(self.up_blocks)
        pix2pix_init(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        h = features[-1]
        for block, skip in zip(self.up_blocks, reversed(features[:-1])):
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        if h.shape[-2:] != x.shape[-2:]:
            h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.final(self.head(h))

    def replace_head(self, out_chans: int, final_activation: str | None = None) -> None:
        """Swap the output convolution for a freshly initialised one (e.g. segmentation logits)."""
        old = self.head.conv
        new = nn.Conv2d(old.in_channels, out_chans, 3, padding=1)
        pix2pix_init(new)
        self.head.conv = new.to(device=old.weight.device, dtype=old.weight.dtype)
        self.final = nn.Tanh() if final_activation == "tanh" else nn.Identity()


def _size_multiple(generator: nn.Module) -> int:
    """Input sides the generator accepts are multiples of this (2**num_downs for the U-Net)."""
    if isinstance(generator, UNetGenerator):
        return 2**generator.num_downs
    return int(getattr(generator, "size_multiple", 1))


def run_fitted(generator: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``generator(x)`` at x's size, or at the nearest size it accepts with the output resized back to x's size."""
    multiple = _size_multiple(generator)
    size = tuple(x.shape[-2:])
    fitted = tuple(max(multiple, round(side / multiple) * multiple) for side in size)
    if fitted == size:
        return generator(x)
    out = generator(F.interpolate(x, size=fitted, mode="bilinear", align_corners=False))
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class GeneratorSegmenter(nn.Module):
    """Treneska's segmentation transfer: a whole generator with a new output layer, RGB in [0, 1] -> logits.

    ``encoder`` (the transferred down path) and ``head`` (the new output layer) let a protocol fine-tune in two
    phases (body frozen, then everything).
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    @property
    def encoder(self) -> Encoder:
        return self.generator.encoder

    @property
    def head(self) -> nn.Module:
        return self.generator.head

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        lightness = rgb_to_lab(rgb.float())[:, :1]
        return run_fitted(self.generator, normalize_l(lightness))


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` do not require grad inside the block (pix2pix's ``set_requires_grad(D, False)``)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


@register_pretext("cgan")
class CGAN(Pretext):
    """pix2pix conditional-GAN colorization: generator L -> ab, PatchGAN on (L, ab), BCE + 100 * L1."""

    Config = CGANConfig

    def __init__(self, config: CGANConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        if config.ab_scale <= 0:
            raise ValueError(f"cgan: ab_scale must be > 0, got {config.ab_scale!r}")
        if config.lambda_l1 < 0:
            raise ValueError(f"cgan: lambda_l1 must be >= 0, got {config.lambda_l1!r}")
        built = encoder.build(in_chans=1)
        self.generator: nn.Module
        if isinstance(built, UNetEncoder):
            # The paper's generator around the spec's encoder (same ngf / depth / norm), so encoder options apply.
            generator = UNetGenerator(in_chans=1, out_chans=2, image_size=encoder.image_size, ngf=built.ngf,
                                      num_downs=built.num_downs, norm=built.norm, dropout=config.dropout)
            generator.encoder = built
            self.generator = generator
        else:
            self.generator = TapUNetDecoder(built, out_chans=2, dropout=config.dropout)
        multiple = _size_multiple(self.generator)
        sides = data.image_size if isinstance(data.image_size, tuple) else (data.image_size,) * 2
        if any(side % multiple for side in sides):
            raise ValueError(f"cgan: the {encoder.name} generator needs image sides that are multiples of "
                             f"{multiple}, got {sides}; pass --image-size a multiple of {multiple}")
        d_layers = default_d_layers(data.image_size) if config.d_layers is None else config.d_layers
        self.discriminator = PatchDiscriminator(in_chans=3, ndf=config.ndf, n_layers=d_layers)

    @property
    def encoder(self) -> Encoder:  # type: ignore[override]
        """The generator's down path: what classification transfer reuses."""
        return self.generator.encoder

    # -- training ------------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        lr_d = self.config.lr if self.config.lr_d is None else self.config.lr_d
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=self.config.lr, betas=betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr_d, betas=betas),
        }

    def setup(self, runtime: Runtime) -> None:
        """Move to the device, create both optimisers and wrap G and D separately for DDP.

        The wrappers live in ``__dict__`` so that nn.Module does not register G and D a second time. Under
        ``torchrun`` the D step calls D's wrapper twice (real, fake) before one backward, and the G step reaches G's
        wrapper through the one generator forward both steps share, with D unwrapped and frozen: every parameter of
        each wrapper gets its gradient once per backward, so DDP needs no ``find_unused_parameters``
        (``tests/test_distributed.py`` checks both networks stay equal across processes and, without batch
        statistics, equal to one process at the same global batch).
        """
        self.to(runtime.device)
        self.optimizers = self.configure_optimizers()
        self.__dict__["train_generator"] = runtime.wrap(self.generator)
        self.__dict__["train_discriminator"] = runtime.wrap(self.discriminator)

    def training_step(self, batch: dict[str, torch.Tensor], runtime: Runtime) -> dict[str, torch.Tensor]:
        """One discriminator step, then one generator step, on the same generated ab."""
        lab = rgb_to_lab(images_to_rgb(batch["image"]))
        cond = normalize_l(lab[:, :1])
        target = lab[:, 1:] / self.config.ab_scale
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]

        with runtime.autocast():
            fake = self.train_generator(cond)
            real_logits = self.train_discriminator(torch.cat([cond, target], dim=1))
            fake_logits = self.train_discriminator(torch.cat([cond, fake.detach()], dim=1))
            loss_d = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        runtime.backward(loss_d, name="discriminator loss")
        runtime.step(opt_d)

        # The unwrapped D with frozen parameters: gradients reach G through D's input only, and no DDP reducer of D
        # waits for gradients that never come.
        with _frozen(self.discriminator), runtime.autocast():
            gen_logits = self.discriminator(torch.cat([cond, fake], dim=1))
            loss_gan = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
            loss_l1 = F.l1_loss(fake.float(), target)
            loss_g = loss_gan + self.config.lambda_l1 * loss_l1
        runtime.backward(loss_g, name="generator loss")
        runtime.step(opt_g)

        return {  # on the device: the training loop reads them every few steps, not each step
            "loss_G": loss_g.detach(),
            "loss_D": loss_d.detach(),
            "loss_G_gan": loss_gan.detach(),
            "loss_G_l1": loss_l1.detach(),
            "D_real": torch.sigmoid(real_logits.detach().float()).mean(),
            "D_fake": torch.sigmoid(fake_logits.detach().float()).mean(),
        }

    # -- what protocols use ----------------------------------------------------------------------------------------
    def representation(self) -> Representation:
        return LRepresentation(self.generator.encoder)

    @torch.no_grad()
    def colorize(self, rgb: torch.Tensor) -> torch.Tensor:
        """Recolour RGB in [0, 1] (N, 3, H, W): ab = G(L) * ab_scale, recombined with the input's L."""
        lightness = rgb_to_lab(rgb.float())[:, :1]
        was_training = self.generator.training
        self.generator.eval()
        if self.config.test_dropout:
            for module in self.generator.modules():
                if isinstance(module, nn.Dropout):
                    module.train()
        try:
            ab = run_fitted(self.generator, normalize_l(lightness)).float() * self.config.ab_scale
        finally:
            self.generator.train(was_training)
        return merge_l_ab(lightness, ab)

    def segmentation_model(self, num_classes: int) -> nn.Module:
        """A deep copy of the whole generator with a new output layer: RGB -> (N, num_classes, H, W) logits."""
        generator = copy.deepcopy(self.generator)
        generator.replace_head(num_classes, final_activation=None)
        return GeneratorSegmenter(generator)

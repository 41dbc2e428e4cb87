"""``hypercolumn``: Larsson, Maire & Shakhnarovich's hue/chroma colorization over a sparse hypercolumn.

Papers: "Learning Representations for Automatic Colorization" (ECCV 2016) and "Colorization as a Proxy Task for
Visual Understanding" (CVPR 2017); release: ``gustavla/autocolorize`` (``train/train_vgg16.prototxt``).

What it does. The encoder sees the normalised L channel. At ``num_points`` random pixels per image, kept ``border``
pixels away from every edge, each tapped map is read by bilinear interpolation and the readings are concatenated
into one hypercolumn vector per pixel. An MLP (Linear ``hidden`` - ReLU - [Dropout] - Linear) predicts two 32-bin
distributions per pixel, hue (circular) and chroma, trained with the colour core's ``hue_chroma_kl`` against
``hue_chroma_targets`` at the same pixels. ``colorize`` computes the same hypercolumn at every pixel (chunked over
``chunk_pixels``), applies the same head (Linear layers on channel-last vectors serve both paths), decodes with
``hue_chroma_decode`` (median chroma, circular-mean hue, chroma faded where the hue histogram is flat), shrinks the
chroma into the sRGB gamut at constant L and hue, and recombines the ab with the input's own L (``merge_l_ab``).

Follows the release:

- Hypercolumn over every tap of the encoder plus the input itself (``include_input``; the release's
  ``SparseHypercolumnExtractor`` also reads ``data``). Larsson's base is VGG-16 with batch norm
  (``--encoder vgg16_bn``); the CPU default ``vgg_small`` gives 1 + 32 + 64 + 128 + 256 = 481 dimensions.
- One hidden layer with ReLU (``colorize_fc1``), then two 32-bin heads; loss weights: hue 5 x chroma (in the colour
  core, chroma normalised by its ``CHROMA_MAX``), chroma ``min(3v, 1, 3(1 - v))`` with ``v = L/100`` (the release's
  ``sparse_chroma_weight``, its v being the gray value in [0, 1]); losses averaged over all points. The colour core's
  ``hue_chroma_kl`` weights the chroma term by 1, so this plugin calls it once with zero chroma (the chroma KL
  alone) and once as is, and reweights the chroma part: composition, no second implementation of the KL.
- Sparse training at fresh random locations every step (128 per image in the release).

Choices and departures, and why:

- Input: the release feeds the gray image (R+G+B)/3; sslbench feeds Lab L through ``normalize_l`` like every other
  pretext, so every protocol compares encoders on the same input.
- Reading convention (``align_corners=False``): cell ``i`` of a tap of stride ``s`` covers input pixels
  ``[s·i, s·(i+1))`` — how VGG's 2x2 / stride-2 max-pools tile the image — so pixel ``x`` is read at
  ``(x + 0.5)/s - 0.5`` cells, clamped to the outer cell centres (= ``F.interpolate(..., align_corners=False)``
  upsampling). The coordinate comes from the tap's declared stride, not the ratio of map sizes, so odd sizes stay
  aligned, and the dense path uses the same function, so sparse and dense hypercolumns agree exactly. The release
  reads at ``x/s`` (its offsets are 0): a ``(s-1)/2s``-cell shift that sslbench does not copy.
- Target smoothing: the paper reports that no spatial smoothing of the ground-truth histogram does as well; the
  release uses a 7x7 window. sslbench follows the paper by default (``target_window = 1``; only the sampled pixels
  are binned); ``target_window = 7`` reproduces the release (dense histograms, read at the points).
- Sizes for 32x32 images: ``num_points = 128`` as in the release. On a 32x32 image with ``border = 2`` that is 16 %
  of the 784 interior pixels (the release: 128 of the 160x160 centre of a 352 crop, border 96); small images have
  little redundancy between neighbours, and 128 points cost the head less than the encoder costs. Points are
  distinct within an image. ``border = 2`` keeps points off the outermost rows, where every 3x3 convolution sees its
  zero padding; at 32x32 the release's 27 % margin would discard most of the image.
- ``hidden = 256`` and ``dropout = 0`` instead of the release's 1024 and 0.5: a head cheaper than the CPU-scale
  encoder that fits in short budgets. The predictor is zero-initialised, so training starts from uniform histograms
  (the release gets near-uniform ones from its fc1 initialised with std 1e-4).
- Optimisation: Adam at ``lr = 1e-3`` for the harness's short budgets; the release trains with SGD momentum for
  many epochs on ImageNet crops.
- The release convolutionalises VGG's fc6/fc7 into the hypercolumn; sslbench reads the encoder's taps only.
- Gamut: the decoded chroma knows nothing of the sRGB gamut (the release's own chroma space is bounded by
  construction); sslbench shrinks it towards grey at constant L and hue until the colour is representable, so the
  output keeps the input's L instead of having RGB clipping change it.

Randomness: locations come from ``torch.rand`` on the global CPU generator (then moved to the device), so they are
deterministic by the trainer's global seed, identical on CPU and GPU, and reproduced after a resume (the trainer
checkpoints the CPU RNG state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from sslbench.colour import normalize_l, rgb_to_lab
from sslbench.colour.histograms import HueChromaTargets, hue_chroma_decode, hue_chroma_kl, hue_chroma_targets
from sslbench.encoders.base import Tap
from sslbench.pretext import DataInfo, EncoderSpec, Pretext, images_to_rgb, merge_l_ab
from sslbench.registry import register_pretext

__all__ = ["HypercolumnConfig", "Hypercolumn", "sample_points", "dense_points", "gather_hypercolumn", "take_points",
           "chroma_loss_weight"]


@dataclass
class HypercolumnConfig:
    #: Random pixels per image the hypercolumn is read at in training (the release: 128).
    num_points: int = 128
    #: Pixels kept free of points along every edge.
    border: int = 2
    #: Width of the MLP's hidden layer (the release: 1024).
    hidden: int = 256
    #: Dropout after the hidden layer (the release: 0.5).
    dropout: float = 0.0
    #: Bins of each of the hue and chroma histograms (the paper: 32).
    bins: int = 32
    #: Side of the window the target histograms are taken over (1: the pixel; the release: 7).
    target_window: int = 1
    #: Add the input L itself to the hypercolumn, as the release does.
    include_input: bool = True
    #: Adam's learning rate.
    lr: float = 1e-3
    #: Adam's weight decay.
    weight_decay: float = 0.0
    #: Pixels per chunk when ``colorize`` runs the head densely (bounds memory on large images).
    chunk_pixels: int = 16384


def _image_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def sample_points(batch: int, height: int, width: int, num_points: int, border: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, num_points, 2) long (y, x) pixel locations, distinct within an image, ``border`` px off each edge.

    Drawn from the global CPU generator (seeded by the trainer), then moved to ``device``.
    """
    inner_h, inner_w = height - 2 * border, width - 2 * border
    if inner_h < 1 or inner_w < 1:
        raise ValueError(f"hypercolumn.border={border} leaves no pixel inside a {height}x{width} image")
    if num_points > inner_h * inner_w:
        raise ValueError(f"hypercolumn.num_points={num_points} exceeds the {inner_h * inner_w} pixels at least "
                         f"{border} px from the border of a {height}x{width} image")
    flat = torch.rand(batch, inner_h * inner_w).argsort(dim=1)[:, :num_points]
    points = torch.stack([flat // inner_w + border, flat % inner_w + border], dim=-1)
    return points.to(device)


def dense_points(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(height·width, 2) long (y, x) locations of every pixel, row-major."""
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def gather_hypercolumn(maps: Sequence[torch.Tensor], taps: Sequence[Tap], points: torch.Tensor) -> torch.Tensor:
    """Bilinear reading of every tapped map at input pixel ``points`` (N, P, 2) (y, x): (N, P, sum of channels).

    Pixel ``x`` is read at ``(x + 0.5) / stride`` cell units of a tap (``align_corners=False``; positions beyond the
    outer cell centres clamp to the edge, like ``F.interpolate``).
    """
    centres = points.to(maps[0].dtype) + 0.5
    columns = []
    for fmap, tap in zip(maps, taps):
        h, w = fmap.shape[-2:]
        # grid_sample's normalised coordinates: -1 and +1 are the outer edges of the map (align_corners=False).
        gx = centres[..., 1] * (2.0 / (tap.stride * w)) - 1.0
        gy = centres[..., 0] * (2.0 / (tap.stride * h)) - 1.0
        grid = torch.stack([gx, gy], dim=-1).unsqueeze(1)  # (N, 1, P, 2)
        sampled = F.grid_sample(fmap, grid.to(fmap.dtype), mode="bilinear", padding_mode="border",
                                align_corners=False)
        columns.append(sampled.squeeze(2).transpose(1, 2))  # (N, P, C)
    return torch.cat(columns, dim=-1)


def take_points(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Values of ``x`` (N, C, H, W) at integer pixel ``points`` (N, P, 2) (y, x): (N, P, C)."""
    n, c, h, w = x.shape
    index = (points[..., 0] * w + points[..., 1]).unsqueeze(1).expand(n, c, -1)
    return x.reshape(n, c, h * w).gather(2, index).transpose(1, 2)


def chroma_loss_weight(lightness: torch.Tensor) -> torch.Tensor:
    """The release's chroma-term weight ``min(3v, 1, 3(1 - v))`` with ``v = L / 100`` (the release's v is its gray
    input in [0, 1]): near black and white every colour is nearly grey, so the chroma target carries little."""
    v = lightness / 100.0
    return torch.minimum(torch.minimum(3.0 * v, torch.ones_like(v)), 3.0 * (1.0 - v)).clamp_min(0.0)


@register_pretext("hypercolumn")
class Hypercolumn(Pretext):
    """Larsson et al.'s colorization: sparse hypercolumn -> MLP -> 32-bin hue and chroma histograms, KL loss."""

    Config = HypercolumnConfig

    def __init__(self, config: HypercolumnConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        if config.num_points < 1 or config.hidden < 1 or config.bins < 2 or config.chunk_pixels < 1:
            raise ValueError("hypercolumn: num_points, hidden and chunk_pixels must be >= 1 and bins >= 2")
        if config.border < 0 or not 0.0 <= config.dropout < 1.0:
            raise ValueError("hypercolumn: border must be >= 0 and dropout in [0, 1)")
        if config.target_window < 1 or config.target_window % 2 == 0:
            raise ValueError(f"hypercolumn.target_window must be odd and >= 1, got {config.target_window}")
        height, width = _image_hw(data.image_size)
        inner = max(0, height - 2 * config.border) * max(0, width - 2 * config.border)
        if config.num_points > inner:
            raise ValueError(f"hypercolumn.num_points={config.num_points} exceeds the {inner} pixels at least "
                             f"{config.border} px from the border of {height}x{width} images")
        self.encoder = encoder.build(in_chans=1)
        #: The maps read into the hypercolumn: the normalised input (stride 1) when ``include_input``, then the taps.
        self.columns: tuple[Tap, ...] = ((Tap("input", 1, 1),) if config.include_input else ()) + tuple(
            self.encoder.taps)
        layers: list[nn.Module] = [nn.Linear(sum(t.channels for t in self.columns), config.hidden),
                                   nn.ReLU(inplace=True)]
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        predictor = nn.Linear(config.hidden, 2 * config.bins)
        # Zero-initialised predictor: training starts from uniform histograms (the release gets near-uniform ones
        # from its fc1 initialised with std 1e-4), not from confident random guesses.
        nn.init.zeros_(predictor.weight)
        nn.init.zeros_(predictor.bias)
        self.head = nn.Sequential(*layers, predictor)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": torch.optim.Adam(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)}

    # -- the network ---------------------------------------------------------------------------------------------
    def column_maps(self, lightness: torch.Tensor) -> list[torch.Tensor]:
        """The maps the hypercolumn reads (one per entry of ``self.columns``) for L (N, 1, H, W) in [0, 100]."""
        x = normalize_l(lightness)
        maps = list(self.encoder(x))
        return [x, *maps] if self.config.include_input else maps

    def hypercolumns(self, maps: Sequence[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        """(N, P, C) hypercolumn vectors at pixel ``points`` (N, P, 2)."""
        return gather_hypercolumn(maps, self.columns, points)

    def predict(self, hypercolumns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hue and chroma logits (..., bins) from hypercolumn vectors (..., C): channel-last, any leading shape, so
        the same head serves the sparse points of training and every pixel of :meth:`colorize`."""
        logits = self.head(hypercolumns)
        return logits[..., :self.config.bins], logits[..., self.config.bins:]

    def sample_points(self, batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Fresh training locations, (batch, num_points, 2) (y, x)."""
        return sample_points(batch, height, width, self.config.num_points, self.config.border, device)

    # -- training ------------------------------------------------------------------------------------------------
    def targets(self, lab: torch.Tensor, points: torch.Tensor) -> HueChromaTargets:
        """The colour core's hue/chroma targets at ``points``, each laid out (N, bins, P, 1) ((N, P, 1) chroma).

        Without smoothing only the sampled pixels' ab are binned; with a window the dense histograms are built and
        read at the points (the window needs the neighbours)."""
        window = self.config.target_window
        if window == 1:
            ab = take_points(lab[:, 1:], points).transpose(1, 2).unsqueeze(-1)  # (N, 2, P, 1)
            return hue_chroma_targets(ab, bins=self.config.bins)
        dense = hue_chroma_targets(lab[:, 1:], bins=self.config.bins, window=window)
        return HueChromaTargets(
            take_points(dense.hue, points).transpose(1, 2).unsqueeze(-1),
            take_points(dense.chroma, points).transpose(1, 2).unsqueeze(-1),
            take_points(dense.chroma_value.unsqueeze(1), points).squeeze(-1).unsqueeze(-1),
        )

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lab = rgb_to_lab(images_to_rgb(batch["image"]))
        n, _, h, w = lab.shape
        points = self.sample_points(n, h, w, lab.device)
        hue_logits, chroma_logits = self.predict(self.hypercolumns(self.column_maps(lab[:, :1]), points))
        # The colour core's layout is (N, bins, H, W): the P points stand in for an H x 1 image.
        hue_logits = hue_logits.transpose(1, 2).unsqueeze(-1).float()
        chroma_logits = chroma_logits.transpose(1, 2).unsqueeze(-1).float()
        target = self.targets(lab, points)
        zeros = torch.zeros_like(target.chroma_value)
        # The core weights the chroma term by 1; the release weights it by min(3v, 1, 3(1 - v)). Its chroma-only
        # loss (chroma set to 0 switches the hue term off) is reweighted, its hue term kept as it is.
        chroma_kl = hue_chroma_kl(hue_logits, chroma_logits, target.hue, target.chroma, zeros)
        full = hue_chroma_kl(hue_logits, chroma_logits, target.hue, target.chroma, target.chroma_value)
        hue_term = full - chroma_kl
        weight = chroma_loss_weight(take_points(lab[:, :1], points))  # (N, P, 1)
        loss = (weight * chroma_kl + hue_term).mean()
        return loss, {"loss_chroma": (weight * chroma_kl).mean().detach(), "loss_hue": hue_term.mean().detach()}

    # -- colorization --------------------------------------------------------------------------------------------
    def dense_logits(self, lightness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hue and chroma logits (N, bins, H, W) at every pixel; the head runs on ``chunk_pixels`` pixels at a time."""
        n, _, h, w = lightness.shape
        maps = self.column_maps(lightness)
        every = dense_points(h, w, lightness.device)
        hue, chroma = [], []
        for start in range(0, h * w, self.config.chunk_pixels):
            points = every[start:start + self.config.chunk_pixels].unsqueeze(0).expand(n, -1, -1)
            hue_part, chroma_part = self.predict(self.hypercolumns(maps, points))
            hue.append(hue_part)
            chroma.append(chroma_part)
        hue_logits = torch.cat(hue, 1).transpose(1, 2).reshape(n, -1, h, w)
        chroma_logits = torch.cat(chroma, 1).transpose(1, 2).reshape(n, -1, h, w)
        return hue_logits, chroma_logits

    @torch.no_grad()
    def colorize(self, rgb: torch.Tensor) -> torch.Tensor:
        lightness = rgb_to_lab(rgb.float())[:, :1]
        hue_logits, chroma_logits = self.dense_logits(lightness)
        return merge_l_ab(lightness, hue_chroma_decode(hue_logits.float(), chroma_logits.float()))

"""``jigsaw``: solve jigsaw puzzles (Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving
Jigsaw Puzzles", ECCV 2016; the context-free network, CFN).

A non-colour reference: the colorization pretexts are compared with it on the same encoder and the same probes.

Follows the paper in:

* a square crop of 3 × ``cell`` pixels at a random place in the image, cut into a 3 × 3 grid of cells; from each cell
  a tile of ``tile_fraction`` of the cell's side at a random place inside it (the paper: 64 px tiles in 75 px cells of
  a 225 px crop, ``tile_fraction = 64/75``), so the gaps between tiles hide edge continuity;
* the tiles are shuffled by one permutation of a fixed set, and the network predicts the permutation's index;
* the **permutation set** is chosen greedily as the paper's Algorithm 1: a random first permutation (from
  ``permutation_seed``), then repeatedly the permutation, among all 9! not yet chosen, with the largest summed (hence
  average) Hamming distance to those chosen so far (ties to the first in lexicographic order). The default set
  (1000 permutations, seed 0) has mean Hamming distance 8.01 and minimum 2, as the paper's Table 3 reports for its
  maximal-distance set of 1000 (8.00 and 2). The paper's best size is 1000 (the default); it ablated 100 and fewer
  (``permutations``);
* the CFN: every tile goes through the shared encoder on its own; each tile's pooled deepest map goes through a shared
  fully connected layer (the paper's fc6, ``tile_features`` wide), the nine results are concatenated, and two fully
  connected layers (fc7, ``hidden`` wide, and fc8) give the permutation logits; cross-entropy;
* against low-level shortcuts: **per-tile normalisation** (each tile to zero mean and unit standard deviation over
  its pixels and channels; a flat tile is only centred), and each colour channel of a tile shifted on its own by up
  to ``channel_jitter`` pixels (against chromatic aberration; the shifted tile stays inside its cell);
* **RGB input**, as the paper's network saw colour tiles: the encoder is built with three input channels.

Follows the widely used PyTorch reimplementation (Brattoli's JigsawPuzzlePytorch) where the paper gives no detail:
one mean and one deviation per tile (not per channel); each tile's channels scaled by random gains in
[1 - ``colour_jitter``, 1 + ``colour_jitter``] (its 0.8-1.2; its random brightness shift is left out, as the
normalisation removes it); a fraction ``gray_prob`` of images made grayscale (BT.601 luma) before cutting (its 30 %).

Where sslbench departs, and why:

* **Channel jitter of 1 px** by default, sized for the 9 px tiles of 32 px images (implementations for the paper's
  64 px tiles move the channels by up to 2 px).
* **The representation** is the encoder on whole images normalised as the tiles were (each image to zero mean and
  unit deviation), so the probes see inputs distributed as in training; the encoder's taps are the
  representation's taps. The paper transferred by copying the conv weights into an AlexNet fed whole images.
* **Small images.** The tiles are cut at their native size, never resized: a 32 px image gives 10 px cells and 9 px
  tiles, where ``vgg_small``'s deepest tap (stride 8) is one pixel. An encoder whose deepest stride is larger than a
  tile (``unet`` at 32 px, say) would give empty maps and is refused, naming an ``--image-size`` that is large
  enough when one is; resizing tiles up would train the encoder at a scale the probes never show it.
* **Network and schedule.** The registered encoder replaces AlexNet; the fc layers are narrower (``tile_features``
  256, ``hidden`` 1024 where the paper had 1024 and 4096, the same ratio) and have no dropout, for CPU-scale
  budgets. Adam at lr 1e-3 with weight decay 5e-4, as the other pretexts use Adam so budgets compare (the paper:
  SGD at lr 0.01 for 350k iterations).

The permutation set is a pure function of ``permutations`` and ``permutation_seed`` (both hashed with the rest of
the options; ``version`` pins the generator, so a change to it must bump ``version`` and so every checkpoint hash),
and it is kept in the checkpoint as a buffer: a resumed or reloaded pretext uses the stored set, never a recomputed
one. Random draws (crops, tiles, jitters, gains, gray, labels) come from torch's CPU generator, which the trainer
seeds and saves in its checkpoints, so training is deterministic by seed on any device.

Logged terms: ``loss`` and ``train_top1`` (permutation accuracy, in [0, 1]).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sslbench.encoders.base import Encoder
from sslbench.errors import UsageError
from sslbench.pretext import DataInfo, EncoderRepresentation, EncoderSpec, Pretext, images_to_rgb
from sslbench.registry import register_pretext

__all__ = ["Jigsaw", "JigsawConfig", "Puzzles", "permutation_set", "grid_geometry",
           "cut_tiles", "sample_puzzles", "standardize", "GRID", "TILES"]

#: The puzzle is GRID x GRID tiles (the paper's 3 x 3).
GRID = 3
TILES = GRID * GRID
#: Luma weights (ITU-R BT.601) of the grayscale images.
LUMA = (0.299, 0.587, 0.114)


@dataclass
class JigsawConfig:
    #: Size of the permutation set, the number of classes (the paper's best: 1000; it ablated 100 and fewer).
    permutations: int = 1000
    #: Seed of the greedy selection's random first permutation; the set is a pure function of it and ``permutations``.
    permutation_seed: int = 0
    #: A tile's side as a fraction of its cell's (the paper: 64 of 75 px); the rest is the random gap.
    tile_fraction: float = 64 / 75
    #: Each colour channel of a tile is shifted on its own by up to this many pixels (kept inside the cell).
    channel_jitter: int = 1
    #: Each channel of a tile is scaled by a random gain in [1 - colour_jitter, 1 + colour_jitter].
    colour_jitter: float = 0.2
    #: Probability that an image is made grayscale before it is cut.
    gray_prob: float = 0.3
    #: Width of the shared per-tile fully connected layer (the paper's fc6).
    tile_features: int = 256
    #: Width of the fully connected layer on the nine concatenated tiles (the paper's fc7).
    hidden: int = 1024
    #: Adam's learning rate.
    lr: float = 1e-3
    #: Adam's weight decay.
    weight_decay: float = 5e-4


# -- the permutation set --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _all_permutations() -> np.ndarray:
    """Every permutation of the tiles, lexicographically ordered: (9!, 9) int8, read-only."""
    table = np.array(list(itertools.permutations(range(TILES))), dtype=np.int8)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=8)
def _greedy_set(count: int, seed: int) -> np.ndarray:
    table = _all_permutations()
    columns = np.ascontiguousarray(table.T)
    # The summed Hamming distance of a candidate to the chosen set is TILES * |chosen| minus its summed coincidences
    # (positions where it agrees with a chosen permutation), so the farthest candidate has the fewest coincidences.
    # A chosen one gets a count no candidate reaches (at most TILES * count < 2**30), so argmin skips it.
    coincidences = np.zeros(len(table), dtype=np.int32)
    chosen = [int(np.random.default_rng(seed).integers(len(table)))]
    while True:
        coincidences[chosen[-1]] = 1 << 30
        if len(chosen) == count:
            break
        newest = table[chosen[-1]]
        for position in range(TILES):
            coincidences += columns[position] == newest[position]
        chosen.append(int(coincidences.argmin()))
    result = table[chosen].astype(np.int64)
    result.flags.writeable = False
    return result


def permutation_set(count: int, seed: int) -> np.ndarray:
    """``count`` permutations of the 9 tiles, (count, 9), chosen greedily for maximal average Hamming distance
    (Noroozi & Favaro's Algorithm 1); deterministic given ``seed``. Row ``i`` maps puzzle position to cell."""
    if not 2 <= count <= math.factorial(TILES):
        raise UsageError(f"jigsaw.permutations must be between 2 and {math.factorial(TILES)} (9!), got {count}")
    return _greedy_set(int(count), int(seed)).copy()


# -- cutting puzzles ------------------------------------------------------------------------------------------------
def grid_geometry(height: int, width: int, tile_fraction: float) -> tuple[int, int]:
    """(cell, tile) sides in pixels for images of ``height`` x ``width``: cells tile a square crop of the shorter
    side; a tile is ``tile_fraction`` of a cell, rounded half up, at least 1 pixel."""
    cell = min(height, width) // GRID
    if cell < 1:
        raise UsageError(f"jigsaw: images of {height}x{width} pixels are too small for a {GRID}x{GRID} grid; use a "
                         f"larger --image-size")
    return cell, max(1, min(cell, int(cell * tile_fraction + 0.5)))


def standardize(images: torch.Tensor) -> torch.Tensor:
    """Each image (or tile) of (..., C, H, W) to zero mean and unit standard deviation over its pixels and channels;
    an image flatter than one 8-bit grey level is centred, not amplified."""
    mean = images.mean(dim=(-3, -2, -1), keepdim=True)
    std = images.std(dim=(-3, -2, -1), keepdim=True, unbiased=False).clamp_min(1.0 / 255.0)
    return (images - mean) / std


def cut_tiles(images: torch.Tensor, cell: int, tile: int, origin: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The 9 tiles of each image in grid order (row-major): (N, C, H, W) -> (N, 9, C, tile, tile).

    ``origin`` (N, 2) is the (y, x) of each image's 3-cell crop; ``offsets`` (N, 9, C, 2) the (y, x) of each
    channel's tile inside its cell, in [0, cell - tile]."""
    n, channels = images.shape[:2]
    device = images.device
    origin, offsets = origin.to(device), offsets.to(device)
    k = torch.arange(TILES, device=device)
    cell_yx = torch.stack([k // GRID, k % GRID], dim=-1) * cell                           # (9, 2)
    top_left = origin[:, None, None, :] + cell_yx[None, :, None, :] + offsets             # (N, 9, C, 2)
    steps = torch.arange(tile, device=device)
    rows = (top_left[..., 0, None] + steps)[..., :, None]                                  # (N, 9, C, t, 1)
    cols = (top_left[..., 1, None] + steps)[..., None, :]                                  # (N, 9, C, 1, t)
    batch = torch.arange(n, device=device).view(n, 1, 1, 1, 1)
    chan = torch.arange(channels, device=device).view(1, 1, channels, 1, 1)
    return images[batch, chan, rows, cols]


@dataclass
class Puzzles:
    """A batch of puzzles: ``tiles[:, i]`` is the tile of cell ``order[:, i]``, ``order = permutations[labels]``."""

    tiles: torch.Tensor   # (N, 9, 3, tile, tile) float RGB (in [0, 1] before gains), shuffled, not normalised
    labels: torch.Tensor  # (N,) index of each puzzle's permutation
    order: torch.Tensor   # (N, 9) the cell shown at each puzzle position
    origin: torch.Tensor  # (N, 2) (y, x) of each image's crop
    cell: int
    tile: int


def sample_puzzles(rgb: torch.Tensor, permutations: torch.Tensor, config: JigsawConfig) -> Puzzles:
    """Cut and shuffle one puzzle per image of float RGB (N, 3, H, W); random draws from torch's CPU generator."""
    n, channels, height, width = rgb.shape
    cell, tile = grid_geometry(height, width, config.tile_fraction)
    labels = torch.randint(len(permutations), (n,))
    origin = torch.stack([torch.randint(height - GRID * cell + 1, (n,)), torch.randint(width - GRID * cell + 1, (n,))],
                         dim=-1)
    room = cell - tile
    offsets = torch.randint(room + 1, (n, TILES, 1, 2))
    if config.channel_jitter > 0:
        jitter = torch.randint(-config.channel_jitter, config.channel_jitter + 1, (n, TILES, channels, 2))
        offsets = (offsets + jitter).clamp(0, room)
    else:
        offsets = offsets.expand(n, TILES, channels, 2)
    gray = torch.rand(n) < config.gray_prob
    if gray.any():
        luma = (rgb * rgb.new_tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True).expand_as(rgb)
        rgb = torch.where(gray.to(rgb.device).view(n, 1, 1, 1), luma, rgb)
    tiles = cut_tiles(rgb, cell, tile, origin, offsets)
    if config.colour_jitter > 0:
        gains = 1.0 + (torch.rand(n, TILES, channels, 1, 1) * 2.0 - 1.0) * config.colour_jitter
        tiles = tiles * gains.to(tiles.device, tiles.dtype)
    order = permutations[labels.to(permutations.device)].to(rgb.device)
    shuffled = tiles[torch.arange(n, device=rgb.device)[:, None], order]
    return Puzzles(shuffled, labels.to(rgb.device), order, origin.to(rgb.device), cell, tile)


# -- the network ----------------------------------------------------------------------------------------------------
class JigsawHead(nn.Module):
    """The CFN's fully connected part: a shared per-tile layer (fc6), then two layers on the 9 concatenated tiles."""

    def __init__(self, in_channels: int, tile_features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.tile_fc = nn.Sequential(nn.Linear(in_channels, tile_features), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(TILES * tile_features, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, classes))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, 9, C) pooled tile features in puzzle order -> (N, classes) logits."""
        return self.classifier(self.tile_fc(pooled).flatten(1))


def _large_enough_size(spec: EncoderSpec, tile_fraction: float, start: int) -> int | None:
    """The smallest square ``--image-size`` >= ``start`` whose tiles are at least as large as the deepest stride of
    the encoder built at that size (an encoder's depth can grow with the image size), or None when none is."""
    side = start
    for _ in range(8):
        stride = EncoderSpec(spec.name, spec.options, side).build(in_chans=3).taps[-1].stride
        if grid_geometry(side, side, tile_fraction)[1] >= stride:
            return side
        while grid_geometry(side, side, tile_fraction)[1] < stride:
            side += 1
    return None


def _check_tiles_fit(spec: EncoderSpec, encoder: Encoder, height: int, width: int, tile_fraction: float) -> None:
    """Refuse tiles smaller than the encoder's deepest stride (its deepest map would be empty)."""
    _, tile = grid_geometry(height, width, tile_fraction)
    stride = encoder.taps[-1].stride
    if tile >= stride:
        return
    try:
        needed = _large_enough_size(spec, tile_fraction, min(height, width) + 1)
    except ValueError:
        needed = None
    way_out = (f"use --image-size {needed} or larger" if needed else
               f"no --image-size helps {spec.name!r} with these options (its depth grows with the size)")
    shown = height if height == width else f"{height},{width}"
    raise UsageError(f"jigsaw: at --image-size {shown} each of the {GRID}x{GRID} tiles is {tile} px, smaller than "
                     f"encoder {spec.name!r}'s deepest stride {stride} (its deepest map would be empty); {way_out}, "
                     "or an encoder (or encoder options) with a smaller deepest stride")


@register_pretext("jigsaw")
class Jigsaw(Pretext):
    """Solve 3x3 jigsaw puzzles of RGB tiles, a permutation of a max-Hamming set (Noroozi & Favaro 2016, CFN)."""

    Config = JigsawConfig
    #: Bump when the permutation set's generator changes: the set is part of what a checkpoint is.
    version = 1

    def __init__(self, config: JigsawConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        if not 0.0 < config.tile_fraction <= 1.0:
            raise UsageError(f"jigsaw.tile_fraction must be in (0, 1], got {config.tile_fraction}")
        if config.channel_jitter < 0:
            raise UsageError(f"jigsaw.channel_jitter must be >= 0 pixels, got {config.channel_jitter}")
        if not 0.0 <= config.colour_jitter < 1.0:
            raise UsageError(f"jigsaw.colour_jitter must be in [0, 1), got {config.colour_jitter}")
        if not 0.0 <= config.gray_prob <= 1.0:
            raise UsageError(f"jigsaw.gray_prob must be in [0, 1], got {config.gray_prob}")
        if config.tile_features < 1 or config.hidden < 1:
            raise UsageError(f"jigsaw.tile_features and jigsaw.hidden must be >= 1, got {config.tile_features} and "
                             f"{config.hidden}")
        size = data.image_size
        height, width = (size, size) if isinstance(size, int) else size
        self.encoder = encoder.build(in_chans=3)
        _check_tiles_fit(encoder, self.encoder, height, width, config.tile_fraction)
        self.register_buffer("permutations", torch.from_numpy(
            permutation_set(config.permutations, config.permutation_seed)))
        self.head = JigsawHead(self.encoder.out_channels, config.tile_features, config.hidden, config.permutations)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": torch.optim.Adam(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)}

    def logits(self, tiles: torch.Tensor) -> torch.Tensor:
        """Permutation logits (N, P) of shuffled tiles (N, 9, 3, t, t), float RGB in [0, 1]."""
        n = tiles.shape[0]
        deepest = self.encoder(standardize(tiles.flatten(0, 1)))[-1]
        return self.head(deepest.mean(dim=(2, 3)).view(n, TILES, -1))

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        puzzles = sample_puzzles(images_to_rgb(batch["image"]), self.permutations, self.config)
        logits = self.logits(puzzles.tiles)
        loss = F.cross_entropy(logits.float(), puzzles.labels)
        accuracy = (logits.argmax(1) == puzzles.labels).float().mean()
        return loss, {"train_top1": accuracy}

    def representation(self) -> EncoderRepresentation:
        """The encoder on each whole image standardised as the tiles were."""
        return EncoderRepresentation(self.encoder, standardize)

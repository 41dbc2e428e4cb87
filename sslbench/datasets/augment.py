"""Training augmentation on the device: a random crop with padding and a horizontal flip, per image, batched.

The adapters return deterministic images (``transforms.py``); augmentation happens after a batch reaches the device,
so the decoded-image cache holds the un-augmented image and no worker spends time on it. It is what small-image
self-supervised training does (CIFAR's crop with 4 pixels of padding at 32 x 32, and a flip): the colorization
papers train at ImageNet scale on random crops of larger resized images (Zhang et al. 176 of 256, Larsson et al. 224
of 256) plus flips; at the small sizes sslbench trains on, a crop from a padded image keeps the whole image size.
The padding reflects the image (zero padding would add black borders, which a colorization target would learn).
``mask`` is moved by the same indices, so image and mask stay aligned and the mask holds only its own values.

Randomness comes from a CPU ``torch.Generator`` (the same draws on every device), seeded per micro-batch from the
run's seed and the micro-batch's index (:func:`augment_generator`), so a resumed run augments every batch exactly as
an uninterrupted one does.

**Call contract** (for the training loop, :func:`sslbench.fit.fit`): pass ``batch_transform=DeviceAugment(seed,
start=start_step * accumulate)``. It is called once per micro-batch that trains (after batches smaller than
``min_batch`` are dropped, after the batch is on the device), so its ``k``-th call, counting from 0 over every
session of the run, augments with ``augment_generator(seed, k)``. Augmentation is opt-in: nothing calls it unless a
run asks for it, and a run that does must say so in its checkpoint hash (its run config), while runs that do not
keep theirs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["augment_on_device", "augment_generator", "DeviceAugment", "default_padding"]

#: Mixed into the seed so augmentation draws differ from every other use of the run's seed.
_AUGMENT_STREAM = 0x5A6D


def default_padding(height: int, width: int) -> int:
    """Padding of the random crop: 1/8 of the shorter side (4 pixels at 32 x 32), at least 1."""
    return max(1, min(height, width) // 8)


def augment_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator for micro-batch ``index`` (0, 1, ... over the whole run) of a run seeded ``seed``."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + index) * 65_537 + _AUGMENT_STREAM) % 2**63)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside ``0..size-1`` mirrored back in (``-1 -> 1``, ``size -> size - 2``), as reflect padding."""
    if size == 1:
        return torch.zeros_like(index)
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def augment_on_device(batch: dict[str, Any], generator: torch.Generator, *, padding: int | None = None,
                      flip: bool = True, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """``batch`` with each image (and its ``mask``) randomly cropped from its reflect-padded self and flipped.

    Args:
        batch: ``image`` (N, C, H, W) of any dtype, on any device, optionally ``mask`` (N, H, W); other keys are
            returned as they are.
        generator: a CPU generator (see :func:`augment_generator`); draws: the flips (N), then the row and column
            offsets (N each).
        padding: pixels of reflect padding on each side (each image moves by up to this much); default
            :func:`default_padding`; 0 turns the crop off.
        flip: flip each image left-right with probability 1/2.
        shard: ``(rank, world_size)`` when ``batch`` is one process's equal chunk of a global batch (``torchrun``):
            the draws are made for the whole global batch and this chunk takes its part, so every image is augmented
            exactly as in a single process.
    """
    image = batch["image"]
    n, _, height, width = image.shape
    pad = default_padding(height, width) if padding is None else int(padding)
    if pad < 0 or pad >= min(height, width):
        raise ValueError(f"augment_on_device: padding {pad} must be in 0..{min(height, width) - 1} for "
                         f"{height}x{width} images")
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"augment_on_device: shard {shard} is not (rank, world_size) with 0 <= rank < world_size")
    total, part = n * world, slice(rank * n, (rank + 1) * n)
    flips = (torch.rand(total, generator=generator) < 0.5 if flip else torch.zeros(total, dtype=torch.bool))[part]
    dy = (torch.randint(0, 2 * pad + 1, (total,), generator=generator) - pad)[part]
    dx = (torch.randint(0, 2 * pad + 1, (total,), generator=generator) - pad)[part]
    columns = torch.arange(width)
    columns = torch.where(flips.view(n, 1), width - 1 - columns, columns)  # flip after the crop
    rows = _reflect(dy.view(n, 1) + torch.arange(height), height).to(image.device)
    cols = _reflect(dx.view(n, 1) + columns, width).to(image.device)
    which = torch.arange(n, device=image.device)
    out = dict(batch)
    moved = image[which.view(n, 1, 1, 1), torch.arange(image.shape[1], device=image.device).view(1, -1, 1, 1),
                  rows.view(n, 1, height, 1), cols.view(n, 1, 1, width)]
    if image.is_contiguous(memory_format=torch.channels_last) and not image.is_contiguous():
        moved = moved.contiguous(memory_format=torch.channels_last)
    out["image"] = moved
    if "mask" in batch:
        out["mask"] = batch["mask"][which.view(n, 1, 1), rows.view(n, height, 1), cols.view(n, 1, width)]
    return out


class DeviceAugment:
    """``batch_transform`` for the training loop: augments its ``k``-th call with ``augment_generator(seed, k)``.

    Args:
        seed: the run's seed.
        start: micro-batches already trained (``start_step * accumulate`` when resuming), where the count begins.
        padding, flip, shard: as :func:`augment_on_device`.
    """

    def __init__(self, seed: int, *, start: int = 0, padding: int | None = None, flip: bool = True,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.seed, self.index, self.padding, self.flip, self.shard = seed, start, padding, flip, shard

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = augment_on_device(batch, augment_generator(self.seed, self.index), padding=self.padding,
                                flip=self.flip, shard=self.shard)
        self.index += 1
        return out

"""Cache-sized blocks of a batch of images, for the CPU paths of sslbench.colour.

Element-wise torch code on large tensors is limited by memory traffic (and, for fresh buffers, by page
faults); processing a batch in blocks of 2**15 to 2**17 pixels keeps every intermediate
in cache.  A block is a range of whole images, or a range of pixels of one image.  Accelerators get
one large block per 2**22 pixels.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

CPU_BLOCK_PIXELS = 1 << 17
DEVICE_BLOCK_PIXELS = 1 << 22


def iter_blocks(n: int, pixels: int, device: torch.device, block: int | None = None) -> Iterator[tuple[slice, slice]]:
    """(image slice, pixel slice) pairs covering an (n, ..., pixels) batch in blocks of ~``block`` pixels."""
    if block is None:
        block = CPU_BLOCK_PIXELS if device.type == "cpu" else DEVICE_BLOCK_PIXELS
    if pixels >= block:
        for i in range(n):
            for p0 in range(0, pixels, block):
                yield slice(i, i + 1), slice(p0, p0 + block)
    else:
        step = max(1, block // max(pixels, 1))
        for i in range(0, n, step):
            yield slice(i, i + step), slice(None)

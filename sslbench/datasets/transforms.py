"""Deterministic geometry and small indexing helpers shared by the dataset adapters.

Adapters return images already at their ``image_size``:

- an ``int`` ``s`` means a square: resize so the *shorter* side is ``s``, then centre-crop ``s x s`` (torchvision's
  ``Resize(s)`` followed by ``CenterCrop(s)``);
- a ``(H, W)`` tuple means: resize by the smallest factor that makes the image cover ``H x W`` (keeping its aspect
  ratio), then centre-crop ``H x W``. For a 360x480 CamVid frame and ``(96, 128)`` that is a plain resize.

Images are resized with PIL's antialiased bilinear filter, masks with nearest neighbour (so a mask only ever holds
values that were in the original), and both are cropped by the same box, so pixel ``(i, j)`` of the image and of the
mask stay aligned. An image already at the requested size is returned untouched (its pixels are exact). Nothing
here is random: training augmentation (random crop and flip) runs on the device after batching
(:mod:`sslbench.datasets.augment`), so the decoded-image cache (:mod:`sslbench.datasets.decoded_cache`) holds these
deterministic images.

The module also holds the split check and the image-extension filter that every adapter uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from sslbench.errors import DataError, UsageError

__all__ = [
    "ImageSize",
    "IMAGE_EXTENSIONS",
    "is_image_file",
    "check_split",
    "normalize_image_size",
    "size_hw",
    "resize_crop_geometry",
    "resize_crop_image",
    "resize_crop_mask",
    "image_to_tensor",
    "mask_to_tensor",
    "load_mask",
]

#: An adapter's ``image_size``: a square side or an ``(H, W)`` pair.
ImageSize = int | tuple[int, int]

#: File extensions (lower case) that the folder-based adapters index.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def is_image_file(filename: str) -> bool:
    """True for a file name ending in one of :data:`IMAGE_EXTENSIONS` (case-insensitive) and not hidden."""
    return not filename.startswith(".") and filename.lower().endswith(IMAGE_EXTENSIONS)


def check_split(dataset: str, split: str, valid: Iterable[str]) -> None:
    """Raise :class:`DataError` listing the valid splits when ``split`` is not one of them."""
    valid = tuple(valid)
    if split not in valid:
        raise DataError(f"dataset {dataset!r} has no split {split!r}; valid splits: {', '.join(valid)}")


def normalize_image_size(image_size: ImageSize | Sequence[int] | None, default: ImageSize) -> ImageSize:
    """``image_size`` checked and normalised (an int, or a tuple of two ints); ``default`` when it is None.

    A list such as ``[96, 128]`` (from a JSON config) becomes a tuple. Raises :class:`UsageError` for anything that
    is not a positive int or a pair of positive ints.
    """
    value = default if image_size is None else image_size
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value > 0:
            return int(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value):
            return (int(value[0]), int(value[1]))
    raise UsageError(f"image_size must be a positive int or a (height, width) pair of positive ints, got {value!r}")


def size_hw(image_size: ImageSize) -> tuple[int, int]:
    """``(H, W)`` of an ``image_size``: ``(s, s)`` for an int."""
    if isinstance(image_size, tuple):
        return image_size
    return (image_size, image_size)


def resize_crop_geometry(width: int, height: int, image_size: ImageSize) -> tuple[int, int, int, int]:
    """``(resized_width, resized_height, left, top)`` for resizing a ``width x height`` image to cover
    ``image_size`` and centre-cropping it (crop offsets rounded as torchvision's ``center_crop`` does)."""
    out_h, out_w = size_hw(image_size)
    scale = max(out_h / height, out_w / width)
    new_w = max(out_w, int(round(width * scale)))
    new_h = max(out_h, int(round(height * scale)))
    left = int(round((new_w - out_w) / 2.0))
    top = int(round((new_h - out_h) / 2.0))
    return new_w, new_h, left, top


def _resize_crop(img: Image.Image, image_size: ImageSize, resample: Image.Resampling) -> Image.Image:
    out_h, out_w = size_hw(image_size)
    if img.size == (out_w, out_h):
        return img
    new_w, new_h, left, top = resize_crop_geometry(img.width, img.height, image_size)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), resample=resample)
    if (new_w, new_h) != (out_w, out_h):
        img = img.crop((left, top, left + out_w, top + out_h))
    return img


def resize_crop_image(img: Image.Image, image_size: ImageSize) -> Image.Image:
    """Resize (antialiased bilinear) and centre-crop an RGB image to ``image_size``."""
    return _resize_crop(img, image_size, Image.Resampling.BILINEAR)


def resize_crop_mask(mask: Image.Image, image_size: ImageSize) -> Image.Image:
    """Resize (nearest neighbour) and centre-crop a mode L/P class-index mask exactly as :func:`resize_crop_image`
    does the image of the same size, so the two stay aligned and the mask gains no new values."""
    return _resize_crop(mask, image_size, Image.Resampling.NEAREST)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a contiguous uint8 tensor (3, H, W)."""
    array = np.array(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def mask_to_tensor(mask: Image.Image | np.ndarray) -> torch.Tensor:
    """A class-index mask (PIL mode L/P, or a 2-D array) as an int64 tensor (H, W)."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


def load_mask(path: Path) -> Image.Image:
    """Open a class-index mask PNG (mode L or P, pixel value = class index) without converting its values.

    A corrupt or unreadable file, or one whose pixels are not class indices (an RGB colour-coded mask), raises
    :class:`DataError` naming it.
    """
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mask = img.copy() if img.mode in ("L", "P") else None
            mode = img.mode
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}. Remove or replace the file and rerun.") from exc
    if mask is None:
        raise DataError(
            f"mask {path} has PIL mode {mode!r}; expected a single-channel PNG (mode 'L' or palette 'P') whose pixel "
            "values are class indices, not colour-coded RGB"
        )
    return mask

"""``coco``: unlabelled photographs for pretext training, e.g. MS-COCO's ``train2017/`` (Lin et al., 2014).

Layout: ``ROOT/train<year>/<image>`` and, optionally, ``ROOT/val<year>/<image>`` (year 2017 by default, the
``year`` option picks e.g. 2014), as the COCO zips unpack; or ROOT being a flat folder of images, which is then the
``"train"`` split and the only one. Only the folder itself is listed (COCO's image folders are flat), once, in
``__init__``, sorted by file name; extensions jpg/jpeg/png/bmp/webp/tif/tiff in any case. No annotations are read:
``provides`` is empty and items hold only ``image``.

About 1% of COCO images are greyscale. With ``on_bad_image="error"`` (the default) they are returned as RGB with three
equal channels; with ``"skip"`` (pretext training) they are left out as kind ``grayscale``, since a colorization
pretext would only learn grey targets from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sslbench.datasets.base import ImageDataset, resolve_root, subset_indices
from sslbench.datasets.transforms import (
    IMAGE_EXTENSIONS,
    ImageSize,
    check_split,
    image_to_tensor,
    is_image_file,
    normalize_image_size,
    resize_crop_image,
)
from sslbench.errors import DataError
from sslbench.registry import register_dataset

__all__ = ["COCOImagesDataset"]

LAYOUT = (
    "ROOT/train2017/<image>.jpg (and optionally ROOT/val2017/), as the COCO zips unpack, or ROOT being a flat "
    f"folder of images (a single 'train' split); extensions {', '.join(IMAGE_EXTENSIONS)}"
)


def _list_images(directory: Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if is_image_file(e.name) and e.is_file())


@register_dataset("coco")
class COCOImagesDataset(ImageDataset):
    """A flat folder of unlabelled images (COCO train2017/val2017) for pretext training."""

    name = "coco"
    provides = frozenset()
    splits = ("train", "val")
    eval_split = "val"
    default_image_size = 224
    env_var = "SSLBENCH_COCO"
    handles_bad_images = True

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        split: str = "train",
        image_size: ImageSize | None = None,
        subset: int | None = None,
        seed: int = 0,
        year: str | int = 2017,
        on_bad_image: str = "error",
        min_image_size: int = 8,
    ) -> None:
        """List the split's folder once.

        Args:
            root: see the module docstring; default ``$SSLBENCH_COCO``.
            split: ``"train"`` or ``"val"`` (the latter needs ``ROOT/val<year>/``).
            image_size: output size, int (square) or ``(H, W)``; default 224.
            subset: keep at most this many images, chosen by ``seed``.
            seed: seed of the subset choice.
            year: the suffix of the split folders, ``train<year>``/``val<year>``.
            on_bad_image: ``"error"`` or ``"skip"``: what a bad image file does (see ``datasets/base.py``).
            min_image_size: images whose shorter side is below this many pixels are bad (``too_small``).
        """
        check_split(self.name, split, self.splits)
        self._init_bad_images(on_bad_image, min_image_size)
        self.root = resolve_root(self.name, root, self.env_var, LAYOUT)
        self.split = split
        self.image_size = normalize_image_size(image_size, self.default_image_size)
        self.year = str(year)
        self.image_dir = self._image_dir(split)
        files = _list_images(self.image_dir)
        if not files:
            raise DataError(
                f"dataset 'coco': {self.image_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)}). "
                f"Expected layout: {LAYOUT}"
            )
        keep = subset_indices(len(files), subset, seed)
        #: Paths of the kept images.
        self.paths: list[Path] = [self.image_dir / files[i] for i in keep]

    def _image_dir(self, split: str) -> Path:
        folder = self.root / f"{split}{self.year}"
        if folder.is_dir():
            return folder
        has_split_folders = any((self.root / f"{s}{self.year}").is_dir() for s in self.splits)
        if split == "train" and not has_split_folders:
            return self.root
        if has_split_folders:
            raise DataError(f"dataset 'coco': split {split!r} needs {folder}/, which does not exist")
        raise DataError(
            f"dataset 'coco': {self.root} has no {self.root / f'train{self.year}'}/ or {folder}/ folder, so it is read "
            f"as a flat image folder with only the 'train' split, not {split!r}. Expected layout: {LAYOUT}"
        )

    def __len__(self) -> int:
        return len(self.paths)

    def _image_source(self, index: int) -> Path:
        return self.paths[index]

    def _item_fields(self) -> tuple[str, ...]:
        return ("paths",)

    def _item(self, index: int) -> dict[str, Any]:
        image = resize_crop_image(self.load_image(index), self.image_size)
        return {"image": image_to_tensor(image)}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["image_dir"] = str(self.image_dir)
        return info

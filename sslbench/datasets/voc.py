"""``voc2007`` (multi-label classification) and ``voc2012`` (semantic segmentation): PASCAL VOC (Everingham et al.).

Both read the VOCdevkit layout as released (and as ``torchvision.datasets.VOCDetection``/``VOCSegmentation`` read
it); ROOT may be the folder holding ``VOCdevkit/``, ``VOCdevkit/`` itself, or the year folder ``VOC2007/`` /
``VOC2012/``.

``voc2007``: ``VOC2007/{JPEGImages,Annotations,ImageSets/Main}``. Image ids come from
``ImageSets/Main/<set>.txt``; labels from each ``Annotations/<id>.xml`` (every ``<object>``'s ``<name>`` and
``<difficult>``). ``labels`` is a float32 multi-hot over the 20 classes; ``difficult[c]`` is True when class c
appears in the image *only* as difficult objects, and then ``labels[c]`` is 0. This is VOC's own convention (its
``<class>_<set>.txt`` files mark such images 0, neither positive nor negative): the classification AP ignores image
i for class c when ``difficult[i, c]``. Split mapping: the harness trains on ``"train"`` and evaluates on
``eval_split`` = ``"test"``; the VOC07 protocol trains on trainval (5,011 images) and tests on test (4,952), so
``"train"`` reads ``trainval.txt`` by default (``train_ids="train"`` makes it read VOC's own ``train.txt`` half,
e.g. to keep ``"val"`` for tuning). ``"trainval"``, ``"val"`` and ``"test"`` read the file of that name.

``voc2012``: ``VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/{train,val,trainval}.txt}``. Masks are
palette PNGs whose pixel *values* are class indices: 0 background, 1..20 the classes, 255 the void/boundary band,
kept as ``ignore_index`` = 255. Splits ``"train"`` (1,464), ``"val"`` (1,449, the evaluation split) and
``"trainval"``. The SBD "train_aug" set is not read.

Annotations are parsed once in ``__init__`` (only for the images kept by ``subset``); file existence is checked
there too, so a broken tree fails before training starts.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sslbench.datasets.bad_images import bad_mask_errors
from sslbench.datasets.base import ImageDataset, resolve_root, subset_indices
from sslbench.datasets.transforms import (
    ImageSize,
    check_split,
    image_to_tensor,
    load_mask,
    mask_to_tensor,
    normalize_image_size,
    resize_crop_image,
    resize_crop_mask,
)
from sslbench.errors import DataError
from sslbench.registry import register_dataset

__all__ = ["VOC2007Dataset", "VOC2012Dataset", "VOC_CLASSES", "parse_voc_annotation", "find_voc_year_dir"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC2007_LAYOUT = (
    "ROOT/VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/{train,val,trainval,test}.txt} "
    "(ROOT may also be VOCdevkit/ or VOC2007/ itself)"
)
VOC2012_LAYOUT = (
    "ROOT/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
    "ImageSets/Segmentation/{train,val,trainval}.txt} (ROOT may also be VOCdevkit/ or VOC2012/ itself)"
)


def find_voc_year_dir(name: str, root: Path, year: str, layout: str) -> Path:
    """The ``VOC<year>`` folder under ``root`` (``root/VOCdevkit/VOC<year>``, ``root/VOC<year>`` or ``root``)."""
    candidates = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root]
    for candidate in candidates:
        if (candidate / "JPEGImages").is_dir():
            return candidate
    checked = ", ".join(f"{c / 'JPEGImages'}/" for c in candidates)
    raise DataError(f"dataset {name!r}: no JPEGImages/ folder found (checked {checked}). Expected layout: {layout}")


def read_image_set(name: str, path: Path) -> list[str]:
    """Image ids listed in a VOC ``ImageSets`` file (first token of each non-empty line)."""
    if not path.is_file():
        raise DataError(f"dataset {name!r}: split file {path} not found; it lists the image ids of the split")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"dataset {name!r}: split file {path} lists no image ids")
    return ids


def _check_files_exist(name: str, paths: list[Path], what: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"dataset {name!r}: {len(missing)} {what} listed by the split file are missing: {shown}")


def parse_voc_annotation(path: Path, class_names: tuple[str, ...] = VOC_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """``(labels float32 (C,), difficult bool (C,))`` of one VOC XML annotation.

    ``labels[c]`` is 1 when the image has a non-difficult object of class c; ``difficult[c]`` is True when all its
    objects of class c are difficult (and then ``labels[c]`` is 0). Raises :class:`DataError` naming the file on a
    parse error or an unknown class name.
    """
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"cannot read VOC annotation {path}: {exc}. Replace the file.") from exc
    index = {c: i for i, c in enumerate(class_names)}
    positive = np.zeros(len(class_names), dtype=bool)
    hard = np.zeros(len(class_names), dtype=bool)
    for obj in tree.getroot().iter("object"):
        cls = (obj.findtext("name") or "").strip()
        if cls not in index:
            raise DataError(f"VOC annotation {path}: unknown class {cls!r}; expected one of {' '.join(class_names)}")
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise DataError(f"VOC annotation {path}: <difficult> of a {cls!r} object is {flag!r}, expected 0 or 1")
        if flag == "1":
            hard[index[cls]] = True
        else:
            positive[index[cls]] = True
    return positive.astype(np.float32), hard & ~positive


@register_dataset("voc2007")
class VOC2007Dataset(ImageDataset):
    """PASCAL VOC 2007 multi-label classification (20 classes, difficult flags)."""

    name = "voc2007"
    provides = frozenset({"labels", "difficult"})
    splits = ("train", "trainval", "val", "test")
    eval_split = "test"
    #: VOC 2007's benchmark trains on trainval and reports on test (Goyal et al.; Krähenbühl et al.).
    pretext_split = "trainval"
    probe_split = "trainval"
    default_image_size = 224
    env_var = "SSLBENCH_VOC2007"
    class_names = VOC_CLASSES
    handles_bad_images = True

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        split: str = "train",
        image_size: ImageSize | None = None,
        subset: int | None = None,
        seed: int = 0,
        train_ids: str = "trainval",
        on_bad_image: str = "error",
        min_image_size: int = 8,
    ) -> None:
        """Read the split's ids and parse their annotations.

        Args:
            root: see the module docstring; default ``$SSLBENCH_VOC2007``.
            split: ``"train"`` (reads ``train_ids``), ``"trainval"``, ``"val"`` or ``"test"``.
            image_size: output size, int (square) or ``(H, W)``; default 224.
            subset: keep at most this many images, chosen by ``seed``.
            seed: seed of the subset choice.
            train_ids: the ``ImageSets/Main`` file that split ``"train"`` reads: ``"trainval"`` (the VOC07
                protocol) or ``"train"``.
            on_bad_image: ``"error"`` or ``"skip"``: what a bad image file does (see ``datasets/base.py``).
            min_image_size: images whose shorter side is below this many pixels are bad (``too_small``).
        """
        check_split(self.name, split, self.splits)
        self._init_bad_images(on_bad_image, min_image_size)
        if train_ids not in ("trainval", "train"):
            raise DataError(f"dataset 'voc2007': train_ids must be 'trainval' or 'train', got {train_ids!r}")
        self.root = resolve_root(self.name, root, self.env_var, VOC2007_LAYOUT)
        self.split = split
        self.image_size = normalize_image_size(image_size, self.default_image_size)
        self.year_dir = find_voc_year_dir(self.name, self.root, "2007", VOC2007_LAYOUT)
        #: The ``ImageSets/Main`` file this split reads.
        self.image_set = train_ids if split == "train" else split
        ids = read_image_set(self.name, self.year_dir / "ImageSets" / "Main" / f"{self.image_set}.txt")
        self.ids: list[str] = [ids[i] for i in subset_indices(len(ids), subset, seed)]
        self.image_paths = [self.year_dir / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        annotation_paths = [self.year_dir / "Annotations" / f"{i}.xml" for i in self.ids]
        _check_files_exist(self.name, self.image_paths, "images")
        _check_files_exist(self.name, annotation_paths, "annotations")
        parsed = [parse_voc_annotation(p) for p in annotation_paths]
        #: float32 (N, 20) multi-hot labels and bool (N, 20) difficult flags of the kept images.
        self.labels = np.stack([p[0] for p in parsed])
        self.difficult = np.stack([p[1] for p in parsed])

    def __len__(self) -> int:
        return len(self.ids)

    def _image_source(self, index: int) -> Path:
        return self.image_paths[index]

    def _item_fields(self) -> tuple[str, ...]:
        return ("ids", "image_paths", "labels", "difficult")

    def _item(self, index: int) -> dict[str, Any]:
        image = resize_crop_image(self.load_image(index), self.image_size)
        return {
            "image": image_to_tensor(image),
            "labels": torch.from_numpy(self.labels[index].copy()),
            "difficult": torch.from_numpy(self.difficult[index].copy()),
        }

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["image_set"] = self.image_set
        return info


@register_dataset("voc2012")
class VOC2012Dataset(ImageDataset):
    """PASCAL VOC 2012 semantic segmentation (background + 20 classes, 255 = void)."""

    name = "voc2012"
    provides = frozenset({"mask"})
    splits = ("train", "val", "trainval")
    eval_split = "val"
    default_image_size = 224
    env_var = "SSLBENCH_VOC2012"
    ignore_index = 255
    mask_class_names = ("background",) + VOC_CLASSES
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
        """Read the split's ids and check that every image and mask exists.

        Args:
            root: see the module docstring; default ``$SSLBENCH_VOC2012``.
            split: ``"train"``, ``"val"`` or ``"trainval"``.
            image_size: output size of image and mask, int (square) or ``(H, W)``; default 224.
            subset: keep at most this many images, chosen by ``seed``.
            seed: seed of the subset choice.
            on_bad_image: ``"error"`` or ``"skip"``: what a bad image file, or a bad mask (kind ``bad_mask``), does
                (see ``datasets/base.py``).
            min_image_size: images whose shorter side is below this many pixels are bad (``too_small``).
        """
        check_split(self.name, split, self.splits)
        self._init_bad_images(on_bad_image, min_image_size)
        self.root = resolve_root(self.name, root, self.env_var, VOC2012_LAYOUT)
        self.split = split
        self.image_size = normalize_image_size(image_size, self.default_image_size)
        self.year_dir = find_voc_year_dir(self.name, self.root, "2012", VOC2012_LAYOUT)
        mask_dir = self.year_dir / "SegmentationClass"
        if not mask_dir.is_dir():
            raise DataError(
                f"dataset 'voc2012': {mask_dir}/ not found (palette PNG masks). Expected layout: {VOC2012_LAYOUT}"
            )
        ids = read_image_set(self.name, self.year_dir / "ImageSets" / "Segmentation" / f"{split}.txt")
        self.ids: list[str] = [ids[i] for i in subset_indices(len(ids), subset, seed)]
        self.image_paths = [self.year_dir / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.mask_paths = [mask_dir / f"{i}.png" for i in self.ids]
        _check_files_exist(self.name, self.image_paths, "images")
        _check_files_exist(self.name, self.mask_paths, "masks")

    def __len__(self) -> int:
        return len(self.ids)

    def _image_source(self, index: int) -> Path:
        return self.image_paths[index]

    def _item_fields(self) -> tuple[str, ...]:
        return ("ids", "image_paths", "mask_paths")

    def _item(self, index: int) -> dict[str, Any]:
        image = self.load_image(index)
        with bad_mask_errors(self.mask_paths[index]):
            mask = self._checked_mask(index, image)
        return {
            "image": image_to_tensor(resize_crop_image(image, self.image_size)),
            "mask": mask_to_tensor(resize_crop_mask(mask, self.image_size)),
        }

    def _checked_mask(self, index: int, image: Image.Image) -> Image.Image:
        """The mask of item ``index``; :class:`DataError` when it is unreadable or does not fit ``image``."""
        mask = load_mask(self.mask_paths[index])
        if mask.size != image.size:
            raise DataError(
                f"mask {self.mask_paths[index]} is {mask.size[0]}x{mask.size[1]} but its image "
                f"{self.image_paths[index]} is {image.size[0]}x{image.size[1]}"
            )
        values = np.asarray(mask)
        if values.max(initial=0) > len(self.mask_class_names) - 1 and not np.all(
            (values < len(self.mask_class_names)) | (values == self.ignore_index)
        ):
            raise DataError(
                f"mask {self.mask_paths[index]} has values other than 0..{len(self.mask_class_names) - 1} and "
                f"{self.ignore_index}: it is not a VOC class-index mask"
            )
        return mask

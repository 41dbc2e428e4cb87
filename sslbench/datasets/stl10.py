"""``stl10``: STL-10 (Coates, Lee & Ng, 2011), 96x96 colour images, 10 classes, plus 100,000 unlabelled images.

Layout: the binary release as ``torchvision.datasets.STL10`` downloads it, ``ROOT/stl10_binary/`` or ROOT being
that folder, holding ``train_X.bin``/``train_y.bin`` (5,000), ``test_X.bin``/``test_y.bin`` (8,000),
``unlabeled_X.bin`` (100,000) and, for the ``fold`` option, ``fold_indices.txt``. Only the files the chosen split
needs must be there.

Reading follows torchvision (``torchvision/datasets/stl10.py``): an ``*_X.bin`` file is raw uint8, one image after
the other, each stored channel by channel (R, G, B) and *column-major* within a channel, so an image is
``reshape(3, 96, 96)`` then a transpose of the last two axes; ``*_y.bin`` holds one uint8 label 1..10 per image
(returned 0-based). The image files are memory-mapped (``np.memmap``), never loaded whole: ``unlabeled_X.bin`` is
2.7 GB. The map is opened lazily in each process, so the dataset pickles cheaply into DataLoader workers.

Splits ``"train"``, ``"test"`` and ``"unlabeled"``. ``provides`` is ``{"label"}``, the keys of the labelled splits;
items of the ``"unlabeled"`` split have **no** ``label`` key, and the instance attribute ``has_labels`` (False
there) tells callers which case they hold. ``fold=k`` (0..9, train split only) keeps the k-th of the ten
predefined 1,000-image training folds of ``fold_indices.txt``, as torchvision's ``folds`` argument does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sslbench.datasets.base import ImageDataset, resolve_root, subset_indices
from sslbench.datasets.transforms import (
    ImageSize,
    check_split,
    image_to_tensor,
    normalize_image_size,
    resize_crop_image,
)
from sslbench.errors import DataError
from sslbench.registry import register_dataset

__all__ = ["STL10Dataset", "STL10_CLASSES", "STL10_SIDE"]

STL10_CLASSES: tuple[str, ...] = (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
)
#: Side of an STL-10 image.
STL10_SIDE = 96
BINARY_FOLDER = "stl10_binary"
_FILES: dict[str, tuple[str, str | None]] = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}
LAYOUT = (
    f"ROOT/{BINARY_FOLDER}/ (or ROOT being it) with train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
    "unlabeled_X.bin (and fold_indices.txt for folds), the binary release that torchvision.datasets.STL10 downloads"
)


@register_dataset("stl10")
class STL10Dataset(ImageDataset):
    """STL-10 from its binary release (memory-mapped); the unlabeled split has no labels."""

    name = "stl10"
    provides = frozenset({"label"})
    splits = ("train", "test", "unlabeled")
    eval_split = "test"
    #: The 100k unlabeled images are what STL-10 offers self-supervised pretraining, with the labelled 5k.
    pretext_split = "train+unlabeled"
    default_image_size = STL10_SIDE
    env_var = "SSLBENCH_STL10"
    class_names = STL10_CLASSES
    handles_bad_images = True

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        split: str = "train",
        image_size: ImageSize | None = None,
        subset: int | None = None,
        seed: int = 0,
        fold: int | None = None,
        on_bad_image: str = "error",
        min_image_size: int = 8,
    ) -> None:
        """Check the files and index the split; images are read from a memory map on access.

        Args:
            root: see the module docstring; default ``$SSLBENCH_STL10``.
            split: ``"train"``, ``"test"`` or ``"unlabeled"``.
            image_size: output size, int (square) or ``(H, W)``; default 96 (no resizing).
            subset: keep at most this many images (of the fold, when given), chosen by ``seed``.
            seed: seed of the subset choice.
            fold: 0..9: keep only that predefined training fold (train split only).
            on_bad_image: ``"error"`` or ``"skip"`` (see ``datasets/base.py``); the binary release has no per-image
                files, so only ``grayscale`` images (and ``too_small``, for min_image_size above 96) can be bad.
            min_image_size: images whose shorter side is below this many pixels are bad (``too_small``).
        """
        check_split(self.name, split, self.splits)
        self._init_bad_images(on_bad_image, min_image_size)
        self.root = resolve_root(self.name, root, self.env_var, LAYOUT)
        self.split = split
        self.image_size = normalize_image_size(image_size, self.default_image_size)
        self.fold = fold
        self.data_dir = self.root / BINARY_FOLDER if (self.root / BINARY_FOLDER).is_dir() else self.root
        x_name, y_name = _FILES[split]
        self.images_path = self.data_dir / x_name
        if not self.images_path.is_file():
            where = "" if self.data_dir != self.root else f" and {self.root / BINARY_FOLDER}/ does not exist"
            raise DataError(
                f"dataset 'stl10': {self.images_path} not found (needed by split {split!r}){where}. "
                f"Expected layout: {LAYOUT}"
            )
        item_bytes = 3 * STL10_SIDE * STL10_SIDE
        size = self.images_path.stat().st_size
        if size == 0 or size % item_bytes:
            raise DataError(
                f"dataset 'stl10': {self.images_path} has {size} bytes, not a positive multiple of {item_bytes} "
                "(one 3x96x96 uint8 image); the file is truncated: re-download it"
            )
        self._total = size // item_bytes
        #: False for the ``unlabeled`` split, whose items carry no ``label`` key.
        self.has_labels = y_name is not None
        labels: np.ndarray | None = None
        if y_name is not None:
            labels = self._read_labels(self.data_dir / y_name, self._total)
        candidates = np.arange(self._total)
        if fold is not None:
            candidates = self._read_fold(fold, split)
        keep = subset_indices(len(candidates), subset, seed)
        #: Positions of the kept images in the ``*_X.bin`` file.
        self.indices: np.ndarray = candidates[keep].astype(np.int64)
        self.targets: list[int] = [] if labels is None else labels[self.indices].tolist()
        self._images: np.ndarray | None = None

    @staticmethod
    def _read_labels(path: Path, count: int) -> np.ndarray:
        if not path.is_file():
            raise DataError(f"dataset 'stl10': {path} not found. Expected layout: {LAYOUT}")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size != count:
            raise DataError(f"dataset 'stl10': {path} holds {raw.size} labels for {count} images; re-download it")
        if raw.size and (raw.min() < 1 or raw.max() > len(STL10_CLASSES)):
            raise DataError(f"dataset 'stl10': {path} has labels outside 1..{len(STL10_CLASSES)}")
        return raw.astype(np.int64) - 1

    def _read_fold(self, fold: int, split: str) -> np.ndarray:
        if split != "train":
            raise DataError(f"dataset 'stl10': fold applies to the 'train' split only, not {split!r}")
        if not isinstance(fold, int) or not 0 <= fold <= 9:
            raise DataError(f"dataset 'stl10': fold must be an int in 0..9, got {fold!r}")
        path = self.data_dir / "fold_indices.txt"
        if not path.is_file():
            raise DataError(f"dataset 'stl10': fold={fold} needs {path}, which does not exist")
        lines = path.read_text().splitlines()
        if len(lines) <= fold:
            raise DataError(f"dataset 'stl10': {path} has {len(lines)} lines, no fold {fold}")
        indices = np.array([int(v) for v in lines[fold].split()], dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self._total):
            raise DataError(f"dataset 'stl10': fold {fold} of {path} indexes beyond the {self._total} train images")
        return indices

    def _memmap(self) -> np.ndarray:
        if self._images is None:
            self._images = np.memmap(
                self.images_path, dtype=np.uint8, mode="r", shape=(self._total, 3, STL10_SIDE, STL10_SIDE)
            )
        return self._images

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def _image_source(self, index: int) -> np.ndarray:
        stored = self._memmap()[self.indices[index]]
        return np.ascontiguousarray(stored.transpose(2, 1, 0))

    def _array_name(self, index: int) -> str:
        return f"{self.images_path}#{self.indices[index]}"

    def _item_fields(self) -> tuple[str, ...]:
        return ("indices", "targets") if self.has_labels else ("indices",)

    def _item(self, index: int) -> dict[str, Any]:
        image = resize_crop_image(self.load_image(index), self.image_size)
        item: dict[str, Any] = {"image": image_to_tensor(image)}
        if self.has_labels:
            item["label"] = self.targets[index]
        return item

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["has_labels"] = self.has_labels
        info["fold"] = self.fold
        return info

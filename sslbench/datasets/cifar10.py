"""``cifar10``: CIFAR-10 (Krizhevsky, 2009), 32x32, 10 classes, 50,000 train / 10,000 test images.

Two layouts are recognised, in this order:

1. **pickled** (the official "python version", what ``torchvision.datasets.CIFAR10`` downloads):
   ``ROOT/cifar-10-batches-py/{data_batch_1..data_batch_5,test_batch}``, or ROOT being that folder. Each batch is a
   pickle of a dict with ``data`` (uint8 (N, 3072): the 1024 red, then green, then blue values of each image, row
   by row) and ``labels`` (N ints). It is read with ``pickle.load(f, encoding="latin1")`` exactly as torchvision
   does (without torchvision's MD5 check, so re-packed or truncated releases also load); ``batches.meta`` is not
   needed. Pickles can run code when loaded: only point this adapter at files you trust.
2. **JPEG folders** (the copy in ``../shared/data/cifar10``): ``ROOT/{train,test}/<class>/<image>.jpg`` with the ten
   CIFAR class folders. These are JPEG re-encodings, so pixels differ slightly from the pickled release;
   ``describe()["layout"]`` records which layout a run read.

Labels follow CIFAR's class order (airplane automobile bird cat deer dog frog horse ship truck; also alphabetical).
At the default size 32 images are returned unresized, with their exact pixels.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from sslbench.datasets.base import ImageDataset, resolve_root, subset_indices
from sslbench.datasets.imagefolder import find_class_folders, index_class_folders
from sslbench.datasets.transforms import (
    ImageSize,
    check_split,
    image_to_tensor,
    normalize_image_size,
    resize_crop_image,
)
from sslbench.errors import DataError
from sslbench.registry import register_dataset

__all__ = ["CIFAR10Dataset", "CIFAR10_CLASSES", "read_cifar_batch"]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
PICKLE_FOLDER = "cifar-10-batches-py"
PICKLE_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
LAYOUT = (
    f"either the pickled release ROOT/{PICKLE_FOLDER}/{{data_batch_1..data_batch_5,test_batch}} (or ROOT being "
    f"{PICKLE_FOLDER}/ itself), as torchvision.datasets.CIFAR10 downloads it; or JPEG folders "
    f"ROOT/{{train,test}}/<class>/<image>.jpg with the class folders {' '.join(CIFAR10_CLASSES)}"
)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One pickled CIFAR batch as ``(images uint8 (N, 32, 32, 3), labels)``; a bad file raises :class:`DataError`."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as exc:
        raise DataError(f"cannot read CIFAR batch {path}: {type(exc).__name__}: {exc}. Replace the file.") from exc
    if not isinstance(entry, dict):
        raise DataError(f"CIFAR batch {path} holds a {type(entry).__name__}, expected a dict with 'data' and 'labels'")
    data = entry.get("data", entry.get(b"data"))
    labels = entry.get("labels", entry.get(b"labels"))
    if data is None or labels is None:
        raise DataError(f"CIFAR batch {path} lacks the 'data' or 'labels' entry (keys: {sorted(map(str, entry))})")
    data = np.asarray(data, dtype=np.uint8)
    labels = [int(v) for v in labels]
    if data.size != len(labels) * 3 * 32 * 32:
        raise DataError(
            f"CIFAR batch {path}: 'data' has {data.size} values for {len(labels)} labels, expected "
            f"{len(labels)} x 3072; the file is truncated or not a CIFAR-10 batch"
        )
    if labels and not all(0 <= v < len(CIFAR10_CLASSES) for v in labels):
        raise DataError(f"CIFAR batch {path}: labels outside 0..{len(CIFAR10_CLASSES) - 1}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


@register_dataset("cifar10")
class CIFAR10Dataset(ImageDataset):
    """CIFAR-10, from the pickled release or a JPEG class-folder tree (autodetected)."""

    name = "cifar10"
    provides = frozenset({"label"})
    splits = ("train", "test")
    eval_split = "test"
    default_image_size = 32
    env_var = "SSLBENCH_CIFAR10"
    class_names = CIFAR10_CLASSES
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
        """Find the layout and index (pickled: load) the split.

        Args:
            root: see the module docstring; default ``$SSLBENCH_CIFAR10``.
            split: ``"train"`` or ``"test"``.
            image_size: output size, int (square) or ``(H, W)``; default 32 (no resizing).
            subset: keep at most this many images, chosen by ``seed``.
            seed: seed of the subset choice.
            on_bad_image: ``"error"`` or ``"skip"``: what a bad image does (see ``datasets/base.py``); in the pickled
                layout only ``grayscale`` and ``too_small`` can occur.
            min_image_size: images whose shorter side is below this many pixels are bad (``too_small``).
        """
        check_split(self.name, split, self.splits)
        self._init_bad_images(on_bad_image, min_image_size)
        self.root = resolve_root(self.name, root, self.env_var, LAYOUT)
        self.split = split
        self.image_size = normalize_image_size(image_size, self.default_image_size)
        self.layout, self.data_dir = self._detect_layout(self.root, split)
        #: Pixels (N, 32, 32, 3) of the kept images (pickled layout only).
        self._images: np.ndarray | None = None
        #: ``(path, label)`` of the kept images (JPEG layout only).
        self.samples: list[tuple[str, int]] = []
        #: Label of each kept image.
        self.targets: list[int] = []
        #: Position of each kept image in the split's batches (pickled layout only).
        self.positions: list[int] = []
        if self.layout == "pickle":
            parts = [read_cifar_batch(self.data_dir / f) for f in PICKLE_FILES[split]]
            labels = [label for _, part_labels in parts for label in part_labels]
            keep = subset_indices(len(labels), subset, seed)
            images = np.concatenate([part_images for part_images, _ in parts])
            self._images = np.ascontiguousarray(images[keep])
            self.targets = [labels[i] for i in keep]
            self.positions = list(keep)
        else:
            samples = index_class_folders(self.data_dir, CIFAR10_CLASSES)
            keep = subset_indices(len(samples), subset, seed)
            self.samples = [samples[i] for i in keep]
            self.targets = [label for _, label in self.samples]

    @staticmethod
    def _detect_layout(root: Path, split: str) -> tuple[str, Path]:
        """``("pickle", batch folder)`` or ``("jpeg", split folder)``; :class:`DataError` naming both layouts."""
        for batch_dir in (root / PICKLE_FOLDER, root):
            if any((batch_dir / f).is_file() for files in PICKLE_FILES.values() for f in files):
                missing = [f for f in PICKLE_FILES[split] if not (batch_dir / f).is_file()]
                if missing:
                    raise DataError(
                        f"dataset 'cifar10': {batch_dir} is a pickled CIFAR-10 folder but lacks "
                        f"{', '.join(missing)} needed by split {split!r}; re-download with "
                        "torchvision.datasets.CIFAR10(root, download=True)"
                    )
                return "pickle", batch_dir
        split_dir = root / split
        if split_dir.is_dir():
            folders = set(find_class_folders(split_dir))
            missing_cls = [c for c in CIFAR10_CLASSES if c not in folders]
            extra = sorted(folders - set(CIFAR10_CLASSES))
            if missing_cls or extra:
                raise DataError(
                    f"dataset 'cifar10': {split_dir} should hold exactly the class folders "
                    f"{' '.join(CIFAR10_CLASSES)}; missing: {' '.join(missing_cls) or '-'}, "
                    f"unexpected: {' '.join(extra) or '-'}"
                )
            return "jpeg", split_dir
        raise DataError(
            f"dataset 'cifar10': found neither {root / PICKLE_FOLDER}/ (nor batch files in {root}) nor {split_dir}/. "
            f"Expected {LAYOUT}"
        )

    def __len__(self) -> int:
        return len(self.targets)

    def _image_source(self, index: int) -> Path | np.ndarray:
        if self._images is not None:
            return self._images[index]
        return Path(self.samples[index][0])

    def _array_name(self, index: int) -> str:
        return f"{self.data_dir}/{'+'.join(PICKLE_FILES[self.split])}#{self.positions[index]}"

    def _item_fields(self) -> tuple[str, ...]:
        return ("_images", "targets", "positions") if self.layout == "pickle" else ("samples", "targets")

    def _item(self, index: int) -> dict[str, Any]:
        image = resize_crop_image(self.load_image(index), self.image_size)
        return {"image": image_to_tensor(image), "label": self.targets[index]}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["layout"] = self.layout
        return info

"""``imagefolder``: any class-per-folder image tree (ImageNet, Places, the JPEG export of CIFAR-10, ...).

Layouts, checked in this order:

1. split folders: ``ROOT/train/<class>/<image>``, ``ROOT/val/<class>/<image>`` and/or ``ROOT/test/<class>/<image>``;
2. class folders directly: ``ROOT/<class>/<image>``; then the tree is the ``"train"`` split and the only one (point
   ROOT at the folder above it, holding ``train/`` and ``val/``, to get an evaluation split too).

Indexing follows torchvision's ``ImageFolder`` (``torchvision/datasets/folder.py``): class names are the sorted
folder names, images are found recursively below each class folder (symlinks followed, sorted order), with the
extensions jpg/jpeg/png/bmp/webp/tif/tiff in any case; hidden files and folders (leading ``.``) are skipped. Unlike
torchvision, the class list of every split is the one of ``train/`` when that exists, so label ``k`` means the same
class in every split, and a held-out split with a class folder unknown to ``train/`` is an error.

``"val"`` and ``"test"`` fall back to each other: most releases ship one held-out split (ImageNet ``val/``, the
CIFAR-10 export ``test/``), and the protocols evaluate on ``eval_split`` = ``"val"``. ``describe()`` records the
folder that was actually read. ImageNet's raw ``val/`` (50,000 images in one folder) must first be sorted into class
folders (e.g. with the ``valprep.sh`` script that circulates with the PyTorch ImageNet example).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

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

__all__ = ["ImageFolderDataset", "find_class_folders", "index_class_folders"]

LAYOUT = (
    "ROOT/{train,val,test}/<class>/<image> (one folder per class inside each split folder), or "
    f"ROOT/<class>/<image> (a single 'train' split); image extensions {', '.join(IMAGE_EXTENSIONS)}"
)

_SPLIT_FOLDERS = ("train", "val", "test")


def find_class_folders(directory: Path) -> list[str]:
    """Sorted names of the (non-hidden) sub-folders of ``directory``."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def index_class_folders(directory: Path, class_names: Sequence[str]) -> list[tuple[str, int]]:
    """``(path, class index)`` for every image below ``directory/<class>`` for each class in ``class_names``.

    Each class folder is walked recursively, top-down with sub-folders and files in sorted order. Raises
    :class:`DataError` naming the class folders that hold no image.
    """
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    for index, cls in enumerate(class_names):
        class_dir = directory / cls
        found = 0
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if is_image_file(filename):
                    samples.append((os.path.join(dirpath, filename), index))
                    found += 1
        if found == 0:
            empty.append(str(class_dir))
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(
            f"class folder(s) {shown} hold no image files with extensions {', '.join(IMAGE_EXTENSIONS)}; "
            "every class folder needs at least one image: add images or remove the empty folder"
        )
    return samples


@register_dataset("imagefolder")
class ImageFolderDataset(ImageDataset):
    """Any class-per-folder image tree (ImageNet-style), single-label."""

    name = "imagefolder"
    provides = frozenset({"label"})
    splits = ("train", "val", "test")
    eval_split = "val"
    default_image_size = 224
    env_var = "SSLBENCH_IMAGEFOLDER"
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
        """Index the tree once.

        Args:
            root: the tree (see the module docstring for the two layouts); default ``$SSLBENCH_IMAGEFOLDER``.
            split: ``"train"``, ``"val"`` or ``"test"`` (the last two fall back to each other).
            image_size: output size, int (square) or ``(H, W)``; default 224.
            subset: keep at most this many images, chosen by ``seed``.
            seed: seed of the subset choice.
            on_bad_image: ``"error"`` or ``"skip"``: what a bad image file does (see ``datasets/base.py``).
            min_image_size: images whose shorter side is below this many pixels are bad (``too_small``).
        """
        check_split(self.name, split, self.splits)
        self._init_bad_images(on_bad_image, min_image_size)
        self.root = resolve_root(self.name, root, self.env_var, LAYOUT)
        self.split = split
        self.image_size = normalize_image_size(image_size, self.default_image_size)
        self.split_dir = self._split_dir(self.root, split)
        train_dir = self.root / "train"
        reference = train_dir if self.split_dir != self.root and train_dir.is_dir() else self.split_dir
        self.class_names = tuple(find_class_folders(reference))
        if not self.class_names:
            raise DataError(
                f"dataset {self.name!r}: {reference} holds no class folders. Expected layout: {LAYOUT}"
            )
        if reference != self.split_dir:
            unknown = sorted(set(find_class_folders(self.split_dir)) - set(self.class_names))
            if unknown:
                raise DataError(
                    f"dataset {self.name!r}: {self.split_dir} has class folder(s) {', '.join(unknown[:10])} that "
                    f"{reference} lacks; every split must use the classes of train/"
                )
        samples = index_class_folders(self.split_dir, self.class_names)
        keep = subset_indices(len(samples), subset, seed)
        self.samples: list[tuple[str, int]] = [samples[i] for i in keep]
        self.targets: list[int] = [label for _, label in self.samples]

    @staticmethod
    def _split_dir(root: Path, split: str) -> Path:
        """The folder holding ``split``'s class folders (see the module docstring)."""
        present = [name for name in _SPLIT_FOLDERS if (root / name).is_dir()]
        if not present:
            if split != "train":
                raise DataError(
                    f"dataset 'imagefolder': {root} holds class folders directly (no train/, val/ or test/ folder), "
                    f"so it has only the 'train' split, not {split!r}; point the root at a folder holding "
                    "train/ and val/ (or test/) to evaluate on a held-out split"
                )
            return root
        order = {"train": ("train",), "val": ("val", "test"), "test": ("test", "val")}[split]
        for name in order:
            if name in present:
                return root / name
        wanted = " or ".join(f"{root / name}/" for name in order)
        raise DataError(
            f"dataset 'imagefolder': split {split!r} needs {wanted}, which does not exist "
            f"(found: {', '.join(present)}). Expected layout: {LAYOUT}"
        )

    def __len__(self) -> int:
        return len(self.samples)

    def _image_source(self, index: int) -> Path:
        return Path(self.samples[index][0])

    def _item_fields(self) -> tuple[str, ...]:
        return ("samples", "targets")

    def _item(self, index: int) -> dict[str, Any]:
        image = resize_crop_image(self.load_image(index), self.image_size)
        return {"image": image_to_tensor(image), "label": self.samples[index][1]}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["split_dir"] = str(self.split_dir)
        return info


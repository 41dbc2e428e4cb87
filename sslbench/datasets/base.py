"""The dataset-adapter contract.

An adapter is a ``torch.utils.data.Dataset`` whose items are dicts:

- ``image``: uint8 RGB tensor (3, H, W), already resized/cropped by the adapter to ``image_size``;
- ``label``: int class index (single-label datasets);
- ``labels``: float32 multi-hot (num_classes,) (multi-label datasets);
- ``difficult``: bool (num_classes,) classes present only as "difficult" objects (VOC), excluded from AP;
- ``mask``: int64 (H, W) class index per pixel, ``ignore_index`` where unlabelled (segmentation datasets).

Which keys an adapter provides is declared in ``provides``. The transform to the encoder's input (Lab, normalised L)
lives in ``sslbench.colour``, never in an adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from sslbench.errors import DataError

__all__ = ["ImageDataset", "subset_indices", "resolve_root", "load_rgb"]


class ImageDataset(Dataset):
    """Base class of every registered dataset adapter.

    Subclasses set the class attributes and implement ``__len__`` and ``__getitem__``. Their ``__init__`` takes
    keyword arguments ``root`` (path or None), ``split`` ("train", "test", or adapter-specific such as "val",
    "unlabeled"), ``image_size`` (int or None for the adapter's default), ``subset`` (keep at most this many items,
    chosen deterministically by ``seed``) and ``seed``, plus adapter-specific options.
    """

    #: Registered name, set by the subclass.
    name: ClassVar[str] = ""
    #: Keys each item holds besides ``image``: a subset of {"label", "labels", "difficult", "mask"}.
    provides: ClassVar[frozenset[str]] = frozenset()
    #: Splits the adapter understands.
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    #: The split protocols evaluate on.
    eval_split: ClassVar[str] = "test"
    #: Default side of the square images it returns.
    default_image_size: ClassVar[int] = 32
    #: Environment variable naming the data root when ``--data-root`` is not given (None: needs no files).
    env_var: ClassVar[str | None] = None
    #: True for generated data; shown wherever results appear.
    synthetic: ClassVar[bool] = False
    #: Pixel value in ``mask`` that losses and metrics ignore.
    ignore_index: ClassVar[int] = 255

    #: Names of the image-level classes (``label``/``labels``).
    class_names: tuple[str, ...] = ()
    #: Names of the mask classes (indices into this); empty when the adapter has no masks.
    mask_class_names: tuple[str, ...] = ()
    root: Path | None = None
    image_size: int = 32

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_mask_classes(self) -> int:
        return len(self.mask_class_names)

    def describe(self) -> dict[str, Any]:
        """Metadata recorded with every run that used this dataset."""
        return {
            "name": self.name,
            "split": getattr(self, "split", None),
            "size": len(self),
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "num_mask_classes": self.num_mask_classes,
            "synthetic": self.synthetic,
            "root": str(self.root) if self.root else None,
        }


def subset_indices(n: int, subset: int | None, seed: int) -> list[int]:
    """Deterministic choice of ``min(subset, n)`` of ``n`` indices (all of them, in order, when ``subset`` is None)."""
    if subset is None or subset >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:subset].tolist())


def resolve_root(name: str, root: str | Path | None, env_var: str | None, layout: str) -> Path:
    """Where a dataset's files are: ``root`` if given, else ``$<env_var>``, else ``$SSLBENCH_DATA/<name>``.

    Raises :class:`DataError` naming the path checked (or the options to set) and the ``layout`` expected there.
    """
    import os

    candidate: Path | None = None
    source = ""
    if root is not None:
        candidate, source = Path(root).expanduser(), "--data-root"
    elif env_var and os.environ.get(env_var):
        candidate, source = Path(os.environ[env_var]).expanduser(), f"${env_var}"
    elif os.environ.get("SSLBENCH_DATA"):
        candidate, source = Path(os.environ["SSLBENCH_DATA"]).expanduser() / name, "$SSLBENCH_DATA"
    if candidate is None:
        hint = f"pass --data-root PATH or set {env_var}" if env_var else "pass --data-root PATH"
        raise DataError(f"dataset {name!r} needs its files: {hint}. Expected layout: {layout}")
    if not candidate.is_dir():
        raise DataError(f"dataset {name!r}: {candidate} (from {source}) is not a directory. Expected layout: {layout}")
    return candidate


def load_rgb(path: Path):
    """Open an image file as RGB PIL image; a corrupt or unreadable file raises :class:`DataError` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}. Remove or replace the file and rerun.") from exc

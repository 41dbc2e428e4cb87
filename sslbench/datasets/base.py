"""The dataset-adapter contract.

An adapter is a ``torch.utils.data.Dataset`` whose items are dicts:

- ``image``: uint8 RGB tensor (3, H, W), already resized/cropped by the adapter to ``image_size``;
- ``label``: int class index (single-label datasets);
- ``labels``: float32 multi-hot (num_classes,) (multi-label datasets);
- ``difficult``: bool (num_classes,) classes present only as "difficult" objects (VOC), excluded from AP;
- ``mask``: int64 (H, W) class index per pixel, ``ignore_index`` where unlabelled (segmentation datasets).

Which keys an adapter provides is declared in ``provides``. The transform to the encoder's input (Lab, normalised L)
lives in ``sslbench.colour``, never in an adapter.

Bad images (see ``sslbench.datasets.bad_images`` for the kinds). Adapters that read image files take two options,
``on_bad_image`` (``"error"`` or ``"skip"``) and ``min_image_size``, and implement ``_item(index)`` and
``_image_source(index)`` instead of ``__getitem__``; the base class's ``__getitem__`` and :meth:`ImageDataset.scan`
then apply the option the same way for all of them:

- ``"error"`` (the default, and what evaluation splits use: dropping test images changes the benchmark): a bad file
  raises :class:`~sslbench.datasets.bad_images.BadImageError` (a :class:`DataError`) naming it. Greyscale images
  are not bad here; they are returned with three equal channels.
- ``"skip"`` (for pretext training): bad files, and greyscale images, which carry no colour to learn, are left out.

Where detection happens: ``scan(workers)`` reads every item up front, exactly as ``__getitem__`` would, in a process
pool, and in ``"skip"`` mode removes the bad ones from the index (``len`` shrinks; ``subset`` counts items *before*
this). This is deterministic, and the list of bad files is complete and lives in the main process, which DataLoader
workers cannot report to; in ``"error"`` mode it raises one error listing every bad file, instead of one failed run
per file. A scan decodes every image once (ImageNet's 1.28 M JPEGs take minutes even on many cores) and is not
cached between runs. Without a scan (or for a file that goes bad after it), ``__getitem__`` in ``"skip"`` mode
decodes lazily and, on a bad item, returns the next good one, ``(index + k) % len`` for the smallest k, so batches
stay full and a seeded order stays the same; it records the file in ``bad_images`` of the process that read it and
warns with a :class:`~sslbench.datasets.bad_images.BadImageWarning` (in a DataLoader worker only the warning reaches
the user).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sslbench.datasets.bad_images import (
    GRAY_MODES,
    BadImage,
    BadImageError,
    BadImageWarning,
    check_min_image_size,
    check_on_bad_image,
    count_by_kind,
    decode_image,
    is_grayscale,
)
from sslbench.errors import DataError

__all__ = ["ImageDataset", "subset_indices", "resolve_root"]

#: Most items per task sent to a scan worker.
_SCAN_CHUNK = 32
#: The dataset a scan worker process reads (set once per worker by :func:`_scan_worker_init`).
_scan_dataset: "ImageDataset | None" = None


class ImageDataset(Dataset):
    """Base class of every registered dataset adapter.

    Subclasses set the class attributes and implement ``__len__`` and either ``__getitem__`` (generated data) or,
    with ``handles_bad_images = True``, ``_item``, ``_image_source`` and ``_item_fields`` (see the module docstring).
    Their ``__init__`` takes keyword-only arguments ``root`` (path or None), ``split`` ("train", "test", or
    adapter-specific such as "val", "unlabeled"), ``image_size`` (int or None for the adapter's default), ``subset``
    (keep at most this many items, chosen deterministically by ``seed``) and ``seed``, plus adapter-specific options,
    each with a type annotation and a default.
    """

    #: Registered name, set by the subclass.
    name: ClassVar[str] = ""
    #: Keys each item holds besides ``image``: a subset of {"label", "labels", "difficult", "mask"}.
    provides: ClassVar[frozenset[str]] = frozenset()
    #: Splits the adapter understands.
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    #: The split protocols evaluate on.
    eval_split: ClassVar[str] = "test"
    #: The split pretexts train on without labels ("a+b" joins splits, e.g. STL-10's train+unlabeled).
    pretext_split: ClassVar[str] = "train"
    #: The labelled split probes and fine-tuning (and the supervised bound) train on.
    probe_split: ClassVar[str] = "train"
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
    #: True for adapters that take ``on_bad_image`` and ``min_image_size`` (they call ``_init_bad_images``).
    handles_bad_images: ClassVar[bool] = False
    #: ``"error"`` or ``"skip"`` (see the module docstring).
    on_bad_image: str = "error"
    #: Images whose shorter side is below this many pixels are bad (``too_small``).
    min_image_size: int = 8

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_mask_classes(self) -> int:
        return len(self.mask_class_names)

    def describe(self) -> dict[str, Any]:
        """Metadata recorded with every run that used this dataset."""
        info = {
            "name": self.name,
            "split": getattr(self, "split", None),
            "size": len(self),
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "num_mask_classes": self.num_mask_classes,
            "synthetic": self.synthetic,
            "root": str(self.root) if self.root else None,
        }
        if self.handles_bad_images:
            info["on_bad_image"] = self.on_bad_image
            info["min_image_size"] = self.min_image_size
            info["scanned"] = self._scanned
            info["bad_images"] = count_by_kind(self.bad_images)
        return info

    # -- bad images (see the module docstring) ---------------------------------------------------------------------

    def _init_bad_images(self, on_bad_image: str, min_image_size: int) -> None:
        """Check and keep the two options; called by each file-reading adapter's ``__init__``."""
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.min_image_size = check_min_image_size(min_image_size)
        self._bad: dict[str, BadImage] = {}
        #: Index -> bad file of the items this process found bad lazily (reset when the index changes).
        self._bad_items: dict[int, BadImage] = {}
        self._scanned = False

    @property
    def bad_images(self) -> list[BadImage]:
        """The bad files found so far (by :meth:`scan`, or lazily by ``__getitem__`` in this process), in order."""
        return list(getattr(self, "_bad", {}).values())

    def _item(self, index: int) -> dict[str, Any]:
        """Item ``index`` as ``__getitem__`` returns it; raises :class:`BadImageError` for a bad file."""
        raise NotImplementedError

    def _image_source(self, index: int) -> Path | np.ndarray:
        """The image file of item ``index``, or its pixels (uint8 (H, W, 3)) for adapters that hold arrays."""
        raise NotImplementedError

    def _array_name(self, index: int) -> str:
        """How a bad-image list names item ``index`` of an adapter that holds arrays (it has no file of its own)."""
        return f"{self.name}:{self.split}#{index}"

    def _item_fields(self) -> tuple[str, ...]:
        """Names of the per-item attributes (lists or arrays, one entry per item) that :meth:`scan` filters."""
        raise NotImplementedError

    def image_files(self) -> list[Path] | None:
        """The image file of each item, in index order; None for adapters that hold pixel arrays."""
        if len(self) == 0:
            return []
        if isinstance(self._image_source(0), np.ndarray):
            return None
        return [Path(self._image_source(i)) for i in range(len(self))]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of item ``index`` (not resized), checked against the bad-image rules.

        Raises :class:`BadImageError` for a bad file, a too-small image, and, in ``"skip"`` mode, a greyscale one.
        """
        source = self._image_source(index)
        if isinstance(source, np.ndarray):
            image, mode, where = Image.fromarray(source), "RGB", self._array_name(index)
            if min(source.shape[:2]) < self.min_image_size:
                height, width = source.shape[:2]
                raise BadImageError(BadImage(where, "too_small", f"{width}x{height} pixels, shorter side below "
                                                                  f"min_image_size={self.min_image_size}"))
        else:
            image, mode = decode_image(source, min_size=self.min_image_size)
            where = str(source)
        if self.on_bad_image == "skip" and is_grayscale(image, mode):
            reason = f"single-channel source (PIL mode {mode})" if mode in GRAY_MODES else "R = G = B at every pixel"
            raise BadImageError(BadImage(where, "grayscale", reason))
        return image

    def _record(self, bad: BadImage) -> None:
        self._bad.setdefault(bad.path, bad)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_bad_image != "skip":
            return self._item(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self.name} {self.split} of {n} items")
        index %= n
        for k in range(n):
            j = (index + k) % n
            if j in self._bad_items:
                continue
            try:
                return self._item(j)
            except BadImageError as exc:
                self._bad_items[j] = exc.bad
                self._record(exc.bad)
                warnings.warn(f"left out {exc.bad.path} ({exc.bad.kind}: {exc.bad.reason})", BadImageWarning,
                              stacklevel=2)
        raise DataError(
            f"dataset {self.name!r} split {self.split!r}: all {n} images are bad ({count_by_kind(self.bad_images)}); "
            "run `sslbench check-data` to list them"
        )

    def scan(self, workers: int = 0) -> list[BadImage]:
        """Read every item now, as ``__getitem__`` would, and deal with the bad ones by ``on_bad_image``.

        ``"skip"``: bad items are removed from the index. ``"error"``: raises one :class:`DataError` naming every bad
        file (they are in ``bad_images`` too). ``workers`` > 0 reads image files in that many processes; arrays
        are read here. Returns the bad files found by this scan, in index order.
        """
        n = len(self)
        if workers > 0 and n > 1 and not isinstance(self._image_source(0), np.ndarray):
            size = max(1, min(_SCAN_CHUNK, -(-n // (4 * workers))))
            chunks = [range(lo, min(lo + size, n)) for lo in range(0, n, size)]
            with ProcessPoolExecutor(max_workers=workers, initializer=_scan_worker_init, initargs=(self,)) as pool:
                found = [hit for part in pool.map(_scan_chunk, chunks) for hit in part]
        else:
            found = _scan_items(self, range(n))
        bad = [b for _, b in found]
        for b in bad:
            self._record(b)
        self._scanned = True
        if self.on_bad_image == "skip":
            drop = {i for i, _ in found}
            self._keep([i for i in range(n) if i not in drop])
        elif bad:
            shown = "\n".join(f"  {b.kind}\t{b.path}\t{b.reason}" for b in bad[:20])
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise DataError(
                f"dataset {self.name!r} split {self.split!r}: {len(bad)} bad image(s) ({count_by_kind(bad)}):\n"
                f"{shown}{more}\nRemove or replace them, or leave them out with on_bad_image=skip"
            )
        return bad

    def _keep(self, indices: list[int]) -> None:
        """Keep only items ``indices`` (ascending) in every per-item attribute."""
        for field in self._item_fields():
            values = getattr(self, field)
            if values is None:
                continue
            if isinstance(values, np.ndarray):
                setattr(self, field, np.ascontiguousarray(values[indices]))
            else:
                setattr(self, field, [values[i] for i in indices])
        self._bad_items = {}


def _scan_items(dataset: ImageDataset, indices: range) -> list[tuple[int, BadImage]]:
    found = []
    for i in indices:
        try:
            dataset._item(i)
        except BadImageError as exc:
            found.append((i, exc.bad))
    return found


def _scan_worker_init(dataset: ImageDataset) -> None:
    global _scan_dataset
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", BadImageWarning)
    _scan_dataset = dataset


def _scan_chunk(indices: range) -> list[tuple[int, BadImage]]:
    assert _scan_dataset is not None
    return _scan_items(_scan_dataset, indices)


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

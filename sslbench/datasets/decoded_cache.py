"""A decoded-image cache: each file-backed split decoded once, at its image size, into memory-mapped uint8 shards.

Adapters that read image files (``cifar10``'s JPEG folders, ``imagefolder``, ``camvid``, ``voc*``, ``coco``) decode,
resize and crop every image with PIL on every epoch. :class:`DecodedSplit` wraps such a split and, the first time it is
read (:meth:`DecodedSplit.materialize`, which :meth:`sslbench.runtime.Runtime.loader` calls before it builds a
loader), decodes every item once through the adapter's own ``_item`` into ``<cache root>/<key>/``:

- one ``.npy`` file per field and shard (``image-00000.npy`` uint8 (n, H, W, 3), ``mask-00000.npy`` uint8 (n, H, W)
  for segmentation sets, ``label-00000.npy`` int64 (n,), ...), at most :data:`SHARD_BYTES` each;
- ``redirect.npy``: for item ``i``, the slot whose pixels ``dataset[i]`` returns;
- ``meta.json``, written last: the completion marker (its fields, the key's inputs and the bad files found).

Items are then memmap slices, and DataLoader workers share the pages through the OS page cache. Every tensor is
the one the adapter returns (same values, dtype, shape and layout): the wrapper changes speed, never data, so it
leaves every checkpoint and record hash as it is.

**The key** hashes the split's data fingerprint (:func:`~sslbench.datasets.fingerprint.data_fingerprint`: its files'
paths, sizes and content digests, and its description, which holds the image size, the split, the subset and
the bad-image options), the image size and the bad-image policy once more, and the identity of the code that decodes
(the source of the adapter's modules, ``transforms.py`` and ``bad_images.py``, and Pillow's version). An edited or
replaced file, another size or policy, or a change to the resize code gives another key: a stale cache is never
read. Old folders are not removed; delete ``<cache>/decoded/`` to reclaim the space.

**Bad images** follow the adapter's ``on_bad_image`` exactly as the uncached split does. ``"skip"``: a bad item ``i``
returns the next good one, ``(i + k) % n`` for the smallest k, as :meth:`ImageDataset.__getitem__` does, so the cached
split yields the same items in the same order; the bad files are recorded in the adapter's ``bad_images`` (all of
them, also when workers read the split). ``"error"``: the build stops with one :class:`DataError` naming every bad
file, as :meth:`ImageDataset.scan` does.

**Building** runs in ``workers`` processes (the loader's ``--workers``), each writing its items straight into the
shards, under an exclusive lock (:class:`~sslbench.locks.CheckpointLock`) on ``<key>.lock``: a second process that
needs the same cache waits and reads it. Shards go to ``<key>.tmp-<pid>/``, which is renamed to ``<key>/`` only after
``meta.json`` is written, so a build killed at any point leaves nothing that looks complete (the next build removes
the leftover folder).

Splits that hold pixel arrays already (pickled CIFAR-10, STL-10), generated data (``synthetic``) and joined splits
(``train+unlabeled``) are not wrapped: :func:`use_decoded_cache` returns them as they are.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import os
import shutil
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from sslbench.datasets.bad_images import BadImage, BadImageError, BadImageWarning, count_by_kind
from sslbench.errors import DataError, DiskFullError

__all__ = ["DecodedSplit", "use_decoded_cache", "materialize_decoded", "cache_key", "is_cacheable",
           "CACHE_FORMAT", "SHARD_BYTES"]

#: Layout version of a cache folder; part of the key.
CACHE_FORMAT = 1
#: Most bytes of one shard file (a shard holds the same items of every field).
SHARD_BYTES = 256 * 2**20
#: Most items per task sent to a build worker.
_BUILD_CHUNK = 64
_META = "meta.json"
_REDIRECT = "redirect.npy"


def is_cacheable(dataset: Any) -> bool:
    """True for a split that decodes image files through ``_item`` (the adapters that handle bad images and read
    files); False for pixel arrays, generated data and joined splits."""
    if not getattr(dataset, "handles_bad_images", False) or isinstance(dataset, DecodedSplit):
        return False
    if getattr(dataset, "parts", None) is not None or len(dataset) == 0:
        return False
    return not isinstance(dataset._image_source(0), np.ndarray)


def use_decoded_cache(dataset: Any, cache_root: str | os.PathLike[str], fingerprint: str | None = None) -> Any:
    """``dataset`` wrapped in a :class:`DecodedSplit` reading from ``cache_root`` when :func:`is_cacheable`, else
    ``dataset`` itself. Nothing is decoded until the split is first read."""
    return DecodedSplit(dataset, cache_root, fingerprint=fingerprint) if is_cacheable(dataset) else dataset


def materialize_decoded(dataset: Any, workers: int = 0) -> None:
    """Build or open every :class:`DecodedSplit` inside ``dataset`` (through ``Subset`` and ``ConcatDataset``) in this
    process, with ``workers`` decoding processes, before a DataLoader's workers start."""
    if isinstance(dataset, DecodedSplit):
        dataset.materialize(workers)
    elif isinstance(dataset, Subset):
        materialize_decoded(dataset.dataset, workers)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            materialize_decoded(part, workers)


# -- the key ---------------------------------------------------------------------------------------------------------

def _code_identity(cls: type) -> str:
    """SHA-256 of the source files that turn a file into an item: the modules of the adapter's classes (up to
    ``ImageDataset``), ``transforms.py`` and ``bad_images.py``, plus Pillow's version (its resampling filters)."""
    import PIL

    from sslbench.datasets import bad_images, transforms
    from sslbench.datasets.base import ImageDataset

    modules = {sys.modules[c.__module__] for c in cls.__mro__
               if isinstance(c, type) and issubclass(c, ImageDataset) and c.__module__ in sys.modules}
    digest = hashlib.sha256(f"pillow {PIL.__version__}\n".encode())
    for module in sorted(modules | {transforms, bad_images}, key=lambda m: m.__name__):
        try:
            source = Path(inspect.getfile(module)).read_bytes()
        except (OSError, TypeError):
            source = str(getattr(module, "__version__", module.__name__)).encode()
        digest.update(module.__name__.encode() + b"\0" + hashlib.sha256(source).digest())
    return digest.hexdigest()[:16]


def cache_key(dataset: Any, fingerprint: str | None = None) -> tuple[str, dict[str, Any]]:
    """The folder name of ``dataset``'s cache and what it hashes (see the module docstring)."""
    from sslbench.datasets.fingerprint import data_fingerprint

    size = dataset.image_size
    cls = type(dataset)
    fields = {
        "format": CACHE_FORMAT,
        "adapter": f"{cls.__module__}.{cls.__qualname__}",
        "code": _code_identity(cls),
        "fingerprint": fingerprint if fingerprint is not None else data_fingerprint(dataset),
        "split": getattr(dataset, "split", None),
        "items": len(dataset),
        "image_size": list(size) if isinstance(size, tuple) else size,
        "on_bad_image": dataset.on_bad_image,
        "min_image_size": dataset.min_image_size,
    }
    text = json.dumps(fields, sort_keys=True)
    return f"{dataset.name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}", fields


# -- item <-> arrays -------------------------------------------------------------------------------------------------

def _schema(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """How each field of ``item`` is stored: ``kind`` (tensor or a Python scalar type), dtype and shape per item.

    Images (uint8 (3, H, W)) are stored (H, W, 3); masks (int64, from 8-bit PNGs) as uint8, checked on write.
    """
    schema: dict[str, dict[str, Any]] = {}
    for name, value in item.items():
        if torch.is_tensor(value):
            dtype = str(value.dtype).removeprefix("torch.")
            shape = list(value.shape)
            store = dtype
            if name == "image":
                if value.dtype != torch.uint8 or value.dim() != 3:
                    raise DataError(f"cannot cache item field 'image' of dtype {dtype} and shape {shape}; "
                                    "expected uint8 (3, H, W)")
                shape = [shape[1], shape[2], shape[0]]
            elif name == "mask" and value.dtype == torch.int64:
                store = "uint8"
            schema[name] = {"kind": "tensor", "dtype": dtype, "store": store, "shape": shape}
        elif isinstance(value, (bool, int, float)):
            kind = type(value).__name__
            store = {"bool": "bool", "int": "int64", "float": "float64"}[kind]
            schema[name] = {"kind": kind, "dtype": store, "store": store, "shape": []}
        else:
            raise DataError(f"cannot cache item field {name!r} of type {type(value).__name__}; "
                            "run with --decoded-cache off")
    return schema


def _to_stored(name: str, value: Any, spec: dict[str, Any], where: str) -> np.ndarray | Any:
    if spec["kind"] != "tensor":
        return value
    array = value.numpy()
    if name == "image":
        array = array.transpose(1, 2, 0)
    if list(array.shape) != spec["shape"]:
        raise DataError(f"{where}: field {name!r} has shape {list(array.shape)}, the split's first item "
                        f"{spec['shape']}; every item of a split must have the same shape to be cached")
    if spec["store"] != spec["dtype"]:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DataError(f"{where}: mask values outside 0..255 cannot be cached as uint8; "
                            "run with --decoded-cache off")
        array = array.astype(spec["store"])
    return array


def _from_stored(name: str, array: Any, spec: dict[str, Any]) -> Any:
    kind = spec["kind"]
    if kind == "int":
        return int(array)
    if kind == "float":
        return float(array)
    if kind == "bool":
        return bool(array)
    if name == "image":
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if spec["store"] != spec["dtype"]:
        return torch.from_numpy(array.astype(spec["dtype"]))
    return torch.from_numpy(np.array(array))


def _shard_file(folder: Path, name: str, shard: int) -> Path:
    return folder / f"{name}-{shard:05d}.npy"


class _Shards:
    """The shard files of one cache folder, opened as memmaps on first use (in each process)."""

    def __init__(self, folder: Path, schema: dict[str, dict[str, Any]], n: int, per_shard: int,
                 mode: str = "r") -> None:
        self.folder, self.schema, self.n, self.per_shard, self.mode = folder, schema, n, per_shard, mode
        self._open: dict[tuple[str, int], np.ndarray] = {}

    def array(self, name: str, shard: int) -> np.ndarray:
        key = (name, shard)
        if key not in self._open:
            mapped = np.load(_shard_file(self.folder, name, shard), mmap_mode=self.mode)
            # A plain ndarray view of the mapping indexes faster than the memmap subclass.
            self._open[key] = mapped if self.mode != "r" else mapped.view(np.ndarray)
        return self._open[key]

    def create(self) -> None:
        """Create every shard file at its full size with its blocks reserved (``posix_fallocate``): a memmap written
        onto a file system that runs out of space is killed by SIGBUS, so a full disk must show here, as ENOSPC."""
        for name, spec in self.schema.items():
            for shard in range(-(-self.n // self.per_shard)):
                count = min(self.per_shard, self.n - shard * self.per_shard)
                path = _shard_file(self.folder, name, shard)
                np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(spec["store"]),
                                          shape=(count, *spec["shape"])).flush()
                _reserve(path)

    def write(self, index: int, stored: dict[str, Any]) -> None:
        shard, offset = divmod(index, self.per_shard)
        for name, value in stored.items():
            self.array(name, shard)[offset] = value

    def read(self, slot: int) -> dict[str, Any]:
        shard, offset = divmod(slot, self.per_shard)
        return {name: _from_stored(name, self.array(name, shard)[offset], spec) for name, spec in self.schema.items()}

    def flush(self) -> None:
        for mapped in self._open.values():
            if isinstance(mapped, np.memmap):
                mapped.flush()

    def close(self) -> None:
        self.flush()
        self._open.clear()


def _reserve(path: Path) -> None:
    """Allocate the blocks of ``path`` (sparse after ``open_memmap``); file systems without fallocate are left as
    they are, and ENOSPC propagates."""
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


# -- building --------------------------------------------------------------------------------------------------------

_build_state: tuple[Any, _Shards] | None = None


def _decode_into(dataset: Any, shards: _Shards, indices: Iterable[int]) -> list[tuple[int, BadImage]]:
    """Decode ``indices`` through the adapter's ``_item`` into ``shards``; the bad ones are returned, not written."""
    bad = []
    for i in indices:
        try:
            item = dataset._item(i)
        except BadImageError as exc:
            bad.append((i, exc.bad))
            continue
        if set(item) != set(shards.schema):
            raise DataError(f"dataset {dataset.name!r}: item {i} has fields {sorted(item)}, the split's first item "
                            f"{sorted(shards.schema)}; such a split cannot be cached (run with --decoded-cache off)")
        where = f"dataset {dataset.name!r} item {i}"
        shards.write(i, {k: _to_stored(k, v, shards.schema[k], where) for k, v in item.items()})
    shards.flush()
    return bad


def _build_worker_init(dataset: Any, shards: _Shards) -> None:
    global _build_state
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", BadImageWarning)
    _build_state = (dataset, _Shards(shards.folder, shards.schema, shards.n, shards.per_shard, mode="r+"))


def _build_chunk(indices: range) -> list[tuple[int, BadImage]]:
    assert _build_state is not None
    dataset, shards = _build_state
    return _decode_into(dataset, shards, indices)


def _redirect(n: int, bad: set[int]) -> np.ndarray:
    """Slot read for each item: itself when good, else the next good one cyclically (as ``__getitem__`` skips)."""
    redirect = np.arange(n, dtype=np.int64)
    if not bad:
        return redirect
    good_after = -1
    for i in range(2 * n - 1, -1, -1):  # two passes backwards: the next good index, wrapping around
        j = i % n
        if j not in bad:
            good_after = j
        elif i < n:
            redirect[j] = good_after
    return redirect


def _build(dataset: Any, folder: Path, key_fields: dict[str, Any], workers: int) -> None:
    """Decode ``dataset`` into ``folder`` (which must not exist) through a temporary folder renamed at the end."""
    n = len(dataset)
    for orphan in folder.parent.glob(f"{folder.name}.tmp-*"):  # left by a killed build (the lock holder builds)
        shutil.rmtree(orphan, ignore_errors=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        bad: list[tuple[int, BadImage]] = []
        first = None
        for i in range(n):  # the first good item gives the shapes and dtypes
            try:
                first = dataset._item(i)
                break
            except BadImageError as exc:
                bad.append((i, exc.bad))
        if first is None:
            _raise_all_bad(dataset, [b for _, b in bad])
        start = len(bad)
        schema = _schema(first)
        item_bytes = sum(int(np.prod(s["shape"], dtype=np.int64)) * np.dtype(s["store"]).itemsize
                         for s in schema.values())
        per_shard = max(1, min(n, SHARD_BYTES // max(1, item_bytes)))
        _check_room(dataset, tmp, n * item_bytes)
        shards = _Shards(tmp, schema, n, per_shard, mode="r+")
        try:
            shards.create()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            _check_room(dataset, tmp, n * item_bytes, full=True)
        where = f"dataset {dataset.name!r} item {start}"
        shards.write(start, {k: _to_stored(k, v, schema[k], where) for k, v in first.items()})
        rest = range(start + 1, n)
        if workers > 0 and len(rest) > 1:
            size = max(1, min(_BUILD_CHUNK, -(-len(rest) // (4 * workers))))
            chunks = [range(lo, min(lo + size, n)) for lo in range(rest.start, n, size)]
            with ProcessPoolExecutor(max_workers=workers, initializer=_build_worker_init,
                                     initargs=(dataset, shards)) as pool:
                bad += [hit for part in pool.map(_build_chunk, chunks) for hit in part]
        else:
            bad += _decode_into(dataset, shards, rest)
        shards.close()
        bad.sort(key=lambda hit: hit[0])
        if len(bad) == n:
            _raise_all_bad(dataset, [b for _, b in bad])
        if bad and dataset.on_bad_image != "skip":
            _raise_bad(dataset, [b for _, b in bad])
        np.save(tmp / _REDIRECT, _redirect(n, {i for i, _ in bad}))
        meta = {"format": CACHE_FORMAT, "items": n, "per_shard": per_shard, "schema": schema, "key": key_fields,
                "bad_images": [asdict(b) for _, b in bad]}
        (tmp / f"{_META}.part").write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp / f"{_META}.part", tmp / _META)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / _META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_room(dataset: Any, tmp: Path, needed: int, full: bool = False) -> None:
    """Refuse a build that cannot fit, before any image is decoded (``full``: the reservation just failed)."""
    free = shutil.disk_usage(tmp).free
    if full or free < needed:
        raise DiskFullError(
            f"the decoded-image cache of {dataset.name!r} needs about {needed / 2**20:.0f} MB at {tmp.parent} but "
            f"only {free / 2**20:.0f} MB are free; free some space, point --cache-dir elsewhere, or run with "
            "--decoded-cache off (PIL decodes every epoch instead)")


def _raise_all_bad(dataset: Any, bad: list[BadImage]) -> None:
    if dataset.on_bad_image != "skip":
        _raise_bad(dataset, bad)
    raise DataError(f"dataset {dataset.name!r} split {dataset.split!r}: all {len(dataset)} images are bad "
                    f"({count_by_kind(bad)}); run `sslbench check-data` to list them")


def _raise_bad(dataset: Any, bad: list[BadImage]) -> None:
    for b in bad:
        dataset._record(b)
    shown = "\n".join(f"  {b.kind}\t{b.path}\t{b.reason}" for b in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    raise DataError(
        f"dataset {dataset.name!r} split {dataset.split!r}: {len(bad)} bad image(s) ({count_by_kind(bad)}):\n"
        f"{shown}{more}\nRemove or replace them, or leave them out with on_bad_image=skip"
    )


# -- the wrapper -----------------------------------------------------------------------------------------------------

class DecodedSplit(Dataset):
    """A file-backed split read from its decoded cache under ``cache_root`` (built on first use).

    Every attribute other than the items (``name``, ``provides``, ``class_names``, ``describe()``, ``bad_images``,
    ``scan()``...) is the wrapped adapter's, so code that reads a split reads this the same way. It pickles without
    its open memmaps, so DataLoader workers of any start method reopen them lazily.

    Args:
        dataset: the adapter's split (see :func:`is_cacheable`).
        cache_root: the folder holding the cache folders (``<cache>/decoded``).
        fingerprint: the split's data fingerprint, when already computed (the run plan's).
    """

    def __init__(self, dataset: Any, cache_root: str | os.PathLike[str], *, fingerprint: str | None = None) -> None:
        self.dataset = dataset
        self.cache_root = Path(cache_root)
        self._fingerprint = fingerprint
        self._folder: Path | None = None
        self._shards: _Shards | None = None
        self._redirect: np.ndarray | None = None
        #: Items of the split when the key was computed (a scan that drops items makes another key).
        self._items = -1
        self._key_fields: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shards"] = None
        state["_redirect"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def folder(self) -> Path | None:
        """The cache folder in use (None before :meth:`materialize`)."""
        return self._folder

    def materialize(self, workers: int = 0) -> Path:
        """Open the cache, building it first (with ``workers`` processes) when no complete one exists; returns its
        folder. Cheap when already open."""
        if self._folder is not None and self._shards is not None and self._shards.n == len(self.dataset):
            return self._folder
        if self._folder is None or len(self.dataset) != self._items:
            key, fields = cache_key(self.dataset, self._fingerprint if self._folder is None else None)
            self._folder, self._items = self.cache_root / key, len(self.dataset)
            self._key_fields = fields
        if not (self._folder / _META).is_file():
            from sslbench.locks import CheckpointLock

            lock = CheckpointLock(self._folder.with_name(f"{self._folder.name}.lock"))
            lock.acquire(wait=True)
            try:
                if not (self._folder / _META).is_file():
                    _build(self.dataset, self._folder, self._key_fields, workers)
            finally:
                lock.release()
        self._open(announce=True)
        return self._folder

    def _open(self, announce: bool = False) -> None:
        """Map the complete cache folder; record its bad files in the adapter (and, with ``announce``, warn of each
        one left out, as the uncached split does when it meets them)."""
        assert self._folder is not None
        try:
            meta = json.loads((self._folder / _META).read_text())
            redirect = np.load(self._folder / _REDIRECT)
        except (OSError, ValueError) as exc:
            raise DataError(f"decoded-image cache {self._folder} is unreadable ({exc}); delete the folder and rerun "
                            "(it is rebuilt), or run with --decoded-cache off") from exc
        if meta.get("items") != len(self.dataset) or len(redirect) != len(self.dataset):
            raise DataError(f"decoded-image cache {self._folder} holds {meta.get('items')} items, the split "
                            f"{len(self.dataset)}; delete the folder and rerun")
        for fields in meta.get("bad_images", []):
            b = BadImage(**fields)
            self.dataset._record(b)
            if announce:
                warnings.warn(f"left out {b.path} ({b.kind}: {b.reason})", BadImageWarning, stacklevel=3)
        self._redirect = redirect
        self._shards = _Shards(self._folder, meta["schema"], meta["items"], meta["per_shard"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._shards is None or self._redirect is None or self._shards.n != len(self.dataset):
            if self._folder is not None and (self._folder / _META).is_file() and self._items == len(self.dataset):
                self._open()  # a worker process, or after unpickling: reopen, never rebuild
            else:
                self.materialize()  # first read without a loader, or the adapter's index changed (a scan)
        assert self._shards is not None and self._redirect is not None
        n = len(self._redirect)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self.dataset.name} {self.dataset.split} of {n} items")
        return self._shards.read(int(self._redirect[index]))

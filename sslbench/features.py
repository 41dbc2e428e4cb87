"""Frozen-feature extraction for probe protocols: every tap of a representation in one pass over a split.

Each tap's map is reduced to a fixed spatial size (``bilinear`` resize as in Zhang's released linear protocol,
``avg`` adaptive average pooling as in Goyal et al.) chosen so that channels × size² is about ``target_dims``
(9k in the papers), then flattened; ``global`` averages each channel over all positions (VISSL's kNN input).
Features are stored in float16.

:func:`extract_features` runs one pass for one reduction and, when a cache folder is given, stores the result there
so reruns reuse it (read back with ``weights_only=True``: a bad cache file is a :class:`~sslbench.errors.CacheError`
naming it). :class:`FeatureStore` shares features between the protocols of one checkpoint: the runner gives one to
every protocol of a unit, told beforehand which reductions they will ask for, so the first request runs the
representation once per (split, tap set) and computes every planned reduction in that pass; later requests are
answered from memory, or from files spilled to the cache folder when they do not fit in the store's memory budget.
"""

from __future__ import annotations

import math
import os
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from sslbench.checkpoints import atomic_torch_save, load_cache_file
from sslbench.errors import CacheError
from sslbench.pretext import Representation, images_to_rgb
from sslbench.progress import Progress
from sslbench.runtime import Runtime

__all__ = ["REDUCTIONS", "Reduction", "FeatureStore", "reduced_size", "reduce_map", "extract_features",
           "extract_reductions", "default_memory_budget"]

REDUCTIONS = ("bilinear", "avg", "global")

#: Per-tap features (N, D) by tap name, and the labels (N,) or None when the split has none.
Features = tuple[dict[str, torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True)
class Reduction:
    """How every tap's map becomes one vector per image: ``kind`` (one of :data:`REDUCTIONS`) aiming at about
    ``target_dims`` values (``global`` ignores it: one value per channel)."""

    kind: str
    target_dims: int = 9000

    @property
    def valid(self) -> bool:
        return self.kind in REDUCTIONS and self.target_dims > 0


def reduced_size(channels: int, height: int, target_dims: int) -> int:
    """Spatial side s with channels·s² closest to ``target_dims``, at least 1 and at most the map's side."""
    return max(1, min(height, round(math.sqrt(target_dims / channels))))


def reduce_map(fmap: torch.Tensor, reduction: str, target_dims: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C·s²) by ``reduction`` to an s×s grid (``global``: s = 1, average pooling)."""
    if reduction == "global":
        return fmap.mean(dim=(2, 3))
    side = reduced_size(fmap.shape[1], min(fmap.shape[-2:]), target_dims)
    if reduction == "avg":
        out = F.adaptive_avg_pool2d(fmap, side)
    elif reduction == "bilinear":
        out = F.interpolate(fmap, size=(side, side), mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"reduction {reduction!r}: choose one of {', '.join(REDUCTIONS)}")
    return out.flatten(1)


@torch.no_grad()
def extract_reductions(representation: Representation, dataset: Dataset, runtime: Runtime, *, batch_size: int,
                       reductions: Sequence[Reduction], split: str, progress: Progress, label_key: str = "label"
                       ) -> tuple[dict[Reduction, dict[str, torch.Tensor]], torch.Tensor | None]:
    """One pass of ``representation`` (in eval mode) over ``dataset``: for each of ``reductions``, every tap's
    reduced features (float16, on the runtime's device), and the labels (``label_key``; None when absent)."""
    names = [tap.name for tap in representation.taps]
    representation.eval()
    runtime.sync_from_main(representation)  # under torchrun, every shard with rank 0's batch-norm statistics
    chunks: dict[Reduction, dict[str, list[torch.Tensor]]] = {r: {n: [] for n in names} for r in reductions}
    label_chunks: list[torch.Tensor] = []
    loader = runtime.eval_loader(dataset, batch_size)  # under torchrun, this process's shard
    for batch in progress.track(runtime.batches(loader), f"features {split}", total=len(loader)):
        with runtime.autocast():
            maps = representation(images_to_rgb(batch["image"]))
        for name, fmap in zip(names, maps):
            for r in reductions:
                chunks[r][name].append(reduce_map(fmap.float(), r.kind, r.target_dims).half())
        if label_key in batch:
            label_chunks.append(batch[label_key])
    reduced = {r: {n: runtime.gather_rows(torch.cat(c) if c else None, runtime.device) for n, c in per_tap.items()}
               for r, per_tap in chunks.items()}
    labels = (runtime.gather_rows(torch.cat(label_chunks) if label_chunks else None, runtime.device)
              if runtime.agree(bool(label_chunks)) else None)
    return reduced, labels


def extract_features(representation: Representation, dataset: Dataset, runtime: Runtime, *, batch_size: int,
                     reduction: str, target_dims: int, split: str, progress: Progress,
                     cache_dir: str | Path | None = None, label_key: str = "label") -> Features:
    """Reduced features of every tap over ``dataset`` (float32 on the runtime's device) and the labels.

    ``cache_dir`` (tied to one checkpoint by the caller) stores them per tap/split/reduction in float16.
    """
    names = [tap.name for tap in representation.taps]
    where = (split, len(dataset), reduction, target_dims)
    # Rank 0 decides for all processes: one reading the cache while another computes would wait forever.
    if cache_dir and runtime.agree(_all_cached(Path(cache_dir), *where, names)):
        return _on_device(_read_all(Path(cache_dir), *where, names), runtime)
    wanted = Reduction(reduction, target_dims)
    reduced, labels = extract_reductions(representation, dataset, runtime, batch_size=batch_size, reductions=[wanted],
                                         split=split, progress=progress, label_key=label_key)
    features = reduced[wanted]
    if cache_dir and runtime.is_main:
        _write_all(Path(cache_dir), *where, features, labels)
    return {n: v.float() for n, v in features.items()}, labels


def default_memory_budget() -> int:
    """Bytes a :class:`FeatureStore` keeps in memory by default: a quarter of the machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (AttributeError, ValueError, OSError):
        return 2 * 2**30


class FeatureStore:
    """Reduced features of one checkpoint's representation, extracted once and shared by several protocols.

    ``planned`` lists the reductions the protocols will ask for: a request that misses extracts all of them (the
    valid ones) in the same pass over its split. Entries are kept in CPU memory in float16 up to ``memory_budget``
    bytes (default :func:`default_memory_budget`); beyond it they are spilled to a private folder under
    ``cache_dir`` that is removed with the store, or, without a ``cache_dir``, extracted again when asked for again.
    Entries are keyed by split name, dataset object and size, tap names, label key and reduction, so a store must
    live no longer than the representation it was filled from (the runner makes one per unit).
    """

    def __init__(self, cache_dir: str | Path | None = None, *, planned: Iterable[Reduction] = (),
                 memory_budget: int | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.planned = [r for r in dict.fromkeys(planned) if r.valid]
        self.memory_budget = default_memory_budget() if memory_budget is None else memory_budget
        self._memory: dict[tuple[Any, ...], Features] = {}
        self._spilled: dict[tuple[Any, ...], Path] = {}
        self._used = 0
        self._spill_root: Path | None = None

    def get(self, representation: Representation, dataset: Dataset, runtime: Runtime, *, split: str,
            reduction: Reduction, batch_size: int, progress: Progress, persist: bool = False,
            label_key: str = "label") -> Features:
        """As :func:`extract_features` (float32 features and labels on the runtime's device), shared: the pass over
        ``dataset`` runs only when no earlier request computed this reduction. ``persist`` also stores the features
        in ``cache_dir`` (the files :func:`extract_features` reads back) and reuses files found there."""
        names = tuple(tap.name for tap in representation.taps)
        source = (split, id(dataset), len(dataset), names, label_key)
        where = (split, len(dataset), reduction.kind, reduction.target_dims)
        persist_dir = self.cache_dir if persist else None
        found = self._lookup((source, reduction))
        if found is None and persist_dir is not None and runtime.agree(_all_cached(persist_dir, *where, names)):
            found = _read_all(persist_dir, *where, names)
            self._keep((source, reduction), found)
        if found is None:
            wanted = [r for r in dict.fromkeys([*self.planned, reduction]) if self._lookup((source, r)) is None]
            reduced, labels = extract_reductions(representation, dataset, runtime, batch_size=batch_size,
                                                 reductions=wanted, split=split, progress=progress,
                                                 label_key=label_key)
            for r, features in reduced.items():
                entry = ({n: v.cpu() for n, v in features.items()}, None if labels is None else labels.cpu())
                self._keep((source, r), entry)
                if r == reduction:
                    found = entry
        assert found is not None
        if persist_dir is not None and runtime.is_main and not _all_cached(persist_dir, *where, names):
            _write_all(persist_dir, *where, *found)
        return _on_device(found, runtime)

    def _lookup(self, key: tuple[Any, ...]) -> Features | None:
        if key in self._memory:
            return self._memory[key]
        if key in self._spilled:
            return _read_all(self._spilled[key], *_SPILLED, key[0][3])
        return None

    def _keep(self, key: tuple[Any, ...], entry: Features) -> None:
        features, labels = entry
        size = sum(v.numel() * v.element_size() for v in features.values())
        size += 0 if labels is None else labels.numel() * labels.element_size()
        if self._used + size <= self.memory_budget:
            self._memory[key] = entry
            self._used += size
        elif self.cache_dir is not None:
            folder = self._spill_folder() / str(len(self._spilled))
            _write_all(folder, *_SPILLED, features, labels)
            self._spilled[key] = folder

    def _spill_folder(self) -> Path:
        if self._spill_root is None:
            assert self.cache_dir is not None
            self._spill_root = self.cache_dir / f"spill-{os.getpid()}-{id(self):x}"
            weakref.finalize(self, shutil.rmtree, self._spill_root, True)
        return self._spill_root


#: The (split, size, reduction, target_dims) part of a spilled entry's file names: its folder says the rest.
_SPILLED = ("spill", 0, "entry", 0)


def _cache_path(folder: Path, split: str, size: int, reduction: str, target_dims: int, tap: str) -> Path:
    return folder / f"{split}-{size}-{reduction}-{target_dims}-{tap}.pt"


def _all_cached(folder: Path, split: str, size: int, reduction: str, target_dims: int, names: Sequence[str]) -> bool:
    return all(_cache_path(folder, split, size, reduction, target_dims, n).is_file() for n in names)


def _read_all(folder: Path, split: str, size: int, reduction: str, target_dims: int, names: Sequence[str]
              ) -> Features:
    """Every tap's cached float16 features (on the CPU) and the labels stored with the first."""
    loaded = {n: _read_cached(_cache_path(folder, split, size, reduction, target_dims, n)) for n in names}
    return {n: loaded[n]["features"] for n in names}, loaded[names[0]]["labels"]


def _write_all(folder: Path, split: str, size: int, reduction: str, target_dims: int,
               features: dict[str, torch.Tensor], labels: torch.Tensor | None) -> None:
    for name, value in features.items():
        atomic_torch_save({"features": value.cpu(), "labels": None if labels is None else labels.cpu()},
                          _cache_path(folder, split, size, reduction, target_dims, name))


def _on_device(entry: Features, runtime: Runtime) -> Features:
    features, labels = entry
    return ({n: v.to(runtime.device, torch.float32) for n, v in features.items()},
            None if labels is None else labels.to(runtime.device))


def _read_cached(path: Path) -> dict[str, Any]:
    """One tap's cached features: tensors only (``weights_only``); :class:`CacheError` naming the file otherwise."""
    loaded = load_cache_file(path)
    if not isinstance(loaded, dict) or not torch.is_tensor(loaded.get("features")):
        raise CacheError(path, "it holds no cached features (no 'features' tensor)")
    return loaded


def describe_features(features: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Dimensions per tap, for records."""
    return {name: int(value.shape[1]) for name, value in features.items()}

"""Frozen-feature extraction for probe protocols: every tap of a representation in one pass over a split.

Each tap's map is reduced to a fixed spatial size (``bilinear`` resize as in Zhang's released linear protocol,
``avg`` adaptive average pooling as in Goyal et al.) chosen so that channels × size² is about ``target_dims``
(9k in the papers), then flattened. Features are extracted once per (checkpoint, tap, split, reduction) and, when a
cache folder is given, stored there in float16 so later protocols and reruns reuse them (read back with
``weights_only=True``: a bad cache file is a :class:`~sslbench.errors.CacheError` naming it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from sslbench.checkpoints import atomic_torch_save, load_cache_file
from sslbench.errors import CacheError
from sslbench.pretext import Representation, images_to_rgb
from sslbench.progress import Progress
from sslbench.runtime import Runtime

__all__ = ["reduced_size", "reduce_map", "extract_features"]

REDUCTIONS = ("bilinear", "avg", "global")


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
def extract_features(representation: Representation, dataset: Dataset, runtime: Runtime, *, batch_size: int,
                     reduction: str, target_dims: int, split: str, progress: Progress,
                     cache_dir: str | Path | None = None, label_key: str = "label"
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Reduced features of every tap over ``dataset`` (float32 on the runtime's device) and the labels.

    ``cache_dir`` (tied to one checkpoint by the caller) stores them per tap/split/reduction in float16.
    """
    names = [tap.name for tap in representation.taps]
    cache = Path(cache_dir) if cache_dir else None

    def path(name: str) -> Path:
        assert cache is not None
        return cache / f"{split}-{len(dataset)}-{reduction}-{target_dims}-{name}.pt"

    if cache is not None and all(path(n).is_file() for n in names):
        loaded = {n: _read_cached(path(n)) for n in names}
        labels = loaded[names[0]]["labels"]
        feats = {n: loaded[n]["features"].to(runtime.device, torch.float32) for n in names}
        return feats, None if labels is None else labels.to(runtime.device)

    representation.eval()
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    label_chunks: list[torch.Tensor] = []
    loader = runtime.loader(dataset, batch_size, shuffle=False, seed=0)
    for batch in progress.track(runtime.batches(loader), f"features {split}", total=len(loader)):
        with runtime.autocast():
            maps = representation(images_to_rgb(batch["image"]))
        for name, fmap in zip(names, maps):
            chunks[name].append(reduce_map(fmap.float(), reduction, target_dims).half())
        if label_key in batch:
            label_chunks.append(batch[label_key])
    features = {n: torch.cat(c) for n, c in chunks.items()}
    labels = torch.cat(label_chunks) if label_chunks else None
    if cache is not None and runtime.is_main:
        for name, value in features.items():
            atomic_torch_save({"features": value.cpu(), "labels": None if labels is None else labels.cpu()},
                              path(name))
    return {n: v.float() for n, v in features.items()}, labels


def _read_cached(path: Path) -> dict[str, Any]:
    """One tap's cached features: tensors only (``weights_only``); :class:`CacheError` naming the file otherwise."""
    loaded = load_cache_file(path)
    if not isinstance(loaded, dict) or not torch.is_tensor(loaded.get("features")):
        raise CacheError(path, "it holds no cached features (no 'features' tensor)")
    return loaded


def describe_features(features: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Dimensions per tap, for records."""
    return {name: int(value.shape[1]) for name, value in features.items()}

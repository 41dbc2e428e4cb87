"""Bootstrap intervals over test images, recomputed from a protocol's per-image values.

A metric is recomputed on resamples of the test images (drawn with replacement, the same size as the test set)
from the :class:`~sslbench.protocol.PerImage` values a protocol saved, exactly as the protocol computes it on the
full set: the mean of per-image values, a ratio of sums, 100·mIoU of the summed confusion matrices
(:func:`sslbench.metrics.segmentation.iou_from_confusion`, classes without pixels or predictions left out), or
100·VOC mAP (:func:`sslbench.metrics.mean_average_precision`). The interval is the percentile interval of the
resampled values (default: 1000 resamples, 95 %, seed 0).

Several seeds (one :class:`PerImage` each, on the same test images) give the interval of their MEAN: every resample
draws one set of image indices and applies it to every seed, so the interval reflects the test-set sampling of the
seed-averaged number the table shows, not the spread between seeds.

The indices of resample ``b`` are row ``b`` of ``numpy.random.default_rng(seed).integers(0, n, size=(resamples,
n))`` (:func:`resample_indices`), so an interval can be recomputed independently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["RESAMPLES", "LEVEL", "SEED", "Interval", "resample_indices", "metric_value", "bootstrap_interval"]

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
#: Resamples handled at once by the count-based kinds (bounds memory at CHUNK × n counts).
CHUNK = 64


@dataclass(frozen=True)
class Interval:
    """A point estimate (the metric on all test images, averaged over seeds) and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    resamples: int
    seeds: int
    #: Resamples on which the metric was undefined (e.g. no positive of any class drawn), left out.
    undefined: int = 0


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``(resamples, n)`` image indices drawn uniformly with replacement, reproducibly from ``seed``."""
    if n < 1:
        raise ValueError("cannot resample an empty test set")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _images(item: Any) -> int:
    return len(next(iter(item.arrays.values())))


def _miou(confusion: np.ndarray) -> float:
    import torch

    from sslbench.metrics.segmentation import iou_from_confusion

    per_class = iou_from_confusion(torch.from_numpy(np.asarray(confusion)))
    defined = ~torch.isnan(per_class)
    return 100.0 * float(per_class[defined].mean()) if bool(defined.any()) else math.nan


def _map(scores: np.ndarray, targets: np.ndarray, difficult: np.ndarray) -> float:
    import torch

    from sslbench.metrics.classification import mean_average_precision

    value, _ = mean_average_precision(torch.from_numpy(np.asarray(scores)), torch.from_numpy(np.asarray(targets)),
                                      torch.from_numpy(np.asarray(difficult, dtype=bool)))
    return 100.0 * value


def metric_value(item: Any, index: np.ndarray | None = None) -> float:
    """The metric of a :class:`~sslbench.protocol.PerImage` on the images ``index`` (all when None; repeats count
    as often as they occur)."""
    a = item.arrays if index is None else {k: np.asarray(v)[index] for k, v in item.arrays.items()}
    if item.kind == "mean":
        return float(np.mean(np.asarray(a["values"], dtype=np.float64)))
    if item.kind == "ratio":
        den = float(np.sum(np.asarray(a["den"], dtype=np.float64)))
        return float(np.sum(np.asarray(a["num"], dtype=np.float64))) / den if den else math.nan
    if item.kind == "confusion":
        return _miou(np.asarray(a["confusion"]).sum(axis=0))
    if item.kind == "ap":
        return _map(a["scores"], a["targets"], a["difficult"])
    raise ValueError(f"per-image kind {item.kind!r} has no metric")


def _counts(index: np.ndarray, n: int) -> np.ndarray:
    """How often each image occurs in each row of ``index``: ``(rows, n)``."""
    rows = index.shape[0]
    flat = (index + np.arange(rows)[:, None] * n).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def _resampled(item: Any, indices: np.ndarray) -> np.ndarray:
    """The metric of ``item`` on every resample (row) of ``indices``."""
    n = indices.shape[1]
    if item.kind == "ap":
        return np.array([metric_value(item, row) for row in indices])
    out = []
    for start in range(0, indices.shape[0], CHUNK):
        counts = _counts(indices[start:start + CHUNK], n)
        if item.kind == "mean":
            out.append(counts @ np.asarray(item.arrays["values"], dtype=np.float64) / n)
        elif item.kind == "ratio":
            num = counts @ np.asarray(item.arrays["num"], dtype=np.float64)
            den = counts @ np.asarray(item.arrays["den"], dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan))
        elif item.kind == "confusion":
            confusion = np.asarray(item.arrays["confusion"])
            summed = np.rint(counts @ confusion.reshape(n, -1).astype(np.float64)).astype(np.int64)
            out.append(np.array([_miou(m.reshape(confusion.shape[1:])) for m in summed]))
        else:
            raise ValueError(f"per-image kind {item.kind!r} has no metric")
    return np.concatenate(out)


def bootstrap_interval(items: Sequence[Any], resamples: int = RESAMPLES, seed: int = SEED,
                       level: float = LEVEL) -> Interval:
    """The percentile bootstrap interval of the mean over ``items`` (one :class:`PerImage` per seed, all of the
    same kind and on the same test images), resampling the same image indices for every item."""
    if not items:
        raise ValueError("no per-image values to resample")
    kinds = {item.kind for item in items}
    sizes = {_images(item) for item in items}
    if len(kinds) > 1:
        raise ValueError(f"per-image values of different kinds ({', '.join(sorted(kinds))}) cannot be averaged")
    if len(sizes) > 1:
        raise ValueError(f"per-image values over different numbers of test images ({sorted(sizes)}): the seeds were "
                         "not evaluated on the same images")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    indices = resample_indices(sizes.pop(), resamples, seed)
    stats = np.mean([_resampled(item, indices) for item in items], axis=0)
    defined = stats[~np.isnan(stats)]
    estimate = float(np.mean([metric_value(item) for item in items]))
    if defined.size == 0:
        return Interval(estimate, math.nan, math.nan, resamples, len(items), resamples)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return Interval(estimate, float(low), float(high), resamples, len(items), int(stats.size - defined.size))

"""``colorization``: how well a pretext recolours held-out images (Zhang et al. 2016; Treneska et al. 2022).

The pretext's :meth:`~sslbench.pretext.Pretext.colorize` recolours the evaluation split's images from their L; nothing
is trained. Reported, for the pretext at top level and for two reference rows under ``reference/<row>/<metric>``:

- ``auc``: Zhang et al.'s AuC, percent: the per-pixel L2 error in ab, the fraction of pixels within each threshold
  t = 0..150 (``error <= t``), averaged over the 151 thresholds (:class:`sslbench.metrics.AuCAccumulator`, accumulated
  exactly over batches). ``auc_rebal``: the same with each pixel weighted by the inverse probability of its
  ground-truth ab bin (Zhang's class-rebalanced AuC).
- ``psnr`` (dB) and ``ssim`` in sRGB with data range 1 (Treneska et al.: 20.94 dB, 0.85), the mean over images of the
  per-image values; SSIM with the 11-tap Gaussian window of ``skimage.metrics.structural_similarity``.
- ``colourfulness``: Hasler & Süsstrunk's M (0..255 scale), mean over images.

Reference rows: ``gray`` (L kept, ab = 0: Zhang's "grayscale" row, 89.1 / 58.0 on ImageNet) and ``ground_truth`` (the
input itself). For the ground truth, AuC is 100, PSNR infinite and SSIM 1 by definition, so only its colourfulness is
reported (``reference/ground_truth/colourfulness``: how colourful the real images are).

Where sslbench follows the paper, and where it departs:

- The rebalancing prior. Zhang weighted by the ImageNet prior of the 313 bins; sslbench uses the empirical prior of
  the TRAINING split's ab on a grid of ``grid_size`` = 10 (the colour core's :func:`ab_bins_from_data`, one streaming
  pass, cached once per training set under the shared cache root, see :mod:`sslbench.protocols._judge`), so the weights
  match the data being evaluated and no ImageNet file is needed. The prior is smoothed by a Gaussian of
  ``rebalance_sigma`` = 5 ab units (the smoothing Zhang applied to the prior for training; with a small training set
  the raw counts of rare bins are noise) and the weight is its inverse (``rebalance_lambda`` = 0: the pure inverse
  probability of the paper's metric; 0.5 would give the training loss's weights). A ground-truth ab whose grid cell
  never occurs in the training data takes the bin nearest to that cell (as a nearest-bin encoding does with
  Zhang's 313 bins). ``rebalance_sigma=0`` uses the raw empirical prior.
- The ab of a prediction is measured on the sRGB image ``colorize`` returns (converted back to Lab), since that image
  is the pretext's only output through the contract; out-of-gamut predictions are thus clipped as in any saved
  image, as Zhang's published images were. Metrics are computed in float32 at the dataset's resolution
  (Zhang: ImageNet validation at 256 px), ``colorize`` runs outside autocast.
- A per-image PSNR is capped at ``psnr_cap`` = 100 dB (an MSE below 1e-10, e.g. the gray row on an image that was
  grayscale already), the usual convention of colorization code, so one exact image cannot make the mean infinite.
- ``max_images`` (0: all) takes a fixed, seed-independent subset of the evaluation split, spread over the split.

Metric conventions, options recorded with every result (and as the strings ``convention/auc`` and
``convention/prior`` among the metrics, so a table can say which numbers it compares):

- ``auc``: the paper does not say how the area under the 0..150 curve is normalised. ``mean151`` (default) is the
  mean of the 151 cumulative fractions at t = 0..150; ``trapezoid`` is the trapezoid rule over [0, 150] divided by
  150 (:func:`sslbench.metrics.colorization.curve_area`). For a curve f with sum S over the 151 points, mean151 -
  trapezoid = (f(0) + f(150))/300 - S/(150·151), at most 1/300 of the range either way (on ImageNet validation the
  gray row is 88.9 by the mean, 89.2 by the trapezoid, published 89.1).
- ``prior``: ``train`` (default, the training split's prior as above) or ``file:PATH``, where PATH is Zhang's released
  ``prior_probs.npy`` with its ``pts_in_hull.npy`` beside it (the 313 ImageNet bins, grid ``grid_size`` = 10). Only
  with Zhang's file is the rebalanced AuC comparable with the published 58.0 (gray); ``rebalance_sigma`` and
  ``rebalance_lambda`` apply to either prior.

Per-image values (``self.per_image``, for bootstrap intervals over test images), for the pretext's row and, under
``reference/<row>/``, the reference rows: ``auc`` (kind ``mean`` when every image has the same number of pixels, else
``ratio`` of its area-under-curve pixel counts over its pixel count), ``auc_rebal`` (``ratio``: weighted counts over
summed weights), and ``psnr``, ``ssim``, ``colourfulness`` (``mean`` of the per-image values, as reported).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sslbench.protocols._judge import dataset_fingerprint, eval_loader, eval_subset, gray_rgb, shared_cache_root
from sslbench.colour import rgb_to_lab
from sslbench.colour.bins import ABBins, ABHistogram, ab_bins_from_data, ab_bins_from_files, snap_to_grid
from sslbench.colour.rebalance import rebalance_weights
from sslbench.config import canonical_json
from sslbench.errors import UsageError
from sslbench.metrics import AuCAccumulator, colourfulness, psnr, ssim
from sslbench.metrics.colorization import AUC_RULES, curve_area, per_image_ab_error_counts
from sslbench.pretext import Pretext, images_to_rgb
from sslbench.progress import Progress
from sslbench.protocol import EvalData, PerImage, Protocol
from sslbench.registry import register_protocol
from sslbench.runtime import Runtime

__all__ = ["ColorizationConfig", "ColorizationProtocol", "training_prior", "prior_file", "file_prior",
           "RebalanceTable"]

PRIOR_FORMAT = 1
#: Priors computed without a cache folder, by key.
_PRIORS: dict[str, ABBins] = {}


@dataclass
class ColorizationConfig:
    """Options of the ``colorization`` protocol."""

    #: Evaluate at most this many images of the evaluation split (0: all), a fixed subset.
    max_images: int = 0
    #: Largest ab-error threshold of the AuC (Zhang: 150).
    max_threshold: int = 150
    #: ab grid of the rebalancing prior (Zhang: 10).
    grid_size: int = 10
    #: Gaussian smoothing (ab units) of the training prior before inverting it (0: the raw prior).
    rebalance_sigma: float = 5.0
    #: Weight of the uniform distribution mixed into the prior (0: pure inverse probability, the paper's metric).
    rebalance_lambda: float = 0.0
    #: Upper bound of a per-image PSNR, dB.
    psnr_cap: float = 100.0
    #: Folder for the prior shared across pretexts; empty: see :func:`sslbench.protocols._judge.shared_cache_root`.
    prior_cache: str = ""
    #: Area under the ab-error curve: ``mean151`` (mean of the points at t = 0..max_threshold) or ``trapezoid``.
    auc: str = "mean151"
    #: Rebalancing prior: ``train`` (the training split's) or ``file:PATH`` (Zhang's prior_probs.npy at PATH, with
    #: pts_in_hull.npy beside it).
    prior: str = "train"

    def __post_init__(self) -> None:
        if self.auc not in AUC_RULES:
            raise UsageError(f"colorization option auc={self.auc!r}: choose one of {', '.join(AUC_RULES)}")
        if self.auc == "trapezoid" and self.max_threshold < 1:
            raise UsageError("colorization option auc=trapezoid needs max_threshold >= 1")
        if self.prior != "train":
            path = prior_file(self.prior)
            for needed in (path, path.parent / "pts_in_hull.npy"):
                if not needed.is_file():
                    raise UsageError(f"colorization option prior={self.prior!r}: {needed} does not exist; give "
                                     "file:PATH with PATH Zhang's prior_probs.npy and pts_in_hull.npy beside it")


def prior_file(option: str) -> Path:
    """The path of a ``file:PATH`` prior option."""
    if not option.startswith("file:") or not option[len("file:"):]:
        raise UsageError(f"colorization option prior={option!r}: use train or file:PATH (PATH: Zhang's "
                         "prior_probs.npy, with pts_in_hull.npy beside it)")
    return Path(option[len("file:"):]).expanduser()


def file_prior(option: str, grid_size: int) -> ABBins:
    """Zhang's released bins and ImageNet prior from ``file:PATH`` (PATH: prior_probs.npy; pts_in_hull.npy beside)."""
    path = prior_file(option)
    try:
        return ab_bins_from_files(path.parent / "pts_in_hull.npy", path, grid_size=grid_size)
    except (OSError, ValueError) as exc:
        raise UsageError(f"colorization option prior={option!r}: cannot read Zhang's prior from {path} and "
                         f"{path.parent / 'pts_in_hull.npy'}: {exc}") from exc


def training_prior(data: EvalData, runtime: Runtime, grid_size: int, progress: Progress,
                   cache_override: str = "") -> ABBins:
    """The ab bins occupied by the training split and their empirical prior (cached per training set and grid)."""
    key_fields = {"format": PRIOR_FORMAT, "dataset": dataset_fingerprint(data.train), "grid_size": grid_size}
    key = hashlib.sha256(canonical_json(key_fields).encode()).hexdigest()[:16]
    root = shared_cache_root(data.cache_dir, cache_override)
    if root is None and key in _PRIORS:
        return _PRIORS[key].to(runtime.device)
    cache_path = root / "priors" / f"ab-prior-{key}.pt" if root is not None else None
    loader = eval_loader(data.train, data.batch_size, runtime)
    images = (batch["image"] for batch in progress.track(runtime.batches(loader), "ab prior", total=len(loader)))
    bins = ab_bins_from_data(images, grid_size=grid_size, cache_path=cache_path)
    if root is None:
        _PRIORS[key] = bins.to("cpu")
    return bins.to(runtime.device)


class RebalanceTable:
    """Per-pixel rebalancing weights: the class weight of the bin holding (or nearest to) a pixel's ab grid cell.

    A lookup table over every cell of the histogram grid gives each cell the weight of the nearest occupied bin
    (its own when occupied), so weighting a batch is one snap and one gather.
    """

    def __init__(self, bins: ABBins, class_weights: torch.Tensor) -> None:
        hist = ABHistogram(bins.grid_size)
        self.grid_size, self.half, self.side = bins.grid_size, hist.half, hist.side
        coords = torch.arange(-self.half, self.half + 1, device=bins.device, dtype=torch.float32) * self.grid_size
        cells = torch.stack(torch.meshgrid(coords, coords, indexing="ij"), dim=-1).reshape(-1, 2)
        nearest = torch.cdist(cells, bins.centers.float()).argmin(dim=1)
        self.table = class_weights.float()[nearest]

    def __call__(self, ab: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W) ab -> (N, H, W) weights."""
        cells = snap_to_grid(ab.float(), self.grid_size).clamp_(-self.half, self.half) + self.half
        return self.table.to(ab.device)[cells[:, 0] * self.side + cells[:, 1]]


class _Row:
    """Accumulated metrics of one colorizer over the evaluated images, and their per-image values."""

    def __init__(self, max_threshold: int, with_error_metrics: bool, rule: str = "mean151") -> None:
        self.with_error_metrics = with_error_metrics
        self.rule = rule
        self.auc = AuCAccumulator(max_threshold)
        self.auc_rebal = AuCAccumulator(max_threshold)
        self.sums: dict[str, torch.Tensor] = {}
        self.values: dict[str, list[torch.Tensor]] = {}
        self.count = 0

    def _add(self, name: str, values: torch.Tensor) -> None:
        total = values.double().sum()
        self.sums[name] = self.sums[name] + total if name in self.sums else total
        self._keep(name, values)

    def _keep(self, name: str, values: torch.Tensor) -> None:
        self.values.setdefault(name, []).append(values.detach().double().cpu())

    def _add_auc(self, name: str, pred_ab: torch.Tensor, true_ab: torch.Tensor,
                 weights: torch.Tensor | None) -> None:
        acc: AuCAccumulator = getattr(self, name)
        acc.update(pred_ab, true_ab, weights)
        counts, totals = per_image_ab_error_counts(pred_ab, true_ab, acc.thresholds, weights)
        self._keep(f"{name}|num", 100.0 * curve_area(counts, acc.thresholds, self.rule))
        self._keep(f"{name}|den", totals)

    def update(self, pred_rgb: torch.Tensor, true_rgb: torch.Tensor, true_ab: torch.Tensor, weights: torch.Tensor,
               psnr_cap: float) -> None:
        self._add("colourfulness", colourfulness(pred_rgb))
        self.count += pred_rgb.shape[0]
        if not self.with_error_metrics:
            return
        pred_ab = rgb_to_lab(pred_rgb)[:, 1:]
        self._add_auc("auc", pred_ab, true_ab, None)
        self._add_auc("auc_rebal", pred_ab, true_ab, weights)
        self._add("psnr", psnr(pred_rgb, true_rgb).clamp(max=psnr_cap))
        self._add("ssim", ssim(pred_rgb, true_rgb))

    def metrics(self) -> dict[str, float]:
        out = {name: float(total) / self.count for name, total in self.sums.items()}
        if self.with_error_metrics:
            for name in ("auc", "auc_rebal"):
                acc: AuCAccumulator = getattr(self, name)
                out[name] = 100.0 * float(curve_area(acc.curve(), acc.thresholds, self.rule))
        return out

    def per_image(self) -> dict[str, PerImage]:
        """Per-image values from which each of :meth:`metrics` is recomputed (see :class:`PerImage`)."""
        arrays = {name: torch.cat(parts).numpy() for name, parts in self.values.items()}
        out = {name: PerImage("mean", {"values": arrays[name]}) for name in self.sums}
        if self.with_error_metrics:
            for name in ("auc", "auc_rebal"):
                num, den = arrays[f"{name}|num"], arrays[f"{name}|den"]
                if name == "auc" and (den == den[0]).all():
                    out[name] = PerImage("mean", {"values": num / den})
                else:
                    out[name] = PerImage("ratio", {"num": num, "den": den})
        return out


@register_protocol("colorization")
class ColorizationProtocol(Protocol):
    """Recolour held-out images: AuC (raw, rebalanced), PSNR, SSIM, colourfulness; gray and ground-truth rows."""

    requires = frozenset({"colorize"})
    Config = ColorizationConfig
    headline = "auc"

    @torch.no_grad()
    def evaluate(self, pretext: Pretext, data: EvalData, runtime: Runtime, progress: Progress) -> dict[str, Any]:
        cfg: ColorizationConfig = self.config
        if cfg.prior == "train":
            bins = training_prior(data, runtime, cfg.grid_size, progress, cfg.prior_cache)
        else:
            bins = file_prior(cfg.prior, cfg.grid_size).to(runtime.device)
        class_weights = rebalance_weights(bins.prior.double(), bins, lam=cfg.rebalance_lambda,
                                          sigma=cfg.rebalance_sigma)
        pixel_weights = RebalanceTable(bins, class_weights)
        colorizers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "pretext": lambda rgb: pretext.colorize(rgb),
            "gray": gray_rgb,
            "ground_truth": lambda rgb: rgb,
        }
        rows = {name: _Row(cfg.max_threshold, name != "ground_truth", cfg.auc) for name in colorizers}
        loader = eval_loader(eval_subset(data.test, cfg.max_images), data.batch_size, runtime)
        for batch in progress.track(runtime.batches(loader), "colorization", total=len(loader)):
            rgb = images_to_rgb(batch["image"])
            true_ab = rgb_to_lab(rgb)[:, 1:]
            weights = pixel_weights(true_ab)
            for name, colorize in colorizers.items():
                pred = colorize(rgb)
                if pred.shape != rgb.shape:
                    raise ValueError(f"colorize returned shape {tuple(pred.shape)} for input {tuple(rgb.shape)}")
                rows[name].update(pred.float().clamp(0.0, 1.0), rgb, true_ab, weights, cfg.psnr_cap)
        metrics: dict[str, Any] = dict(rows["pretext"].metrics())
        self.per_image = dict(rows["pretext"].per_image())
        for name in ("gray", "ground_truth"):
            metrics.update({f"reference/{name}/{k}": v for k, v in rows[name].metrics().items()})
            self.per_image.update({f"reference/{name}/{k}": v for k, v in rows[name].per_image().items()})
        metrics["convention/auc"] = cfg.auc
        metrics["convention/prior"] = cfg.prior
        return metrics

"""Shared ab-bin machinery of the classification colorizers ``quantized`` and ``splitbrain`` (not a plugin).

Three pieces, used identically by both pretexts so the two can never drift apart:

* :func:`initial_bins` / :func:`collect_histogram` / :func:`prior_on_bins`: where the Q ab classes and their
  empirical prior come from. ``bins="data"`` takes the grid cells the training data occupies with their empirical
  prior (what :func:`sslbench.colour.ab_bins_from_data` computes: one streaming pass of
  :class:`~sslbench.colour.bins.ABHistogram`, whose counts are summed over processes under DDP so every rank gets
  the same Q); ``bins="gamut"`` the cells of the 8-bit sRGB gamut (no data needed for the bins, but the prior for
  rebalancing is still counted from the data, mapped onto the gamut bins); ``bins="files"`` Zhang's released
  ``pts_in_hull.npy`` (313 bins) and, when given, ``prior_probs.npy`` (else the prior is counted from the data).
* :class:`ABClassifier`: the per-pixel Q-way head on a deep feature map, its bins, prior and class weights, the
  loss (soft-encoded sparse targets, class rebalancing, grayscale masking) and the annealed-mean decode. The bins,
  prior and class weights live in ``get_extra_state``, and the head is (re)built from them in ``set_extra_state``
  (which ``load_state_dict`` calls before it loads the head's parameters), so a data-dependent Q round-trips
  through a checkpoint into a freshly constructed pretext.
* :func:`prepare_bins`: the data pass both pretexts run in ``prepare`` (before the trainer's ``setup``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from sslbench.colour import (
    ABBins,
    annealed_mean,
    is_grayscale,
    pixel_rebalance_weights,
    rebalance_weights,
    soft_cross_entropy,
    soft_encode,
)
from sslbench.colour.bins import ABHistogram, ab_bins_from_files, ab_bins_from_gamut
from sslbench.heads import DenseHead, point_sample
from sslbench.runtime import Runtime

__all__ = ["BIN_SOURCES", "initial_bins", "collect_histogram", "prior_on_bins", "ABClassifier",
           "prepare_bins", "hard_l_targets", "l_bin_centers"]

BIN_SOURCES = ("data", "gamut", "files")


def initial_bins(source: str, grid_size: int, pts_in_hull: str | None = None,
                 prior_probs: str | None = None) -> ABBins | None:
    """The bins known before seeing data (``gamut``, ``files``), or None for ``data`` (built in ``prepare``)."""
    if source not in BIN_SOURCES:
        raise ValueError(f"bins={source!r}: choose one of {', '.join(BIN_SOURCES)}")
    if source == "data":
        return None
    if source == "gamut":
        return ab_bins_from_gamut(grid_size)
    if not pts_in_hull:
        raise ValueError("bins='files' needs pts_in_hull (the path of Zhang's pts_in_hull.npy)")
    for path in (pts_in_hull, prior_probs):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"bins='files': {path} does not exist")
    return ab_bins_from_files(pts_in_hull, prior_probs, grid_size=grid_size)


def collect_histogram(batches: Iterable[dict[str, torch.Tensor]], grid_size: int, runtime: Runtime) -> ABHistogram:
    """One streaming pass over the training images: the ab histogram on the regular grid (summed over processes)."""
    hist: ABHistogram | None = None
    for batch in batches:
        images = batch["image"]
        if hist is None:
            hist = ABHistogram(grid_size, device=images.device)
        hist.update(images)
    if hist is None:
        hist = ABHistogram(grid_size, device=runtime.device)
    if runtime.distributed:
        counts = hist.counts.to(runtime.device)
        torch.distributed.all_reduce(counts)
        hist.counts = counts
    if hist.total == 0:
        raise ValueError("the training data holds no pixels: cannot compute ab bins or their prior")
    return hist


def prior_on_bins(hist: ABHistogram, bins: ABBins) -> torch.Tensor:
    """The empirical prior of ``bins``: each occupied histogram cell gives its count to its nearest bin centre."""
    data_bins = hist.to_bins()
    centers = bins.centers.to(data_bins.centers.device, torch.float32)
    nearest = torch.cdist(data_bins.centers.float(), centers).argmin(dim=1)
    prior = torch.zeros(bins.num_bins, dtype=torch.float64, device=centers.device)
    prior.index_add_(0, nearest, data_bins.prior.double())
    return (prior / prior.sum()).float()


class ABClassifier(nn.Module):
    """Q-way ab classification at 1/``stride`` of the input: head, bins, class weights, loss and decode.

    Args:
        in_channels: channels of the feature map the head reads (the encoder's deepest tap).
        width: the head's hidden width.
        stride: output stride of the prediction w.r.t. the input (4, as Zhang's network).
        rebalance: weight each pixel by its target's class weight (Zhang 2016's "full"); False gives uniform
            weights (the paper's "class" variant).
        rebalance_lambda, rebalance_sigma: λ mixing the smoothed prior with the uniform one, σ of the smoothing.
        neighbours, sigma: soft-encoding with the ``neighbours`` nearest bins and a Gaussian of width ``sigma``.
        gray_threshold: an image none of whose pixels has |a| or |b| above it is masked out of the loss.
    """

    def __init__(self, in_channels: int, width: int, stride: int = 4, *, rebalance: bool = True,
                 rebalance_lambda: float = 0.5, rebalance_sigma: float = 5.0, neighbours: int = 10,
                 sigma: float = 5.0, gray_threshold: float = 5.0) -> None:
        super().__init__()
        self.in_channels, self.width, self.stride = in_channels, width, stride
        self.rebalance = rebalance
        self.rebalance_lambda, self.rebalance_sigma = rebalance_lambda, rebalance_sigma
        self.neighbours, self.sigma, self.gray_threshold = neighbours, sigma, gray_threshold
        self.head: DenseHead | None = None
        self.grid_size = 0.0
        # Non-persistent buffers (they follow .to(device)); their values are saved through get_extra_state.
        self.register_buffer("centers", torch.zeros(0, 2), persistent=False)
        self.register_buffer("prior", torch.zeros(0), persistent=False)
        self.register_buffer("class_weights", torch.zeros(0), persistent=False)

    # -- bins -------------------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.head is not None

    @property
    def num_bins(self) -> int:
        return int(self.centers.shape[0])

    @property
    def bins(self) -> ABBins:
        """The installed bins (with their prior)."""
        self._check_ready()
        return ABBins(self.centers, self.grid_size, self.prior)

    def install(self, bins: ABBins, prior: torch.Tensor | None = None) -> bool:
        """Use ``bins`` (prior: ``prior``, else ``bins.prior``, else uniform); returns True if the head was (re)built.

        The class weights follow from the prior: Zhang's rebalancing, or all ones when ``rebalance`` is off.
        """
        device = self._device()
        centers = bins.centers.detach().to(device, torch.float32)
        prior = prior if prior is not None else bins.prior
        if prior is None:
            prior = torch.full((centers.shape[0],), 1.0 / centers.shape[0])
        prior = prior.detach().to(device, torch.float32)
        if self.rebalance:
            weights = rebalance_weights(prior, ABBins(centers, float(bins.grid_size), prior),
                                        lam=self.rebalance_lambda, sigma=self.rebalance_sigma)
        else:
            weights = torch.ones_like(prior)
        return self._set(centers, float(bins.grid_size), prior, weights.to(device, torch.float32))

    def _set(self, centers: torch.Tensor, grid_size: float, prior: torch.Tensor, weights: torch.Tensor) -> bool:
        rebuilt = self.head is None or self.num_bins != centers.shape[0]
        self.centers, self.prior, self.class_weights = centers, prior, weights
        self.grid_size = grid_size
        if rebuilt:
            self.head = DenseHead(self.in_channels, int(centers.shape[0]), self.width).to(centers.device)
        return rebuilt

    def _device(self) -> torch.device:
        return self.centers.device

    def _check_ready(self) -> None:
        if self.head is None:
            raise RuntimeError("the ab bins are not known yet: train the pretext (prepare() computes them from the "
                               "data) or load a trained checkpoint")

    def get_extra_state(self) -> dict[str, Any]:
        if self.head is None:
            return {}
        return {"centers": self.centers.cpu(), "grid_size": self.grid_size, "prior": self.prior.cpu(),
                "class_weights": self.class_weights.cpu()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        device = self._device()
        self._set(state["centers"].to(device, torch.float32), float(state["grid_size"]),
                  state["prior"].to(device, torch.float32), state["class_weights"].to(device, torch.float32))

    # -- prediction, loss, decode ----------------------------------------------------------------------------------
    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """The prediction's size: every ``stride``-th pixel of the input, as :func:`point_sample` takes them."""
        return (-(-input_size[0] // self.stride), -(-input_size[1] // self.stride))

    def forward(self, feature: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """Q logits (N, Q, ceil(H/stride), ceil(W/stride)) from the deep map of an (H, W) input."""
        self._check_ready()
        return self.head(feature, self.output_size(input_size))

    def loss(self, logits: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted soft cross-entropy of ``logits`` against the full-resolution ground truth ``ab`` (N, 2, H, W).

        The target is ``ab`` point-sampled every ``stride`` pixels, soft-encoded onto its ``neighbours`` nearest bins
        (sparse: indices and weights, never a dense Q-vector); each pixel is weighted by the class weight of its
        target's most likely bin, and every pixel of a grayscale image by 0. The sum is divided by the number of
        pixels of the batch, gray ones included, so an all-gray batch contributes exactly 0 (and no gradient).
        """
        target = point_sample(ab.float(), self.stride)
        indices, weights = soft_encode(target, self.bins, k=self.neighbours, sigma=self.sigma)
        pixel_weights = pixel_rebalance_weights(indices, weights, self.class_weights)
        gray = is_grayscale(ab, threshold=self.gray_threshold)
        pixel_weights = pixel_weights * (~gray).to(pixel_weights.dtype)[:, None, None]
        per_pixel = soft_cross_entropy(logits.float(), indices, weights, pixel_weights)
        loss = per_pixel.sum() / per_pixel.numel()
        return loss, {"gray_fraction": gray.float().mean()}

    def decode(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """ab (N, 2, h, w) at the logits' resolution: the annealed mean of softmax(logits / T) over the centres."""
        return annealed_mean(logits.float(), self.bins, temperature=temperature)


def prepare_bins(classifier: ABClassifier, source: str, batches: Iterable[dict[str, torch.Tensor]],
                 runtime: Runtime, grid_size: int, has_file_prior: bool) -> None:
    """Install the bins and their prior on ``classifier`` from one pass over ``batches`` (if data is needed).

    Called from ``Pretext.prepare``, which the trainer runs before ``setup`` creates the optimisers, so a head
    sized by the data's bins is complete before anything optimises it."""
    if source == "files" and has_file_prior:
        return
    hist = collect_histogram(batches, grid_size, runtime)
    if source == "data":
        classifier.install(hist.to_bins())
    else:
        classifier.install(classifier.bins, prior_on_bins(hist, classifier.bins))


def hard_l_targets(lightness: torch.Tensor, l_bins: int) -> torch.Tensor:
    """Class indices (N, H, W) of L in [0, 100] on ``l_bins`` equal bins (L = 100 falls in the last one)."""
    return (lightness[:, 0] * (l_bins / 100.0)).floor().long().clamp_(0, l_bins - 1)


def l_bin_centers(l_bins: int, device: torch.device | None = None) -> torch.Tensor:
    """Centres of the ``l_bins`` equal L bins over [0, 100]."""
    return (torch.arange(l_bins, device=device, dtype=torch.float32) + 0.5) * (100.0 / l_bins)



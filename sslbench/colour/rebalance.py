"""Class rebalancing and the grayscale mask of Zhang et al. (2016), as in their released training code.

* :func:`smooth_prior`: the empirical bin prior smoothed with a Gaussian (sigma in ab units) **on the
  grid**: the prior is laid out as a 2-D image whose pixels are the grid cells (one pixel per bin, 0 in
  cells that are not bins), filtered with a separable sampled Gaussian of std ``sigma / grid_size``
  pixels truncated at 4 std (the kernel of ``scipy.ndimage.gaussian_filter(..., truncate=4.0)``),
  zero outside the image (``mode='constant'``: no mass wraps or reflects back),
  read back at the bins and renormalised to sum 1 (mass that spread into non-bin cells is dropped).
* :func:`rebalance_weights`: ``w = ((1 - lam) * p_smooth + lam / Q) ** -1`` normalised so that
  ``sum(p_smooth * w) = 1`` (the expected weight of a pixel is 1).
* :func:`pixel_rebalance_weights`: each pixel takes the weight of its soft target's most probable bin.
* :func:`is_grayscale`: images with no pixel whose ``|a|`` or ``|b|`` exceeds a threshold (5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslbench.colour.bins import ABBins

__all__ = [
    "is_grayscale",
    "pixel_rebalance_weights",
    "rebalance_weights",
    "smooth_prior",
]


def _gaussian_kernel_1d(sigma: float, truncate: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Sampled, normalised 1-D Gaussian of std ``sigma`` (pixels), radius ``int(truncate*sigma+0.5)``."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def smooth_prior(prior: torch.Tensor, bins: ABBins, sigma: float = 5.0, truncate: float = 4.0) -> torch.Tensor:
    """Gaussian-smooth a bin prior over the ab plane (on the bin grid) and renormalise.

    Args:
        prior: (Q,) non-negative tensor, one value per bin of ``bins`` (need not sum to 1).
        bins: the bins; their centres must be multiples of ``bins.grid_size``.
        sigma: Gaussian std in ab units (5 in Zhang et al.); 0 returns the normalised prior.
        truncate: kernel radius in stds.

    Returns:
        (Q,) tensor summing to 1, same dtype/device as ``prior``.
    """
    if prior.shape != (bins.num_bins,):
        raise ValueError(f"prior must have shape ({bins.num_bins},), got {tuple(prior.shape)}")
    work = prior.to(torch.float64)
    if sigma <= 0:
        return (work / work.sum()).to(prior.dtype)
    kernel = _gaussian_kernel_1d(sigma / bins.grid_size, truncate, torch.float64, prior.device)
    radius = (kernel.numel() - 1) // 2
    cells = bins.grid_indices().to(prior.device)
    cells = cells - cells.min(0).values
    height, width = (cells.max(0).values + 1).tolist()
    image = torch.zeros(1, 1, height, width, dtype=torch.float64, device=prior.device)
    image[0, 0, cells[:, 0], cells[:, 1]] = work
    image = F.conv2d(image, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    image = F.conv2d(image, kernel.view(1, 1, 1, -1), padding=(0, radius))
    smoothed = image[0, 0, cells[:, 0], cells[:, 1]]
    return (smoothed / smoothed.sum()).to(prior.dtype)


def rebalance_weights(
    prior: torch.Tensor,
    bins: ABBins,
    lam: float = 0.5,
    sigma: float = 5.0,
) -> torch.Tensor:
    """Per-bin class-rebalancing weights of Zhang et al. (2016), eq. 4.

    Args:
        prior: (Q,) empirical bin probabilities (e.g. ``bins.prior``).
        bins: the bins (grid-aligned centres).
        lam: weight of the uniform distribution in the mix (0.5 in the paper).
        sigma: std in ab units of the Gaussian smoothing of the prior (see :func:`smooth_prior`).

    Returns:
        (Q,) weights ``((1 - lam) * p + lam / Q) ** -1`` with ``p`` the smoothed prior, normalised so
        that ``sum(p * w) = 1``; same dtype/device as ``prior``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    smoothed = smooth_prior(prior, bins, sigma).to(torch.float64)
    q = smoothed.numel()
    weights = ((1.0 - lam) * smoothed + lam / q).reciprocal()
    weights = weights / (smoothed * weights).sum()
    return weights.to(prior.dtype)


def pixel_rebalance_weights(
    indices: torch.Tensor,
    weights: torch.Tensor,
    class_weights: torch.Tensor,
) -> torch.Tensor:
    """Per-pixel loss weights: the class weight of the soft target's most probable bin.

    Args:
        indices: (N, k, H, W) long bin indices of the soft target (from :func:`soft_encode`).
        weights: (N, k, H, W) soft-target weights.
        class_weights: (Q,) per-bin weights (from :func:`rebalance_weights`).

    Returns:
        (N, H, W) tensor of ``class_weights``' dtype.
    """
    top = weights.argmax(dim=1, keepdim=True)
    best_bin = indices.gather(1, top).squeeze(1)
    return class_weights[best_bin]


def is_grayscale(ab: torch.Tensor, threshold: float = 5.0) -> torch.Tensor:
    """Which images are (nearly) grayscale: no pixel with ``|a| > threshold`` or ``|b| > threshold``.

    Zhang et al.'s release masks such images out of the loss.

    Args:
        ab: (N, 2, H, W) ab values in Lab units.
        threshold: in ab units (5 in the release).

    Returns:
        (N,) bool tensor, True for grayscale images.
    """
    if ab.dim() != 4 or ab.shape[1] != 2:
        raise ValueError(f"ab must have shape (N, 2, H, W), got {tuple(ab.shape)}")
    return ~(ab.abs() > threshold).flatten(1).any(dim=1)

"""Hue/chroma histogram targets, loss and decoding of Larsson, Maire & Shakhnarovich (ECCV 2016).

The network predicts, per pixel, a 32-bin histogram of hue and one of chroma (LCh polar coordinates
of ab: ``chroma = sqrt(a^2 + b^2)``, ``hue = atan2(b, a)`` taken in [0, 2 pi)).  Conventions:

* **Hue bins** are circular with centres ``2 pi j / B`` (j = 0..B-1).
* **Chroma bins** split ``[0, CHROMA_MAX]`` into B equal bins with centres ``(j + 1/2) * CHROMA_MAX / B``;
  ``CHROMA_MAX = 134`` covers the sRGB gamut (the largest chroma of an 8-bit sRGB colour is 133.8, pure
  blue); larger chroma values fall in the last bin.
* **Targets** (:func:`hue_chroma_targets`): each pixel's value is split between the two nearest bin
  centres by linear interpolation (circularly for hue; chroma below the first or above the last centre
  goes wholly to that bin), so a target encodes its value exactly rather than to bin precision.
  ``mode="hard"`` gives one-hot targets at the nearest centre instead.  ``window=k`` (odd) averages the
  per-pixel histograms over a k x k neighbourhood (the release used 7 x 7; the paper reports that no
  smoothing does as well, so the default is 1 = none).
* **Loss** (:func:`hue_chroma_kl`): ``KL(chroma_t || chroma_p) + hue_weight_scale * (chroma / CHROMA_MAX)
  * KL(hue_t || hue_p)``: the hue term is weighted by the ground-truth chroma normalised to [0, 1] (hue
  is meaningless for grey pixels) times 5, the chroma term by 1.
* **Decoding** (:func:`hue_chroma_decode`): chroma is the median of its histogram (mass spread
  uniformly within each bin, so the median is interpolated inside its bin); hue is the circular mean
  ``arg E[exp(i theta)]``; chroma is faded by ``min(|E[exp(i theta)]|, 0.03) / 0.03`` so that a flat
  hue histogram (no hue preference) yields grey, as in the release.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "CHROMA_MAX",
    "HUE_CHROMA_BINS",
    "HueChromaTargets",
    "ab_to_hue_chroma",
    "chroma_bin_centers",
    "hue_bin_centers",
    "hue_chroma_decode",
    "hue_chroma_kl",
    "hue_chroma_targets",
]

#: Upper end of the chroma histogram's range (ab units); covers the sRGB gamut (max chroma 133.8).
CHROMA_MAX: float = 134.0
#: Number of hue bins and of chroma bins.
HUE_CHROMA_BINS: int = 32


class HueChromaTargets(NamedTuple):
    """Targets of :func:`hue_chroma_targets`: two (N, B, H, W) histograms and the (N, H, W) chroma."""

    hue: torch.Tensor
    chroma: torch.Tensor
    chroma_value: torch.Tensor


def hue_bin_centers(
    bins: int = HUE_CHROMA_BINS, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(B,) hue bin centres ``2 pi j / B`` in radians."""
    centers = torch.arange(bins, dtype=torch.float64, device=device) * (2.0 * math.pi / bins)
    return centers.to(dtype)


def chroma_bin_centers(
    bins: int = HUE_CHROMA_BINS,
    chroma_max: float = CHROMA_MAX,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B,) chroma bin centres ``(j + 1/2) * chroma_max / B`` in ab units."""
    centers = (torch.arange(bins, dtype=torch.float64, device=device) + 0.5) * (chroma_max / bins)
    return centers.to(dtype)


def ab_to_hue_chroma(ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Polar coordinates of ab.

    Args:
        ab: (N, 2, H, W) ab values.

    Returns:
        ``(hue, chroma)``, each (N, H, W): hue in radians in [0, 2 pi) (0 for a = b = 0), chroma >= 0.
    """
    if ab.dim() != 4 or ab.shape[1] != 2:
        raise ValueError(f"ab must have shape (N, 2, H, W), got {tuple(ab.shape)}")
    a, b = ab[:, 0], ab[:, 1]
    hue = torch.remainder(torch.atan2(b, a), 2.0 * math.pi)
    return hue, torch.hypot(a, b)


def _two_bin_histogram(
    low: torch.Tensor, frac: torch.Tensor, bins: int, circular: bool, mode: str
) -> torch.Tensor:
    """(N, B, H, W) histogram with mass 1 - frac at bin ``low`` and frac at the next bin."""
    n, h, w = low.shape
    hist = torch.zeros(n, bins, h, w, dtype=frac.dtype, device=frac.device)
    if mode == "hard":
        nearest = torch.where(frac >= 0.5, low + 1, low)
        nearest = nearest % bins if circular else nearest.clamp_max(bins - 1)
        return hist.scatter_(1, nearest[:, None], 1.0)
    high = (low + 1) % bins if circular else (low + 1).clamp_max(bins - 1)
    hist.scatter_(1, low[:, None], (1.0 - frac)[:, None])
    return hist.scatter_add_(1, high[:, None], frac[:, None])


def hue_chroma_targets(
    ab: torch.Tensor,
    bins: int = HUE_CHROMA_BINS,
    window: int = 1,
    mode: Literal["linear", "hard"] = "linear",
    chroma_max: float = CHROMA_MAX,
) -> HueChromaTargets:
    """Per-pixel hue and chroma histogram targets.

    Args:
        ab: (N, 2, H, W) ground-truth ab.
        bins: number of hue bins and of chroma bins (32).
        window: odd k; if > 1, histograms are averaged over each pixel's k x k neighbourhood (pixels
            outside the image are left out of the average).
        mode: ``"linear"`` (split between the two nearest centres) or ``"hard"`` (one-hot).
        chroma_max: upper end of the chroma range.

    Returns:
        ``HueChromaTargets(hue, chroma, chroma_value)``: (N, B, H, W) histograms summing to 1 over B,
        and the (N, H, W) ground-truth chroma (for :func:`hue_chroma_kl`'s hue weighting).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd positive integer, got {window}")
    if mode not in ("linear", "hard"):
        raise ValueError(f"mode must be 'linear' or 'hard', got {mode!r}")
    hue, chroma = ab_to_hue_chroma(ab)
    u = hue * (bins / (2.0 * math.pi))
    low = torch.floor(u)
    hue_hist = _two_bin_histogram(low.long() % bins, u - low, bins, circular=True, mode=mode)
    u = (chroma * (bins / chroma_max) - 0.5).clamp(0.0, bins - 1.0)
    low = torch.floor(u).clamp_max(bins - 2)
    chroma_hist = _two_bin_histogram(low.long(), u - low, bins, circular=False, mode=mode)
    if window > 1:
        pad = window // 2
        hue_hist = F.avg_pool2d(hue_hist, window, stride=1, padding=pad, count_include_pad=False)
        chroma_hist = F.avg_pool2d(chroma_hist, window, stride=1, padding=pad, count_include_pad=False)
    return HueChromaTargets(hue_hist, chroma_hist, chroma)


def _kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel KL(target || softmax(logits)) over dim 1."""
    return (torch.xlogy(target, target) - target * torch.log_softmax(logits, dim=1)).sum(dim=1)


def hue_chroma_kl(
    hue_logits: torch.Tensor,
    chroma_logits: torch.Tensor,
    hue_target: torch.Tensor,
    chroma_target: torch.Tensor,
    chroma: torch.Tensor,
    hue_weight_scale: float = 5.0,
    chroma_max: float = CHROMA_MAX,
) -> torch.Tensor:
    """Larsson et al.'s per-pixel loss: chroma KL plus chroma-weighted hue KL.

    Args:
        hue_logits, chroma_logits: (N, B, H, W) predicted logits.
        hue_target, chroma_target: (N, B, H, W) target histograms (from :func:`hue_chroma_targets`).
        chroma: (N, H, W) ground-truth chroma in ab units.
        hue_weight_scale: factor on the hue term (5).
        chroma_max: chroma normalisation; the hue weight is ``hue_weight_scale * chroma / chroma_max``.

    Returns:
        (N, H, W) per-pixel loss (nats), 0 where the predictions equal the targets.
    """
    hue_weight = (hue_weight_scale / chroma_max) * chroma
    return _kl(chroma_logits, chroma_target) + hue_weight * _kl(hue_logits, hue_target)


def hue_chroma_decode(
    hue_logits: torch.Tensor,
    chroma_logits: torch.Tensor,
    chroma_max: float = CHROMA_MAX,
    flat_threshold: float = 0.03,
) -> torch.Tensor:
    """Decode predicted hue/chroma histograms into ab.

    Args:
        hue_logits: (N, B, H, W) hue logits (bin centres ``2 pi j / B``).
        chroma_logits: (N, B', H, W) chroma logits over ``[0, chroma_max]``.
        chroma_max: upper end of the chroma range.
        flat_threshold: chroma is scaled by ``min(|E[exp(i theta)]|, t) / t``.

    Returns:
        (N, 2, H, W) ab: chroma = interpolated median of the chroma histogram (faded for flat hue
        histograms), hue = circular mean of the hue histogram.
    """
    chroma_probs = torch.softmax(chroma_logits, dim=1)
    n_chroma = chroma_probs.shape[1]
    cdf = torch.cumsum(chroma_probs, dim=1)
    median_bin = (cdf < 0.5).sum(dim=1, keepdim=True).clamp_max(n_chroma - 1)
    mass = chroma_probs.gather(1, median_bin)
    before = cdf.gather(1, median_bin) - mass
    inside = ((0.5 - before) / mass.clamp_min(torch.finfo(mass.dtype).tiny)).clamp(0.0, 1.0)
    chroma = (median_bin.to(inside.dtype) + inside).squeeze(1) * (chroma_max / n_chroma)

    hue_probs = torch.softmax(hue_logits, dim=1)
    theta = hue_bin_centers(hue_probs.shape[1], device=hue_probs.device, dtype=torch.float64)
    mean_x = torch.einsum("nbhw,b->nhw", hue_probs, torch.cos(theta).to(hue_probs.dtype))
    mean_y = torch.einsum("nbhw,b->nhw", hue_probs, torch.sin(theta).to(hue_probs.dtype))
    resultant = torch.hypot(mean_x, mean_y)
    chroma = chroma * (resultant.clamp_max(flat_threshold) / flat_threshold)
    hue = torch.atan2(mean_y, mean_x)
    return torch.stack([chroma * torch.cos(hue), chroma * torch.sin(hue)], dim=1)

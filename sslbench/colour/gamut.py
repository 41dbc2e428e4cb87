"""Fitting Lab colours into the sRGB gamut at constant L and hue.

A predicted ab can lie outside the sRGB gamut at its L (the gamut is narrow near black and white); clipping RGB then
changes L, by several units on near-white sky. :func:`fit_to_gamut` shrinks such a pixel's chroma towards grey,
keeping L and hue, just enough that the colour survives the Lab -> RGB -> Lab round trip.
"""

from __future__ import annotations

import torch

from sslbench.colour.lab import lab_to_rgb, rgb_to_lab

__all__ = ["fit_to_gamut"]


def fit_to_gamut(lightness: torch.Tensor, ab: torch.Tensor, iterations: int = 12, tol: float = 0.5) -> torch.Tensor:
    """``ab`` (N, 2, H, W) scaled per pixel by the largest factor in [0, 1] (bisection, ``iterations`` steps) for
    which (L, ab) round-trips through sRGB within ``tol``; L (N, 1, H, W) in [0, 100]. Grey always round-trips."""
    def fits(scale: torch.Tensor) -> torch.Tensor:
        lab = torch.cat([lightness, ab * scale], dim=1)
        return (rgb_to_lab(lab_to_rgb(lab)) - lab).abs().amax(dim=1, keepdim=True) <= tol

    low = torch.zeros_like(lightness)
    high = torch.ones_like(lightness)
    done = fits(high)
    low = torch.where(done, high, low)
    for _ in range(iterations):
        mid = (low + high) / 2
        ok = fits(mid)
        low = torch.where(ok, mid, low)
        high = torch.where(ok | done, high, mid)
    return ab * low

"""From a predicted distribution over ab bins back to one ab value per pixel.

* :func:`annealed_mean`: Zhang et al.'s (2016) point estimate: re-normalise the distribution at a
  temperature T (``softmax(z / T)``), then take its mean over the bin centres.  T = 1 is the plain
  mean, T -> 0 the mode (T = 0 is accepted and returns the arg-max bin's centre); 0.38 is the paper's.
* :func:`expectation`: the mean of any per-pixel distribution over a set of values, for regression-
  style heads or custom decodings.
"""

from __future__ import annotations

import torch

from sslbench.colour.bins import ABBins

__all__ = ["annealed_mean", "expectation"]


def expectation(probs: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean of ``centers`` under ``probs``.

    Args:
        probs: (N, Q, H, W) probabilities over Q values (each pixel sums to 1).
        centers: (Q, C) values (e.g. (Q, 2) ab bin centres).

    Returns:
        (N, C, H, W) tensor ``sum_q probs[:, q] * centers[q]``, in ``probs``' dtype.
    """
    if probs.dim() != 4 or probs.shape[1] != centers.shape[0]:
        raise ValueError(f"probs (N, Q, H, W) and centers (Q, C) disagree: {tuple(probs.shape)}, {tuple(centers.shape)}")
    return torch.einsum("nqhw,qc->nchw", probs, centers.to(dtype=probs.dtype, device=probs.device))


def annealed_mean(logits: torch.Tensor, bins: ABBins, temperature: float = 0.38) -> torch.Tensor:
    """Zhang et al.'s annealed-mean decoding of bin logits into ab.

    Args:
        logits: (N, Q, H, W) unnormalised log-probabilities over the Q bins of ``bins``.
        bins: the ab bins whose centres the classes stand for.
        temperature: T >= 0; 1 gives the mean of ``softmax(logits)``, 0 the arg-max bin centre.

    Returns:
        (N, 2, H, W) ab values, dtype/device of ``logits``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    centers = bins.centers.to(dtype=logits.dtype, device=logits.device)
    if temperature == 0:
        return centers[logits.argmax(dim=1)].permute(0, 3, 1, 2).contiguous()
    return expectation(torch.softmax(logits / temperature, dim=1), centers)

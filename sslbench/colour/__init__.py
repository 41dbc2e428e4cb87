"""Colour-space conversion, ab quantisation, soft-encoding, rebalancing and decoding for colorization.

The one place in sslbench where these live; everything is batched (N, C, H, W), on any device and
float dtype, in torch (no skimage/sklearn/scipy), except the CPU paths of soft-encoding and of 8-bit
sRGB -> Lab, kernels compiled with numba (:mod:`~sslbench.colour._backends` says which runs).  Modules:

* :mod:`~sslbench.colour.lab`: sRGB <-> CIE Lab, L/ab normalisation conventions (the uint8 CPU kernel
  is :mod:`~sslbench.colour._lab_cpu`);
* :mod:`~sslbench.colour.bins`: quantised ab bins (from data, from the sRGB gamut, from Zhang's files);
* :mod:`~sslbench.colour.soft_encoding`: exact k-nearest-bin soft targets and the sparse cross-entropy
  (its CPU kernel is :mod:`~sslbench.colour._soft_encoding_cpu`);
* :mod:`~sslbench.colour.rebalance`: class-rebalancing weights and the grayscale mask;
* :mod:`~sslbench.colour.decode`: annealed-mean decoding;
* :mod:`~sslbench.colour.histograms`: Larsson et al.'s hue/chroma histogram targets, loss and decoding.
"""

from sslbench.colour.bins import (
    ABBins,
    ABHistogram,
    ab_bins_from_data,
    ab_bins_from_files,
    ab_bins_from_gamut,
    snap_to_grid,
)
from sslbench.colour.decode import annealed_mean, expectation
from sslbench.colour.histograms import (
    CHROMA_MAX,
    HUE_CHROMA_BINS,
    HueChromaTargets,
    ab_to_hue_chroma,
    chroma_bin_centers,
    hue_bin_centers,
    hue_chroma_decode,
    hue_chroma_kl,
    hue_chroma_targets,
)
from sslbench.colour.lab import (
    AB_GAMUT_RANGE,
    AB_SCALE,
    D65_WHITE,
    L_CENTER,
    L_SCALE,
    denormalize_ab,
    denormalize_l,
    lab_merge,
    lab_split,
    lab_to_rgb,
    normalize_ab,
    normalize_l,
    rgb_to_lab,
    rgb_uint8_to_lab,
)
from sslbench.colour.rebalance import (
    is_grayscale,
    pixel_rebalance_weights,
    rebalance_weights,
    smooth_prior,
)
from sslbench.colour.soft_encoding import SoftEncoder, soft_cross_entropy, soft_encode

__all__ = [
    "AB_GAMUT_RANGE",
    "AB_SCALE",
    "CHROMA_MAX",
    "D65_WHITE",
    "HUE_CHROMA_BINS",
    "L_CENTER",
    "L_SCALE",
    "ABBins",
    "ABHistogram",
    "HueChromaTargets",
    "SoftEncoder",
    "ab_bins_from_data",
    "ab_bins_from_files",
    "ab_bins_from_gamut",
    "ab_to_hue_chroma",
    "annealed_mean",
    "chroma_bin_centers",
    "denormalize_ab",
    "denormalize_l",
    "expectation",
    "hue_bin_centers",
    "hue_chroma_decode",
    "hue_chroma_kl",
    "hue_chroma_targets",
    "is_grayscale",
    "lab_merge",
    "lab_split",
    "lab_to_rgb",
    "normalize_ab",
    "normalize_l",
    "pixel_rebalance_weights",
    "rebalance_weights",
    "rgb_to_lab",
    "rgb_uint8_to_lab",
    "smooth_prior",
    "snap_to_grid",
    "soft_cross_entropy",
    "soft_encode",
]

"""Class rebalancing and the grayscale mask against a scipy/numpy reimplementation of the release."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from sslbench.colour import (
    ABBins,
    ab_bins_from_data,
    is_grayscale,
    pixel_rebalance_weights,
    rebalance_weights,
    rgb_uint8_to_lab,
    smooth_prior,
    soft_encode,
)


def _cifar(shared_data: Path, count: int) -> torch.Tensor:
    paths = sorted((shared_data / "cifar10" / "train").glob("*/*.jpg"))[:: 50000 // count][:count]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def data_bins(shared_data) -> ABBins:
    return ab_bins_from_data(_cifar(shared_data, 300).split(100), grid_size=10)


def reference_weights(centers: np.ndarray, prior: np.ndarray, grid: float, lam: float, sigma: float):
    """Zhang et al.'s release: prior on the ab grid, gaussian_filter, renormalise, mix, invert."""
    cells = np.round(centers / grid).astype(int)
    cells -= cells.min(0)
    image = np.zeros(cells.max(0) + 1)
    image[cells[:, 0], cells[:, 1]] = prior
    smoothed = gaussian_filter(image, sigma / grid, mode="constant", truncate=4.0)[cells[:, 0], cells[:, 1]]
    smoothed /= smoothed.sum()
    weights = 1.0 / ((1 - lam) * smoothed + lam / len(prior))
    return smoothed, weights / (smoothed * weights).sum()


@pytest.mark.parametrize(("lam", "sigma"), [(0.5, 5.0), (0.0, 5.0), (0.25, 10.0), (0.5, 0.0)])
def test_rebalance_weights_match_reference(data_bins, lam, sigma):
    centers, prior = data_bins.centers.double().numpy(), data_bins.prior.double().numpy()
    weights = rebalance_weights(data_bins.prior.double(), data_bins, lam=lam, sigma=sigma)
    if sigma > 0:
        ref_smoothed, ref_weights = reference_weights(centers, prior, 10.0, lam, sigma)
        np.testing.assert_allclose(smooth_prior(data_bins.prior.double(), data_bins, sigma).numpy(), ref_smoothed, rtol=1e-10)
    else:
        ref_smoothed = prior / prior.sum()
        ref_weights = 1.0 / ((1 - lam) * ref_smoothed + lam / len(prior))
        ref_weights /= (ref_smoothed * ref_weights).sum()
    np.testing.assert_allclose(weights.numpy(), ref_weights, rtol=1e-10)
    assert abs(float((weights.numpy() * ref_smoothed).sum()) - 1.0) < 1e-12
    assert weights.dtype == torch.float64


def test_rebalance_weights_extremes(data_bins):
    ones = rebalance_weights(data_bins.prior, data_bins, lam=1.0)
    assert torch.allclose(ones, torch.ones_like(ones))
    weights = rebalance_weights(data_bins.prior, data_bins)
    smoothed = smooth_prior(data_bins.prior, data_bins)
    # Rare colours weigh more: the weights decrease with the smoothed prior.
    order = smoothed.argsort()
    assert torch.all(weights[order][1:] <= weights[order][:-1] + 1e-6)
    with pytest.raises(ValueError):
        rebalance_weights(data_bins.prior, data_bins, lam=1.5)
    off_grid = ABBins(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), 10.0, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError):
        smooth_prior(off_grid.prior, off_grid)


def test_pixel_weights_follow_the_argmax_bin(shared_data, data_bins):
    ab = rgb_uint8_to_lab(_cifar(shared_data, 8))[:, 1:]
    indices, weights = soft_encode(ab, data_bins)
    class_weights = rebalance_weights(data_bins.prior, data_bins)
    pixel = pixel_rebalance_weights(indices, weights, class_weights)
    assert pixel.shape == (8, 32, 32)
    # Brute force: the nearest bin centre of each pixel (the soft target's argmax) and its weight.
    points = ab.permute(0, 2, 3, 1).reshape(-1, 2).double()
    nearest = ((points[:, None] - data_bins.centers.double()[None]) ** 2).sum(-1).argmin(1)
    assert torch.allclose(pixel.reshape(-1), class_weights[nearest])


def test_is_grayscale_on_real_images(shared_data):
    rgb = _cifar(shared_data, 16)
    gray = rgb.float().mul(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    gray_rgb = gray.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    colour_ab = rgb_uint8_to_lab(rgb)[:, 1:]
    assert not is_grayscale(colour_ab).any()
    assert is_grayscale(rgb_uint8_to_lab(gray_rgb)[:, 1:]).all()
    mixed = torch.cat([colour_ab[:2], rgb_uint8_to_lab(gray_rgb[:3])[:, 1:]])
    assert is_grayscale(mixed).tolist() == [False, False, True, True, True]


def test_is_grayscale_threshold():
    ab = torch.zeros(4, 2, 5, 5)
    ab[0, 0, 2, 2] = 5.0  # |a| = 5 is not above the threshold
    ab[1, 1, 0, 0] = -5.01
    ab[2, 0, 4, 4] = 40.0
    assert is_grayscale(ab).tolist() == [True, False, False, True]
    assert is_grayscale(ab, threshold=50).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(data_bins):
    weights = rebalance_weights(data_bins.prior, data_bins)
    gpu = rebalance_weights(data_bins.prior.cuda(), data_bins.to("cuda"))
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), weights, rtol=1e-5)

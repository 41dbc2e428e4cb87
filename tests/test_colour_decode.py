"""Annealed-mean decoding and expectation against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslbench.colour import ab_bins_from_gamut, annealed_mean, expectation, soft_encode


@pytest.fixture(scope="module")
def bins():
    return ab_bins_from_gamut(10)


def numpy_annealed_mean(logits: np.ndarray, centers: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return np.einsum("nqhw,qc->nchw", p, centers)


@pytest.mark.parametrize("temperature", [1.0, 0.38, 0.1])
def test_annealed_mean_matches_numpy(bins, temperature):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, bins.num_bins, 5, 6, generator=generator, dtype=torch.float64) * 3
    got = annealed_mean(logits, bins, temperature)
    ref = numpy_annealed_mean(logits.numpy(), bins.centers.double().numpy(), temperature)
    assert got.shape == (2, 2, 5, 6)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_temperature_one_is_the_mean_and_zero_the_mode(bins):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, bins.num_bins, 4, 4, generator=generator, dtype=torch.float64) * 4
    probs = torch.softmax(logits, dim=1).numpy()
    plain_mean = np.tensordot(probs, bins.centers.double().numpy(), axes=([1], [0])).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(annealed_mean(logits, bins, 1.0).numpy(), plain_mean, rtol=1e-12, atol=1e-12)
    mode = bins.centers.double()[logits.argmax(1)].permute(0, 3, 1, 2)
    assert torch.equal(annealed_mean(logits, bins, 0.0), mode)
    # With the mode ahead by at least 0.05, T = 0.002 leaves the others < 100 * e^-25 in total.
    separated = logits.scatter_add(1, logits.argmax(1, keepdim=True), torch.full((3, 1, 4, 4), 0.05, dtype=torch.float64))
    assert torch.allclose(annealed_mean(separated, bins, 2e-3), mode, atol=1e-6)
    assert (annealed_mean(separated, bins, 0.38) - mode).abs().max() > 1e-3
    with pytest.raises(ValueError):
        annealed_mean(logits, bins, -1.0)


def test_expectation_and_soft_target_round_trip(bins):
    # Decoding the soft-encoded target at T = 1 gives the Gaussian-weighted mean of the 10 nearest
    # centres, which for a point surrounded by bins lies within a fraction of a bin of the point.
    ab = torch.tensor([[3.0, -7.0], [21.0, 14.0], [-33.0, 42.0], [0.0, 0.0]]).t()[None, :, :, None]
    indices, weights = soft_encode(ab, bins)
    target = torch.zeros(1, bins.num_bins, 4, 1).scatter_(1, indices, weights)
    decoded = expectation(target, bins.centers)
    assert decoded.shape == (1, 2, 4, 1)
    manual = (weights[:, :, None] * bins.centers[indices].permute(0, 1, 4, 2, 3)).sum(1)
    assert torch.allclose(decoded, manual, atol=1e-5)
    assert (decoded - ab).abs().max() < 5.0
    with pytest.raises(ValueError):
        expectation(target[:, :10], bins.centers)

"""Larsson et al.'s hue/chroma targets, KL loss and decoding, against loops and scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import entropy

from sslbench.colour import (
    CHROMA_MAX,
    ab_to_hue_chroma,
    chroma_bin_centers,
    hue_bin_centers,
    hue_chroma_decode,
    hue_chroma_kl,
    hue_chroma_targets,
    rgb_uint8_to_lab,
)

BINS = 32
HUE_STEP = 2 * math.pi / BINS
CHROMA_STEP = CHROMA_MAX / BINS


@pytest.fixture(scope="module")
def real_ab(shared_data) -> torch.Tensor:
    paths = sorted((shared_data / "cifar10" / "test").glob("*/*.jpg"))[::500][:20]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return rgb_uint8_to_lab(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())[:, 1:].double()


def loop_targets(a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """One pixel's histograms, written out: two nearest centres, linear weights, circular hue."""
    hue = math.atan2(b, a) % (2 * math.pi)
    chroma = math.hypot(a, b)
    hue_hist = np.zeros(BINS)
    distances = [min(abs(hue - c), 2 * math.pi - abs(hue - c)) for c in hue_bin_centers(dtype=torch.float64).tolist()]
    first, second = np.argsort(distances, kind="stable")[:2]
    hue_hist[first] = 1 - distances[first] / HUE_STEP
    hue_hist[second] += 1 - distances[second] / HUE_STEP
    chroma_hist = np.zeros(BINS)
    centers = chroma_bin_centers(dtype=torch.float64).numpy()
    if chroma <= centers[0]:
        chroma_hist[0] = 1
    elif chroma >= centers[-1]:
        chroma_hist[-1] = 1
    else:
        j = int(np.searchsorted(centers, chroma, side="right") - 1)
        t = (chroma - centers[j]) / CHROMA_STEP
        chroma_hist[j], chroma_hist[j + 1] = 1 - t, t
    return hue_hist, chroma_hist


def test_polar_coordinates(real_ab):
    hue, chroma = ab_to_hue_chroma(real_ab)
    a, b = real_ab[:, 0].numpy(), real_ab[:, 1].numpy()
    np.testing.assert_allclose(chroma.numpy(), np.hypot(a, b), rtol=1e-12)
    np.testing.assert_allclose(hue.numpy(), np.mod(np.arctan2(b, a), 2 * np.pi), atol=1e-12)
    assert hue.min() >= 0 and hue.max() < 2 * math.pi


def test_targets_match_a_per_pixel_loop(real_ab):
    targets = hue_chroma_targets(real_ab)
    assert targets.hue.shape == (20, BINS, 32, 32) and targets.chroma.shape == (20, BINS, 32, 32)
    assert torch.allclose(targets.hue.sum(1), torch.ones(1, dtype=torch.float64))
    assert torch.allclose(targets.chroma.sum(1), torch.ones(1, dtype=torch.float64))
    picks = [(0, 0, 0), (3, 10, 17), (7, 31, 31), (12, 5, 28), (19, 16, 2)]
    extra = torch.tensor([[0.0, 0.0], [-40.0, 1e-9], [-40.0, -1e-9], [90.0, -70.0], [1.0, 1.0], [0.0, -3.0]])
    points = [(real_ab[n, 0, y, x].item(), real_ab[n, 1, y, x].item()) for n, y, x in picks]
    points += [tuple(p) for p in extra.tolist()]
    ab = torch.tensor(points, dtype=torch.float64).t()[None, :, :, None]
    got = hue_chroma_targets(ab)
    for i, (a, b) in enumerate(points):
        hue_ref, chroma_ref = loop_targets(a, b)
        np.testing.assert_allclose(got.hue[0, :, i, 0].numpy(), hue_ref, atol=1e-9)
        np.testing.assert_allclose(got.chroma[0, :, i, 0].numpy(), chroma_ref, atol=1e-9)
        assert abs(got.chroma_value[0, i, 0].item() - math.hypot(a, b)) < 1e-9


def test_hard_targets_are_one_hot_at_the_nearest_centre(real_ab):
    targets = hue_chroma_targets(real_ab, mode="hard")
    hue, chroma = ab_to_hue_chroma(real_ab)
    assert torch.equal(targets.hue.sum(1), torch.ones_like(hue)) and targets.hue.max() == 1
    nearest_hue = torch.round(hue / HUE_STEP).long() % BINS
    assert torch.equal(targets.hue.argmax(1), nearest_hue)
    nearest_chroma = torch.round(chroma / CHROMA_STEP - 0.5).clamp(0, BINS - 1).long()
    assert torch.equal(targets.chroma.argmax(1), nearest_chroma)


def test_window_averages_neighbourhoods(real_ab):
    plain = hue_chroma_targets(real_ab)
    smooth = hue_chroma_targets(real_ab, window=7)
    assert torch.allclose(smooth.hue[4, :, 10, 12], plain.hue[4, :, 7:14, 9:16].mean((1, 2)))
    assert torch.allclose(smooth.chroma[4, :, 0, 31], plain.chroma[4, :, 0:4, 28:32].mean((1, 2)))
    assert torch.allclose(smooth.hue.sum(1), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError):
        hue_chroma_targets(real_ab, window=4)


def test_one_hot_targets_decode_to_their_ab(real_ab):
    targets = hue_chroma_targets(real_ab, mode="hard")
    decoded = hue_chroma_decode(torch.log(targets.hue + 1e-12), torch.log(targets.chroma + 1e-12))
    # Hue to within half a bin; chroma to the bin's centre (within half a bin, or clipped).
    _, chroma = ab_to_hue_chroma(real_ab)
    bound = chroma * math.sin(HUE_STEP / 2) + CHROMA_STEP / 2 + 1e-6
    err = (decoded - real_ab).norm(dim=1)
    coloured = chroma > 1.0
    assert (err[coloured] <= bound[coloured] + 1e-6).all()
    linear = hue_chroma_targets(real_ab)
    decoded = hue_chroma_decode(torch.log(linear.hue + 1e-12), torch.log(linear.chroma + 1e-12))
    err = (decoded - real_ab).norm(dim=1)
    bound = chroma * math.sin(HUE_STEP / 2) + CHROMA_STEP + 1e-6
    assert (err[coloured] <= bound[coloured]).all()


def test_flat_hue_histogram_gives_grey():
    hue_logits = torch.zeros(1, BINS, 2, 2)
    chroma_logits = torch.zeros(1, BINS, 2, 2)
    chroma_logits[:, 20] = 20.0
    ab = hue_chroma_decode(hue_logits, chroma_logits)
    assert ab.abs().max() < 1e-3
    peaked = hue_logits.clone()
    peaked[:, 8] = 10.0  # hue 90 degrees: pure +b
    ab = hue_chroma_decode(peaked, chroma_logits)
    assert torch.allclose(ab[:, 0], torch.zeros(1), atol=1e-3)
    assert torch.allclose(ab[:, 1], torch.full((1,), (20 + 0.5) * CHROMA_STEP), atol=0.05)


def test_kl_loss_matches_scipy_and_vanishes_at_the_target(real_ab):
    targets = hue_chroma_targets(real_ab[:2], window=3)  # strictly positive histograms somewhere
    generator = torch.Generator().manual_seed(0)
    hue_logits = torch.randn(2, BINS, 32, 32, generator=generator, dtype=torch.float64)
    chroma_logits = torch.randn(2, BINS, 32, 32, generator=generator, dtype=torch.float64)
    loss = hue_chroma_kl(hue_logits, chroma_logits, targets.hue, targets.chroma, targets.chroma_value)
    assert loss.shape == (2, 32, 32) and (loss > 0).all()
    hue_p = torch.softmax(hue_logits, 1).numpy()
    chroma_p = torch.softmax(chroma_logits, 1).numpy()
    for n, y, x in [(0, 0, 0), (1, 17, 5), (0, 31, 20)]:
        kl_c = entropy(targets.chroma[n, :, y, x].numpy(), chroma_p[n, :, y, x])
        kl_h = entropy(targets.hue[n, :, y, x].numpy(), hue_p[n, :, y, x])
        weight = 5.0 * targets.chroma_value[n, y, x].item() / CHROMA_MAX
        assert abs(loss[n, y, x].item() - (kl_c + weight * kl_h)) < 1e-9
    perfect = hue_chroma_kl(
        torch.log(targets.hue.clamp_min(1e-300)), torch.log(targets.chroma.clamp_min(1e-300)),
        targets.hue, targets.chroma, targets.chroma_value,
    )
    assert perfect.abs().max() < 1e-9
    # Grey pixels: the hue term has no weight.
    grey = hue_chroma_kl(hue_logits, chroma_logits, targets.hue, targets.chroma, torch.zeros(2, 32, 32))
    chroma_only = hue_chroma_kl(hue_logits, chroma_logits, targets.hue, targets.chroma, targets.chroma_value, 0.0)
    assert torch.allclose(grey, chroma_only)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(real_ab):
    targets = hue_chroma_targets(real_ab)
    gpu = hue_chroma_targets(real_ab.cuda())
    assert torch.allclose(gpu.hue.cpu(), targets.hue) and torch.allclose(gpu.chroma.cpu(), targets.chroma)
    decoded = hue_chroma_decode(torch.log(targets.hue + 1e-9), torch.log(targets.chroma + 1e-9))
    decoded_gpu = hue_chroma_decode(torch.log(gpu.hue + 1e-9), torch.log(gpu.chroma + 1e-9))
    assert torch.allclose(decoded_gpu.cpu(), decoded, atol=1e-6)

"""Soft-encoding against a brute-force float64 k-nearest search, and the sparse soft cross-entropy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.colour import (
    ABBins,
    SoftEncoder,
    ab_bins_from_data,
    ab_bins_from_gamut,
    rgb_uint8_to_lab,
    soft_cross_entropy,
    soft_encode,
)

WEIGHT_TOL = 1e-5


def brute_force(ab: torch.Tensor, centers: torch.Tensor, k: int, sigma: float):
    """Reference: full (P, Q) float64 distance matrix, sorted; weights from the k smallest."""
    points = ab.permute(0, 2, 3, 1).reshape(-1, 2).double()
    d2 = ((points[:, None, :] - centers.double()[None]) ** 2).sum(-1)
    order = d2.argsort(dim=1, stable=True)
    sorted_d2 = d2.gather(1, order)
    weights = torch.exp(-(sorted_d2[:, :k] - sorted_d2[:, :1]) / (2 * sigma**2))
    return order, sorted_d2, weights / weights.sum(1, keepdim=True), points


def check_exact(
    ab: torch.Tensor, bins: ABBins, backend: str, k: int = 10, sigma: float = 5.0
) -> dict[str, int]:
    """Assert soft_encode == brute force; return how many pixels had a tie at the k-th place."""
    indices, weights = soft_encode(ab, bins, k=k, sigma=sigma, backend=backend)
    n, _, h, w = ab.shape
    assert indices.shape == (n, k, h, w) and weights.shape == (n, k, h, w)
    assert indices.dtype == torch.long
    got_idx = indices.permute(0, 2, 3, 1).reshape(-1, k)
    got_w = weights.permute(0, 2, 3, 1).reshape(-1, k).double()
    order, sorted_d2, ref_w, points = brute_force(ab, bins.centers, k, sigma)
    assert got_idx.min() >= 0 and got_idx.max() < bins.num_bins
    # No bin twice for a pixel.
    assert (got_idx.sort(1).values.diff(dim=1) > 0).all()
    # The chosen bins' distances are exactly the k smallest distances: this holds whatever the
    # tie-breaking between equidistant bins.
    got_d2 = ((points[:, None, :] - bins.centers.double()[got_idx]) ** 2).sum(-1)
    assert torch.allclose(got_d2.sort(1).values, sorted_d2[:, :k], rtol=1e-6, atol=1e-6)
    # Where the k-th and (k+1)-th distances differ (beyond float32 resolution), the sets are equal.
    if bins.num_bins > k:
        gap = sorted_d2[:, k] - sorted_d2[:, k - 1]
        untied = gap > 1e-5 * (1.0 + sorted_d2[:, k])
    else:
        untied = torch.ones(points.shape[0], dtype=torch.bool)
    ref_sets = order[:, :k].sort(1).values
    assert torch.equal(got_idx.sort(1).values[untied], ref_sets[untied])
    # Weights: equal as sorted vectors (robust to tie order), and as (bin -> weight) maps.
    assert (got_w.sort(1).values - ref_w.sort(1).values).abs().max() <= WEIGHT_TOL
    assert (got_w.sum(1) - 1).abs().max() <= 1e-6 and got_w.min() >= 0
    ref_map = torch.zeros(points.shape[0], bins.num_bins, dtype=torch.float64)
    ref_map.scatter_(1, order[:, :k], ref_w)
    got_on_ref = ref_map.gather(1, got_idx)
    assert (got_on_ref - got_w).abs()[untied].max() <= WEIGHT_TOL
    return {"pixels": points.shape[0], "tied": int((~untied).sum())}


def _camvid_ab(shared_data: Path, count: int, size: int) -> torch.Tensor:
    paths = sorted((shared_data / "camvid" / "train").glob("*.png"))[:: 367 // count][:count]
    images = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in paths]
    return rgb_uint8_to_lab(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous())[:, 1:]


def _cifar_rgb(shared_data: Path, count: int) -> torch.Tensor:
    paths = sorted((shared_data / "cifar10" / "test").glob("*/*.jpg"))[:: 10000 // count][:count]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def gamut_bins() -> ABBins:
    return ab_bins_from_gamut(10)


@pytest.fixture(params=["numba", "torch"])
def backend(request) -> str:
    """Both CPU back ends: the compiled kernel and the torch path that CUDA runs."""
    return request.param


def test_exact_on_real_images(shared_data, gamut_bins, backend):
    check_exact(_camvid_ab(shared_data, 2, 80), gamut_bins, backend)
    check_exact(rgb_uint8_to_lab(_cifar_rgb(shared_data, 24))[:, 1:], gamut_bins, backend)


def test_exact_on_uniform_points_over_the_ab_square(gamut_bins, backend):
    generator = torch.Generator().manual_seed(0)
    ab = torch.rand(1, 2, 100, 150, generator=generator) * 256 - 128
    check_exact(ab, gamut_bins, backend)


def test_exact_far_outside_and_at_equidistant_points(gamut_bins, backend):
    generator = torch.Generator().manual_seed(1)
    far = torch.rand(1, 2, 20, 20, generator=generator) * 1000 - 500
    check_exact(far, gamut_bins, backend)
    # Bin centres, edge midpoints, square centres, points on bisectors: exact ties at the 10th place.
    special = [(0, 0), (5, 5), (5, 0), (0, 5), (-5, 5), (2.5, 2.5), (10, 10), (0, 3.3), (3.3, 0), (-15, 25)]
    values = torch.tensor(special, dtype=torch.float32).t()[None, :, :, None]
    stats = check_exact(values, gamut_bins, backend)
    assert stats["tied"] >= 5
    # Tiny offsets from those points must resolve the ties exactly.
    offsets = torch.tensor([1e-4, -1e-4, 3e-3])
    near = (values + offsets.view(1, 1, 1, -1)).reshape(1, 2, -1, 1)
    check_exact(near, gamut_bins, backend)


def test_exact_on_cell_boundaries_and_bisectors(gamut_bins, backend):
    # A 0.25-spaced lattice hits the table's cell boundaries and centres, the bins' bisectors and
    # their equidistant points exactly; the same lattice nudged by 1e-5 sits just off them.
    axis = torch.arange(-48, 49, dtype=torch.float32) * 0.25
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"))[None]
    stats = check_exact(grid, gamut_bins, backend)
    assert stats["tied"] > 100
    check_exact(grid + 1e-5, gamut_bins, backend)


@pytest.mark.parametrize("grid", [5, 20])
def test_exact_for_other_grid_sizes(grid, backend):
    bins = ab_bins_from_gamut(grid)
    generator = torch.Generator().manual_seed(grid)
    ab = torch.rand(1, 2, 50, 50, generator=generator) * 240 - 120
    check_exact(ab, bins, backend)


def test_exact_for_sparse_data_bins(shared_data, backend):
    # Few images and a count threshold leave holes in the bins: larger, irregular neighbourhoods.
    bins = ab_bins_from_data([_cifar_rgb(shared_data, 24)], grid_size=10, min_count=20)
    generator = torch.Generator().manual_seed(2)
    ab = torch.rand(1, 2, 60, 60, generator=generator) * 256 - 128
    check_exact(ab, bins, backend)


@pytest.mark.parametrize(("k", "sigma"), [(1, 5.0), (5, 5.0), (10, 2.5), (16, 8.0)])
def test_other_k_and_sigma(gamut_bins, k, sigma, backend):
    generator = torch.Generator().manual_seed(k)
    ab = torch.rand(1, 2, 40, 40, generator=generator) * 200 - 100
    check_exact(ab, gamut_bins, backend, k=k, sigma=sigma)


def test_small_bin_sets_and_bad_k(backend):
    bins = ABBins(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), 10.0)
    ab = torch.rand(1, 2, 10, 10) * 60 - 30
    check_exact(ab, bins, backend, k=3)
    check_exact(ab, bins, backend, k=2)
    with pytest.raises(ValueError):
        soft_encode(ab, bins, k=4)


def test_dtypes_and_out_buffers(gamut_bins, backend):
    generator = torch.Generator().manual_seed(3)
    ab = torch.rand(2, 2, 16, 16, generator=generator) * 200 - 100
    idx32, w32 = soft_encode(ab, gamut_bins, backend=backend)
    _, w64 = soft_encode(ab.double(), gamut_bins, backend=backend)
    assert w64.dtype == torch.float64 and w32.dtype == torch.float32
    check_exact(ab.double(), gamut_bins, backend)
    _, w16 = soft_encode(ab.half(), gamut_bins, backend=backend)
    assert w16.dtype == torch.float32
    check_exact(ab.half().float(), gamut_bins, backend)
    out = (torch.empty_like(idx32), torch.empty_like(w32))
    result = soft_encode(ab, gamut_bins, out=out, backend=backend)
    assert result[0] is out[0] and result[1] is out[1]
    assert torch.equal(out[0], idx32) and torch.equal(out[1], w32)
    with pytest.raises(ValueError):
        soft_encode(ab, gamut_bins, out=(idx32[:1], w32[:1]), backend=backend)


def test_nan_pixels_get_nan_weights_and_leave_the_others_exact(gamut_bins, backend):
    generator = torch.Generator().manual_seed(6)
    ab = torch.rand(1, 2, 9, 31, generator=generator) * 200 - 100
    nan_at = torch.zeros(1, 9, 31, dtype=torch.bool)
    nan_at[0, 4, 7] = nan_at[0, 0, 30] = True
    ab[:, 0][nan_at] = float("nan")
    idx, w = soft_encode(ab, gamut_bins, backend=backend)
    assert ((idx >= 0) & (idx < gamut_bins.num_bins)).all()
    assert w.permute(0, 2, 3, 1)[nan_at].isnan().all()
    clean = ab.clone()
    clean[:, 0][nan_at] = 0.0
    ref_idx, ref_w = soft_encode(clean, gamut_bins, backend=backend)
    keep = ~nan_at[:, None].expand_as(idx)
    assert torch.equal(idx[keep], ref_idx[keep]) and torch.equal(w[keep], ref_w[keep])


def test_input_that_requires_grad_is_encoded_as_its_values(gamut_bins, backend):
    ab = (torch.rand(1, 2, 6, 6) * 100 - 50).requires_grad_(True)
    idx, w = soft_encode(ab, gamut_bins, backend=backend)
    ref_idx, ref_w = soft_encode(ab.detach(), gamut_bins, backend=backend)
    assert torch.equal(idx, ref_idx) and torch.equal(w, ref_w) and not w.requires_grad


def test_backends_agree_on_real_images(shared_data, gamut_bins):
    ab = _camvid_ab(shared_data, 3, 96)
    numba_idx, numba_w = soft_encode(ab, gamut_bins, backend="numba")
    torch_idx, torch_w = soft_encode(ab, gamut_bins, backend="torch")
    order_numba, order_torch = numba_idx.argsort(1), torch_idx.argsort(1)
    assert torch.equal(numba_idx.gather(1, order_numba), torch_idx.gather(1, order_torch))
    assert (numba_w.gather(1, order_numba) - torch_w.gather(1, order_torch)).abs().max() <= 1e-6


def test_kernel_keeps_torch_thread_count(gamut_bins):
    # numba's OpenMP layer shares torch's OpenMP runtime; the call must not change torch's setting.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        soft_encode(torch.rand(2, 2, 40, 40) * 100 - 50, gamut_bins, backend="numba")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_unknown_backend_is_refused(gamut_bins):
    with pytest.raises(ValueError, match="backend must be one of auto, torch, numba"):
        soft_encode(torch.zeros(1, 2, 2, 2), gamut_bins, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        SoftEncoder(gamut_bins, backend="fast")


def test_encoder_blocks_do_not_change_results(gamut_bins):
    encoder = SoftEncoder(gamut_bins, sigma=3.0, backend="torch")
    encoder.block_pixels = 16  # many small blocks: splits inside images and several images per block
    for shape in [(1, 2, 8, 8), (5, 2, 3, 7)]:
        ab = torch.rand(*shape) * 100 - 50
        idx, w = encoder(ab)
        ref_idx, ref_w = soft_encode(ab, gamut_bins, sigma=3.0, backend="torch")
        assert torch.equal(idx, ref_idx)
        assert torch.allclose(w, ref_w, rtol=0, atol=1e-6)  # SIMD tails may round differently


def dense_reference_loss(logits, indices, weights, pixel_weights=None):
    target = torch.zeros_like(logits).scatter_(1, indices, weights.to(logits.dtype))
    loss = -(target * torch.log_softmax(logits, dim=1)).sum(1)
    return loss if pixel_weights is None else loss * pixel_weights


def test_soft_cross_entropy_equals_dense_target_loss(shared_data, gamut_bins):
    ab = _camvid_ab(shared_data, 2, 24)
    indices, weights = soft_encode(ab, gamut_bins)
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, gamut_bins.num_bins, 24, 24, generator=generator, dtype=torch.float64)
    logits.requires_grad_(True)
    pixel_weights = torch.rand(2, 24, 24, generator=generator, dtype=torch.float64)
    loss = soft_cross_entropy(logits, indices, weights, pixel_weights)
    reference = dense_reference_loss(logits, indices, weights, pixel_weights)
    assert loss.shape == (2, 24, 24)
    assert torch.allclose(loss, reference, rtol=1e-10, atol=1e-10)
    grad = torch.autograd.grad(loss.sum(), logits)[0]
    ref_grad = torch.autograd.grad(reference.sum(), logits)[0]
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)
    # Minimised (to the target's entropy) by logits equal to the log of the soft target.
    target = torch.zeros_like(logits).scatter_(1, indices, weights.double())
    best = soft_cross_entropy(torch.log(target.clamp_min(1e-30)), indices, weights)
    entropy = -(target * torch.log(target.clamp_min(1e-30))).sum(1)
    assert torch.allclose(best, entropy, atol=1e-6)
    assert (loss.detach() / pixel_weights > best).all()
    half = soft_cross_entropy(logits.detach().half(), indices, weights)
    assert half.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(gamut_bins):
    generator = torch.Generator().manual_seed(5)
    ab = torch.rand(2, 2, 64, 64, generator=generator) * 256 - 128
    cpu_idx, cpu_w = soft_encode(ab, gamut_bins)
    with pytest.raises(ValueError, match="CPU only"):
        soft_encode(ab.cuda(), gamut_bins.to("cuda"), backend="numba")
    gpu_idx, gpu_w = soft_encode(ab.cuda(), gamut_bins.to("cuda"))
    assert gpu_idx.device.type == "cuda"
    assert torch.equal(gpu_idx.cpu().sort(1).values, cpu_idx.sort(1).values)
    assert (gpu_w.cpu().sort(1).values - cpu_w.sort(1).values).abs().max() < 1e-5
    logits = torch.randn(2, gamut_bins.num_bins, 64, 64, generator=generator)
    cpu_loss = soft_cross_entropy(logits, cpu_idx, cpu_w)
    gpu_loss = soft_cross_entropy(logits.cuda(), gpu_idx, gpu_w)
    assert torch.allclose(gpu_loss.cpu(), cpu_loss, atol=1e-4)

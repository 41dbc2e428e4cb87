"""ab bins from the sRGB gamut, from data and from Zhang-style files, against skimage/numpy references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color

from sslbench.colour import (
    ABBins,
    ABHistogram,
    ab_bins_from_data,
    ab_bins_from_files,
    ab_bins_from_gamut,
    snap_to_grid,
)

GRIDS = (5, 10, 15, 20)


@pytest.fixture(scope="module")
def skimage_gamut_cells() -> dict[int, set[tuple[int, int]]]:
    """Cells occupied by the full 8-bit cube under skimage's float64 rgb2lab, for every grid size."""
    values = np.arange(256, dtype=np.float64) / 255.0
    green, blue = np.meshgrid(values, values, indexing="ij")
    side = 128
    counts = {g: np.zeros(side * side, dtype=np.int64) for g in GRIDS}
    for red in range(0, 256, 32):
        block = np.stack(
            [np.broadcast_to(values[red : red + 32, None, None], (32, 256, 256)),
             np.broadcast_to(green, (32, 256, 256)), np.broadcast_to(blue, (32, 256, 256))], -1
        )
        ab = color.rgb2lab(block.reshape(1, -1, 3))[0, :, 1:]
        for g in GRIDS:
            snapped = np.floor(ab / g + 0.5).astype(np.int64) + side // 2
            counts[g] += np.bincount(snapped[:, 0] * side + snapped[:, 1], minlength=side * side)
    cells = {}
    for g in GRIDS:
        codes = np.nonzero(counts[g])[0]
        cells[g] = set(zip((codes // side - side // 2).tolist(), (codes % side - side // 2).tolist()))
    return cells


def _cifar_batches(shared_data: Path, count: int, batch: int) -> list[torch.Tensor]:
    paths = sorted((shared_data / "cifar10" / "train").glob("*/*.jpg"))[:: 50000 // count][:count]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return list(tensor.split(batch))


def test_gamut_bins_count_is_261_for_grid_10():
    bins = ab_bins_from_gamut(10)
    assert bins.num_bins == 261
    assert bins.prior is None
    assert bins.grid_size == 10


@pytest.mark.parametrize("grid", GRIDS)
def test_gamut_bins_match_skimage_snapping(grid, skimage_gamut_cells):
    bins = ab_bins_from_gamut(grid)
    got = {tuple(c) for c in (bins.centers / grid).round().long().tolist()}
    assert got == skimage_gamut_cells[grid]
    # Centres are multiples of the grid, listed in lexicographic (a, b) order.
    assert torch.equal(bins.centers, (bins.centers / grid).round() * grid)
    keys = bins.centers[:, 0] * 1000 + bins.centers[:, 1]
    assert torch.all(keys[1:] > keys[:-1])


def test_cell_convention_is_half_open_around_multiples():
    ab = torch.tensor([4.999, 5.0, -5.0, -5.001, 14.999, 15.0, 0.0]).view(1, 1, 7, 1).expand(1, 2, 7, 1)
    cells = snap_to_grid(ab, 10)[0, 0, :, 0].tolist()
    assert cells == [0, 1, 0, -1, 1, 2, 0]


def test_bins_from_data_match_a_skimage_histogram(shared_data):
    batches = _cifar_batches(shared_data, 200, 64)
    bins = ab_bins_from_data(iter(batches), grid_size=10)
    images = torch.cat(batches).permute(0, 2, 3, 1).numpy()
    ab = np.concatenate([color.rgb2lab(im)[..., 1:].reshape(-1, 2) for im in images])
    cells, counts = np.unique(np.floor(ab / 10 + 0.5).astype(np.int64), axis=0, return_counts=True)
    assert bins.num_bins == len(cells)
    np.testing.assert_array_equal(bins.centers.numpy(), cells * 10.0)
    np.testing.assert_allclose(bins.prior.numpy(), counts / counts.sum(), rtol=1e-6)
    # Data bins are a subset of the gamut bins (same cell convention).
    gamut = {tuple(c) for c in ab_bins_from_gamut(10).centers.tolist()}
    assert {tuple(c) for c in bins.centers.tolist()} <= gamut


def test_bins_from_data_stream_independent_of_batching(shared_data):
    batches = _cifar_batches(shared_data, 100, 100)
    whole = ab_bins_from_data(batches, grid_size=5)
    pieces = ab_bins_from_data((b for batch in batches for b in batch.split(7)), grid_size=5)
    assert torch.equal(whole.centers, pieces.centers)
    assert torch.allclose(whole.prior, pieces.prior)
    assert abs(whole.prior.sum().item() - 1.0) < 1e-6
    rare = ab_bins_from_data(batches, grid_size=5, min_count=30)
    assert 0 < rare.num_bins < whole.num_bins
    assert {tuple(c) for c in rare.centers.tolist()} <= {tuple(c) for c in whole.centers.tolist()}


def test_histogram_counts_pixels():
    hist = ABHistogram(10)
    rgb = torch.randint(0, 256, (3, 3, 8, 9), dtype=torch.uint8)
    hist.update(rgb)
    hist.update(rgb[:1])
    assert hist.total == 4 * 8 * 9
    with pytest.raises(ValueError):
        hist.update(rgb.float())


def test_data_bins_cache(tmp_path, shared_data):
    batches = _cifar_batches(shared_data, 50, 50)
    path = tmp_path / "cache" / "bins.pt"
    first = ab_bins_from_data(batches, grid_size=10, cache_path=path)
    assert path.exists()

    def never():
        raise AssertionError("the cache should have been used")
        yield

    second = ab_bins_from_data(never(), grid_size=10, cache_path=path)
    assert torch.equal(first.centers, second.centers) and torch.equal(first.prior, second.prior)
    with pytest.raises(ValueError):
        ab_bins_from_data(never(), grid_size=5, cache_path=path)


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_save_load_round_trip(tmp_path, suffix):
    bins = ABBins(torch.tensor([[0.0, 10.0], [20.0, -30.0]]), 10.0, torch.tensor([0.25, 0.75]))
    bins.save(tmp_path / f"bins{suffix}")
    loaded = ABBins.load(tmp_path / f"bins{suffix}")
    assert torch.equal(loaded.centers, bins.centers) and torch.equal(loaded.prior, bins.prior)
    assert loaded.grid_size == 10.0
    no_prior = bins.with_prior(None)
    no_prior.save(tmp_path / f"plain{suffix}")
    assert ABBins.load(tmp_path / f"plain{suffix}").prior is None


def test_bins_from_zhang_style_files(tmp_path):
    # A pts_in_hull.npy of our own making (the gamut bins, shuffled) and a matching prior_probs.npy.
    rng = np.random.default_rng(0)
    centers = ab_bins_from_gamut(10).centers.double().numpy()
    order = rng.permutation(len(centers))
    prior = rng.random(len(centers))
    np.save(tmp_path / "pts_in_hull.npy", centers[order])
    np.save(tmp_path / "prior_probs.npy", prior[order])
    bins = ab_bins_from_files(tmp_path / "pts_in_hull.npy", tmp_path / "prior_probs.npy")
    np.testing.assert_array_equal(bins.centers.numpy(), centers[order])  # the file's order is kept
    np.testing.assert_allclose(bins.prior.numpy(), prior[order] / prior.sum(), rtol=1e-6)
    assert bins.grid_size == 10 and ab_bins_from_files(tmp_path / "pts_in_hull.npy").prior is None
    np.save(tmp_path / "off_grid.npy", centers[:5] + 1.0)
    with pytest.raises(ValueError):
        ab_bins_from_files(tmp_path / "off_grid.npy")
    np.save(tmp_path / "short_prior.npy", prior[:5])
    with pytest.raises(ValueError):
        ab_bins_from_files(tmp_path / "pts_in_hull.npy", tmp_path / "short_prior.npy")


def test_abbins_validation_and_to():
    with pytest.raises(ValueError):
        ABBins(torch.zeros(3, 3), 10.0)
    with pytest.raises(ValueError):
        ABBins(torch.zeros(3, 2), 10.0, torch.ones(2))
    bins = ABBins(torch.tensor([[0.0, 10.0]]), 10.0, torch.tensor([1.0]))
    moved = bins.to(dtype=torch.float64)
    assert moved.centers.dtype == torch.float64 and moved.prior.dtype == torch.float64
    assert len(bins) == 1 and bins.device == torch.device("cpu")
    with pytest.raises(ValueError):
        ab_bins_from_gamut(7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bins_from_data_on_cuda(shared_data):
    batches = _cifar_batches(shared_data, 64, 32)
    cpu = ab_bins_from_data(batches, grid_size=10)
    gpu = ab_bins_from_data([b.cuda() for b in batches], grid_size=10)
    assert gpu.centers.device.type == "cuda"
    assert torch.equal(gpu.centers.cpu(), cpu.centers)
    assert torch.allclose(gpu.prior.cpu(), cpu.prior)

"""Quantised ab colour bins: the output classes of classification-style colorization.

Convention (shared by every constructor here and matching Zhang et al.'s ``pts_in_hull.npy``): with a
grid size ``g``, bin centres sit at integer multiples of ``g`` and the bin of centre ``c`` is the
half-open square cell ``[c - g/2, c + g/2)`` in each of a and b, so a point snaps to the centre
``g * floor(ab / g + 1/2)``.  Constructors that derive the bins themselves (from data, from the sRGB
gamut) list them in lexicographic (a, b) order, the order of ``pts_in_hull.npy``; bins read from files
keep the files' order, since a trained network's output channels follow it.

Three ways to get bins:

* :func:`ab_bins_from_data`: the cells a data set's pixels occupy, with their empirical prior, from
  one streaming pass over uint8 RGB batches (a histogram on the regular grid; no pixels are stored);
* :func:`ab_bins_from_gamut`: the cells that the 16.7M colours of the 8-bit sRGB cube snap to (261
  cells for ``g = 10``; Zhang's 313 were not produced this way and cannot be regenerated from it);
* :func:`ab_bins_from_files`: Zhang's released ``pts_in_hull.npy`` (and ``prior_probs.npy``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from sslbench.colour.lab import (
    _float64_matrices,
    _lab_f,
    _srgb_to_linear,
    rgb_uint8_to_lab,
)

__all__ = [
    "ABBins",
    "ABHistogram",
    "ab_bins_from_data",
    "ab_bins_from_files",
    "ab_bins_from_gamut",
    "snap_to_grid",
]

SUPPORTED_GRID_SIZES = (5, 10, 15, 20)

# Every 8-bit sRGB colour has |a|, |b| < 110; the histogram covers [-_HIST_REACH, _HIST_REACH] and
# clamps anything beyond into its border cells.
_HIST_REACH = 130.0
# Colours whose float32 ab lies this close to a cell boundary are re-converted in float64.
_BOUNDARY_SLACK = 1e-3


@dataclasses.dataclass(frozen=True)
class ABBins:
    """A set of Q ab bins.

    Attributes:
        centers: (Q, 2) float tensor of bin centres (a, b), multiples of ``grid_size`` for grid bins.
        grid_size: side of the square cells, in ab units.
        prior: optional (Q,) float tensor, the empirical probability of each bin (sums to 1).
    """

    centers: torch.Tensor
    grid_size: float
    prior: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.centers.dim() != 2 or self.centers.shape[1] != 2:
            raise ValueError(f"centers must have shape (Q, 2), got {tuple(self.centers.shape)}")
        if not self.centers.dtype.is_floating_point:
            raise TypeError("centers must be a floating point tensor")
        if self.prior is not None and self.prior.shape != (self.centers.shape[0],):
            raise ValueError(f"prior must have shape ({self.centers.shape[0]},), got {tuple(self.prior.shape)}")
        if self.grid_size <= 0:
            raise ValueError("grid_size must be positive")

    @property
    def num_bins(self) -> int:
        """Q, the number of bins."""
        return int(self.centers.shape[0])

    def __len__(self) -> int:
        return self.num_bins

    @property
    def device(self) -> torch.device:
        return self.centers.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ABBins:
        """A copy with ``centers`` (and ``prior``) moved to ``device`` and/or cast to ``dtype``."""
        prior = None if self.prior is None else self.prior.to(device=device, dtype=dtype)
        return ABBins(self.centers.to(device=device, dtype=dtype), self.grid_size, prior)

    def with_prior(self, prior: torch.Tensor | None) -> ABBins:
        """A copy with ``prior`` replaced."""
        return ABBins(self.centers, self.grid_size, prior)

    def grid_indices(self) -> torch.Tensor:
        """(Q, 2) long tensor ``centers / grid_size``; raises if a centre is not on the grid."""
        scaled = self.centers.double() / self.grid_size
        rounded = scaled.round()
        if not torch.allclose(scaled, rounded, rtol=0.0, atol=1e-6):
            raise ValueError("bin centres are not integer multiples of grid_size")
        return rounded.long()

    def save(self, path: str | Path) -> None:
        """Write to ``path``: a ``.npz`` file (numpy arrays) or anything else as a torch ``.pt`` file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        centers = self.centers.detach().cpu()
        prior = None if self.prior is None else self.prior.detach().cpu()
        if path.suffix == ".npz":
            arrays = {"centers": centers.numpy(), "grid_size": np.float64(self.grid_size)}
            if prior is not None:
                arrays["prior"] = prior.numpy()
            with path.open("wb") as handle:
                np.savez(handle, **arrays)
        else:
            torch.save({"centers": centers, "grid_size": float(self.grid_size), "prior": prior}, path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> ABBins:
        """Read bins written by :meth:`save` (``.npz`` or ``.pt``)."""
        path = Path(path)
        if path.suffix == ".npz":
            with np.load(path) as data:
                centers = torch.from_numpy(data["centers"])
                grid_size = float(data["grid_size"])
                prior = torch.from_numpy(data["prior"]) if "prior" in data else None
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
            centers, grid_size, prior = data["centers"], float(data["grid_size"]), data["prior"]
        return cls(centers, grid_size, prior).to(device)


def _exact_cells(rgb: torch.Tensor, grid_sizes: tuple[float, ...]) -> list[torch.Tensor]:
    """(N, 2, H, W) grid cells of the ab of uint8 RGB for each grid size, as for an exact conversion.

    Colours are converted in float32 (accurate to 2e-4); those whose a or b lies within 1e-3 of a
    multiple of half a grid size (where cell boundaries are) are converted again in float64.
    """
    ab = rgb_uint8_to_lab(rgb, dtype=torch.float32)[:, 1:]
    cells = [snap_to_grid(ab, g) for g in grid_sizes]
    near = torch.zeros(ab.shape[0], *ab.shape[2:], dtype=torch.bool, device=ab.device)
    for g in grid_sizes:
        phase = torch.remainder(ab, g / 2)
        near |= (torch.minimum(phase, g / 2 - phase) < _BOUNDARY_SLACK).any(dim=1)
    if bool(near.any()):
        img, row, col = torch.nonzero(near, as_tuple=True)
        exact = rgb_uint8_to_lab(rgb[img, :, row, col].t()[None, :, :, None], dtype=torch.float64)
        exact_ab = exact[0, 1:, :, 0].t()
        for g, grid_cells in zip(grid_sizes, cells):
            grid_cells[img, :, row, col] = snap_to_grid(exact_ab, g)
    return cells


def snap_to_grid(ab: torch.Tensor, grid_size: float) -> torch.Tensor:
    """Integer grid coordinates ``floor(ab / g + 1/2)`` of the cell holding each ab value (any shape)."""
    return torch.floor(ab / grid_size + 0.5).long()


def _check_grid_size(grid_size: float) -> None:
    if grid_size not in SUPPORTED_GRID_SIZES:
        raise ValueError(f"grid_size must be one of {SUPPORTED_GRID_SIZES}, got {grid_size}")


class ABHistogram:
    """Streaming histogram of ab values on the regular grid of :mod:`sslbench.colour.bins`.

    Call :meth:`update` with batches of uint8 RGB images (N, 3, H, W) (or :meth:`update_ab` with ab
    values); memory is one counter per grid cell, independent of the number of pixels.
    """

    def __init__(self, grid_size: float = 10, device: torch.device | str | None = None) -> None:
        _check_grid_size(grid_size)
        self.grid_size = float(grid_size)
        self.half = math.ceil(_HIST_REACH / self.grid_size)
        self.side = 2 * self.half + 1
        self.counts = torch.zeros(self.side * self.side, dtype=torch.int64, device=device)

    def update_ab(self, ab: torch.Tensor) -> None:
        """Add ab values given as an (N, 2, H, W) tensor (snapped as given, in their own dtype)."""
        if ab.dim() != 4 or ab.shape[1] != 2:
            raise ValueError(f"ab must have shape (N, 2, H, W), got {tuple(ab.shape)}")
        self._add_cells(snap_to_grid(ab, self.grid_size))

    def update(self, rgb: torch.Tensor) -> None:
        """Add the pixels of a batch of uint8 RGB images (N, 3, H, W).

        Colours are converted in float32 and snapped; the few whose a or b lies within 1e-3 of a cell
        boundary (float32 conversion is accurate to 2e-4) are converted again in float64, so the cells
        are those of an exact conversion.
        """
        if rgb.dtype != torch.uint8 or rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError("rgb must be a uint8 tensor of shape (N, 3, H, W)")
        self._add_cells(_exact_cells(rgb, (self.grid_size,))[0])

    def _add_cells(self, cells: torch.Tensor) -> None:
        """Count (N, 2, H, W) integer grid cells (clamped into the histogram)."""
        cells = cells.clamp(-self.half, self.half) + self.half
        flat = (cells[:, 0] * self.side + cells[:, 1]).reshape(-1)
        self.counts += torch.bincount(flat.to(self.counts.device), minlength=self.side * self.side)

    @property
    def total(self) -> int:
        """Number of pixels seen."""
        return int(self.counts.sum())

    def to_bins(self, min_count: int = 1) -> ABBins:
        """Bins for the cells holding at least ``min_count`` pixels, with their empirical prior."""
        if self.total == 0:
            raise ValueError("the histogram is empty")
        counts = self.counts.view(self.side, self.side)
        occupied = torch.nonzero(counts >= min_count)
        if occupied.shape[0] == 0:
            raise ValueError(f"no cell holds min_count={min_count} pixels")
        kept = counts[occupied[:, 0], occupied[:, 1]].to(torch.float64)
        centers = (occupied - self.half).to(torch.float64) * self.grid_size
        prior = kept / kept.sum()
        return ABBins(centers.to(torch.float32), self.grid_size, prior.to(torch.float32))


def ab_bins_from_data(
    batches: Iterable[torch.Tensor],
    grid_size: float = 10,
    min_count: int = 1,
    cache_path: str | Path | None = None,
) -> ABBins:
    """Bins occupied by a data set's pixels, with their empirical prior, in one streaming pass.

    Args:
        batches: iterable of uint8 RGB tensors (N, 3, H, W) (e.g. a DataLoader's image batches),
            on any device; it is consumed once.
        grid_size: cell size (5, 10, 15 or 20).
        min_count: cells with fewer pixels are dropped (their mass is removed before normalising).
        cache_path: if given and the file exists, the bins are loaded from it and ``batches`` is not
            read; otherwise they are computed and saved there (``.pt`` or ``.npz``).

    Returns:
        ``ABBins`` in lexicographic (a, b) order with ``prior`` (Q,) summing to 1, float32, on the
        device of the batches.
    """
    if cache_path is not None and Path(cache_path).exists():
        bins = ABBins.load(cache_path)
        if bins.grid_size != float(grid_size):
            raise ValueError(f"{cache_path} holds bins of grid size {bins.grid_size}, not {grid_size}")
        return bins
    hist: ABHistogram | None = None
    for batch in batches:
        if hist is None:
            hist = ABHistogram(grid_size, device=batch.device)
        hist.update(batch)
    if hist is None:
        raise ValueError("no batches given")
    bins = hist.to_bins(min_count)
    if cache_path is not None:
        bins.save(cache_path)
    return bins


@functools.lru_cache(maxsize=1)
def _gamut_cells() -> dict[float, torch.Tensor]:
    """(Q, 2) float64 centres occupied by the 8-bit sRGB cube for every supported grid size.

    Exact float64 conversion of all 16.7M colours, using the cube's structure: linear light is a
    256-entry table per channel and X, Y, Z are sums of per-channel terms, so only Lab's f(t) is
    evaluated per colour.  Every cell boundary of every supported grid (``c +- g/2``, ``c`` a multiple
    of ``g``) is a multiple of 2.5, so one histogram over intervals ``[2.5 u, 2.5 (u + 1))`` gives the
    occupied cells of all grids.
    """
    unit = 2.5
    half = math.ceil(_HIST_REACH / unit)
    side = 2 * half
    occupied = torch.zeros(side * side, dtype=torch.int64)
    lin = _srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255.0, inplace=False)
    m_xyz, _ = _float64_matrices()
    green_blue = [m_xyz[i, 1] * lin[:, None] + m_xyz[i, 2] * lin[None, :] for i in range(3)]
    step = 8
    for red in range(0, 256, step):
        reds = lin[red : red + step].view(-1, 1, 1)
        fx, fy, fz = (_lab_f(m_xyz[i, 0] * reds + green_blue[i], inplace=True) for i in range(3))
        u_a = (fx - fy).mul_(500.0 / unit).add_(half).floor_()
        u_b = (fy - fz).mul_(200.0 / unit).add_(half).floor_()
        occupied += torch.bincount(u_a.mul_(side).add_(u_b).view(-1).long(), minlength=side * side)
    lower = (torch.nonzero(occupied.view(side, side)) - half).to(torch.float64) * unit
    cells = {}
    for g in SUPPORTED_GRID_SIZES:
        snapped = torch.unique(torch.floor((lower + g / 2) / g), dim=0)
        cells[float(g)] = snapped * g
    return cells


def ab_bins_from_gamut(grid_size: float = 10) -> ABBins:
    """Bins occupied when the ab of every 8-bit sRGB colour is snapped to the grid.

    Args:
        grid_size: cell size (5, 10, 15 or 20).

    Returns:
        ``ABBins`` without prior, float32 centres in lexicographic (a, b) order on the default device.
        For ``grid_size=10`` there are 261 bins (not Zhang's 313).
    """
    _check_grid_size(grid_size)
    return ABBins(_gamut_cells()[float(grid_size)].to(torch.float32), float(grid_size))


def ab_bins_from_files(
    pts_in_hull_path: str | Path,
    prior_probs_path: str | Path | None = None,
    grid_size: float = 10,
) -> ABBins:
    """Bins from Zhang et al.'s released ``pts_in_hull.npy`` (and optionally ``prior_probs.npy``).

    Args:
        pts_in_hull_path: ``.npy`` file with a (Q, 2) array of centres (multiples of ``grid_size``).
        prior_probs_path: optional ``.npy`` file with a (Q,) array of bin probabilities.
        grid_size: the grid the centres sit on (10 for Zhang's files).

    Returns:
        ``ABBins`` in the file's order (float32; ``prior`` normalised to sum 1 if given).
    """
    centers = np.load(pts_in_hull_path)
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise ValueError(f"{pts_in_hull_path}: expected a (Q, 2) array, got shape {centers.shape}")
    prior = None
    if prior_probs_path is not None:
        prior_np = np.load(prior_probs_path).astype(np.float64).reshape(-1)
        if prior_np.shape[0] != centers.shape[0]:
            raise ValueError(f"{prior_probs_path}: {prior_np.shape[0]} priors for {centers.shape[0]} bins")
        if (prior_np < 0).any() or prior_np.sum() <= 0:
            raise ValueError(f"{prior_probs_path}: priors must be non-negative with a positive sum")
        prior = torch.from_numpy(prior_np / prior_np.sum()).to(torch.float32)
    bins = ABBins(torch.from_numpy(centers.astype(np.float32)), float(grid_size), prior)
    bins.grid_indices()
    return bins

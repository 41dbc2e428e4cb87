"""Zhang et al.'s soft-encoding of ab into bins, and the sparse soft cross-entropy that consumes it.

Soft-encoding (as in the released training code): each pixel's ab takes its ``k = 10`` nearest bin
centres (the paper's "5" is a typo) with Gaussian weights ``exp(-d^2 / (2 sigma^2))``, ``sigma = 5``,
normalised to sum 1.  Targets stay sparse, ``(indices, weights)`` of shape (N, k, H, W), all the way
into :func:`soft_cross_entropy`.

How the k nearest bins are found without a search.  The ab plane around the bins (the sRGB gamut
box and the bins' box, plus a margin) is cut into square *cells* of side ``cell_size`` (0.5 ab units,
centred on multiples of it).  For every cell, exact bounds over the cell's corners (float64, built
once per set of bins and cached) split the bins into:

* *sure* bins: among the k nearest for every point of the cell (their farthest distance to the cell
  is below a lower bound on the (k+1)-th nearest distance of any point of the cell);
* *maybe* bins: possibly among the k nearest somewhere in the cell (their nearest distance to the cell
  is within an upper bound on the k-th nearest distance of any point of the cell);
* all others, which can never be among the k nearest anywhere in the cell.

A cell with ``k - r`` sure bins and ``m`` maybe bins gives each of its points the sure bins plus the
``r`` nearest maybe bins.  The table stores per cell ``k + E`` slots (bin index and centre): the sure
bins, nearest to the cell centre first, then a *zone* of ``R + E`` slots (the last ``R - r`` sure
bins, the maybe bins, padding at a far-away centre), for table-wide ``R >= r`` and ``E >= m - r``.
Per pixel the encoder gathers its cell's slots, computes their ``k + E`` squared distances, and takes
the ``R`` nearest of the zone by ``R`` min-reductions (no sort, no top-k, no data-dependent control
flow); those and the sure slots are exactly the k nearest bins.  The table is built coarse to fine
(squares of 16 x 16 cells are split only where a single layout does not fit), so building takes well
under a second for Zhang-size bin sets.  The main table has ``R = 2, E = 3``; the few cells that need
more (around points where many bins are equidistant, e.g. the centres of the grid's squares, under
1% of real pixels) are marked and redone with a second table sized for them, and pixels outside the
table (far outside the sRGB gamut) with a brute-force float64 search.  The result is exact: the same
neighbour sets as a brute-force search, except that bins equidistant to within float rounding may be
exchanged (ties are broken towards the lower bin index).  Weights come from the pixel's own squared
distances (shifted by the first slot's, never far from the minimum, before ``exp``), so they
match brute-force weights to float32 rounding.

Two back ends run the same tables.  On CPU, a fused numba kernel
(:mod:`sslbench.colour._soft_encoding_cpu`) does each pixel in one pass; elsewhere (CUDA, MPS) the
lookup, the zone selection and the weights are whole-tensor torch operations over large blocks of
pixels.  ``backend="torch"`` forces the torch path on CPU too (the tests check both against a
brute-force search).  The k output bins of a pixel are not sorted by distance (``weights.argmax(1)``
picks the nearest).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading

import numpy as np
import torch

from sslbench.colour._backends import check_backend, empty, run_kernel, uses_kernel
from sslbench.colour._blocks import iter_blocks
from sslbench.colour.bins import ABBins
from sslbench.colour.lab import AB_GAMUT_RANGE

__all__ = ["SoftEncoder", "soft_cross_entropy", "soft_encode"]

_SENTINEL_COORD = 1.0e4  # centre of the padding "bin": farther than any real bin from any table cell
_FAR_COORD = 1.0e7  # coordinate of the padding used while building (never a candidate)
_CELL_SLACK = 1e-4  # cells are classified as if this much larger (ab units): float32 rounding of the
# cell lookup can put a pixel up to ~1e-5 outside its cell
_REL_TOL = 1e-9  # relative slack of the float64 geometric bounds (always in the conservative direction)
_PICK_SCALE = 1e20  # separates the rows at the minimum from all others when picking a bin index
_DROP = 1e30  # added to a taken row's distance
_MAX_BINS = 1 << 20  # bin indices travel as float32, exact below 2**24
_TOP_LEVEL = 4  # the build starts from squares of 2**4 cells and splits those that need it
_BUILD_CHUNK = 8192  # regions per chunk while building
_VECTOR = 16  # the CPU kernel's table rows are padded to a multiple of this many slots


@dataclasses.dataclass
class _SlotTable:
    """Per-cell slot table: (3 * W, n_rows) rows = bin index (as float), centre a, centre b.

    ``select`` (R) and ``extra`` (E) define the zone; overflow tables hold cells that need more than
    the main table gives and are addressed by marker rows ``first .. first + n_rows - 1``.
    """

    data: torch.Tensor
    width: int
    select: int
    extra: int
    first: int = 0

    @property
    def n_rows(self) -> int:
        return int(self.data.shape[1])


@dataclasses.dataclass
class _Regions:
    """Axis-aligned squares of cells with their bin classification (float64, CPU)."""

    i0: torch.Tensor  # (n,) first cell row (a axis)
    j0: torch.Tensor  # (n,) first cell column (b axis)
    rel: torch.Tensor  # (n, M) indices of the bins that may matter (padding = num_bins)
    reach: torch.Tensor  # (n,) upper bound of the squared k-th nearest distance over the square
    sure: torch.Tensor  # (n, M) among the k nearest everywhere in the square
    cand: torch.Tensor  # (n, M) among the k nearest somewhere in the square
    center_d2: torch.Tensor  # (n, M) squared distance to the square's centre


def _classify(
    i0: torch.Tensor,
    j0: torch.Tensor,
    size: int,
    rel: torch.Tensor,
    floor: torch.Tensor | None,
    points: torch.Tensor,
    geometry: tuple[float, int, int, int, int],
    k: int,
) -> _Regions:
    """Classify the bins ``rel`` (n, M) for squares of ``size`` x ``size`` cells at (i0, j0).

    ``floor`` bounds from below the squared distance of every bin outside ``rel`` (None: rel = all).
    """
    cell_size, a0, na, b0, nb = geometry
    half = 0.5 * cell_size + _CELL_SLACK
    lo_a = (a0 + i0) * cell_size - half
    hi_a = (a0 + (i0 + size).clamp_max(na) - 1) * cell_size + half
    lo_b = (b0 + j0) * cell_size - half
    hi_b = (b0 + (j0 + size).clamp_max(nb) - 1) * cell_size + half
    pts = points[rel]
    pa, pb = pts[..., 0], pts[..., 1]
    far = torch.maximum(pa - lo_a[:, None], hi_a[:, None] - pa) ** 2
    far += torch.maximum(pb - lo_b[:, None], hi_b[:, None] - pb) ** 2
    near = (pa - pa.clamp(lo_a[:, None], hi_a[:, None])) ** 2
    near += (pb - pb.clamp(lo_b[:, None], hi_b[:, None])) ** 2
    reach = far.kthvalue(k, dim=1).values * (1 + _REL_TOL) + _REL_TOL
    cand = near <= reach[:, None]
    bound = torch.full_like(reach, torch.inf) if floor is None else floor
    if near.shape[1] > k:
        bound = torch.minimum(bound, near.kthvalue(k + 1, dim=1).values)
    sure = (far < (bound * (1 - _REL_TOL) - _REL_TOL)[:, None]) & cand
    center_d2 = (pa - 0.5 * (lo_a + hi_a)[:, None]) ** 2 + (pb - 0.5 * (lo_b + hi_b)[:, None]) ** 2
    return _Regions(i0, j0, rel, reach, sure, cand, center_d2)


def _classify_chunked(i0, j0, size, rel, floor, points, geometry, k) -> _Regions:
    parts = [
        _classify(
            i0[s : s + _BUILD_CHUNK],
            j0[s : s + _BUILD_CHUNK],
            size,
            rel[s : s + _BUILD_CHUNK],
            None if floor is None else floor[s : s + _BUILD_CHUNK],
            points,
            geometry,
            k,
        )
        for s in range(0, i0.numel(), _BUILD_CHUNK)
    ]
    return _Regions(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(_Regions)))


def _subset(regions: _Regions, rows: torch.Tensor) -> _Regions:
    return _Regions(*(getattr(regions, f.name)[rows] for f in dataclasses.fields(_Regions)))


def _needs(regions: _Regions, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, e): maybe bins to pick and maybe bins to drop, per region."""
    n_sure = regions.sure.sum(1)
    r = k - n_sure
    return r, regions.cand.sum(1) - n_sure - r


def _slot_layout(regions: _Regions, width: int, sentinel: int) -> torch.Tensor:
    """(n, width) bin indices: sure bins (nearest to the centre first), maybe bins, then padding."""
    key = regions.center_d2 + torch.where(regions.sure, 0.0, 1e12) + torch.where(regions.cand, 0.0, 1e13)
    order = key.topk(min(width, key.shape[1]), dim=1, largest=False).indices
    slots = regions.rel.gather(1, order)
    if slots.shape[1] < width:
        slots = torch.cat([slots, slots.new_full((slots.shape[0], width - slots.shape[1]), sentinel)], dim=1)
    n_real = regions.cand.sum(1, keepdim=True)
    return torch.where(torch.arange(width)[None, :] < n_real, slots, sentinel)


def _children(regions: _Regions, size: int, num_bins: int) -> tuple[torch.Tensor, ...]:
    """Quadrants of the squares (size -> size // 2) with the parents' candidates, padded."""
    width = int(regions.cand.sum(1).max())
    order = torch.where(regions.cand, regions.center_d2, torch.inf).topk(width, dim=1, largest=False)
    rel = torch.where(order.values.isfinite(), regions.rel.gather(1, order.indices), num_bins)
    half = size // 2
    offsets = torch.tensor([[0, 0], [0, half], [half, 0], [half, half]])
    i0 = (regions.i0[:, None] + offsets[:, 0]).reshape(-1)
    j0 = (regions.j0[:, None] + offsets[:, 1]).reshape(-1)
    rep = lambda x: x.repeat_interleave(4, dim=0)
    return i0, j0, rep(rel), rep(regions.reach)


def _build_tables(
    centers: torch.Tensor, k: int, cell_size: float, tiers: tuple[tuple[int, int], ...]
) -> tuple[_SlotTable, list[_SlotTable], tuple[int, int, int, int]]:
    """Main slot table, overflow tables, and the cell range (a0, na, b0, nb), on CPU.

    Squares of 16 x 16 cells are classified against all bins; a square whose cells may all use one
    slot layout within the main tier ``tiers[0] = (R, E)`` gives it to them, the others are split in
    four (keeping only their candidate bins) down to single cells.  Cells that still need more go to
    the first later tier that fits them, the rest to a last tier sized for the worst cell; the main
    table marks them with ``-1 - marker`` in their first slot.
    """
    num_bins = centers.shape[0]
    (ga_lo, ga_hi), (gb_lo, gb_hi) = AB_GAMUT_RANGE
    lo = torch.minimum(centers.min(0).values, torch.tensor([ga_lo, gb_lo], dtype=centers.dtype)) - 2.0
    hi = torch.maximum(centers.max(0).values, torch.tensor([ga_hi, gb_hi], dtype=centers.dtype)) + 2.0
    a0, a1 = math.floor(lo[0] / cell_size), math.ceil(hi[0] / cell_size)
    b0, b1 = math.floor(lo[1] / cell_size), math.ceil(hi[1] / cell_size)
    na, nb = a1 - a0 + 1, b1 - b0 + 1
    geometry = (cell_size, a0, na, b0, nb)
    points = torch.cat([centers, torch.full((1, 2), _FAR_COORD, dtype=centers.dtype)])
    padded = torch.cat([centers, torch.full((1, 2), _SENTINEL_COORD, dtype=centers.dtype)])
    select, extra = min(tiers[0][0], k), tiers[0][1]
    width = k + extra

    size = 1 << _TOP_LEVEL
    i0, j0 = torch.meshgrid(torch.arange(0, na, size), torch.arange(0, nb, size), indexing="ij")
    i0, j0 = i0.reshape(-1), j0.reshape(-1)
    rel = torch.arange(num_bins).expand(i0.numel(), -1)
    floor = None
    slots = torch.full((na, nb, width), num_bins, dtype=torch.long)
    leftover: _Regions | None = None
    while True:
        inside = (i0 < na) & (j0 < nb)
        i0, j0, rel = i0[inside], j0[inside], rel[inside]
        floor = None if floor is None else floor[inside]
        regions = _classify_chunked(i0, j0, size, rel, floor, points, geometry, k)
        r, e = _needs(regions, k)
        ok = (r <= select) & (e <= extra)
        good = _subset(regions, torch.nonzero(ok).squeeze(1))
        layout = _slot_layout(good, width, num_bins)
        span = torch.arange(size)
        ci = (good.i0[:, None, None] + span[None, :, None]).expand(-1, size, size)
        cj = (good.j0[:, None, None] + span[None, None, :]).expand(-1, size, size)
        keep = (ci < na) & (cj < nb)
        owner = torch.arange(layout.shape[0])[:, None, None].expand(-1, size, size)
        slots[ci[keep], cj[keep]] = layout[owner[keep]]
        rest = _subset(regions, torch.nonzero(~ok).squeeze(1))
        if size == 1 or rest.i0.numel() == 0:
            leftover = rest if rest.i0.numel() > 0 else None
            break
        i0, j0, rel, floor = _children(rest, size, num_bins)
        size //= 2

    def pack(cell_slots: torch.Tensor, sel: int, ext: int, first: int = 0) -> _SlotTable:
        data = torch.cat([cell_slots.double(), padded[cell_slots, 0], padded[cell_slots, 1]], dim=1).t()
        return _SlotTable(data.to(torch.float32).contiguous(), k + ext, min(sel, k), ext, first)

    main = pack(slots.view(na * nb, width), select, extra)
    overflow: list[_SlotTable] = []
    if leftover is not None:
        r, e = _needs(leftover, k)
        pending = torch.ones(r.numel(), dtype=torch.bool)
        markers = torch.zeros(r.numel(), dtype=torch.float32)
        first = 0
        for sel, ext in [*tiers[1:], (int(r.max()), int(e.max()))]:
            rows = torch.nonzero(pending & (r <= sel) & (e <= ext)).squeeze(1)
            if rows.numel() == 0:
                continue
            overflow.append(pack(_slot_layout(_subset(leftover, rows), k + ext, num_bins), sel, ext, first))
            markers[rows] = first + torch.arange(rows.numel(), dtype=torch.float32)
            pending[rows] = False
            first += rows.numel()
        main.data[0, leftover.i0 * nb + leftover.j0] = -1.0 - markers
    return main, overflow, (a0, na, b0, nb)


def _select_smallest(
    d2: torch.Tensor, idx: torch.Tensor, select: int, out_d2: torch.Tensor, out_idx: torch.Tensor
) -> None:
    """The ``select`` smallest distances of each column of (Z, ...) ``d2``, with their bins ``idx``.

    Writes them, smallest first, to ``out_d2``/``out_idx`` (select, ...); ``d2`` is used as scratch.
    Vectorised over the columns with min-reductions over the Z rows, no sort and no branching.
    Step j takes the smallest remaining distance m; the bin is the smallest index among the rows at
    exactly m (``min(idx + 1e20 * (d2 - m))``: a row above m, however slightly, gets a key far above
    any index); that row is then pushed out of reach (``+1e30``).  Bin indices are distinct within a
    column (padding rows may share one but are farther than every real row), so ties at a distance
    are resolved by index and each bin is taken at most once.
    """
    lows, picks = [], []
    for step in range(select):
        low = d2.amin(0)
        pick = torch.add(idx, d2 - low, alpha=_PICK_SCALE).amin(0)
        lows.append(low)
        picks.append(pick)
        if step + 1 < select:
            taken = (idx - pick).abs_().clamp_max_(1.0)
            d2.add_(taken.sub_(1.0), alpha=-_DROP)
    for step in range(select):
        out_d2[step].copy_(lows[step])
        out_idx[step].copy_(picks[step])


def _softmax_(d2: torch.Tensor, ref: torch.Tensor, scale: float) -> torch.Tensor:
    """In place on (k, P) squared distances: ``exp(-scale * d2)`` normalised over k (``ref`` ~ min)."""
    torch.add(ref * scale, d2, alpha=-scale, out=d2)
    d2.exp_()
    return d2.div_(d2.sum(0))


class SoftEncoder:
    """Exact k-nearest-bin soft-encoder for one set of bins (see the module docstring).

    Building the tables takes a moment; :func:`soft_encode` caches encoders per bins, k and device.

    Args:
        bins: the ab bins (any centres; grid bins make the tables small).
        k: number of nearest bins per pixel (10).
        sigma: Gaussian std in ab units (5).
        cell_size: side of the table cells in ab units.
        tiers: ``(R, E)`` of the main table, then of overflow tables for the cells that need more (a
            last overflow table takes whatever is left).
        backend: ``"auto"`` (the compiled kernel on CPU, torch elsewhere), ``"torch"``, or ``"numba"``
            (CPU only).
    """

    def __init__(
        self,
        bins: ABBins,
        k: int = 10,
        sigma: float = 5.0,
        cell_size: float = 0.5,
        tiers: tuple[tuple[int, int], ...] = ((2, 3),),
        backend: str = "auto",
    ) -> None:
        num_bins = bins.num_bins
        if num_bins >= _MAX_BINS:
            raise ValueError(f"at most {_MAX_BINS - 1} bins are supported, got {num_bins}")
        if not 1 <= k <= num_bins:
            raise ValueError(f"k must be in [1, {num_bins}], got {k}")
        if sigma <= 0:
            raise ValueError("sigma must be positive")
        self.backend = check_backend(backend)
        self._kernel_tables: _KernelTables | None = None
        self.k, self.sigma, self.cell_size = k, float(sigma), float(cell_size)
        self.block_pixels = 1 << 15
        centers = bins.centers.detach().to("cpu", torch.float64)
        self._main, self._overflow, self._range = _build_tables(centers, k, self.cell_size, tuple(tiers))
        self._centers = bins.centers.detach().to(torch.float32)
        self.device = torch.device("cpu")
        self.to(bins.device)

    def to(self, device: torch.device | str) -> SoftEncoder:
        """Move the tables to ``device`` (in place); returns self."""
        device = torch.device(device)
        for table in (self._main, *self._overflow):
            table.data = table.data.to(device)
        self._centers = self._centers.to(device)
        self.device = device
        return self

    def __call__(
        self,
        ab: torch.Tensor,
        out: tuple[torch.Tensor, torch.Tensor] | None = None,
        sigma: float | None = None,
        backend: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft-encode ab.

        Args:
            ab: (N, 2, H, W) float ab values on the encoder's device.
            out: optional contiguous ``(indices, weights)`` tensors of the result's shape and dtypes to
                write into (reusing them across batches saves the allocation of fresh memory).
            sigma: Gaussian std for this call (default: the encoder's).
            backend: back end for this call (default: the encoder's).

        Returns:
            ``(indices, weights)``: (N, k, H, W) long bin indices and (N, k, H, W) weights summing to 1
            over k (float32, or float64 for float64 input).
        """
        if ab.dim() != 4 or ab.shape[1] != 2:
            raise ValueError(f"ab must have shape (N, 2, H, W), got {tuple(ab.shape)}")
        if ab.device != self.device:
            raise ValueError(f"ab is on {ab.device} but the encoder on {self.device}; call .to()")
        dtype = torch.float64 if ab.dtype == torch.float64 else torch.float32
        n, _, h, w = ab.shape
        k, pixels = self.k, h * w
        flat = ab.detach().reshape(n, 2, pixels).to(dtype)  # targets: not differentiable
        if out is None:
            result = (empty((n, k, h, w), torch.long, ab.device), empty((n, k, h, w), dtype, ab.device))
        else:
            result = out
            for tensor, want in zip(result, (torch.long, dtype)):
                if tuple(tensor.shape) != (n, k, h, w) or tensor.dtype != want or not tensor.is_contiguous():
                    raise ValueError(f"out tensors must be contiguous {(n, k, h, w)} of dtypes (long, {dtype})")
        indices, weights = result[0].view(n, k, pixels), result[1].view(n, k, pixels)
        if n * pixels == 0:
            return result
        scale = 1.0 / (2.0 * (self.sigma if sigma is None else float(sigma)) ** 2)
        if uses_kernel(self.backend if backend is None else backend, ab.device):
            self._run_kernel(flat, indices, weights, scale)
            return result
        outside = self._outside(flat)
        block = self.block_pixels if ab.device.type == "cpu" else None
        for images, pix in iter_blocks(n, pixels, ab.device, block):
            self._encode_block(
                flat[images, :, pix], indices[images, :, pix], weights[images, :, pix], scale, outside is not None
            )
        self._fix_special(flat, indices, weights, outside, scale)
        return result

    def _run_kernel(self, flat: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, scale: float) -> None:
        """The fused CPU kernel on (N, 2, P) ab into (N, k, P) views, with torch's thread count."""
        from sslbench.colour._soft_encoding_cpu import soft_encode_kernel

        if self._kernel_tables is None:
            self._kernel_tables = _KernelTables.build(self)
        tables = self._kernel_tables
        a0, na, b0, nb = self._range
        run_kernel(
            soft_encode_kernel,
            flat.contiguous().numpy(),
            indices.numpy(),
            weights.numpy(),
            tables.main,
            tables.width,
            self._main.select,
            tables.overflow,
            tables.overflow_select,
            tables.overflow_width,
            tables.centers,
            0.5 - a0,
            0.5 - b0,
            1.0 / self.cell_size,
            na,
            nb,
            scale,
        )

    def _scaled(self, ab: torch.Tensor) -> torch.Tensor:
        """(n, 2, L) ab -> table cell coordinates as floats (cell j holds [j, j + 1))."""
        a0, _, b0, _ = self._range
        offsets = torch.tensor([0.5 - a0, 0.5 - b0], dtype=ab.dtype, device=ab.device).view(1, 2, 1)
        return torch.addcmul(offsets, ab, torch.tensor(1.0 / self.cell_size, dtype=ab.dtype, device=ab.device))

    def _outside(self, flat: torch.Tensor) -> torch.Tensor | None:
        """(N, P) mask of the pixels off the table (or NaN), or None when there are none (one reduction)."""
        _, na, _, nb = self._range
        limits = torch.tensor([na, nb], dtype=flat.dtype, device=flat.device)
        low, high = flat.aminmax(dim=2)
        low, high = (self._scaled(v[..., None])[..., 0] for v in (low, high))
        if bool(((low >= 0) & (high < limits)).all()):
            return None
        scaled = self._scaled(flat)
        return ~((scaled >= 0) & (scaled < limits.view(1, 2, 1))).all(dim=1)

    def _cells(self, ab: torch.Tensor, clamp: bool) -> torch.Tensor:
        """(n, L) int32 table cell of each pixel of (n, 2, L) ab (clamped into the table if ``clamp``)."""
        _, na, _, nb = self._range
        scaled = self._scaled(ab)
        if clamp:
            limits = torch.tensor([na - 1, nb - 1], dtype=ab.dtype, device=ab.device).view(1, 2, 1)
            torch.minimum(scaled.nan_to_num_(0.0).clamp_min_(0.0), limits, out=scaled)
        cells = scaled.to(torch.int32)
        return cells[:, 0].mul_(nb).add_(cells[:, 1])

    def _encode_block(
        self, ab: torch.Tensor, out_idx: torch.Tensor, out_w: torch.Tensor, scale: float, clamp: bool
    ) -> None:
        """ab (n, 2, L) -> out_idx, out_w (n, k, L) views, in place (overflow cells marked < 0)."""
        n, _, length = ab.shape
        cell = self._cells(ab, clamp)
        idx, d2 = self._encode_rows(self._main, cell.reshape(-1), ab[:, 0], ab[:, 1])
        # Row 0 holds the bin nearest to the centre of the cell's table region: within the region's
        # size of the nearest bin, so the shifted exponents neither overflow nor all underflow.
        k = self.k
        d2 = d2.view(k, n, length)
        torch.add(d2[0] * scale, d2, alpha=-scale, out=d2)
        d2.exp_()
        torch.div(d2, d2.sum(0), out=out_w.transpose(0, 1))
        out_idx.transpose(0, 1).copy_(idx.view(k, n, length))

    def _fix_special(
        self,
        flat: torch.Tensor,
        indices: torch.Tensor,
        weights: torch.Tensor,
        outside: torch.Tensor | None,
        scale: float,
    ) -> None:
        """Redo the pixels of overflow cells (their tables) and off the table (brute force).

        Works on flat views with linear positions (1-D gathers/scatters are the cheap kind).
        """
        _, k, pixels = indices.shape
        flat_ab, flat_idx, flat_w = flat.reshape(-1), indices.view(-1), weights.view(-1)
        rows_k = torch.arange(k, device=indices.device)[:, None] * pixels

        def redo(img: torch.Tensor, pix: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> None:
            pos = (img * (k * pixels) + pix)[None, :] + rows_k
            flat_idx[pos] = idx.to(torch.long)
            flat_w[pos] = w

        def ab_of(img: torch.Tensor, pix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            base = img * (2 * pixels) + pix
            return flat_ab[base], flat_ab[base + pixels]

        if self._overflow:
            special = indices[:, 0] < 0
            if outside is not None:
                special &= ~outside
            img, pix = torch.nonzero(special, as_tuple=True)
            if img.numel() > 0:
                marker = -1 - flat_idx[img * (k * pixels) + pix]
                for table in self._overflow:
                    mine = torch.nonzero((marker >= table.first) & (marker < table.first + table.n_rows)).squeeze(1)
                    if mine.numel() == 0:
                        continue
                    i, p = img[mine], pix[mine]
                    a, b = ab_of(i, p)
                    idx, d2 = self._encode_rows(table, (marker[mine] - table.first).to(torch.int32), a, b)
                    redo(i, p, idx, _softmax_(d2, d2.amin(0), scale))
        if outside is not None:
            img, pix = torch.nonzero(outside, as_tuple=True)
            a, b = ab_of(img, pix)
            idx, d2 = self._brute_force(a, b)
            redo(img, pix, idx, _softmax_(d2.to(weights.dtype), d2.new_zeros((), dtype=weights.dtype), scale))

    def _encode_rows(
        self, table: _SlotTable, cell: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, P) bin indices (float) and squared distances of the k nearest bins, via ``table``.

        ``cell`` is (P,) int32; ``a``, ``b`` are (P,) or (n, L) with n * L = P.
        """
        width, k = table.width, self.k
        slots = table.data.index_select(1, cell)
        if slots.dtype != a.dtype:
            slots = slots.to(a.dtype)
        slots = slots.view(3 * width, *a.shape)
        idx, d2, dy = slots[:width], slots[width : 2 * width], slots[2 * width :]
        d2.sub_(a).square_()
        d2.addcmul_(dy.sub_(b), dy)
        front, select = k - table.select, table.select
        if 0 < select < width - front:
            zone = slice(front, front + select + table.extra)
            _select_smallest(d2[zone], idx[zone], select, d2[front:k], idx[front:k])
        return idx[:k].reshape(k, -1), d2[:k].reshape(k, -1)

    def _brute_force(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, P) indices and squared distances minus the smallest one, by a full search in float64.

        Used for the (rare) pixels outside the table; float64 and the shift keep the weights exact
        even where the distances are large.
        """
        centers = self._centers.to(torch.float64)
        out_idx, out_d2 = [], []
        for start in range(0, a.numel(), 4096):
            pa = a[start : start + 4096, None].to(torch.float64)
            pb = b[start : start + 4096, None].to(torch.float64)
            d2 = (pa - centers[:, 0]) ** 2 + (pb - centers[:, 1]) ** 2
            best = d2.topk(self.k, dim=1, largest=False)
            out_idx.append(best.indices.t())
            out_d2.append((best.values - best.values.amin(1, keepdim=True)).t())
        return torch.cat(out_idx, 1), torch.cat(out_d2, 1)


@dataclasses.dataclass
class _KernelTables:
    """The slot tables laid out for the CPU kernel: one contiguous (3, V) block per cell."""

    main: np.ndarray  # (cells, 3, V) float32: bin, a, b; width slots, then padding to V
    width: int
    overflow: np.ndarray  # (rows, 3, W') float32, padded with far-away slots
    overflow_select: np.ndarray  # (rows,) int64
    overflow_width: np.ndarray  # (rows,) int64
    centers: np.ndarray  # (Q, 2) float64

    @classmethod
    def build(cls, encoder: SoftEncoder) -> _KernelTables:
        num_bins = encoder._centers.shape[0]

        def cell_major(table: _SlotTable, width: int) -> np.ndarray:
            rows = table.data.cpu().view(3, table.width, -1).permute(2, 0, 1).numpy()
            out = np.empty((rows.shape[0], 3, width), np.float32)
            out[:, 0], out[:, 1:] = num_bins, _SENTINEL_COORD
            out[:, :, : table.width] = rows
            return out

        main = cell_major(encoder._main, -(-encoder._main.width // _VECTOR) * _VECTOR)
        wide = max([table.width for table in encoder._overflow], default=1)
        parts = [cell_major(table, wide) for table in encoder._overflow]
        overflow = np.concatenate(parts) if parts else np.zeros((0, 3, wide), np.float32)
        select = np.concatenate([np.full(t.n_rows, t.select) for t in encoder._overflow] + [np.zeros(0, np.int64)])
        width = np.concatenate([np.full(t.n_rows, t.width) for t in encoder._overflow] + [np.zeros(0, np.int64)])
        centers = encoder._centers.detach().to("cpu", torch.float64).numpy().copy()
        return cls(main, encoder._main.width, overflow, select.astype(np.int64), width.astype(np.int64), centers)


_ENCODERS: dict[tuple, SoftEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def _encoder_for(bins: ABBins, k: int, device: torch.device) -> SoftEncoder:
    """The cached encoder for these bin centres, k and device (tables are built once per process)."""
    centers = bins.centers.detach().to("cpu", torch.float64).contiguous()
    digest = hashlib.sha1(centers.numpy().tobytes()).hexdigest()
    key = (digest, k, str(device))
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            cpu_key = (digest, k, "cpu")
            base = _ENCODERS.get(cpu_key)
            if base is None:
                base = SoftEncoder(bins.to("cpu"), k)
                _ENCODERS[cpu_key] = base
            if str(device) == "cpu":
                encoder = base
            else:
                encoder = _clone_encoder(base).to(device)
                _ENCODERS[key] = encoder
    return encoder


def _clone_encoder(encoder: SoftEncoder) -> SoftEncoder:
    clone = object.__new__(SoftEncoder)
    clone.__dict__.update(encoder.__dict__)
    clone._main = dataclasses.replace(encoder._main)
    clone._overflow = [dataclasses.replace(table) for table in encoder._overflow]
    return clone


def soft_encode(
    ab: torch.Tensor,
    bins: ABBins,
    k: int = 10,
    sigma: float = 5.0,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-encode ab into the k nearest bins with Gaussian weights (Zhang et al. 2016).

    Args:
        ab: (N, 2, H, W) ab values (any float dtype, any device).
        bins: the Q bins (their centres define the classes).
        k: neighbours per pixel (10, as in the released code).
        sigma: Gaussian std in ab units (5).
        out: optional ``(indices, weights)`` to write into (see :meth:`SoftEncoder.__call__`).
        backend: ``"auto"`` (the compiled kernel on CPU, torch elsewhere), ``"torch"`` or ``"numba"``.

    Returns:
        ``(indices, weights)``: (N, k, H, W) long indices into ``bins`` and (N, k, H, W) weights
        ``exp(-d^2 / (2 sigma^2))`` normalised over k (float32; float64 for float64 input).  The k
        bins are exactly the k nearest centres (ties between equidistant bins broken arbitrarily);
        they are not sorted by distance.
    """
    return _encoder_for(bins, k, ab.device)(ab, out=out, sigma=sigma, backend=backend)


def soft_cross_entropy(
    logits: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel cross-entropy between sparse soft targets and predicted bin logits.

    ``loss = sum_j w_j * (logsumexp(z) - z[idx_j])``, i.e. ``-sum_j w_j log softmax(z)[idx_j]``: only
    the k target logits are gathered; no dense (N, Q, H, W) target is ever built.

    Args:
        logits: (N, Q, H, W) predicted logits.
        indices: (N, k, H, W) long target bins (from :func:`soft_encode`).
        weights: (N, k, H, W) target weights (summing to 1 over k).
        pixel_weights: optional (N, H, W) per-pixel factors (class rebalancing, masks).

    Returns:
        (N, H, W) per-pixel loss in the dtype of ``logits`` (16-bit logits are upcast to float32).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    picked = logits.gather(1, indices)
    loss = (weights.to(logits.dtype) * (lse - picked)).sum(dim=1)
    if pixel_weights is not None:
        loss = loss * pixel_weights.to(loss.dtype)
    return loss

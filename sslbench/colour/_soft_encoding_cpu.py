"""The CPU kernel of :class:`sslbench.colour.soft_encoding.SoftEncoder`, compiled with numba.

It runs the same slot tables as the torch path, fused into one pass per chunk of ``CHUNK`` pixels of
one image: look up each pixel's cell, compute the squared distances to the cell's slots, keep the
sure slots, pick the ``select`` nearest of the zone (ties towards the lower bin index), and turn the
k squared distances into normalised Gaussian weights.  Pixels of overflow cells read their overflow
row, and pixels off the table (or NaN) take a float64 brute-force search, one by one.  The results
are those of the torch path and of a brute-force search (see the tests).

Why a compiled kernel: the torch path makes about forty passes over per-pixel intermediates, which
on a CPU costs more than the search itself.  Here each pixel is read once and its k indices and
weights are written once.  The layout follows what vectorises:

* cells are computed for the whole chunk at once (branch-free; the special pixels are listed after);
* distances are computed along a pixel's table row (the cell's slots are contiguous: one vector
  load per coordinate) and stored transposed, one row per slot and one column per pixel;
* every later step (the zone's selection by branch-free insertion, the exponentials, the
  normalisation) then runs along rows of pixels;
* the output is written row by row in contiguous runs, through 1-D views indexed from 0: with
  ``start + q`` numba must allow for a negative index and the compiler scatters the stores, which
  took a third of the kernel's time.

Column-wise gathers from the table cost five times more than the row loads and the transposition,
and so did a table of bin indices with the centres looked up (measured on the benchmark's CamVid
images); cells of 1 or 2 ab units (a smaller table, wider zones) were slower too.

The kernel is compiled with the fast-math flags that only reorder or fuse arithmetic (``reassoc``,
``contract``, ``arcp``, ``nsz``; about 10% faster): not ``nnan``/``ninf``, on which the handling of
NaN input and the zone's insertion (it starts from infinite distances) rely, and not ``afn``, which
could approximate ``math.exp``.

``math.exp`` compiles to a scalar libm call of about 6 ns, more than the rest of a pixel's work for
ten of them.  float32 weights therefore use an exponential the compiler vectorises, in float32
throughout: ``2**t`` as ``2**round(t)``, built in the exponent bits, times a degree-7 Taylor
polynomial of ``2**f`` on ``|f| <= 1/2``, whose relative error is below 1e-8 before float32
rounding.  float64 weights use ``math.exp``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

REORDER_ONLY = {"reassoc", "contract", "arcp", "nsz"}  # fast-math flags that keep inf and NaN semantics
CHUNK = 256  # pixels per task: the chunk's buffers (a few rows of CHUNK values) stay in L1/L2

_LOG2E = 1.4426950408889634
# Taylor coefficients of 2**f = exp(f ln 2): ln(2)**n / n!
_C1 = 0.6931471805599453
_C2 = 0.2402265069591007
_C3 = 0.05550410866482158
_C4 = 0.009618129107628477
_C5 = 0.0013333558146428443
_C6 = 0.00015403530393381608
_C7 = 1.525273380405984e-05
_MIN_EXP2 = -126.0  # 2**-126 is the smallest normal float32; weights below it are 0 to float32 anyway


@numba.njit(boundscheck=False, cache=True)
def _insert(d, index, low, taken, k, bins, dist) -> int:
    """Insert (d, index) into the sorted k nearest ``dist[low:taken]``; returns the new ``taken``.

    Ties go towards the lower bin index.
    """
    if taken < k:
        j = taken
        taken += 1
    elif d < dist[k - 1] or (d == dist[k - 1] and index < bins[k - 1]):
        j = k - 1
    else:
        return taken
    while j > low and (dist[j - 1] > d or (dist[j - 1] == d and bins[j - 1] > index)):
        dist[j] = dist[j - 1]
        bins[j] = bins[j - 1]
        j -= 1
    dist[j] = d
    bins[j] = index
    return taken


@numba.njit(boundscheck=False, cache=True)
def _from_slots(a, b, table, row, select, width, k, bins, dist) -> None:
    """The k ``bins`` and their distances of (a, b), from row ``row`` (3, W) of ``table``.

    The sure slots, then the zone's ``select`` nearest by insertion.
    """
    front = k - select
    for j in range(front):
        da = a - table[row, 1, j]
        db = b - table[row, 2, j]
        bins[j] = table[row, 0, j]
        dist[j] = da * da + db * db
    taken = front
    for z in range(front, width):
        da = a - table[row, 1, z]
        db = b - table[row, 2, z]
        taken = _insert(da * da + db * db, table[row, 0, z], front, taken, k, bins, dist)


@numba.njit(boundscheck=False, cache=True)
def _brute_force(a, b, centers, k, bins, dist) -> None:
    """The k nearest of all bin centres, in float64 (for the rare pixels off the table, and NaN)."""
    a64 = np.float64(a)
    b64 = np.float64(b)
    taken = 0
    for c in range(centers.shape[0]):
        da = a64 - centers[c, 0]
        db = b64 - centers[c, 1]
        taken = _insert(da * da + db * db, np.float32(c), 0, taken, k, bins, dist)


@numba.njit(boundscheck=False, cache=True)
def _special_pixel(a, b, overflow_row, overflow, overflow_select, overflow_width, centers, k, scale, bins, weights):
    """The k ``bins`` (as floats) and ``weights`` of one pixel of an overflow cell (``overflow_row >= 0``) or off
    the table."""
    dist = np.empty(k, np.float64)
    if overflow_row >= 0:
        select = overflow_select[overflow_row]
        _from_slots(a, b, overflow, overflow_row, select, overflow_width[overflow_row], k, bins, dist)
    else:
        _brute_force(a, b, centers, k, bins, dist)
    nearest = dist[0]
    for j in range(1, k):
        nearest = min(nearest, dist[j])
    total = 0.0
    for j in range(k):
        dist[j] = math.exp((nearest - dist[j]) * scale)
        total += dist[j]
    for j in range(k):
        weights[j] = dist[j] / total


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False, fastmath=REORDER_ONLY)
def soft_encode_kernel(
    ab: np.ndarray,
    out_idx: np.ndarray,
    out_w: np.ndarray,
    main: np.ndarray,
    width: int,
    select: int,
    overflow: np.ndarray,
    overflow_select: np.ndarray,
    overflow_width: np.ndarray,
    centers: np.ndarray,
    offset_a: float,
    offset_b: float,
    inv_cell: float,
    n_cells_a: int,
    n_cells_b: int,
    scale: float,
) -> None:
    """Soft-encode ab (n, 2, P) into out_idx (n, k, P) int64 and out_w (n, k, P), in place.

    ``main`` is the (cells, 3, V) slot table: rows of bin index (as float), centre a, centre b, with
    ``width`` real slots and padding up to V; a negative first bin marks an overflow cell
    (``-1 - row``).  ``overflow`` is the (rows, 3, W') overflow table with per-row ``select`` and
    width; ``centers`` the (Q, 2) float64 bin centres for the brute force.

    Per chunk of ``CHUNK`` pixels of one image: cells, the distances to the cell's slots as columns
    (one row per slot), the zone's ``select`` nearest, the weights, and the output rows; the few
    special pixels (overflow cells, off the table, NaN) are redone one by one at the end of their
    chunk.
    """
    n, _, pixels = ab.shape
    k = out_idx.shape[1]
    padded = main.shape[2]
    front = k - select
    fast_exp = out_w.itemsize == 4  # float32 weights: the vectorised exp
    scale_log2 = np.float32(scale * _LOG2E)  # exp(x) = 2**(x log2 e)
    per_image = (pixels + CHUNK - 1) // CHUNK
    for task in numba.prange(n * per_image):
        image = task // per_image
        start = (task - image * per_image) * CHUNK
        length = min(pixels - start, CHUNK)
        # Cells, vectorised over the chunk; pixels off the table (or NaN) read cell 0 and are redone.
        pa = np.zeros(CHUNK, ab.dtype)
        pb = np.zeros(CHUNK, ab.dtype)
        pa[:length] = ab[image, 0, start : start + length]
        pb[:length] = ab[image, 1, start : start + length]
        cells = np.empty(CHUNK, np.int64)
        off = np.empty(CHUNK, np.bool_)
        for q in range(CHUNK):
            sa = pa[q] * inv_cell + offset_a
            sb = pb[q] * inv_cell + offset_b
            inside = (sa >= 0) & (sa < n_cells_a) & (sb >= 0) & (sb < n_cells_b)
            cells[q] = np.int64(sa if inside else 0.0) * n_cells_b + np.int64(sb if inside else 0.0)
            off[q] = not inside
        # Distances along each pixel's table row, stored as columns: dist[slot, pixel].
        dist = np.empty((width, CHUNK), ab.dtype)
        slot = np.empty((width, CHUNK), np.float32)
        row = np.empty(padded, ab.dtype)
        for q in range(CHUNK):
            cell = cells[q]
            a = pa[q]
            b = pb[q]
            for j in range(padded):
                da = a - main[cell, 1, j]
                db = b - main[cell, 2, j]
                row[j] = da * da + db * db
            for j in range(width):
                dist[j, q] = row[j]
                slot[j, q] = main[cell, 0, j]
        special = np.empty(CHUNK, np.int64)
        special_row = np.empty(CHUNK, np.int64)
        n_special = 0
        for q in range(length):
            if off[q] or slot[0, q] < 0:
                special_row[n_special] = -1 if off[q] else int(-1.0 - slot[0, q])
                special[n_special] = q
                n_special += 1
        # The zone's `select` nearest (ties towards the lower bin): each zone row is inserted,
        # branch-free, into a sorted list of `select` rows, then the list becomes rows front .. k-1.
        best_d = np.full((select, CHUNK), np.inf, ab.dtype)
        best_i = np.full((select, CHUNK), np.inf, np.float32)
        carry_d = np.empty(CHUNK, ab.dtype)
        carry_i = np.empty(CHUNK, np.float32)
        for z in range(front, width):
            carry_d[:] = dist[z]
            carry_i[:] = slot[z]
            for s in range(select):
                for q in range(CHUNK):
                    cd = carry_d[q]
                    ci = carry_i[q]
                    bd = best_d[s, q]
                    bi = best_i[s, q]
                    ahead = (cd < bd) | ((cd == bd) & (ci < bi))
                    best_d[s, q] = cd if ahead else bd
                    best_i[s, q] = ci if ahead else bi
                    carry_d[q] = bd if ahead else cd
                    carry_i[q] = bi if ahead else ci
        for s in range(select):
            dist[front + s] = best_d[s]
            slot[front + s] = best_i[s]
        # Weights exp(-scale * (d - nearest)), summed per pixel and normalised as they are written.
        nearest = dist[0].copy()
        for j in range(1, k):
            for q in range(CHUNK):
                nearest[q] = min(nearest[q], dist[j, q])
        weights = np.empty((k, CHUNK), out_w.dtype)
        total = np.zeros(CHUNK, out_w.dtype)
        if fast_exp:
            # 2**t = 2**round(t) (built in the exponent bits) * 2**f, |f| <= 1/2 (a polynomial).
            power = np.empty(CHUNK, np.float32)
            bits = power.view(np.int32)
            poly = np.empty(CHUNK, np.float32)
            for j in range(k):
                for q in range(CHUNK):
                    t = max((nearest[q] - dist[j, q]) * scale_log2, np.float32(_MIN_EXP2))
                    r = np.floor(t + np.float32(0.5))
                    f = t - r
                    p = np.float32(_C7) * f + np.float32(_C6)
                    p = p * f + np.float32(_C5)
                    p = p * f + np.float32(_C4)
                    p = p * f + np.float32(_C3)
                    p = p * f + np.float32(_C2)
                    p = p * f + np.float32(_C1)
                    poly[q] = p * f + np.float32(1.0)
                    bits[q] = (np.int32(r) + np.int32(127)) << np.int32(23)
                for q in range(CHUNK):
                    w = poly[q] * power[q]
                    weights[j, q] = w
                    total[q] += w
        else:
            for j in range(k):
                for q in range(CHUNK):
                    w = math.exp((nearest[q] - dist[j, q]) * scale)
                    weights[j, q] = w
                    total[q] += w
        for q in range(CHUNK):
            total[q] = 1.0 / total[q]
        for j in range(k):
            # 1-D views indexed from 0: the stores vectorise (``start + q`` would compile to scatters,
            # as numba cannot rule out a negative index).
            dst_idx = out_idx[image, j, start : start + length]
            dst_w = out_w[image, j, start : start + length]
            for q in range(length):
                dst_idx[q] = np.int64(slot[j, q])
                dst_w[q] = weights[j, q] * total[q]
        # The few special pixels (overflow cells, off the table, NaN), one by one.
        one_bin = np.empty(k, np.float32)
        one_w = np.empty(k, out_w.dtype)
        for t in range(n_special):
            q = special[t]
            _special_pixel(
                pa[q],
                pb[q],
                special_row[t],
                overflow,
                overflow_select,
                overflow_width,
                centers,
                k,
                scale,
                one_bin,
                one_w,
            )
            for j in range(k):
                out_idx[image, j, start + q] = np.int64(one_bin[j])
                out_w[image, j, start + q] = one_w[j]

"""sRGB <-> CIE Lab conversion, batched and device-agnostic (torch, and a compiled kernel on CPU).

The single place in sslbench where colour spaces are converted and where the inputs of colorization
networks are normalised.  Conventions (identical to ``skimage.color.rgb2lab``/``lab2rgb``, which the
tests use as the reference):

* sRGB (IEC 61966-2-1) with its piecewise gamma; D65 white point, CIE 1931 2-degree observer;
* ``L`` in [0, 100]; ``a``/``b`` unbounded, but 8-bit sRGB colours stay within :data:`AB_GAMUT_RANGE`;
* tensors are (N, 3, H, W) with channels (R, G, B) or (L, a, b).

The piecewise functions (sRGB gamma and the Lab ``f(t)``) are evaluated without ``torch.where``:
with ``t0`` the branch point, ``g(x) = pow(max(x, t0)) + lin(min(x, t0)) - lin(t0)`` equals the
power branch above ``t0`` and the linear branch below it (up to the formulas' own discontinuity at
``t0``: at most 3.3e-7, i.e. 4e-5 in L).  Clamps replace boolean masks, no power is ever taken of a
value below ``t0`` (no NaN/inf, finite gradients near black and for out-of-gamut values), and powers
are ``exp(p * log(x))``: exact to float32 rounding and several times faster than ``pow`` on CPU.
For uint8 input the sRGB gamma is a 256-entry table (computed in float64).  The 3 x 3 colour
matrices are applied with one batched matmul each, the -16 of L folded into the second.

16-bit inputs are converted in float32 and cast back; float64 inputs in float64.  Autocast is
disabled inside (a half-precision matmul would cost ~0.1 in L).  Without autograd, CPU batches are
processed in cache-sized blocks (:mod:`sslbench.colour._blocks`) written straight into the output;
when the input requires grad, the computation is out of place and differentiable.

On CPU, 8-bit input with a float32 (or 16-bit) result, the data pipeline's case, goes through a compiled
kernel (:mod:`sslbench.colour._lab_cpu`) that fuses the same steps into one pass, about three times
faster; ``backend="torch"`` forces the torch path, which the GPU runs.
"""

from __future__ import annotations

import functools
import math

import torch

from sslbench.colour._backends import empty, run_kernel, uses_kernel
from sslbench.colour._blocks import iter_blocks

__all__ = [
    "AB_GAMUT_RANGE",
    "AB_SCALE",
    "D65_WHITE",
    "L_CENTER",
    "L_SCALE",
    "denormalize_ab",
    "denormalize_l",
    "lab_merge",
    "lab_split",
    "lab_to_rgb",
    "normalize_ab",
    "normalize_l",
    "rgb_to_lab",
    "rgb_uint8_to_lab",
]

#: D65 / 2-degree reference white (X, Y, Z) with Y = 1, as in skimage.
D65_WHITE: tuple[float, float, float] = (0.95047, 1.0, 1.08883)

#: Range of (a, b) over the 8-bit sRGB cube: ``((a_min, a_max), (b_min, b_max))``.
AB_GAMUT_RANGE: tuple[tuple[float, float], tuple[float, float]] = ((-86.2, 98.2), (-107.9, 94.5))

#: Networks that regress ab directly predict ``ab / AB_SCALE``.
AB_SCALE: float = 110.0
#: ``normalize_l(L) = (L - L_CENTER) / L_SCALE`` maps L in [0, 100] to [-1, 1].
L_CENTER: float = 50.0
L_SCALE: float = 50.0

# sRGB primaries -> XYZ (as in skimage.color.colorconv.xyz_from_rgb).
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
# Lab = _LAB_FROM_F @ (fx, fy, fz) + (-16, 0, 0)
_LAB_FROM_F = ((0.0, 116.0, 0.0), (500.0, -500.0, 0.0), (0.0, 200.0, -200.0))

# sRGB gamma (decoding: encoded value -> linear light).
_SRGB_T0 = 0.04045
_SRGB_SLOPE = 12.92
_SRGB_A = 0.055
_SRGB_GAMMA = 2.4
# sRGB gamma (encoding: linear light -> encoded value).
_SRGB_LIN_T0 = 0.0031308
# Lab f(t) and its inverse (constants as in skimage).
_LAB_EPS = 0.008856
_LAB_KAPPA = 7.787
_LAB_F_T0 = 0.2068966


def _float64_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    """(3,3) matrices RGB -> XYZ/white and f -> Lab, in float64 on the default device."""
    xyz = torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)
    white = torch.tensor(D65_WHITE, dtype=torch.float64)
    return xyz / white[:, None], torch.tensor(_LAB_FROM_F, dtype=torch.float64)


@functools.lru_cache(maxsize=32)
def _matrices(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward matrices (RGB -> XYZ/white, f -> Lab) cast to ``dtype`` on ``device``."""
    m_xyz, m_lab = _float64_matrices()
    return m_xyz.to(device=device, dtype=dtype), m_lab.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _lab_offset(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 3, 1) offset (-16, 0, 0) added to ``_LAB_FROM_F @ f``."""
    return torch.tensor([-16.0, 0.0, 0.0], dtype=dtype, device=device).view(1, 3, 1)


@functools.lru_cache(maxsize=32)
def _inverse_matrices(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse matrices (Lab with L+16 -> f, XYZ/white -> RGB), inverted in float64."""
    m_xyz, m_lab = _float64_matrices()
    return (
        torch.linalg.inv(m_lab).to(device=device, dtype=dtype),
        torch.linalg.inv(m_xyz).to(device=device, dtype=dtype),
    )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if not dtype.is_floating_point:
        raise TypeError(f"expected a floating point tensor, got {dtype}")
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_image(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3, H, W), got {tuple(x.shape)}")


def _piecewise(
    x: torch.Tensor,
    t0: float,
    slope: float,
    power: float,
    shift: float = 0.0,
    log_offset: float = 0.0,
    offset: float = 0.0,
    inplace: bool = True,
) -> torch.Tensor:
    """``exp(power * log(max(x, t0) + shift) + log_offset) + offset + slope * (min(x, t0) - t0)``.

    That is the power branch above ``t0`` and the linear branch (slope ``slope``, meeting the power
    branch at ``t0``) below it.  ``inplace`` overwrites ``x`` (a private buffer) to save memory
    traffic; without it the computation is autograd-safe.
    """
    if not inplace:
        high = torch.exp(torch.log(x.clamp_min(t0) + shift) * power + log_offset) + offset
        return (x.clamp_max(t0) - t0) * slope + high
    high = x.clamp_min(t0)
    if shift:
        high.add_(shift)
    high.log_().mul_(power)
    if log_offset:
        high.add_(log_offset)
    high.exp_()
    if offset:
        high.add_(offset)
    return x.clamp_max_(t0).sub_(t0).mul_(slope).add_(high)


def _srgb_to_linear(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """sRGB-encoded values -> linear light: ((x + 0.055) / 1.055)**2.4, or x / 12.92 near black."""
    return _piecewise(
        x, _SRGB_T0, 1.0 / _SRGB_SLOPE, _SRGB_GAMMA, _SRGB_A, -_SRGB_GAMMA * math.log1p(_SRGB_A), inplace=inplace
    )


def _linear_to_srgb(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Linear light -> sRGB-encoded values (not clipped): 1.055 x**(1/2.4) - 0.055, or 12.92 x."""
    return _piecewise(
        x, _SRGB_LIN_T0, _SRGB_SLOPE, 1.0 / _SRGB_GAMMA, 0.0, math.log1p(_SRGB_A), -_SRGB_A, inplace=inplace
    )


def _lab_f(t: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Lab's f(t): cbrt(t) above 0.008856, 7.787 t + 16/116 below."""
    return _piecewise(t, _LAB_EPS, _LAB_KAPPA, 1.0 / 3.0, inplace=inplace)


def _lab_f_inv(f: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Inverse of f: f**3 above 0.2068966, (f - 16/116) / 7.787 below."""
    return _piecewise(f, _LAB_F_T0, 1.0 / _LAB_KAPPA, 3.0, inplace=inplace)


def _grad_needed(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Convert sRGB to CIE Lab (D65, 2-degree observer).

    Args:
        rgb: (N, 3, H, W) float tensor, sRGB values in [0, 1], on any device.

    Returns:
        (N, 3, H, W) tensor (L, a, b) with L in [0, 100], same device and dtype as ``rgb``.
        Max abs error vs ``skimage.color.rgb2lab`` (float64) is below 1e-3 in float32.
        Differentiable (autograd-safe when ``rgb`` requires grad).
    """
    _check_image(rgb, "rgb")
    dtype = _compute_dtype(rgb.dtype)
    n, _, h, w = rgb.shape
    if _grad_needed(rgb):
        x = rgb.reshape(n, 3, h * w).to(dtype=dtype, copy=True)
        return _rgb_to_lab(x, inplace=False).view(n, 3, h, w).to(rgb.dtype)
    flat = rgb.reshape(n, 3, h * w)
    out = torch.empty(n, 3, h * w, dtype=rgb.dtype, device=rgb.device)
    for images, pixels in iter_blocks(n, h * w, rgb.device):
        block = flat[images, :, pixels].to(dtype=dtype, copy=True)
        target = out[images, :, pixels]
        if rgb.dtype == dtype and target.is_contiguous():
            _rgb_to_lab(block, out=target)
        else:
            target.copy_(_rgb_to_lab(block))
    return out.view(n, 3, h, w)


@torch.autocast("cuda", enabled=False)
@torch.autocast("cpu", enabled=False)
def _rgb_to_lab(
    x: torch.Tensor, inplace: bool = True, linear: bool = False, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, 3, P) float buffer (overwritten if ``inplace``) -> (N, 3, P) Lab (autocast off: full precision).

    ``linear``: ``x`` already holds linear light (the sRGB gamma has been applied).  ``out``: where to
    write the result (same dtype as ``x``), e.g. a block of the caller's output.
    """
    m_xyz, m_lab = _matrices(x.dtype, x.device)
    t = torch.matmul(m_xyz, x if linear else _srgb_to_linear(x, inplace))
    f = _lab_f(t, inplace)
    offset = _lab_offset(x.dtype, x.device)
    weights = m_lab.expand(f.shape[0], 3, 3)
    if out is None:
        return torch.baddbmm(offset, weights, f)
    return torch.baddbmm(offset, weights, f, out=out)


def rgb_uint8_to_lab(rgb: torch.Tensor, dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
    """Convert 8-bit sRGB images to CIE Lab.

    Args:
        rgb: (N, 3, H, W) uint8 tensor (0..255), on any device.
        dtype: floating dtype of the result.
        backend: ``"auto"`` (on CPU, the compiled kernel of :mod:`sslbench.colour._lab_cpu` for float32
            and 16-bit results; torch elsewhere and for float64), ``"torch"`` or ``"numba"``.

    Returns:
        (N, 3, H, W) Lab tensor of ``dtype`` on ``rgb``'s device, L in [0, 100].
    """
    if rgb.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 tensor, got {rgb.dtype}")
    _check_image(rgb, "rgb")
    compute = _compute_dtype(dtype)
    n, _, h, w = rgb.shape
    flat = rgb.reshape(n, 3, h * w)
    if uses_kernel(backend, rgb.device) and compute == torch.float32:
        return _uint8_to_lab_kernel(flat).view(n, 3, h, w).to(dtype)
    if backend == "numba":
        raise ValueError("the numba back end of rgb_uint8_to_lab computes in float32; use backend='torch' for float64")
    out = torch.empty(n, 3, h * w, dtype=dtype, device=rgb.device)
    table = _linear_table(compute, rgb.device)
    for images, pixels in iter_blocks(n, h * w, rgb.device):
        block = flat[images, :, pixels]
        linear = table.index_select(0, block.reshape(-1).to(torch.int32)).view(block.shape)
        target = out[images, :, pixels]
        if compute == dtype and target.is_contiguous():
            _rgb_to_lab(linear, linear=True, out=target)
        else:
            target.copy_(_rgb_to_lab(linear, linear=True))
    return out.view(n, 3, h, w)


def _uint8_to_lab_kernel(flat: torch.Tensor) -> torch.Tensor:
    """(N, 3, P) uint8 on CPU -> (N, 3, P) float32 Lab, by the compiled kernel."""
    from sslbench.colour._lab_cpu import rgb_uint8_to_lab_kernel

    lab = empty(tuple(flat.shape), torch.float32, flat.device)
    if flat.numel():
        m_xyz, _ = _matrices(torch.float64, flat.device)
        table = _linear_table(torch.float32, flat.device)
        run_kernel(rgb_uint8_to_lab_kernel, flat.contiguous().numpy(), table.numpy(), m_xyz.numpy(), lab.numpy())
    return lab


@functools.lru_cache(maxsize=32)
def _linear_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(256,) linear light of the 8-bit sRGB values, computed in float64 and cast to ``dtype``."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    return _srgb_to_linear(values, inplace=False).to(device=device, dtype=dtype)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Convert CIE Lab (D65, 2-degree observer) to sRGB, clipped to [0, 1].

    Follows ``skimage.color.lab2rgb``, including its clipping of a negative ``fz`` to 0, so any Lab
    value (outside the sRGB gamut, L outside [0, 100], |ab| large) maps to finite RGB in [0, 1].

    Args:
        lab: (N, 3, H, W) float tensor (L, a, b), L nominally in [0, 100].

    Returns:
        (N, 3, H, W) sRGB tensor in [0, 1], same device and dtype as ``lab``.  Differentiable.
    """
    _check_image(lab, "lab")
    dtype = _compute_dtype(lab.dtype)
    n, _, h, w = lab.shape
    if _grad_needed(lab):
        x = lab.reshape(n, 3, h * w).to(dtype=dtype, copy=True)
        return _lab_to_rgb(x, inplace=False).view(n, 3, h, w).to(lab.dtype)
    flat = lab.reshape(n, 3, h * w)
    out = torch.empty(n, 3, h * w, dtype=lab.dtype, device=lab.device)
    for images, pixels in iter_blocks(n, h * w, lab.device):
        out[images, :, pixels] = _lab_to_rgb(flat[images, :, pixels].to(dtype=dtype, copy=True))
    return out.view(n, 3, h, w)


@torch.autocast("cuda", enabled=False)
@torch.autocast("cpu", enabled=False)
def _lab_to_rgb(x: torch.Tensor, inplace: bool = True) -> torch.Tensor:
    """(N, 3, P) Lab float buffer (overwritten if ``inplace``) -> (N, 3, P) sRGB in [0, 1] (autocast off)."""
    m_f, m_rgb = _inverse_matrices(x.dtype, x.device)
    if inplace:
        x[:, 0].add_(16.0)
        f = torch.matmul(m_f, x)
        f[:, 2].clamp_min_(0.0)
    else:
        offset = torch.tensor([16.0, 0.0, 0.0], dtype=x.dtype, device=x.device).view(1, 3, 1)
        f = torch.matmul(m_f, x + offset)
        f = torch.cat([f[:, :2], f[:, 2:].clamp_min(0.0)], dim=1)
    rgb = _linear_to_srgb(torch.matmul(m_rgb, _lab_f_inv(f, inplace)), inplace)
    return rgb.clamp_(0.0, 1.0) if inplace else rgb.clamp(0.0, 1.0)


def lab_split(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (N, 3, H, W) Lab into L (N, 1, H, W) and ab (N, 2, H, W) (views, no copy)."""
    return lab[:, :1], lab[:, 1:]


def lab_merge(l_channel: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Concatenate L (N, 1, H, W) and ab (N, 2, H, W) into Lab (N, 3, H, W)."""
    return torch.cat([l_channel, ab], dim=1)


def normalize_l(l_channel: torch.Tensor) -> torch.Tensor:
    """Encoder input normalisation: ``(L - 50) / 50`` maps L in [0, 100] to [-1, 1]. Any shape."""
    return (l_channel - L_CENTER) / L_SCALE


def denormalize_l(l_norm: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_l`: ``50 * x + 50``. Any shape."""
    return l_norm * L_SCALE + L_CENTER


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    """Regression-target scaling: ``ab / AB_SCALE`` (110). Any shape."""
    return ab / AB_SCALE


def denormalize_ab(ab_norm: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_ab`: ``ab_norm * AB_SCALE``. Any shape."""
    return ab_norm * AB_SCALE

"""The embedded default dataset: procedurally generated scenes of textured shapes, no download, deterministic by seed.

Every image shows one to three objects on a varied background. Each object class has three properties:

* a **shape** (disc, square, triangle, ring, cross, star, ellipse, bar), drawn as a vectorised mask at a random
  position, scale and rotation (ellipse and bar also at a random aspect ratio);
* a **luminance texture** (dots, checker, shading, plain, speckle, concentric rings, stripes, bands) that modulates
  the object's lightness around its base value;
* a **class-typical colour**: a hue fixed per class (classes are spread evenly around the CIE Lab ab circle) with
  small jitter, and a moderately high chroma.

Backgrounds are low-to-mid-chroma colours of random hue, mixed along a linear gradient and a smooth noise field,
with a fine lightness grain; their colour is drawn independently of the objects' classes.

Why colour needs recognition: an object's base lightness is drawn relative to the background behind it (a contrast
of 16-34 L units, lighter or darker), from a range shared by every class, so a pixel's L value says nothing about
its hue. Only the shape and texture, visible in the L channel, tell the class, and the class tells the hue. A
colorization model that sees L must therefore learn to recognise the objects to predict their colour, and the
background teaches it nothing about them. Colours are built in Lab and mapped into the sRGB gamut by reducing chroma
at constant L and hue, so the hue survives the conversion.

The ``mask`` is exact (edges are hard, nothing is blended): 0 is background and object class ``c`` is ``c + 1``.
The primary object (``label``) is the largest one and is drawn in front of the others; a secondary object that is
mostly hidden (less than :data:`MIN_VISIBLE_FRACTION` of it visible) or not smaller than the primary is left out of
the scene entirely, so every class in ``labels`` is recognisably present in the image and the mask.

Determinism: scenes are generated in chunks of :data:`CHUNK` images, each from its own ``torch.Generator`` seeded
by a hash of ``(seed, split, chunk index)``; train and test are independent streams, and every random draw is made
at a fixed shape that depends on neither ``image_size``, nor ``subset``, nor the split's length. So the same
``(split, seed, image_size, options)`` gives bit-identical tensors, a longer split extends a shorter one, and a
different ``image_size`` renders the same scenes at another resolution (up to pixel-level edges and the rare
borderline decision on keeping a partly hidden object).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from sslbench.datasets.base import ImageDataset, subset_indices
from sslbench.datasets.transforms import check_split, normalize_image_size
from sslbench.errors import UsageError
from sslbench.registry import register_dataset

__all__ = ["SyntheticShapes", "ClassSpec", "CLASS_SPECS", "CHUNK", "MIN_VISIBLE_FRACTION", "class_hues", "lab_to_rgb"]

#: Images generated per random stream; fixed so that results do not depend on how a split is chunked.
CHUNK = 256
#: Most objects one image can hold.
MAX_OBJECTS = 3
#: A secondary object less visible than this fraction of its on-canvas area is removed from the scene.
MIN_VISIBLE_FRACTION = 0.35
#: Smallest supported image side.
MIN_IMAGE_SIZE = 16

#: Normalised XYZ (divided by the D65 white) -> linear sRGB, row by row: scikit-image's ``rgb_from_xyz`` (the
#: inverse of its ``xyz_from_rgb``) times the white point, so images round-trip through ``skimage.color.rgb2lab``.
_XYZ_TO_LINEAR = tuple(
    tuple(coefficient * white for coefficient, white in zip(row, (0.95047, 1.0, 1.08883)))
    for row in (
        (3.24048134, -1.53715152, -0.49853633),
        (-0.96925495, 1.87599, 0.04155593),
        (0.05564664, -0.20404134, 1.05731107),
    )
)

_Planes = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ClassSpec:
    """One object class: its name, the shape that outlines it and the luminance texture that fills it."""

    name: str
    shape: str
    texture: str


#: The object classes, in label order. Names describe shape and texture only; colour is assigned by position.
CLASS_SPECS: tuple[ClassSpec, ...] = (
    ClassSpec("disc_dotted", "disc", "dots"),
    ClassSpec("square_checkered", "square", "checker"),
    ClassSpec("triangle_shaded", "triangle", "shading"),
    ClassSpec("ring_plain", "ring", "plain"),
    ClassSpec("cross_speckled", "cross", "speckle"),
    ClassSpec("star_ringed", "star", "concentric"),
    ClassSpec("ellipse_striped", "ellipse", "stripes"),
    ClassSpec("bar_banded", "bar", "bands"),
)


# --------------------------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------------------------
def _lab_to_linear_rgb(lightness: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> _Planes:
    """CIE Lab (D65) to linear sRGB, not clipped; one tensor per channel, any (equal) shapes."""
    fy = (lightness + 16.0) / 116.0
    fx, fz = fy + a / 500.0, fy - b / 200.0
    xyz = [torch.where(f > 6.0 / 29.0, f * f * f, (f - 16.0 / 116.0) / 7.787) for f in (fx, fy, fz)]
    r, g, b = (m[0] * xyz[0] + m[1] * xyz[1] + m[2] * xyz[2] for m in _XYZ_TO_LINEAR)
    return r, g, b


def _in_gamut(rgb: _Planes, tolerance: float = 1e-4) -> torch.Tensor:
    """Which pixels of linear RGB planes lie inside the unit cube."""
    low = torch.minimum(torch.minimum(rgb[0], rgb[1]), rgb[2])
    high = torch.maximum(torch.maximum(rgb[0], rgb[1]), rgb[2])
    return (low >= -tolerance) & (high <= 1.0 + tolerance)


def _chroma_scale(lightness: torch.Tensor, a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """For out-of-gamut Lab pixels, the largest chroma scale in [0, 1] found in gamut by ``steps`` bisections."""
    low = torch.zeros_like(lightness)
    high = torch.ones_like(lightness)
    for _ in range(steps):
        mid = (low + high) / 2
        fits = _in_gamut(_lab_to_linear_rgb(lightness, a * mid, b * mid))
        low = torch.where(fits, mid, low)
        high = torch.where(fits, high, mid)
    return low


def _srgb_gamma(linear: torch.Tensor) -> torch.Tensor:
    """Linear RGB to gamma-encoded sRGB in [0, 1] (clipped first)."""
    linear = linear.clamp(0.0, 1.0)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.pow(1.0 / 2.4) - 0.055)


def lab_to_rgb(lab: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Lab images ``(N, 3, H, W)`` to sRGB in [0, 1], bringing out-of-gamut pixels inside by shrinking their chroma.

    Lightness and hue are kept: for each pixel outside the sRGB gamut the largest chroma scale in [0, 1] that fits
    is found by ``steps`` rounds of bisection (grey, scale 0, always fits for L in [0, 100]).
    """
    lightness, a, b = lab.unbind(1)
    rgb = _lab_to_linear_rgb(lightness, a, b)
    outside = torch.nonzero(~_in_gamut(rgb), as_tuple=True)
    if outside[0].numel():
        scale = _chroma_scale(lightness[outside], a[outside], b[outside], steps)
        fixed = _lab_to_linear_rgb(lightness[outside], a[outside] * scale, b[outside] * scale)
        for plane, values in zip(rgb, fixed):
            plane[outside] = values
    return torch.stack([_srgb_gamma(plane) for plane in rgb], dim=1)


def _to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] to uint8 in [0, 255], rounding to nearest."""
    return (rgb * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def _polar_ab(chroma: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """ab pairs ``(..., 2)`` from chroma and hue angle in radians."""
    return torch.stack((chroma * torch.cos(hue), chroma * torch.sin(hue)), dim=-1)


def class_hues(num_classes: int) -> torch.Tensor:
    """Mean hue (radians) of each class: evenly spread around the ab circle, starting at 20 degrees (a warm red)."""
    return math.radians(20.0) + torch.arange(num_classes, dtype=torch.float32) * (2 * math.pi / num_classes)


# --------------------------------------------------------------------------------------------------------------
# Geometry: coordinates, shape masks and textures
# --------------------------------------------------------------------------------------------------------------
def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(y, x)``, each ``(size, size)``, normalised to [-1, 1] across the image."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return y, x


def _local_coords(
    y: torch.Tensor, x: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor, angle: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Object-frame coordinates ``(u, v)``, each ``(n, H, W)``: shifted to ``centre``, rotated by ``angle`` and
    divided by ``radius``, so the object's outline lies near the unit circle."""
    dx = x.unsqueeze(0) - centre[:, 0, None, None]
    dy = y.unsqueeze(0) - centre[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    r = radius[:, None, None]
    return (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r


def _disc(u: torch.Tensor, v: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
    return u**2 + v**2 <= 0.9**2


def _square(u: torch.Tensor, v: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.8


def _triangle(u: torch.Tensor, v: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
    """Equilateral triangle with circumradius 1.2 (its edges 0.6 from the centre)."""
    inside = torch.ones_like(u, dtype=torch.bool)
    for k in range(3):
        normal = math.pi / 2 + k * 2 * math.pi / 3
        inside &= u * math.cos(normal) + v * math.sin(normal) <= 0.6
    return inside


def _ring(u: torch.Tensor, v: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
    r2 = u**2 + v**2
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _cross(u: torch.Tensor, v: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.33) & (av <= 1.0)) | ((av <= 0.33) & (au <= 1.0))


def _star(u: torch.Tensor, v: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
    """Five-pointed star: outer radius 1.1, inner 0.45, radius interpolated linearly in angle."""
    phase = torch.remainder(torch.atan2(v, u) * (5 / (2 * math.pi)), 1.0)
    spike = (phase - 0.5).abs() * 2.0
    return u**2 + v**2 <= (0.45 + 0.65 * spike) ** 2


def _ellipse(u: torch.Tensor, v: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
    minor = 0.55 + 0.2 * aspect[:, None, None]
    return (u / 1.1) ** 2 + (v / minor) ** 2 <= 1.0


def _bar(u: torch.Tensor, v: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
    half_width = 0.3 + 0.1 * aspect[:, None, None]
    return (u.abs() <= 1.2) & (v.abs() <= half_width)


ShapeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: Shape name -> ``(u, v, aspect) -> bool mask``, in object-frame coordinates.
SHAPES: dict[str, ShapeFn] = {
    "disc": _disc,
    "square": _square,
    "triangle": _triangle,
    "ring": _ring,
    "cross": _cross,
    "star": _star,
    "ellipse": _ellipse,
    "bar": _bar,
}


@dataclass
class _TextureInput:
    """What a texture sees of the objects it fills (``n`` objects, ``(n, H, W)`` fields)."""

    u: torch.Tensor  # object frame, in object radii
    v: torch.Tensor
    radius: torch.Tensor  # (n,), image units (the image spans 2)
    phase: torch.Tensor  # (n, 2) in [0, 1)
    noise: torch.Tensor  # (n, 1, G, G) standard normal

    @property
    def pu(self) -> torch.Tensor:
        """Rotated offset along the object's main axis, in image units (so periods are fixed on the canvas)."""
        return self.u * self.radius[:, None, None]

    @property
    def pv(self) -> torch.Tensor:
        return self.v * self.radius[:, None, None]


def _square_wave(t: torch.Tensor) -> torch.Tensor:
    """A softened square wave of ``2*pi*t``, in [-1, 1] (soft edges alias less at small sizes)."""
    return torch.tanh(2.5 * torch.sin(2 * math.pi * t))


def _tex_plain(t: _TextureInput) -> torch.Tensor:
    return torch.zeros_like(t.u)


def _tex_dots(t: _TextureInput) -> torch.Tensor:
    """Round dots of radius 0.1 on a square lattice of pitch 0.36 (image units)."""
    pitch = 0.36
    du = torch.remainder(t.pu / pitch + t.phase[:, 0, None, None], 1.0) - 0.5
    dv = torch.remainder(t.pv / pitch + t.phase[:, 1, None, None], 1.0) - 0.5
    return torch.where((du**2 + dv**2) * pitch**2 <= 0.1**2, 1.0, -1.0)


def _tex_checker(t: _TextureInput) -> torch.Tensor:
    """Checkerboard of 0.25-wide cells."""
    period = 0.5
    a = _square_wave(t.pu / period + t.phase[:, 0, None, None])
    b = _square_wave(t.pv / period + t.phase[:, 1, None, None])
    return a * b


def _tex_shading(t: _TextureInput) -> torch.Tensor:
    """Linear ramp across the object along its main axis."""
    return (t.u / 1.1).clamp(-1.0, 1.0)


def _tex_speckle(t: _TextureInput) -> torch.Tensor:
    """Blotchy noise from a coarse grid fixed to the object frame."""
    grid = torch.stack((t.u, t.v), dim=-1) / 1.1
    sampled = F.grid_sample(t.noise, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return (sampled[:, 0] / 0.8).clamp(-1.0, 1.0)


def _tex_concentric(t: _TextureInput) -> torch.Tensor:
    """Rings about the object's centre with a period of 0.3."""
    rho = torch.sqrt(t.pu**2 + t.pv**2)
    return _square_wave(rho / 0.3 + t.phase[:, 0, None, None])


def _tex_stripes(t: _TextureInput) -> torch.Tensor:
    """Fine stripes along the main axis (period 0.26)."""
    return _square_wave(t.pv / 0.26 + t.phase[:, 0, None, None])


def _tex_bands(t: _TextureInput) -> torch.Tensor:
    """Coarse bands across the main axis (period 0.5)."""
    return _square_wave(t.pu / 0.5 + t.phase[:, 0, None, None])


TextureFn = Callable[[_TextureInput], torch.Tensor]
#: Texture name -> function giving a luminance pattern in [-1, 1] over each object.
TEXTURES: dict[str, TextureFn] = {
    "plain": _tex_plain,
    "dots": _tex_dots,
    "checker": _tex_checker,
    "shading": _tex_shading,
    "speckle": _tex_speckle,
    "concentric": _tex_concentric,
    "stripes": _tex_stripes,
    "bands": _tex_bands,
}


# --------------------------------------------------------------------------------------------------------------
# Scene parameters (all drawn at shapes independent of the image size)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _SceneParams:
    """Random parameters of a chunk of ``n`` scenes with ``MAX_OBJECTS`` object slots; slot 0 is the primary."""

    num_objects: torch.Tensor  # (n,) int64 in [1, max_objects]
    cls: torch.Tensor  # (n, S) int64
    centre: torch.Tensor  # (n, S, 2) (x, y) in image units
    radius: torch.Tensor  # (n, S)
    angle: torch.Tensor  # (n, S)
    aspect: torch.Tensor  # (n, S) in [0, 1)
    ab: torch.Tensor  # (n, S, 2) object colour before gamut mapping
    contrast: torch.Tensor  # (n, S) signed lightness offset from the background
    tex_amp: torch.Tensor  # (n, S) texture amplitude, L units
    tex_phase: torch.Tensor  # (n, S, 2)
    tex_noise: torch.Tensor  # (n, S, 1, 6, 6)
    bg_lab: torch.Tensor  # (n, 2, 3) two background colours
    bg_direction: torch.Tensor  # (n,) gradient angle
    bg_mix: torch.Tensor  # (n,) weight of the gradient against the smooth noise
    bg_field: torch.Tensor  # (n, 1, 4, 4) smooth noise in [0, 1]
    bg_grain: torch.Tensor  # (n, 1, 12, 12) standard normal lightness grain


def _uniform(g: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=g)


def _place_secondaries(g: torch.Generator, primary: torch.Tensor, n: int, candidates: int = 4) -> torch.Tensor:
    """Centres ``(n, S, 2)``: the primary's, then for each secondary the one of ``candidates`` random points
    farthest from the centres placed before it, so objects overlap less often."""
    centres = [primary]
    draws = _uniform(g, (n, MAX_OBJECTS - 1, candidates, 2), -0.72, 0.72)
    for k in range(MAX_OBJECTS - 1):
        placed = torch.stack(centres, dim=1)  # (n, k+1, 2)
        options = draws[:, k]  # (n, C, 2)
        nearest = torch.cdist(options, placed).min(dim=2).values  # (n, C)
        best = nearest.argmax(dim=1)
        centres.append(options[torch.arange(n), best])
    return torch.stack(centres, dim=1)


def _random_sign(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)


def _draw_layout(g: torch.Generator, n: int, num_classes: int, max_objects: int) -> dict[str, torch.Tensor]:
    """How many objects, of which classes, where, how large and how turned. Slot 0 (the primary) is the largest."""
    s = MAX_OBJECTS
    count_probs = torch.tensor([0.4, 0.35, 0.25])[:max_objects]
    num_objects = torch.multinomial(count_probs / count_probs.sum(), n, replacement=True, generator=g) + 1
    cls = torch.randint(num_classes, (n, s), generator=g)
    primary_centre = _uniform(g, (n, 2), -0.35, 0.35)
    return {
        "num_objects": num_objects,
        "cls": cls,
        "centre": _place_secondaries(g, primary_centre, n),
        "radius": torch.cat((_uniform(g, (n, 1), 0.5, 0.7), _uniform(g, (n, s - 1), 0.3, 0.45)), dim=1),
        "angle": _uniform(g, (n, s), 0.0, 2 * math.pi),
        "aspect": torch.rand((n, s), generator=g),
    }


def _draw_object_looks(g: torch.Generator, cls: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Colour and texture of every object slot: class hue plus 7 degrees of jitter, chroma 32-52, a lightness
    contrast of 16-34 L units to the background (either sign), and a texture amplitude of 9-15 L units."""
    n, s = cls.shape
    hue = class_hues(num_classes)[cls] + torch.randn((n, s), generator=g) * math.radians(7.0)
    return {
        "ab": _polar_ab(_uniform(g, (n, s), 32.0, 52.0), hue),
        "contrast": _random_sign(g, (n, s)) * _uniform(g, (n, s), 16.0, 34.0),
        "tex_amp": _random_sign(g, (n, s)) * _uniform(g, (n, s), 9.0, 15.0),
        "tex_phase": torch.rand((n, s, 2), generator=g),
        "tex_noise": torch.randn((n, s, 1, 6, 6), generator=g),
    }


def _draw_background(g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
    """Two background colours of any hue, L 18-90 and chroma 0-25, and the fields that mix them."""
    lightness = _uniform(g, (n, 2, 1), 18.0, 90.0)
    ab = _polar_ab(_uniform(g, (n, 2), 0.0, 25.0), _uniform(g, (n, 2), 0.0, 2 * math.pi))
    return {
        "bg_lab": torch.cat((lightness, ab), dim=2),
        "bg_direction": _uniform(g, (n,), 0.0, 2 * math.pi),
        "bg_mix": torch.rand((n,), generator=g),
        "bg_field": torch.rand((n, 1, 4, 4), generator=g),
        "bg_grain": torch.randn((n, 1, 12, 12), generator=g),
    }


def _draw_params(g: torch.Generator, n: int, num_classes: int, max_objects: int) -> _SceneParams:
    """Every random draw for ``n`` scenes, in a fixed order and at fixed shapes."""
    layout = _draw_layout(g, n, num_classes, max_objects)
    looks = _draw_object_looks(g, layout["cls"], num_classes)
    return _SceneParams(**layout, **looks, **_draw_background(g, n))


def _select(p: _SceneParams, keep: torch.Tensor) -> _SceneParams:
    """The parameters of the scenes ``keep`` of a chunk (draws are made for the full chunk, then cut)."""
    return _SceneParams(**{name: value[keep] for name, value in vars(p).items()})


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------
def _render_background(p: _SceneParams, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Background Lab ``(n, 3, H, W)``: two colours mixed by a gradient and a smooth field, plus lightness grain."""
    size = y.shape[0]
    cos, sin = torch.cos(p.bg_direction)[:, None, None], torch.sin(p.bg_direction)[:, None, None]
    gradient = ((cos * x + sin * y) / math.sqrt(2) + 1.0) / 2.0
    field = F.interpolate(p.bg_field, size=(size, size), mode="bicubic", align_corners=False)[:, 0].clamp(0, 1)
    mix = p.bg_mix[:, None, None]
    t = (mix * gradient + (1 - mix) * field).unsqueeze(1)
    first, second = p.bg_lab[:, 0, :, None, None], p.bg_lab[:, 1, :, None, None]
    lab = first + t * (second - first)
    grain = F.interpolate(p.bg_grain, size=(size, size), mode="bilinear", align_corners=False)
    lab[:, :1] = (lab[:, :1] + 3.0 * grain).clamp(5.0, 95.0)
    return lab


def _sample_at(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Values of ``field`` ``(n, H, W)`` at ``points`` ``(n, 2)`` (x, y in image units), bilinearly."""
    grid = points.clamp(-1.0, 1.0).view(-1, 1, 1, 2)
    return F.grid_sample(field.unsqueeze(1), grid, mode="bilinear", align_corners=False).view(-1)


def _object_lightness_base(p: _SceneParams, slot: int, background_l: torch.Tensor) -> torch.Tensor:
    """Base lightness ``(n,)`` of each object in ``slot``: the background's at its centre plus the signed contrast,
    flipped to the other side when it would leave [22, 88] (so it always stands out from what is behind it)."""
    behind = _sample_at(background_l, p.centre[:, slot])
    base = behind + p.contrast[:, slot]
    return torch.where((base < 22.0) | (base > 88.0), behind - p.contrast[:, slot], base).clamp(22.0, 88.0)


def _render_slot(
    p: _SceneParams, slot: int, classes: tuple[ClassSpec, ...], y: torch.Tensor, x: torch.Tensor, base: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage ``(n, H, W)`` bool and lightness ``(n, H, W)`` of the objects in one slot, as if each stood alone.

    Objects are grouped by class, so each shape and texture function runs once, vectorised over its images.
    """
    n = p.cls.shape[0]
    size = y.shape[0]
    cover = torch.zeros((n, size, size), dtype=torch.bool)
    lightness = torch.zeros((n, size, size))
    for c, spec in enumerate(classes):
        idx = torch.nonzero((p.cls[:, slot] == c) & (p.num_objects > slot)).flatten()
        if idx.numel() == 0:
            continue
        radius = p.radius[idx, slot]
        u, v = _local_coords(y, x, p.centre[idx, slot], radius, p.angle[idx, slot])
        cover.index_copy_(0, idx, SHAPES[spec.shape](u, v, p.aspect[idx, slot]))
        pattern = TEXTURES[spec.texture](_TextureInput(u, v, radius, p.tex_phase[idx, slot], p.tex_noise[idx, slot]))
        value = pattern.mul_(p.tex_amp[idx, slot, None, None]).add_(base[idx, None, None]).clamp_(8.0, 95.0)
        lightness.index_copy_(0, idx, value)
    return cover, lightness


def _paint_order(num_slots: int) -> list[int]:
    """Slots from back to front: secondaries first, the primary (slot 0) last, so it is never occluded."""
    return list(range(num_slots - 1, -1, -1))


def _owners(covers: list[torch.Tensor]) -> torch.Tensor:
    """Which slot owns each pixel ``(n, H, W)`` after painting back to front; -1 for background."""
    owner = torch.full(covers[0].shape, -1, dtype=torch.int64)
    for slot in _paint_order(len(covers)):
        owner.masked_fill_(covers[slot], slot)
    return owner


def _kept_slots(covers: list[torch.Tensor]) -> torch.Tensor:
    """Which slots ``(n, S)`` to keep: the primary, and every secondary that covers less of the canvas than the
    primary and is at least ``MIN_VISIBLE_FRACTION`` visible.

    Removing a slot can only uncover the slots behind it, so one pass leaves every kept slot visible enough, and
    the primary stays the largest object in the picture.
    """
    n, s = covers[0].shape[0], len(covers)
    owner = _owners(covers)
    key = (torch.arange(n)[:, None] * (s + 1) + owner.flatten(1) + 1).flatten()
    visible = torch.bincount(key, minlength=n * (s + 1)).view(n, s + 1)[:, 1:].float()
    area = torch.stack([cover.flatten(1).sum(dim=1) for cover in covers], dim=1).float()
    keep = (area > 0) & (visible >= MIN_VISIBLE_FRACTION * area) & (area < area[:, :1])
    keep[:, 0] = True
    return keep


def _composite(
    lab: torch.Tensor, p: _SceneParams, slots: list[tuple[torch.Tensor, torch.Tensor]], keep: torch.Tensor
) -> torch.Tensor:
    """Paint the kept objects over the background ``lab`` (in place), back to front; returns the uint8 mask."""
    mask = torch.zeros(lab[:, 0].shape, dtype=torch.uint8)
    for k in _paint_order(len(slots)):
        cover, lightness = slots[k]
        here = cover & keep[:, k, None, None]
        lab[:, 0] = torch.where(here, lightness, lab[:, 0])
        for channel in (1, 2):
            lab[:, channel] = torch.where(here, p.ab[:, k, channel - 1, None, None], lab[:, channel])
        mask = torch.where(here, (p.cls[:, k, None, None] + 1).to(torch.uint8), mask)
    return mask


def render_chunk(
    p: _SceneParams, classes: tuple[ClassSpec, ...], size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render scenes: uint8 images ``(n, 3, H, W)``, uint8 masks ``(n, H, W)``, and multi-hot ``(n, K)`` float32."""
    y, x = _pixel_grid(size)
    lab = _render_background(p, y, x)
    slots = [_render_slot(p, k, classes, y, x, _object_lightness_base(p, k, lab[:, 0])) for k in range(p.cls.shape[1])]
    keep = _kept_slots([cover for cover, _ in slots])
    mask = _composite(lab, p, slots, keep)
    present = torch.zeros((mask.shape[0], len(classes) + 1)).scatter_(1, mask.long().flatten(1), 1.0)[:, 1:]
    return _to_uint8(lab_to_rgb(lab)), mask, present


def _stream_seed(seed: int, split: str, chunk: int) -> int:
    """A 63-bit generator seed for one chunk of one split, stable across platforms and Python runs."""
    digest = hashlib.sha256(f"sslbench.synthetic/{seed}/{split}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _int_option(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``, or a :class:`UsageError` naming the option and its range."""
    valid = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not valid or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise UsageError(f"dataset 'synthetic': {name} must be an integer {bounds}, got {value!r}")
    return int(value)


def _square_size(image_size: Any, default: int) -> int:
    """The side of the square images: ``image_size`` (an int, or an ``(H, W)`` pair with ``H == W``) or ``default``;
    a :class:`UsageError` for anything else or a side under :data:`MIN_IMAGE_SIZE`."""
    size = normalize_image_size(image_size, default)
    if isinstance(size, tuple):
        if size[0] != size[1]:
            raise UsageError(f"dataset 'synthetic' makes square images; got image_size {size[0]}x{size[1]}")
        size = size[0]
    return _int_option("image_size", size, MIN_IMAGE_SIZE)


# --------------------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------------------
@register_dataset("synthetic")
class SyntheticShapes(ImageDataset):
    """Synthetic textured shapes with class-typical colours on varied backgrounds; embedded, no download.

    Args:
        root: accepted for a uniform interface and ignored (nothing is read from disk).
        split: ``"train"`` or ``"test"``; independent random streams.
        image_size: side of the square images (>= 16); default 32.
        subset: keep at most this many items of the split, chosen by ``seed`` (the scenes themselves do not
            depend on it).
        seed: seeds the scene generator (together with the split) and the subset choice.
        num_train: images in the train split.
        num_test: images in the test split.
        num_classes: object classes, 2 to 8: the first ``num_classes`` of :data:`CLASS_SPECS`, their hues spread
            evenly around the ab circle.
        max_objects: most objects per image, 1 to 3.

    Items: ``image`` uint8 (3, H, W); ``label`` the primary (largest, frontmost) object's class; ``labels``
    float32 multi-hot of the classes visible; ``mask`` int64 (H, W), 0 background and ``c + 1`` for class ``c``.
    The whole split is rendered at construction: about 0.35 s of one CPU core per 1,000 images at 32x32, growing
    with the pixel count (about 5.5 s per 1,000 at 128x128).
    """

    name = "synthetic"
    provides = frozenset({"label", "labels", "mask"})
    splits = ("train", "test")
    eval_split = "test"
    default_image_size = 32
    env_var = None
    synthetic = True
    ignore_index = 255

    def __init__(
        self,
        *,
        root: Any = None,
        split: str = "train",
        image_size: int | None = None,
        subset: int | None = None,
        seed: int = 0,
        num_train: int = 2000,
        num_test: int = 500,
        num_classes: int = len(CLASS_SPECS),
        max_objects: int = MAX_OBJECTS,
    ) -> None:
        check_split(self.name, split, self.splits)
        size = _square_size(image_size, self.default_image_size)
        num_classes = _int_option("num_classes", num_classes, 2, len(CLASS_SPECS))
        max_objects = _int_option("max_objects", max_objects, 1, MAX_OBJECTS)
        length = _int_option(f"num_{split}", num_train if split == "train" else num_test, 1)
        seed = _int_option("seed", seed, 0)
        subset = None if subset is None else _int_option("subset", subset, 1)
        self.root = None
        self.split = split
        self.image_size = size
        self.seed = seed
        self.max_objects = max_objects
        self.specs = CLASS_SPECS[:num_classes]
        self.class_names = tuple(spec.name for spec in self.specs)
        self.mask_class_names = ("background",) + self.class_names
        self.indices = subset_indices(length, subset, seed)
        self.images, self.masks, self.multi_hot, self.targets = self._generate(self.indices)

    def _generate(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render the chunks holding ``indices`` and keep those items, in order."""
        wanted = torch.tensor(indices, dtype=torch.int64)
        images, masks, multi_hot, targets = [], [], [], []
        for chunk in torch.unique(wanted // CHUNK).tolist():
            g = torch.Generator().manual_seed(_stream_seed(self.seed, self.split, chunk))
            params = _draw_params(g, CHUNK, len(self.specs), self.max_objects)
            keep = wanted[wanted // CHUNK == chunk] - chunk * CHUNK
            params = _select(params, keep)
            chunk_images, chunk_masks, chunk_present = render_chunk(params, self.specs, self.image_size)
            images.append(chunk_images)
            masks.append(chunk_masks)
            multi_hot.append(chunk_present)
            targets.append(params.cls[:, 0])
        return torch.cat(images), torch.cat(masks), torch.cat(multi_hot), torch.cat(targets)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.images[index].clone(),
            "label": int(self.targets[index]),
            "labels": self.multi_hot[index].clone(),
            "mask": self.masks[index].long(),
        }

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(seed=self.seed, max_objects=self.max_objects)
        return info

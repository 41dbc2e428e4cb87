"""Bad files in real image collections: how an image file is decoded to RGB, what counts as bad, and the list of them.

:func:`decode_image` is the one way the file-reading adapters turn a file into an RGB image. It refuses, with a
:class:`BadImageError` carrying a :class:`BadImage` (path, kind, reason), files of these kinds:

- ``empty``: zero bytes;
- ``not_image``: content that is no image format PIL knows (a text file or random bytes named ``x.jpg``);
- ``truncated``: an image whose data stops early (a JPEG without its end marker, a PNG without ``IEND``, or PIL
  reporting a truncated read);
- ``corrupt``: an image whose data cannot be decoded for another reason (garbled entropy-coded data, ...);
- ``unsupported``: a pixel format with no agreed RGB meaning (floating-point mode ``F``, ...);
- ``too_small``: shorter side below the adapter's ``min_image_size`` (a 1x1 "image" is a flat patch, not a photo);
- ``too_large``: more pixels than PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, doubled);
- ``unreadable``: the file cannot be opened at all (missing, a folder, no permission).

The adapters add two kinds of their own (see ``ImageDataset`` in ``base.py``): ``grayscale`` (the image carries no
colour; refused only where bad images are skipped, i.e. for pretext training on a colour dataset) and ``bad_mask``
(a segmentation mask that cannot be read or does not fit its image).

Conversions that are *not* errors:

- 16-bit greyscale (PIL modes ``I;16``, ``I;16B``, ``I;16L``, and ``I``, which older Pillow uses for 16-bit PNGs) is
  scaled to 8 bits by keeping the high byte (``value >> 8``). PIL's own ``convert("RGB")`` clips such values at 255,
  so a mid-grey 16-bit PNG came out almost white. 16-bit RGB(A) PNGs and TIFFs are already reduced to their high
  bytes by PIL's decoders.
- CMYK (and inverted Adobe CMYK) JPEGs are converted by PIL's ``convert("RGB")`` (no ICC colour management).
- Images with transparency (an alpha band, or a palette or RGB image with a ``transparency`` entry) are converted to
  RGBA and composited over white, as an image viewer shows them. Dropping alpha instead (torchvision's loader) would
  expose whatever colour the file stores under fully transparent pixels, which is arbitrary; white is colour-neutral
  (a = b = 0 in Lab), so it adds no colour for a colorization target to learn.

A JPEG whose entropy-coded data is garbled but structurally complete may still decode (libjpeg only warns); no cheap
check can tell such an image from a real one, and it is not reported.
"""

from __future__ import annotations

import struct
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from sslbench.errors import DataError, UsageError

__all__ = [
    "BAD_KINDS",
    "ON_BAD_IMAGE",
    "BadImage",
    "BadImageError",
    "BadImageWarning",
    "check_on_bad_image",
    "check_min_image_size",
    "decode_image",
    "to_rgb",
    "is_grayscale",
    "bad_mask_errors",
    "count_by_kind",
    "write_bad_images_file",
    "read_bad_images_file",
]

#: Every kind of bad image, with what it means (the ``kind`` of a :class:`BadImage`).
BAD_KINDS: dict[str, str] = {
    "empty": "zero-byte file",
    "not_image": "not an image (content of no known image format)",
    "truncated": "image data stops before the end of the image",
    "corrupt": "image data cannot be decoded",
    "unsupported": "pixel format with no defined RGB meaning",
    "too_small": "shorter side below min_image_size",
    "too_large": "more pixels than PIL's decompression-bomb limit",
    "unreadable": "the file cannot be opened",
    "grayscale": "no colour (single-channel source, or R = G = B everywhere)",
    "bad_mask": "its segmentation mask cannot be read or does not fit the image",
}
#: Values of the adapters' ``on_bad_image`` option.
ON_BAD_IMAGE: tuple[str, ...] = ("skip", "error")

#: Source modes that hold one colour channel (alpha aside).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
#: What decoders raise on broken data, besides OSError (PIL's plugins use several).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, ZeroDivisionError)


@dataclass(frozen=True)
class BadImage:
    """One bad file: where it is, which of :data:`BAD_KINDS` it is, and what exactly was wrong."""

    path: str
    kind: str
    reason: str


class BadImageError(DataError):
    """An image (or its mask) that cannot be used; ``bad`` says which file and why."""

    def __init__(self, bad: BadImage) -> None:
        self.bad = bad
        super().__init__(
            f"bad image {bad.path} ({bad.kind}: {bad.reason}). Remove or replace the file, or leave such files out "
            "with the dataset option on_bad_image=skip; `sslbench check-data` lists every bad file at once."
        )


class BadImageWarning(UserWarning):
    """A bad image was left out while reading a dataset with ``on_bad_image="skip"``."""


def check_on_bad_image(value: str) -> str:
    """``value`` if it is one of :data:`ON_BAD_IMAGE`; :class:`UsageError` naming the option otherwise."""
    if value not in ON_BAD_IMAGE:
        raise UsageError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {value!r}")
    return value


def check_min_image_size(value: int) -> int:
    """``value`` if it is a positive int; :class:`UsageError` naming the option otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"min_image_size must be a positive int (pixels of the shorter side), got {value!r}")
    return int(value)


def _signature(path: Path) -> str | None:
    """The image format ``path``'s first bytes announce, or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _ends_early(path: Path, fmt: str | None) -> bool:
    """True when a JPEG lacks its end-of-image marker or a PNG its ``IEND`` chunk near the end of the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 32))
        tail = f.read()
    if fmt == "JPEG":
        return b"\xff\xd9" not in tail
    if fmt == "PNG":
        return b"IEND" not in tail
    return False


def _broken(path: Path, exc: BaseException, identified: bool) -> BadImage:
    """Classify a decode failure: not an image, truncated or corrupt."""
    fmt = _signature(path)
    if not identified and fmt is None:
        return BadImage(str(path), "not_image", "its content is no image format PIL can identify")
    if "truncated" in str(exc).lower() or _ends_early(path, fmt):
        return BadImage(str(path), "truncated", f"{fmt or 'image'} data ends early ({exc})")
    return BadImage(str(path), "corrupt", f"{fmt or 'image'} data cannot be decoded ({type(exc).__name__}: {exc})")


def _sixteen_to_eight(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale image (modes ``I;16*`` or ``I``) as mode L, keeping each value's high byte."""
    values = np.asarray(img)
    if img.mode == "I":
        values = np.clip(values, 0, 65535)
    return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """A loaded PIL image of any mode as mode RGB (see the module docstring for 16-bit, CMYK and transparency).

    Raises ``ValueError`` for modes with no defined RGB meaning (``F``, ``LAB``, ``HSV``...).
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_to_eight(img).convert("RGB")
    if mode == "RGB" and "transparency" not in img.info:
        return img.copy()
    if mode in ("1", "L", "P", "RGB", "CMYK", "YCbCr", *_ALPHA_MODES):
        if mode in _ALPHA_MODES or "transparency" in img.info:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Palette images with Transparency ..."
                rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    raise ValueError(f"PIL mode {mode!r} has no defined RGB meaning")


def is_grayscale(rgb: Image.Image, source_mode: str) -> bool:
    """True when the source had one colour channel or the RGB image has R = G = B at every pixel."""
    if source_mode in GRAY_MODES:
        return True
    pixels = np.asarray(rgb)
    return bool(np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2]))


def decode_image(path: Path, *, min_size: int = 1) -> tuple[Image.Image, str]:
    """Decode ``path`` fully to ``(RGB image, source PIL mode)``.

    Raises :class:`BadImageError` for a file of any kind in the module docstring; the size check uses the header
    alone, so a too-small file is not decoded.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadImageError(BadImage(str(path), "unreadable", f"{type(exc).__name__}: {exc.strerror or exc}"))
    if not path.is_file():
        raise BadImageError(BadImage(str(path), "unreadable", "not a regular file"))
    if size == 0:
        raise BadImageError(BadImage(str(path), "empty", "the file has 0 bytes"))
    identified = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                identified = True
                width, height = img.size
                if min(width, height) < min_size:
                    reason = f"{width}x{height} pixels, shorter side below min_image_size={min_size}"
                    raise BadImageError(BadImage(str(path), "too_small", reason))
                img.load()
                mode = img.mode
                try:
                    rgb = to_rgb(img)
                except ValueError as exc:
                    raise BadImageError(BadImage(str(path), "unsupported", str(exc))) from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(BadImage(str(path), "too_large", str(exc))) from exc
    except PermissionError as exc:
        raise BadImageError(BadImage(str(path), "unreadable", f"{type(exc).__name__}: {exc.strerror or exc}")) from exc
    except UnidentifiedImageError as exc:
        raise BadImageError(_broken(path, exc, identified=False)) from exc
    except _DECODE_ERRORS as exc:
        raise BadImageError(_broken(path, exc, identified=identified)) from exc
    return rgb, mode


@contextmanager
def bad_mask_errors(mask_path: Path) -> Iterator[None]:
    """Turn a :class:`DataError` raised inside the block (an unreadable mask, or one that does not fit its image)
    into a :class:`BadImageError` of kind ``bad_mask`` naming ``mask_path``, so ``on_bad_image`` applies to it."""
    try:
        yield
    except BadImageError:
        raise
    except DataError as exc:
        raise BadImageError(BadImage(str(mask_path), "bad_mask", str(exc))) from exc


def count_by_kind(bad: Iterable[BadImage]) -> dict[str, int]:
    """``{kind: number of files}``, kinds in the order of :data:`BAD_KINDS`."""
    counts = Counter(b.kind for b in bad)
    return {kind: counts[kind] for kind in [*BAD_KINDS, *sorted(set(counts) - set(BAD_KINDS))] if counts[kind]}


def _field(text: str) -> str:
    return " ".join(str(text).replace("\t", " ").split())


def write_bad_images_file(path: Path, bad: list[BadImage]) -> None:
    """Write ``bad`` to ``path`` (``bad_images.txt``): one line per file, ``kind<TAB>path<TAB>reason``.

    Tabs separate the fields so paths with spaces survive; tabs and line breaks inside a reason become spaces. An
    empty list writes an empty file (a run that found nothing bad says so).
    """
    lines = [f"{b.kind}\t{b.path}\t{_field(b.reason)}\n" for b in bad]
    Path(path).write_text("".join(lines))


def read_bad_images_file(path: Path) -> list[BadImage]:
    """The list :func:`write_bad_images_file` wrote."""
    bad = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            kind, file, reason = line.split("\t", 2)
            bad.append(BadImage(file, kind, reason))
    return bad

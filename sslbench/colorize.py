"""Colorizing with trained pretexts: real photographs at full resolution, and a comparison grid of test images.

:func:`colorize_photo` follows Zhang et al.'s release for old photographs: the L channel of the full-resolution image
is resized to the model's input size (squashed to it whatever the aspect ratio, as the release resizes to 256×256),
the pretext predicts ab there through its ``colorize`` (given the gray image, so a colour input cannot leak its
colours), and that ab is upsampled bilinearly to full resolution and recombined with the untouched full-resolution L.
A colour photograph is made gray first; the output thus always keeps the input's lightness.

:func:`draw_colorization_grid` puts the first test images of a run's evaluation split, recoloured by every colorizing
variant of the run, between their grayscale input and their ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.nn import functional as F

from sslbench.colour import lab_to_rgb, rgb_to_lab
from sslbench.errors import DataError, UsageError
from sslbench.pretext import Pretext, merge_l_ab

__all__ = ["IMAGE_SUFFIXES", "find_photos", "read_photo", "colorize_photo", "save_png", "model_size",
           "colorization_panels", "draw_colorization_grid"]

#: Files a folder argument contributes (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def find_photos(inputs: Iterable[Path]) -> list[Path]:
    """The photographs named by ``inputs``: files as given, folders by their image files (not recursive, sorted)."""
    photos: list[Path] = []
    for item in inputs:
        item = Path(item).expanduser()
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"{item}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            photos.extend(found)
        elif item.is_file():
            photos.append(item)
        else:
            raise UsageError(f"{item}: no such file or folder")
    return photos


def read_photo(path: Path) -> torch.Tensor:
    """A photograph as float sRGB ``(3, H, W)`` in [0, 1], EXIF orientation applied; gray images give R = G = B.

    16-bit grayscale files (scans of old photographs often are) keep their precision.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                gray = np.asarray(image, dtype=np.float64) / 65535.0
                array = np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)
            elif image.mode == "F":
                array = np.repeat(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)[..., None], 3, axis=2)
            else:
                array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it as an image ({exc})") from exc
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()


def model_size(pretext: Pretext) -> tuple[int, int]:
    """(H, W) the pretext was trained at."""
    size = pretext.data_info.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@torch.no_grad()
def colorize_photo(pretext: Pretext, rgb: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Recolour one photograph ``(3, H, W)`` in [0, 1] at full resolution; returns ``(3, H, W)`` in [0, 1].

    ab is predicted at ``size`` (default: the model's training size) from the L resized there, upsampled bilinearly
    and merged with the full-resolution L.
    """
    if not pretext.can_colorize:
        raise UsageError(f"pretext {type(pretext).__name__} does not colorize; pick a colorization pretext")
    size = size or model_size(pretext)
    device = next(iter(pretext.parameters()), torch.empty(0)).device
    lightness = rgb_to_lab(rgb.unsqueeze(0).to(device, torch.float32))[:, :1]
    small_l = F.interpolate(lightness, size=size, mode="bilinear", align_corners=False, antialias=True)
    small_gray = lab_to_rgb(torch.cat([small_l, torch.zeros_like(small_l).repeat(1, 2, 1, 1)], dim=1))
    predicted = pretext.colorize(small_gray.clamp(0.0, 1.0)).float().clamp(0.0, 1.0)
    ab = rgb_to_lab(predicted)[:, 1:]
    return merge_l_ab(lightness, ab).clamp(0.0, 1.0)[0].cpu()


def save_png(rgb: torch.Tensor, path: Path) -> None:
    """Write ``(3, H, W)`` in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    array = (rgb.clamp(0.0, 1.0).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


# -- the comparison grid ----------------------------------------------------------------------------------------------
def _variant(record: dict[str, Any]) -> str:
    return str(record.get("variant") or record.get("pretext"))


def _plan(record: dict[str, Any]) -> dict[str, Any]:
    """The evaluation data of a record: its ``plan``, or what an ``sslbench.run/1`` record's config says."""
    plan = record.get("plan")
    if isinstance(plan, dict) and plan.get("dataset"):
        return plan
    config = record.get("config") or {}
    run = config.get("pretext_run") or {}
    options = dict(run.get("dataset_options") or {})
    image_size = options.pop("image_size", None)
    options.pop("subset", None)
    return {"dataset": record.get("dataset"), "dataset_options": options, "data_root": None,
            "eval_split": (config.get("eval") or {}).get("eval_split", "test"), "image_size": image_size}


def _eval_images(plan: dict[str, Any], num_images: int) -> torch.Tensor:
    """The first ``num_images`` images of the plan's evaluation split, float RGB ``(N, 3, H, W)``."""
    from sslbench.datasets import create_dataset

    options = {k: v for k, v in (plan.get("dataset_options") or {}).items()
               if k not in ("root", "split", "image_size", "subset")}
    size = plan.get("image_size")
    dataset = create_dataset(plan["dataset"], root=plan.get("data_root"), split=plan.get("eval_split", "test"),
                             image_size=tuple(size) if isinstance(size, list) else size, **options)
    count = min(num_images, len(dataset))
    if count == 0:
        raise UsageError(f"dataset {plan['dataset']!r} split {plan.get('eval_split')!r} has no images to show")
    images = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(count)])
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def _colorizers(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One ok record with a checkpoint per variant (the lowest seed), in the order the variants first appear."""
    chosen: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("status", "ok") != "ok" or not (record.get("train") or {}).get("checkpoint"):
            continue
        name = _variant(record)
        if name not in chosen or int(record.get("seed", 0)) < int(chosen[name].get("seed", 0)):
            chosen[name] = record
    return chosen


def colorization_panels(records: list[dict], *, num_images: int = 8, device: str = "cpu"
                        ) -> dict[str, torch.Tensor]:
    """The columns of :func:`draw_colorization_grid`: ``grayscale``, each colorizing variant, ``ground truth``; each
    a float RGB ``(N, 3, H, W)`` CPU tensor of the first ``num_images`` images of the records' evaluation split."""
    from sslbench.pretrained import load_pretext
    from sslbench.protocols._judge import gray_rgb

    if num_images < 1:
        raise UsageError(f"num_images={num_images}: show at least one image")
    candidates = _colorizers(records)
    plans = {(p["dataset"], repr(p.get("dataset_options")), str(p.get("data_root")), p.get("eval_split"),
              repr(p.get("image_size"))) for p in (_plan(r) for r in candidates.values())}
    if len(plans) > 1:
        raise UsageError("the records evaluate on different data (" + "; ".join(
            f"{k[0]} {k[3]} at {k[4]}" for k in sorted(plans)) + "): draw one grid per dataset")
    columns: dict[str, torch.Tensor] = {}
    images: torch.Tensor | None = None
    for name, record in candidates.items():
        pretext = load_pretext(Path(record["train"]["checkpoint"]), device=device)
        if not pretext.can_colorize:
            continue
        if images is None:
            images = _eval_images(_plan(record), num_images)
        with torch.no_grad():
            batch = images.to(next(iter(pretext.parameters())).device)
            columns[name] = pretext.colorize(batch).float().clamp(0.0, 1.0).cpu()
    if images is None:
        raise UsageError("none of the records is an ok run of a colorizing pretext with a checkpoint; run a "
                         "colorization pretext (e.g. quantized, regression) first")
    return {"grayscale": gray_rgb(images).clamp(0.0, 1.0), **columns, "ground truth": images}


def draw_colorization_grid(records: list[dict], out_dir: Path, *, num_images: int = 8,
                           device: str = "cpu") -> list[Path]:
    """A figure of test images (rows) as grayscale input | each colorizing variant | ground truth (columns).

    The images are the first ``num_images`` of the records' evaluation split (their ``plan``: dataset, data root,
    split, image size and dataset options); each variant's column comes from its record's ``train.checkpoint``
    (the lowest seed's when there are several). Variants whose pretext does not colorize are left out. Writes
    ``grid.png`` and ``grid.pdf`` into ``out_dir`` and returns their paths.
    """
    from matplotlib.figure import Figure

    panels = colorization_panels(records, num_images=num_images, device=device)
    rows, cols = next(iter(panels.values())).shape[0], len(panels)
    height, width = next(iter(panels.values())).shape[-2:]
    cell = 1.6
    fig = Figure(figsize=(cell * cols * max(width / height, 0.5), cell * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for c, (title, panel) in enumerate(panels.items()):
        for r in range(rows):
            ax = axes[r][c]
            ax.imshow(panel[r].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "grid.png", out_dir / "grid.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths

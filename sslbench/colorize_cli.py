"""``sslbench colorize``: recolour real photographs with a trained pretext, at their full resolution.

The pretext comes from a checkpoint (``--checkpoint`` folder or ``final.pt``) or from a run folder and a variant
name (``--runs DIR --pretext VARIANT``). Each photograph (any size, gray or colour, EXIF orientation applied) is
written to ``--out`` as ``<its name>.png``; see :mod:`sslbench.colorize` for how ab is predicted and recombined.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sslbench.errors import UsageError

__all__ = ["add_parser", "main"]


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "colorize", help="recolour photographs with a trained colorization pretext",
        description="Recolour photographs (files, or folders of them) with a trained pretext: ab is predicted at the "
                    "model's image size from the photograph's L, upsampled to full resolution and recombined with "
                    "its full-resolution L (colour photographs are made gray first). Writes OUT/<name>.png.")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="PHOTO|FOLDER",
                        help="image files, or folders whose image files (not recursive) are all recoloured")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, default=None,
                        help="a checkpoint folder (holding final.pt and config.json) or its final.pt")
    source.add_argument("--runs", type=Path, default=None,
                        help="an `sslbench run --out` folder; with --pretext, use that variant's checkpoint "
                             "(the lowest seed's)")
    parser.add_argument("--pretext", default=None, metavar="VARIANT", help="the variant to use with --runs")
    parser.add_argument("--out", type=Path, required=True, help="folder for the recoloured PNGs")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _checkpoint(args: argparse.Namespace) -> Path:
    if args.checkpoint is not None:
        if args.pretext is not None:
            raise UsageError("--pretext goes with --runs; --checkpoint already names the pretext")
        return args.checkpoint
    from sslbench.pretrained import checkpoints_from_runs

    if args.pretext is None:
        raise UsageError("--runs needs --pretext VARIANT: which of the run's variants colorizes")
    found = checkpoints_from_runs(args.runs)
    if args.pretext not in found:
        raise UsageError(f"--runs {args.runs}: no ok record of variant {args.pretext!r} with a checkpoint; "
                         f"variants with checkpoints there: {', '.join(sorted(found)) or '(none)'}")
    return found[args.pretext]


def _outputs(photos: list[Path], out: Path) -> list[Path]:
    """``out/<stem>.png`` per photograph; two inputs with one name, or an output over its input, are refused."""
    targets = [out / f"{photo.stem}.png" for photo in photos]
    seen: dict[Path, Path] = {}
    for photo, target in zip(photos, targets):
        if target in seen:
            raise UsageError(f"{seen[target]} and {photo} would both be written to {target}; colorize them into "
                             "different --out folders")
        if target.resolve() == photo.resolve():
            raise UsageError(f"{photo}: its output would overwrite it; choose another --out folder")
        seen[target] = photo
    return targets


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sslbench.colorize import colorize_photo, find_photos, model_size, read_photo, save_png
    from sslbench.pretrained import load_pretext
    from sslbench.progress import Progress

    photos = find_photos(args.inputs)
    targets = _outputs(photos, args.out)
    checkpoint = _checkpoint(args)
    pretext = load_pretext(checkpoint, device=args.device)
    if not pretext.can_colorize:
        raise UsageError(f"{checkpoint}: pretext {type(pretext).__name__} does not colorize (it predicts no colour); "
                         "use the checkpoint of a colorization pretext such as quantized, regression, hypercolumn, "
                         "cgan or splitbrain")
    console = Console(stderr=True)
    height, width = model_size(pretext)
    with Progress(enabled=not args.quiet, console=console) as progress:
        for photo, target in progress.track(list(zip(photos, targets)), "colorize"):
            save_png(colorize_photo(pretext, read_photo(photo)), target)
    console.print(f"{len(photos)} photograph(s) recoloured at {height}x{width} by {checkpoint} into {args.out}")
    return 0

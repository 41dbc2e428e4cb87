"""``sslbench plot``: figures from run records (per-layer probe curves, training losses, colorization grids).

Imports matplotlib and the plotting code only when run, so ``sslbench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sslbench.cli import positive_int_arg
from sslbench.errors import SslbenchError, UsageError

__all__ = ["add_parser", "main", "KINDS", "draw_grid"]

KINDS = ("layers", "loss", "grid")


def _kinds(text: str) -> list[str]:
    kinds = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"--kind {text!r}: choose from {', '.join(KINDS)} (comma-separated)")
    return list(dict.fromkeys(kinds))



def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plot", help="draw figures from run records (PNG and PDF)",
        description="Draw figures from run records, each as PNG and PDF: 'layers' (per-layer top-1 of the linear "
                    "and knn probes, one line per variant, mean over seeds with a band: see --band), 'loss' "
                    "(training-loss curves from each record's train.history, mean over seeds at the steps all seeds "
                    "logged, band ± std), "
                    "'grid' (colorizations of evaluation images by each trained colorizer). Only ok records are "
                    "plotted; records whose configs differ by more than the seed are never averaged together.")
    parser.add_argument("--runs", type=Path, default=Path("results/runs"),
                        help="record folder, the --out of `sslbench run` (default: results/runs)")
    parser.add_argument("--kind", type=_kinds, default=["layers", "loss"],
                        help="comma-separated figures to draw: layers, loss, grid (default: layers,loss)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the figure files")
    parser.add_argument("--metric", default="top1", help="per-layer metric for --kind layers (default: top1)")
    parser.add_argument("--band", choices=["auto", "std"], default="auto",
                        help="band of --kind layers: auto (the 95%% bootstrap interval over test images where every "
                             "seed saved per-image values, else mean ± std over seeds) or std (default: auto)")
    parser.add_argument("--num-images", type=positive_int_arg, default=8,
                        help="evaluation images per colorizer for --kind grid (default: 8)")
    parser.add_argument("--device", default="auto", help="device for --kind grid: auto, cpu, cuda or cuda:N")
    parser.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                        help="also write the loss curves (as scalars, one run per variant and seed) and the image "
                             "grids to TensorBoard event files in DIR; needs the optional tensorboard package "
                             "(pip install 'sslbench[tensorboard]') and is skipped without a message when it is not "
                             "installed")


def draw_grid(records: list[dict[str, Any]], out: Path, num_images: int, device: str) -> list[Path]:
    """Colorization grids of the ok records' trained colorizers, drawn by :mod:`sslbench.colorize`; the files."""
    try:
        from sslbench.colorize import draw_colorization_grid
    except ImportError as exc:
        if exc.name != "sslbench.colorize":
            raise
        raise SslbenchError("--kind grid needs sslbench.colorize.draw_colorization_grid, which this installation "
                            "does not have; draw the other kinds with --kind layers,loss") from exc
    ok = [record for record in records if record.get("status", "ok") == "ok"]
    out.mkdir(parents=True, exist_ok=True)
    result = draw_colorization_grid(ok, out, num_images=num_images, device=device)
    if isinstance(result, (str, Path)):
        result = [result]
    return [Path(p) for p in result or []]


def main(args: argparse.Namespace) -> int:
    from sslbench import plots

    records, problems = plots.read_runs(args.runs)
    for problem in problems:
        print(f"sslbench plot: skipped {problem}", file=sys.stderr)
    if not records:
        raise UsageError(f"--runs {args.runs}: no run records found there")
    written: list[Path] = []
    for kind in args.kind:
        try:
            if kind == "layers":
                figure = plots.layer_figure(plots.layer_series(records, args.metric, args.band), args.metric)
                written += plots.save_figure(figure, args.out, f"layers_{args.metric}")
            elif kind == "loss":
                written += plots.save_figure(plots.loss_figure(plots.loss_series(records)), args.out, "loss")
                if args.tensorboard is not None:
                    plots.write_tensorboard_scalars(records, args.tensorboard)
            else:
                images = draw_grid(records, args.out, args.num_images, args.device)
                written += images
                if args.tensorboard is not None:
                    plots.write_tensorboard_images([p for p in images if p.suffix == ".png"], args.tensorboard)
        except plots.NoDataError as exc:
            raise UsageError(f"--runs {args.runs}, --kind {kind}: {exc}") from exc
    for path in written:
        print(path)
    return 0

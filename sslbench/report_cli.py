"""``sslbench report``: one self-contained HTML page from run records (see :mod:`sslbench.report`)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from sslbench.cli import positive_int_arg
from sslbench.errors import UsageError

__all__ = ["add_parser", "main"]



def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report of run records",
        description="Write one static HTML page: the comparison table, the per-layer and training-loss figures "
                    "(embedded, no external resource is loaded) and each record's config, environment and metrics "
                    "behind a click.")
    parser.add_argument("--runs", type=Path, default=Path("results/runs"),
                        help="record folder, the --out of `sslbench run` (default: results/runs)")
    parser.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file (default: report.html)")
    parser.add_argument("--title", default=None, help="page title (default: 'sslbench report: <runs folder>')")
    parser.add_argument("--grid", action="store_true",
                        help="also embed colorization grids of the trained colorizers (loads their checkpoints and "
                             "the evaluation images)")
    parser.add_argument("--num-images", type=positive_int_arg, default=8, help="images per colorizer with --grid")
    parser.add_argument("--device", default="auto", help="device for --grid: auto, cpu, cuda or cuda:N")


def main(args: argparse.Namespace) -> int:
    from sslbench.plots import read_runs
    from sslbench.report import write_report

    records, problems = read_runs(args.runs)
    for problem in problems:
        print(f"sslbench report: skipped {problem}", file=sys.stderr)
    if not records:
        raise UsageError(f"--runs {args.runs}: no run records found there")
    if args.out.exists() and args.out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give the path of the HTML file to write")
    title = args.title or f"sslbench report: {args.runs}"
    with tempfile.TemporaryDirectory(prefix="sslbench-report-") as scratch:
        grid = []
        if args.grid:
            from sslbench.plot_cli import draw_grid

            grid = [p for p in draw_grid(records, Path(scratch), args.num_images, args.device) if p.suffix == ".png"]
        write_report(records, args.out, problems, title=title, source=str(args.runs), grid_images=grid)
    print(args.out)
    return 0

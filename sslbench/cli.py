"""The ``sslbench`` command line: ``list`` and ``table`` here, every other command in its own module
(:data:`COMMAND_MODULES`: ``run``, ``show``, ``check``, ``colorize``, ``plot``, ``report``, ``check-data``).

Exit codes: 0 success, 2 usage error (bad option, unknown name, missing data), 1 run failure (a failed protocol or
pretext, a NaN loss). ``--help`` and ``list`` never import torch; ``run`` imports what it uses.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Sequence

from sslbench import __version__
from sslbench.errors import SslbenchError, UsageError

__all__ = ["main", "build_parser"]

KINDS = ("pretexts", "protocols", "encoders", "datasets")

#: Subcommands that live in their own modules: each module has ``add_parser(subparsers) -> None`` (adding one parser
#: whose name is the command) and ``main(args) -> int``. Imported lazily, so ``--help`` stays free of torch.
COMMAND_MODULES: dict[str, str] = {
    "run": "sslbench.run_cli",
    "colorize": "sslbench.colorize_cli",
    "plot": "sslbench.plot_cli",
    "report": "sslbench.report_cli",
    "check-data": "sslbench.check_data",
    "show": "sslbench.show_cli",
    "check": "sslbench.check_cli",
}


def names_arg(text: str) -> list[str]:
    """A comma-separated list argument."""
    return [part.strip() for part in text.split(",") if part.strip()]


def positive_int_arg(text: str) -> int:
    """A positive integer argument."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslbench",
        description="Train colorization-family pretext tasks and compare them under standard protocols.",
    )
    parser.add_argument("--version", action="version", version=f"sslbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(["list", "table", *COMMAND_MODULES]) + "}")

    lst = sub.add_parser("list", help="list registered plugins", description="List registered plugins and where "
                                                                              "each comes from.")
    lst.add_argument("kind", nargs="?", choices=KINDS, help="one kind only")
    lst.add_argument("--filter", default="*", help="names containing this text (rot), or matching it as a "
                                                   "wildcard pattern (timm*)")
    lst.add_argument("--options", action="store_true", help="each plugin's options: type, default and help")

    table = sub.add_parser("table", help="aggregate run records into a table",
                           description="Turn run records into a Markdown, LaTeX or CSV table: one row per variant, "
                                       "mean ± std over seeds with each cell's number of seeds; seeds that ran "
                                       "different configs are never averaged. Unreadable records are reported.")
    table.add_argument("--runs", type=Path, default=Path("results/runs"), help="record folder (default: results/runs)")
    table.add_argument("--format", default="md", choices=["md", "latex", "csv"])
    table.add_argument("--metrics", type=names_arg, default=None,
                       help="only these metrics, in every format (e.g. best/top1,miou; a name also matches "
                            "metrics ending in /NAME or starting with NAME/)")
    table.add_argument("--layout", default="columns", choices=["columns", "rows"],
                       help="rows: the colorization protocols' gray and ground-truth reference values as rows "
                            "(Zhang et al. 2016, Table 1) instead of columns (default: columns)")
    table.add_argument("--ci", action="store_true",
                       help="95%% bootstrap intervals over test images (1000 resamples) from the records' "
                            "per-image files instead of ± std")
    table.add_argument("--reference", type=names_arg, default=[], metavar="KEY[,KEY]",
                       help="add published rows (zhang2016, splitbrain2017, larsson2017, treneska2022) in the "
                            "columns they correspond to")
    table.add_argument("--digits", type=int, default=1, help="decimals (default: 1; SSIM gets at least 3)")
    table.add_argument("--output", type=Path, default=None, help="write to this file instead of stdout")
    for module in COMMAND_MODULES.values():
        importlib.import_module(module).add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("--plugin", dest="plugins", type=Path, action="append", default=[], metavar="FILE",
                             help="load plugins from this Python file, no packaging needed (repeatable; also "
                                  "$SSLBENCH_PLUGINS, files separated by the path separator)")
    return parser


def _cmd_list(args: argparse.Namespace) -> int:
    from sslbench.options import describe, format_options
    from sslbench.registry import REGISTRIES

    for kind in [args.kind] if args.kind else KINDS:
        print(f"{kind}:")
        registry = REGISTRIES[kind]
        entries = registry.entries(args.filter)
        for entry in entries:
            version = f", version {entry.version}" if entry.version else ""
            origin = "" if entry.origin == "built-in" else f"  [{entry.origin}{version}]"
            summary = f"  {entry.summary}" if entry.summary else ""
            print(f"  {registry.reference(entry):<16}{summary}{origin}")
            if args.options:
                print("\n".join(format_options(describe(kind[:-1], registry.reference(entry)))))
        for module, why in registry.unreadable.items():
            print(f"  [could not read {module}: {why}]", file=sys.stderr)
        for clash in registry.clashes():
            if any(entry.name == clash.name for entry in entries):
                print(f"warning: {clash.message}", file=sys.stderr)
    return 0


def _warn(table: Any) -> None:
    for warning in table.warnings:
        print(f"sslbench table: warning: {warning}", file=sys.stderr)


def print_records_table(records: list[dict[str, Any]], console: Any) -> None:
    """A rich table on a terminal when it fits its width; the Markdown table otherwise (pipes, logs and narrow
    terminals keep every column and every name whole). Warnings go to stderr."""
    from sslbench.tables import build_table, print_rich, render

    table = build_table(records)
    _warn(table)
    if console.is_terminal:
        print_rich(table, console)
    else:
        print(render(table, "md"))


def _cmd_table(args: argparse.Namespace) -> int:
    from sslbench.records import load_records
    from sslbench.tables import build_table, render

    records = load_records(args.runs)
    for problem in records.problems:
        print(f"sslbench table: warning: skipped unreadable record {problem}", file=sys.stderr)
    if not records:
        raise UsageError(f"--runs {args.runs}: no readable run records found there")
    if args.digits < 0:
        raise UsageError(f"--digits {args.digits}: expected 0 or more")
    table = build_table(records, args.metrics, layout=args.layout, ci=args.ci, references=args.reference,
                        digits=args.digits)
    _warn(table)
    text = render(table, args.format)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in COMMAND_MODULES:
        handler = importlib.import_module(COMMAND_MODULES[args.command]).main
    else:
        handler = {"list": _cmd_list, "table": _cmd_table}[args.command]
    try:
        from sslbench.plugin_files import load_plugins

        load_plugins(args.plugins)
        return handler(args)
    except UsageError as exc:
        print(f"sslbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SslbenchError as exc:
        print(f"sslbench {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sslbench {args.command}: interrupted; finished records and checkpoints are kept, rerun to do the rest",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

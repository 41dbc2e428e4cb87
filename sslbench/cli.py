"""The ``sslbench`` command line: ``run``, ``list`` and ``table``.

Exit codes: 0 success, 2 usage error (bad option, unknown name, missing data), 1 run failure (a failed protocol or
pretext, a NaN loss). ``--help`` and ``list`` never import torch; ``run`` imports what it uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from sslbench import __version__
from sslbench.errors import SslbenchError, UsageError

__all__ = ["main", "build_parser"]

KINDS = ("pretexts", "protocols", "encoders", "datasets")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2")


def _image_size(text: str) -> int | tuple[int, int]:
    parts = _names(text.replace("x", ","))
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1 and sizes[0] > 0:
        return sizes[0]
    if len(sizes) == 2 and min(sizes) > 0:
        return sizes[0], sizes[1]
    raise argparse.ArgumentTypeError(f"--image-size {text!r}: expected S or H,W (positive integers)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _setting(text: str) -> tuple[str, str, str]:
    key, sep, value = text.partition("=")
    owner, dot, option = key.partition(".")
    if not sep or not dot or not owner or not option:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected PLUGIN.KEY=VALUE, e.g. quantized.rebalance=false")
    return owner, option, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslbench",
        description="Train colorization-family pretext tasks and compare them under standard protocols.",
    )
    parser.add_argument("--version", action="version", version=f"sslbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,list,table}")

    run = sub.add_parser("run", help="train pretexts (or reuse their checkpoints) and evaluate protocols",
                         description="Train each pretext once per (dataset, encoder, seed, config), evaluate every "
                                     "protocol on it, write one record per pair and print the comparison.")
    run.add_argument("--pretext", type=_names, default=["random", "supervised", "regression"],
                     help="comma-separated pretext names (default: random,supervised,regression)")
    run.add_argument("--protocol", type=_names, default=["linear"], help="comma-separated protocol names "
                                                                        "(default: linear)")
    run.add_argument("--dataset", default="synthetic", help="dataset adapter (default: synthetic, the embedded "
                                                            "generated dataset)")
    run.add_argument("--data-root", default=None, help="where the dataset's files are")
    run.add_argument("--encoder", default="vgg_small", help="encoder name, or timm/<model> (default: vgg_small)")
    run.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default: 0)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    run.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                     help="training precision (default: fp32)")
    run.add_argument("--out", type=Path, default=Path("results/runs"), help="run-record folder "
                                                                            "(default: results/runs)")
    run.add_argument("--cache-dir", type=Path, default=None,
                     help="checkpoint and feature cache (default: $SSLBENCH_CACHE or ~/.cache/sslbench)")
    run.add_argument("--force", action="store_true", help="redo work that is already recorded or cached")
    budget = run.add_argument_group("budget")
    budget.add_argument("--epochs", type=float, default=None, help="pretext training epochs (default: 5)")
    budget.add_argument("--steps", type=_positive_int, default=None, help="pretext training steps "
                                                                          "(overrides --epochs)")
    budget.add_argument("--batch-size", type=_positive_int, default=64, help="pretext batch size (default: 64)")
    budget.add_argument("--checkpoint-every", type=_positive_int, default=200,
                        help="save a resumable checkpoint every N training steps (default: 200)")
    budget.add_argument("--eval-epochs", type=float, default=None,
                        help="training epochs of every protocol that trains (probes, fine-tuning)")
    budget.add_argument("--eval-batch-size", type=_positive_int, default=128, help="protocol batch size")
    budget.add_argument("--image-size", type=_image_size, default=None, help="image side S or H,W "
                                                                            "(default: the dataset's)")
    budget.add_argument("--subset", type=_positive_int, default=None, help="use at most N training images")
    budget.add_argument("--eval-subset", type=_positive_int, default=None, help="use at most N evaluation images")
    budget.add_argument("--workers", type=int, default=0, help="data-loader worker processes (default: 0)")
    run.add_argument("--set", dest="settings", type=_setting, action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                     help="a plugin option, e.g. quantized.rebalance=false, linear.pooling=avg, encoder.width_mult=0.5")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    lst = sub.add_parser("list", help="list registered plugins", description="List registered plugins and where "
                                                                              "each comes from.")
    lst.add_argument("kind", nargs="?", choices=KINDS, help="one kind only")
    lst.add_argument("--filter", default="*", help="wildcard filter on names, e.g. 'timm*'")

    table = sub.add_parser("table", help="aggregate run records into a table",
                           description="Turn run records into a Markdown, LaTeX or CSV table: one row per variant, "
                                       "mean ± std over seeds with each cell's number of seeds; seeds that ran "
                                       "different configs are never averaged. Unreadable records are reported.")
    table.add_argument("--runs", type=Path, default=Path("results/runs"), help="record folder (default: results/runs)")
    table.add_argument("--format", default="md", choices=["md", "latex", "csv"])
    table.add_argument("--metrics", type=_names, default=None,
                       help="only these metrics, in every format (e.g. best/top1,miou; a name also matches "
                            "metrics ending in /NAME or starting with NAME/)")
    table.add_argument("--layout", default="columns", choices=["columns", "rows"],
                       help="rows: the colorization protocols' gray and ground-truth reference values as rows "
                            "(Zhang et al. 2016, Table 1) instead of columns (default: columns)")
    table.add_argument("--ci", action="store_true",
                       help="95%% bootstrap intervals over test images (1000 resamples) from the records' "
                            "per-image files instead of ± std")
    table.add_argument("--reference", type=_names, default=[], metavar="KEY[,KEY]",
                       help="add published rows (zhang2016, splitbrain2017, larsson2017, treneska2022) in the "
                            "columns they correspond to")
    table.add_argument("--digits", type=int, default=1, help="decimals (default: 1; SSIM gets at least 3)")
    table.add_argument("--output", type=Path, default=None, help="write to this file instead of stdout")
    return parser


def _cmd_list(args: argparse.Namespace) -> int:
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
        for module, why in registry.unreadable.items():
            print(f"  [could not read {module}: {why}]", file=sys.stderr)
        for clash in registry.clashes():
            if any(entry.name == clash.name for entry in entries):
                print(f"warning: {clash.message}", file=sys.stderr)
    return 0


def _warn(table: Any) -> None:
    for warning in table.warnings:
        print(f"sslbench table: warning: {warning}", file=sys.stderr)


def _print_table(records: list[dict[str, Any]], console: Any) -> None:
    """A rich table on a terminal when it fits its width; the Markdown table otherwise (pipes, logs and narrow
    terminals keep every column and every name whole). Warnings go to stderr."""
    from sslbench.tables import build_table, print_rich, render

    table = build_table(records)
    _warn(table)
    if console.is_terminal:
        print_rich(table, console)
    else:
        print(render(table, "md"))


def _cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sslbench.config import TrainBudget
    from sslbench.progress import Progress
    from sslbench.runner import RunRequest, default_cache_dir, run

    options: dict[str, dict[str, Any]] = {}
    for owner, key, value in args.settings:
        options.setdefault(owner, {})[key] = value
    budget = TrainBudget(batch_size=args.batch_size, steps=args.steps)
    if args.epochs is not None:
        budget.epochs = args.epochs
    req = RunRequest(
        pretexts=args.pretext, protocols=args.protocol, dataset=args.dataset, data_root=args.data_root,
        encoder=args.encoder, seeds=args.seeds, device=args.device, precision=args.precision, out=args.out,
        cache_dir=args.cache_dir or default_cache_dir(), force=args.force, budget=budget,
        eval_epochs=args.eval_epochs, eval_batch_size=args.eval_batch_size, image_size=args.image_size,
        subset=args.subset, eval_subset=args.eval_subset, workers=args.workers, options=options,
        checkpoint_every=args.checkpoint_every,
    )
    console = Console(stderr=True)

    def report(record: dict[str, Any]) -> None:
        status = record["status"]
        detail = f": {record.get('reason')}" if status != "ok" else ""
        console.print(f"[{'green' if status == 'ok' else 'yellow' if status == 'skipped' else 'red'}]{status}[/] "
                      f"{record['pretext']} × {record['protocol']} seed {record['seed']}{detail}")

    with Progress(enabled=not args.quiet, console=console) as progress:
        outcome = run(req, progress=progress, on_record=report)
    console.print(f"{outcome.done} evaluated, {outcome.cached} already recorded; trained: "
                  f"{', '.join(outcome.trained) or 'none'}; reused checkpoints: {', '.join(outcome.reused) or 'none'}"
                  f"; records in {req.out}")
    _print_table(outcome.records, Console())
    if outcome.failed:
        console.print(f"[red]{len(outcome.failed)} failed[/]: see the records' reason and traceback fields")
        return 1
    return 0


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
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"run": _cmd_run, "list": _cmd_list, "table": _cmd_table}[args.command]
    try:
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

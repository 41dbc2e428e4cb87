"""``sslbench run``: build an :class:`~sslbench.experiment.Experiment` from an experiment file or flags, resolve it
into a plan, print it (``--dry-run``) or carry it out, and leave a complete folder: records, ``run.log``,
``manifest.json`` (command, plan, wall time, hardware) and ``table.md``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sslbench.cli import names_arg, positive_int_arg
from sslbench.errors import UsageError

__all__ = ["add_parser", "main", "experiment_from_args"]

#: Flags that choose what runs; with ``--config`` the experiment file says that instead.
PLAN_FLAGS = ("pretext", "protocol", "dataset", "encoder")


def _seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in names_arg(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2")


def _image_size(text: str) -> int | tuple[int, int]:
    parts = names_arg(text.replace("x", ","))
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1 and sizes[0] > 0:
        return sizes[0]
    if len(sizes) == 2 and min(sizes) > 0:
        return sizes[0], sizes[1]
    raise argparse.ArgumentTypeError(f"--image-size {text!r}: expected S or H,W (positive integers)")



def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"--progress-every {text!r}: expected a number of seconds, e.g. 30")
    return value


def _setting(text: str) -> tuple[str, str, str]:
    key, sep, value = text.partition("=")
    owner, dot, option = key.partition(".")
    if not sep or not dot or not owner or not option:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected OWNER.KEY=VALUE, e.g. quantized.rebalance=false")
    return owner, option, value


#: Shown at the end of ``run --help``; a test runs each through the parser and the option checks.
EXAMPLES = """examples:
  sslbench run --pretext regression,quantized --protocol linear,knn --dry-run
  sslbench run --pretext quantized --set quantized.rebalance=false --set linear.reduction=bilinear
  sslbench run --dataset cifar10 --data-root ../shared/data/cifar10 --set encoder.width_mult=0.5
  sslbench run --config exp.toml --seeds 0,1,2
"""


def add_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run", help="train pretext variants (or reuse their checkpoints) and evaluate protocols",
        description="Train each pretext variant once per (dataset, encoder, seed, config), evaluate every protocol "
                    "on it, write one record per pair and print the comparison. Give the experiment as a TOML file "
                    "(--config) or with flags. Names, options and splits are checked before any work. Plugin "
                    "names: sslbench list; each plugin's options with their types, defaults and help: sslbench list "
                    "pretexts --options, or sslbench show NAME.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", type=Path, default=None, help="experiment file (TOML): datasets, encoders, seeds, "
                                                              "protocols and pretext variants")
    run.add_argument("--pretext", type=names_arg, default=None,
                     help="comma-separated pretexts, each a variant of its own name (default: random,supervised,"
                          "regression)")
    run.add_argument("--protocol", type=names_arg, default=None, help="comma-separated protocols (default: linear)")
    run.add_argument("--dataset", default=None, help="dataset adapter (default: synthetic, the embedded generated "
                                                     "dataset)")
    run.add_argument("--encoder", default=None, help="encoder name, or timm/<model> (default: vgg_small)")
    run.add_argument("--data-root", default=None, help="where the dataset's files are")
    run.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (default: 0)")
    run.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    run.add_argument("--precision", default=None, choices=["fp32", "tf32", "bf16", "fp16"],
                     help="training precision (default: fp32; tf32: fp32 with TF32 matrix products on CUDA)")
    run.add_argument("--channels-last", action="store_true", default=None,
                     help="train with NHWC memory layout (faster bf16 convolutions on GPUs)")
    run.add_argument("--compile", action="store_true", default=None, help="torch.compile the trained modules")
    run.add_argument("--out", type=Path, default=None, help="run-record folder (default: results/runs, or the "
                                                            "experiment file's out)")
    run.add_argument("--cache-dir", type=Path, default=None,
                     help="checkpoint and feature cache (default: $SSLBENCH_CACHE or ~/.cache/sslbench)")
    run.add_argument("--decoded-cache", choices=("on", "off"), default=None,
                     help="read image-file datasets from decoded uint8 memmaps under CACHE_DIR/decoded, built once "
                          "per split and image size (default: on; same data, same hashes)")
    run.add_argument("--force", action="store_true", help="redo everything the plan touches: clear its checkpoints "
                                                          "and feature caches, re-evaluate every record")
    run.add_argument("--dry-run", action="store_true", help="print the resolved plan (what will be trained, reused, "
                                                            "evaluated, skipped) and exit")
    run.add_argument("--no-wait", action="store_true", help="when another process is training a checkpoint this run "
                                                            "needs, move on instead of waiting for it")
    splits = run.add_argument_group("splits (default: each dataset's own choice)")
    splits.add_argument("--pretext-split", default=None, help="split the pretexts train on, e.g. train+unlabeled")
    splits.add_argument("--probe-split", default=None, help="split probes and fine-tuning train on")
    splits.add_argument("--eval-split", default=None, help="split every protocol reports on")
    splits.add_argument("--allow-eval-on-train", action="store_true",
                        help="allow an evaluation split that is also a training split (recorded in every record)")
    budget = run.add_argument_group("budget")
    budget.add_argument("--epochs", type=float, default=None, help="pretext training epochs (default: 5)")
    budget.add_argument("--steps", type=positive_int_arg, default=None, help="pretext training steps "
                                                                          "(overrides --epochs)")
    budget.add_argument("--batch-size", type=positive_int_arg, default=None, help="pretext batch size (default: 64)")
    budget.add_argument("--accumulate", type=positive_int_arg, default=None,
                        help="batches per optimiser step of pretext training (gradient accumulation): the effective "
                             "batch is batch size × N (default: 1)")
    budget.add_argument("--augment", action="store_true", default=None,
                        help="random crop (reflect padding, 1/8 of the side) and horizontal flip of every pretext "
                             "training batch, on the device (part of the checkpoint hash when on)")
    budget.add_argument("--checkpoint-every", type=positive_int_arg, default=None,
                        help="save a resumable checkpoint every N training steps (default: 200)")
    budget.add_argument("--eval-epochs", type=float, default=None,
                        help="training epochs of every protocol that trains (probes, fine-tuning)")
    budget.add_argument("--eval-batch-size", type=positive_int_arg, default=None, help="protocol batch size "
                                                                                    "(default: 128)")
    budget.add_argument("--image-size", type=_image_size, default=None, help="image side S or H,W "
                                                                            "(default: the dataset's)")
    budget.add_argument("--subset", type=positive_int_arg, default=None,
                        help="use at most N images of the pretext and probe splits")
    budget.add_argument("--probe-subset", type=positive_int_arg, default=None,
                        help="use at most N images of the probe split (default: --subset)")
    budget.add_argument("--eval-subset", type=positive_int_arg, default=None,
                        help="use at most N images of the evaluation split")
    budget.add_argument("--workers", type=int, default=None, help="data-loader worker processes (default: 0)")
    launch = run.add_argument_group("jobs (one per variant × seed; they share the checkpoint cache and --out)")
    launch.add_argument("--jobs", type=positive_int_arg, default=1,
                        help="run up to N units side by side on this machine, each with its share of the CPU threads")
    launch.add_argument("--launcher", choices=["local", "submitit"], default="local",
                        help="submitit: send one job per unit to SLURM through submitit (pip install "
                             "'sslbench[cluster]')")
    launch.add_argument("--partition", default=None, help="SLURM partition of the submitit jobs")
    launch.add_argument("--gpus-per-job", type=positive_int_arg, default=1,
                        help="GPUs per submitit job (more than one trains under torchrun)")
    launch.add_argument("--timeout-min", type=positive_int_arg, default=24 * 60, help="time limit per submitit job")
    launch.add_argument("--submitit-cluster", choices=["slurm", "local"], default=None,
                        help="submitit's executor (default: SLURM where srun exists, else local processes)")
    launch.add_argument("--unit", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--set", dest="settings", type=_setting, action="append", default=[],
                     metavar="OWNER.KEY=VALUE",
                     help="an option of every variant of a pretext (quantized.rebalance=false), of one variant, of "
                          "a protocol (linear.reduction=bilinear), a dataset (synthetic.num_train=500) or the encoder "
                          "(encoder.width_mult=0.5); the options: sslbench show NAME")
    run.add_argument("--quiet", action="store_true", help="no progress (bars or lines)")
    run.add_argument("--progress-every", type=_seconds, default=30.0, metavar="S",
                     help="off a terminal (a log file, a cluster job), print a progress line every S seconds "
                          "(default: 30)")


def experiment_from_args(args: argparse.Namespace) -> Any:
    """The experiment the flags (and the experiment file, if any) describe."""
    from sslbench.experiment import DatasetSpec, Experiment, VariantSpec, apply_settings, load_experiment

    if args.config is not None:
        given = [f"--{flag}" for flag in PLAN_FLAGS if getattr(args, flag) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} cannot be combined with --config {args.config}: the experiment "
                             "file says what runs; edit it, or drop --config")
        exp = load_experiment(args.config)
    else:
        exp = Experiment()
        if args.pretext is not None:
            # A qualified name (DIST:NAME) names its variant with a file-safe '-' in place of the ':'.
            exp.variants = [VariantSpec(name.replace(":", "-"), name) for name in args.pretext]
        if args.protocol is not None:
            exp.protocols = {name: {} for name in args.protocol}
        if args.dataset is not None:
            exp.datasets = [DatasetSpec(args.dataset)]
        if args.encoder is not None:
            exp.encoders = {args.encoder: {}}
    for dataset in exp.datasets:
        for flag, key in (("data_root", "data_root"), ("image_size", "image_size"), ("subset", "subset"),
                          ("probe_subset", "probe_subset"), ("eval_subset", "eval_subset"), ("pretext_split", "pretext_split"),
                          ("probe_split", "probe_split"), ("eval_split", "eval_split")):
            if getattr(args, flag) is not None:
                setattr(dataset, key, getattr(args, flag))
    for flag in ("epochs", "steps", "batch_size", "accumulate", "augment", "eval_epochs", "eval_batch_size"):
        if getattr(args, flag) is not None:
            setattr(exp.budget, flag, getattr(args, flag))
    for flag in ("seeds", "device", "precision", "channels_last", "compile", "out", "cache_dir", "workers",
                 "checkpoint_every"):
        if getattr(args, flag) is not None:
            setattr(exp, flag, getattr(args, flag))
    if args.seeds is not None:
        for variant in exp.variants:
            variant.seeds = None
    if args.allow_eval_on_train:
        exp.allow_eval_on_train = True
    if args.decoded_cache is not None:
        exp.decoded_cache = args.decoded_cache == "on"
    apply_settings(exp, args.settings)
    return exp


def _hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def print_plan(plan: Any, force: bool, write: Any = print) -> None:
    """What a run of ``plan`` would train, reuse, evaluate and skip."""
    from sslbench.runner import unit_status

    exp = plan.experiment
    write(f"experiment {exp.name!r} from {exp.source}; records in {plan.out}; cache {plan.cache_dir}")
    for dataset in plan.datasets:
        sizes = {role: len(dataset.splits[role]) for role in ("pretext", "probe", "eval")}
        write(f"dataset {dataset.name}: pretext split {dataset.pretext_split} ({sizes['pretext']} images), probe "
              f"split {dataset.probe_split} ({sizes['probe']}), eval split {dataset.eval_split} ({sizes['eval']}); "
              f"image size {dataset.image_size}; options {dataset.options}"
              + ("; EVALUATES ON A TRAINING SPLIT (allowed)" if dataset.eval_on_train else ""))
    for encoder in plan.encoders:
        write(f"encoder {encoder.name}: {encoder.options}")
    for variant in plan.variants:
        differs = ", ".join(f"{k}={v!r}" for k, v in variant.differs.items()) or "defaults"
        write(f"variant {variant.name}: pretext {variant.pretext} with {differs}; seeds "
              f"{','.join(map(str, variant.seeds))}")
    for protocol in plan.protocols:
        write(f"protocol {protocol.name}: {protocol.options}")
    for unit in plan.units:
        checkpoint, pending = unit_status(plan, unit, force)
        action = {"train": f"train checkpoint {unit.checkpoint_hash}",
                  "reuse": f"reuse checkpoint {unit.checkpoint_hash}", "none": "untrained"}[checkpoint]
        todo = {e.protocol.name for e in pending}
        evaluations = ", ".join(f"{e.protocol.name}: {'evaluate' if e.protocol.name in todo else 'recorded'}"
                                for e in unit.evaluations)
        write(f"  {unit.label}: {action if todo else 'nothing to train'}; {evaluations}")


class _Log:
    """Messages to the console and to ``<out>/run.log`` (neither when ``console`` is None and ``path`` is None: the
    other processes of a ``torchrun`` job, whose rank 0 says it all)."""

    def __init__(self, console: Any, path: Path | None) -> None:
        self.console = console
        self.path = path

    def __call__(self, message: str, style: str = "") -> None:
        if self.console is not None:
            self.console.print(f"[{style}]{message}[/]" if style else message, highlight=False, markup=bool(style),
                           soft_wrap=True)
        self.to_file(message)

    def to_file(self, message: str) -> None:
        """Only to ``run.log`` (progress lines, which the progress display prints itself)."""
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")


def main(args: argparse.Namespace) -> int:
    from sslbench.options import check_experiment

    # What the plugins' source says is checked before anything imports torch or opens a dataset, so a usage error
    # returns at once; resolve_plan checks the rest (a Config's __post_init__, data roots) before opening data.
    exp = experiment_from_args(args)
    check_experiment(exp)

    from rich.console import Console

    from sslbench.checkpoints import atomic_write_bytes
    from sslbench.cli import print_records_table
    from sslbench.plan import resolve_plan
    from sslbench.progress import Progress
    from sslbench.runner import default_cache_dir, run

    plan = resolve_plan(exp, Path(exp.cache_dir or default_cache_dir()))
    console = Console(stderr=True)
    child = args.unit is not None
    if child:
        if not 0 <= args.unit < len(plan.units):
            raise UsageError(f"--unit {args.unit}: the plan has units 0..{len(plan.units) - 1}")
        plan.units = [plan.units[args.unit]]
    if args.dry_run:
        print_plan(plan, args.force)
        return 0
    try:
        plan.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {plan.out}: cannot create it ({exc.strerror or exc}); choose a writable folder") \
            from exc
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports and writes
    log = _Log(console, plan.out / "run.log") if main_process else _Log(None, None)
    log(f"sslbench run: {' '.join(sys.argv)}")
    print_plan(plan, args.force, write=log)
    started = time.time()
    manifest = {"command": sys.argv, "cwd": os.getcwd(), "plan": plan.describe(), "started": started,
                "hardware": _hardware()}

    def report(record: dict[str, Any]) -> None:
        status = record["status"]
        detail = f": {record.get('reason')}" if status != "ok" else ""
        style = "green" if status == "ok" else "yellow" if status == "skipped" else "red"
        log(f"{status} {record['variant']} × {record['protocol']} seed {record['seed']}{detail}", style)

    def save_manifest(outcome: Any = None, error: str | None = None) -> None:
        if not main_process:
            return
        finished = time.time()
        manifest.update(finished=finished, wall_s=finished - started, error=error)
        if outcome is not None:
            manifest["outcome"] = {"evaluated": outcome.done, "already_recorded": outcome.cached,
                                   "trained": outcome.trained, "reused": outcome.reused,
                                   "deferred": outcome.deferred, "failed": len(outcome.failed)}
        atomic_write_bytes(plan.out / "manifest.json", (json.dumps(manifest, indent=2, default=str) + "\n").encode())

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # a scheduler's SIGTERM ends the run like Ctrl-C: manifest and log kept

    signal.signal(signal.SIGTERM, terminated)
    try:
        if not child and (args.jobs > 1 or args.launcher == "submitit"):
            outcome = _launch(args, plan, log)
        else:
            with Progress(enabled=not args.quiet and main_process, console=console, every=args.progress_every,
                          record=log.to_file) as progress:
                outcome = run(plan, force=args.force, wait=not args.no_wait, progress=progress, on_record=report,
                              say=log)
    except BaseException as exc:
        if not child:
            save_manifest(error=f"{type(exc).__name__}: {exc}")
        raise
    if child:
        return 1 if outcome.failed else 0
    save_manifest(outcome)
    log(f"{outcome.done} evaluated, {outcome.cached} already recorded; trained: "
        f"{', '.join(outcome.trained) or 'none'}; reused checkpoints: {', '.join(outcome.reused) or 'none'}"
        + (f"; left for a later run: {', '.join(outcome.deferred)}" if outcome.deferred else "")
        + f"; records in {plan.out}")
    if main_process and outcome.records:
        from sslbench.tables import make_table

        atomic_write_bytes(plan.out / "table.md", (make_table(outcome.records, "md") + "\n").encode())
        print_records_table(outcome.records, Console())
    if outcome.missing:
        log(f"{len(outcome.missing)} record(s) missing, their jobs died without writing them (see the job logs): "
            + ", ".join(outcome.missing), "red")
    if outcome.failed:
        log(f"{len(outcome.failed)} failed: see the records' reason and traceback fields", "red")
    return 1 if outcome.failed or outcome.missing else 0


def _launch(args: argparse.Namespace, plan: Any, log: Any) -> Any:
    """Run the plan's pending units as separate jobs, then read their records back."""
    from sslbench.launch import run_local, run_submitit
    from sslbench.runner import collect, unit_status

    pending = [i for i, unit in enumerate(plan.units) if unit_status(plan, unit, args.force)[1]]
    log(f"{len(pending)} of {len(plan.units)} units to run as jobs ({args.launcher})")
    if args.launcher == "submitit":
        run_submitit(args.argv, pending, folder=plan.out / "jobs", partition=args.partition,
                     gpus=args.gpus_per_job, timeout_min=args.timeout_min, cluster=args.submitit_cluster, say=log)
    else:
        run_local(args.argv, pending, args.jobs, plan.out / "jobs", say=log)
    return collect(plan)

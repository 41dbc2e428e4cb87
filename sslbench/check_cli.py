"""``sslbench check pretext|protocol NAME[,NAME]``: a one-minute smoke test of a plugin, for its author and for CI.

A **pretext** is built on every registered encoder (or the ``--encoder`` ones) at a small image size, through the same
plan and factory a run uses (:func:`sslbench.plan.resolve_plan`, :func:`sslbench.plan.build_pretext`), and checked in
steps; a failed step skips the later ones for that encoder:

- ``build``: the plan resolves (options, the pretext's ``requires`` against the synthetic dataset) and it builds;
- ``train``: one real training step through the trainer (:func:`sslbench.trainer.train_pretext`) on a synthetic
  batch: a finite loss, a backward pass, and weights that moved (skipped for untrainable pretexts; the encoder itself
  need not move at once: a zero-initialised head passes it no gradient on the first step);
- ``taps``: ``representation()`` on real images returns one map per declared tap, each with the declared channels
  and the spatial size its stride implies, all finite;
- ``colorize`` (pretexts that offer it): RGB of the input's shape, in [0, 1], finite, with the input's lightness;
- ``reload``: the trained checkpoint loaded into a freshly built pretext gives the same representation (and
  colours) as the trained one, i.e. everything it needs is in ``state_dict``; for an untrainable pretext, a rebuild
  with the same seed gives the same representation (what a run relies on instead of a checkpoint).

A **protocol** runs for real on the synthetic dataset (``requires`` checked against it) through the runner, on the
``random`` pretext (``regression``, trained one step, for a protocol that needs a colorizer; ``--pretext`` picks
another), with a one-epoch budget; its record must be ``ok`` with finite metrics, including its ``headline``.

Names may be wildcard patterns (``'*'``: every registered one). Prints a pass/fail table and each failure's reason;
exit 0 when all pass, 1 when a check fails, 2 on a usage error (unknown name, bad option).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sslbench.cli import names_arg, positive_int_arg
from sslbench.errors import UsageError

__all__ = ["add_parser", "main", "PRETEXT_STEPS", "PROTOCOL_STEPS"]

PRETEXT_STEPS = ("build", "train", "taps", "colorize", "reload")
PROTOCOL_STEPS = ("requires", "run", "metrics")
#: The member of an encoder family a pretext is checked on when no ``--encoder`` is given.
FAMILY_EXAMPLES = {"timm/*": "timm/resnet18"}
#: Images of the synthetic dataset's training splits and of its evaluation split in a check.
TRAIN_IMAGES, EVAL_IMAGES = 64, 32
#: How far (in L, 0..100) a colorizer's output may move the input's lightness: the gamut fit every colorizer goes
#: through keeps it within 0.5 (:func:`sslbench.pretext.merge_l_ab`); 8-bit-free float maths adds little to that.
LIGHTNESS_TOLERANCE = 1.0


class CheckFailed(Exception):
    """A plugin does not keep a promise of its contract; the message says which."""


class NotApplicable(Exception):
    """A step that does not apply to this plugin (an untrainable pretext has no training step)."""


@dataclass
class Row:
    """One plugin on one encoder: each step's outcome (``ok``, ``FAIL``, ``-`` not applicable, ``skip``)."""

    plugin: str
    encoder: str
    steps: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    _failed: bool = False

    def step(self, name: str, fn: Callable[[], str | None]) -> None:
        """Run one step, unless an earlier one failed."""
        if self._failed:
            self.steps[name] = "skip"
            return
        try:
            detail = fn()
        except NotApplicable as exc:
            self.steps[name], self.details[name] = "-", str(exc)
        except Exception as exc:  # a plugin's bug can raise anything: report it and go on with the next plugin
            self.steps[name], self.details[name] = "FAIL", f"{type(exc).__name__}: {exc}"
            self._failed = True
        else:
            self.steps[name], self.details[name] = "ok", detail or ""

    @property
    def failed(self) -> bool:
        return self._failed


def add_parser(sub: Any) -> None:
    check = sub.add_parser(
        "check", help="smoke-test a pretext or protocol plugin (a minute on a CPU)",
        description="Smoke-test plugins. pretext: build on every registered encoder (or --encoder), one training "
                    "step (finite loss, backward), the representation's taps as declared, colorize if offered, a "
                    "checkpoint reload. protocol: a tiny real run on the synthetic dataset. Exit 1 if a check fails.")
    check.add_argument("kind", choices=["pretext", "protocol"], help="what to check")
    check.add_argument("names", type=names_arg, metavar="NAME[,NAME]",
                       help="registered names or wildcard patterns ('*': every registered one)")
    check.add_argument("--encoder", type=names_arg, default=None, metavar="E[,E]",
                       help="encoders to check on (default for a pretext: every registered encoder, "
                            f"{', '.join(FAMILY_EXAMPLES.values())} for its family; for a protocol: vgg_small)")
    check.add_argument("--pretext", default=None,
                       help="protocol check: the pretext evaluated (default: random, or regression for a protocol "
                            "that needs a colorizer)")
    check.add_argument("--image-size", type=positive_int_arg, default=32, help="image side (default: 32)")
    check.add_argument("--batch-size", type=positive_int_arg, default=8, help="training batch (default: 8)")
    check.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    check.add_argument("--verbose", action="store_true", help="also print what each passed step found")


def _names(registry: Any, patterns: list[str], what: str) -> list[str]:
    """The registered names ``patterns`` stand for; an unknown name or a pattern matching nothing is a usage
    error."""
    if not patterns:
        raise UsageError(f"name at least one {what} (or '*' for every one)")
    names: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matched = [n for n in registry.names(pattern) if not n.endswith("/*")]
            if not matched:
                raise UsageError(f"{what} pattern {pattern!r} matches no registered {what}; see `sslbench list`")
            names += matched
        else:
            registry.resolve(pattern)  # UnknownPluginError (a UsageError) lists the valid names
            names.append(pattern)
    return list(dict.fromkeys(names))


def _default_encoders() -> list[str]:
    from sslbench.registry import ENCODERS

    out = []
    for name in ENCODERS.names():
        if name.endswith("/*"):
            if name in FAMILY_EXAMPLES:
                out.append(FAMILY_EXAMPLES[name])
        else:
            out.append(name)
    return out


def _experiment(variant: str, pretext: str, protocol: str, encoder: str, args: argparse.Namespace, tmp: Path
                ) -> Any:
    from sslbench.experiment import DatasetSpec, Experiment, VariantSpec

    exp = Experiment(name="check", variants=[VariantSpec(variant, pretext)], protocols={protocol: {}},
                     datasets=[DatasetSpec("synthetic", image_size=args.image_size, subset=TRAIN_IMAGES,
                                           eval_subset=EVAL_IMAGES)],
                     encoders={encoder: {}}, seeds=[0], device=args.device, out=tmp / "runs", cache_dir=tmp / "cache")
    exp.budget.steps, exp.budget.batch_size = 1, args.batch_size
    exp.budget.eval_epochs, exp.budget.eval_batch_size = 1.0, 2 * args.batch_size
    return exp


def _variant_name(name: str) -> str:
    return name.replace(":", "-").replace("/", "-")


# -- pretexts --------------------------------------------------------------------------------------------------------
def _expected_size(size: int, stride: int) -> set[int]:
    return {size // stride, -(-size // stride)}


def check_maps(maps: Any, taps: Any, height: int, width: int) -> None:
    """Raise :class:`CheckFailed` unless ``maps`` are one finite (N, C, H, W) map per declared tap, with its
    channels and the spatial size its stride implies."""
    import torch

    if not isinstance(maps, (list, tuple)) or not all(isinstance(m, torch.Tensor) for m in maps):
        raise CheckFailed(f"representation() returned {type(maps).__name__}, expected a list of tensors")
    if len(maps) != len(taps):
        raise CheckFailed(f"representation() returned {len(maps)} maps for {len(taps)} declared taps "
                          f"({', '.join(t.name for t in taps)})")
    for tap, fmap in zip(taps, maps):
        if fmap.dim() != 4 or fmap.shape[1] != tap.channels:
            raise CheckFailed(f"tap {tap.name!r}: map of shape {tuple(fmap.shape)}, declared {tap.channels} channels")
        h, w = fmap.shape[-2:]
        if h not in _expected_size(height, tap.stride) or w not in _expected_size(width, tap.stride):
            raise CheckFailed(f"tap {tap.name!r}: {h}x{w} map from {height}x{width} images, but its declared stride "
                              f"{tap.stride} implies {height // tap.stride}x{width // tap.stride}")
        if not torch.isfinite(fmap).all():
            raise CheckFailed(f"tap {tap.name!r}: non-finite values")


def check_colorized(rgb: Any, out: Any) -> float:
    """Raise :class:`CheckFailed` unless ``out`` is a colorization of ``rgb``: same shape, finite, in [0, 1], with the
    input's lightness; returns the largest lightness change."""
    import torch

    from sslbench.colour import rgb_to_lab

    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(rgb.shape):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckFailed(f"colorize() returned {shape} for input {tuple(rgb.shape)}")
    if not torch.isfinite(out).all():
        raise CheckFailed("colorize() returned non-finite values")
    low, high = float(out.min()), float(out.max())
    if low < -1e-4 or high > 1 + 1e-4:
        raise CheckFailed(f"colorize() returned values in [{low:.3g}, {high:.3g}], expected RGB in [0, 1]")
    shift = float((rgb_to_lab(out.float().clamp(0, 1))[:, 0] - rgb_to_lab(rgb.float())[:, 0]).abs().max())
    if shift > LIGHTNESS_TOLERANCE:
        raise CheckFailed(f"colorize() changed the input's lightness by up to {shift:.2f} L (allowed "
                          f"{LIGHTNESS_TOLERANCE}); a colorizer keeps L and predicts ab")
    return shift


def _outputs(pretext: Any, rgb: Any) -> list[Any]:
    """The representation's maps and, for a colorizer, its colours, seeded (a colorizer may sample)."""
    import torch

    from sslbench.runtime import seed_everything

    pretext.eval()
    with torch.no_grad():
        seed_everything(0)
        out = list(pretext.representation()(rgb))
        if pretext.can_colorize:
            seed_everything(0)
            out.append(pretext.colorize(rgb))
    return out


def _same(a: list[Any], b: list[Any]) -> float:
    return max((float((x.float() - y.float()).abs().max()) for x, y in zip(a, b)), default=0.0)


def check_pretext(name: str, encoder: str, args: argparse.Namespace, runtime: Any) -> Row:
    """Every pretext step of ``name`` on ``encoder``."""
    import torch

    from sslbench.config import TrainBudget
    from sslbench.pretext import images_to_rgb
    from sslbench.plan import build_pretext, resolve_plan
    from sslbench.progress import Progress
    from sslbench.runner import checkpoint_store
    from sslbench.runtime import seed_everything
    from sslbench.trainer import load_trained, train_pretext

    row = Row(name, encoder)
    state: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sslbench-check-") as tmp:
        def build() -> str:
            exp = _experiment(_variant_name(name), name, "linear", encoder, args, Path(tmp))
            plan = state["plan"] = resolve_plan(exp, Path(tmp) / "cache")
            unit = state["unit"] = plan.units[0]
            seed_everything(0)
            pretext = state["pretext"] = build_pretext(unit.variant, unit.encoder, unit.run_config)
            if not hasattr(pretext, "encoder"):
                raise CheckFailed("the pretext sets no self.encoder")
            batch = next(iter(runtime.loader(unit.dataset.eval_data, args.batch_size, shuffle=False, seed=0)))
            state["rgb"] = images_to_rgb(batch["image"]).to(runtime.device)
            return f"{sum(p.numel() for p in pretext.parameters()) / 1e6:.2f}M parameters"

        def train() -> str:
            pretext, unit = state["pretext"], state["unit"]
            if not unit.variant.pretext_cls.trainable:
                pretext.to(runtime.device)
                raise NotApplicable("not trainable")
            before = [p.detach().cpu().clone() for p in pretext.parameters()]
            summary = train_pretext(pretext, unit.train_split_data, runtime,
                                    TrainBudget(steps=1, batch_size=args.batch_size),
                                    checkpoint_store(state["plan"], unit), unit.seed, Progress.disabled())
            losses = summary.last_losses
            bad = [k for k, v in losses.items() if k != "step" and not math.isfinite(v)]
            if bad:
                raise CheckFailed(f"non-finite {', '.join(bad)}")
            after = [p.detach().cpu() for p in pretext.parameters()]
            if all(torch.equal(b, a) for b, a in zip(before, after)):
                raise CheckFailed("one training step changed no weight: the loss reaches no parameter of an "
                                  "optimiser")
            return ", ".join(f"{k} {v:.4g}" for k, v in losses.items() if k != "step")

        def taps() -> str:
            pretext, rgb = state["pretext"], state["rgb"]
            pretext.eval()
            representation = pretext.representation()
            with torch.no_grad():
                maps = representation(rgb)
            check_maps(maps, tuple(representation.taps), *rgb.shape[-2:])
            return " ".join(f"{t.name}:{t.channels}/{t.stride}" for t in representation.taps)

        def colorize() -> str:
            pretext, rgb = state["pretext"], state["rgb"]
            if not pretext.can_colorize:
                raise NotApplicable("does not colorize")
            pretext.eval()
            with torch.no_grad():
                out = pretext.colorize(rgb)
            return f"lightness kept within {check_colorized(rgb, out):.2f}"

        def reload() -> str:
            pretext, unit, rgb = state["pretext"], state["unit"], state["rgb"]
            expected = _outputs(pretext, rgb)
            seed_everything(0 if not unit.variant.pretext_cls.trainable else 1)
            fresh = build_pretext(unit.variant, unit.encoder, unit.run_config)
            if unit.variant.pretext_cls.trainable:
                load_trained(fresh, checkpoint_store(state["plan"], unit), runtime)
                what = "the reloaded checkpoint"
            else:
                fresh.to(runtime.device)
                what = "a rebuild with the same seed"
            difference = _same(expected, _outputs(fresh, rgb))
            if difference > 1e-5:
                raise CheckFailed(f"{what} gives outputs up to {difference:.3g} away from the original: some state "
                                  "is not in state_dict (keep it in buffers or get_extra_state)")
            return f"{what} matches"

        for step, fn in zip(PRETEXT_STEPS, (build, train, taps, colorize, reload)):
            row.step(step, fn)
    return row


# -- protocols -------------------------------------------------------------------------------------------------------
def _metric(metrics: dict[str, Any], name: str) -> Any:
    """A flat metric name (``best/top1``) looked up in a record's nested metrics."""
    node: Any = metrics
    for part in name.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_protocol(name: str, encoder: str, args: argparse.Namespace) -> Row:
    """A tiny real run of protocol ``name`` on ``encoder``."""
    from sslbench.plan import resolve_plan
    from sslbench.registry import PROTOCOLS
    from sslbench.runner import run

    cls = PROTOCOLS.get(name)
    pretext = args.pretext or ("regression" if "colorize" in cls.requires else "random")
    row = Row(f"{name} ({pretext})", encoder)
    state: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sslbench-check-") as tmp:
        def requires() -> str:
            exp = _experiment(_variant_name(pretext), pretext, name, encoder, args, Path(tmp))
            state["plan"] = resolve_plan(exp, Path(tmp) / "cache")
            return ", ".join(sorted(cls.requires)) or "nothing"

        def run_it() -> str:
            start = time.perf_counter()
            (record,) = run(state["plan"]).records
            state["record"] = record
            if record["status"] != "ok":
                raise CheckFailed(f"record {record['status']}: {record.get('reason')}")
            return f"{time.perf_counter() - start:.1f} s"

        def metrics() -> str:
            values = state["record"]["metrics"]
            if not values:
                raise CheckFailed("evaluate() returned no metrics")
            headline = getattr(cls, "headline", "")
            if headline:
                value = _metric(values, headline)
                if not isinstance(value, (int, float)):
                    raise CheckFailed(f"the headline metric {headline!r} is not among the metrics it returned")
                return f"{headline} {value:.4g}"
            return "no headline metric declared"

        for step, fn in zip(PROTOCOL_STEPS, (requires, run_it, metrics)):
            row.step(step, fn)
    return row


# -- the command -----------------------------------------------------------------------------------------------------
def _print_table(kind: str, steps: tuple[str, ...], rows: list[Row], verbose: bool) -> None:
    headers = [kind, "encoder", *steps]
    cells = [[row.plugin, row.encoder, *(row.steps.get(s, "skip") for s in steps)] for row in rows]
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]
    for line in [headers, *cells]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip())
    for row in rows:
        for step in steps:
            status = row.steps.get(step)
            if status == "FAIL" or (verbose and status in ("ok", "-") and row.details.get(step)):
                print(f"{status} {kind} {row.plugin} on {row.encoder}, step {step}: {row.details[step]}")


def main(args: argparse.Namespace) -> int:
    from sslbench.registry import ENCODERS, PRETEXTS, PROTOCOLS
    from sslbench.runtime import Runtime

    registry = PRETEXTS if args.kind == "pretext" else PROTOCOLS
    names = _names(registry, args.names, args.kind)
    if args.encoder is not None:
        for encoder in args.encoder:
            ENCODERS.resolve(encoder)
    if args.pretext is not None:
        if args.kind != "protocol":
            raise UsageError("--pretext chooses the pretext of a protocol check; a pretext check takes its names")
        PRETEXTS.resolve(args.pretext)
    if args.kind == "pretext":
        encoders = args.encoder or _default_encoders()
        runtime = Runtime(args.device, "fp32", 0)
        rows = [check_pretext(name, encoder, args, runtime) for name in names for encoder in encoders]
        steps = PRETEXT_STEPS
    else:
        encoders = args.encoder or ["vgg_small"]
        rows = [check_protocol(name, encoder, args) for name in names for encoder in encoders]
        steps = PROTOCOL_STEPS
    _print_table(args.kind, steps, rows, args.verbose)
    failed = sum(row.failed for row in rows)
    print(f"{len(rows) - failed} of {len(rows)} passed" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0

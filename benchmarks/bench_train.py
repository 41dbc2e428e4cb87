"""Training throughput through the harness against a bare PyTorch loop, per pretext, on real CIFAR-10 images.

For each pretext the same model (built from the same plan, seed and options), the same batch size and the same images
are trained twice, alternately, ``--repeats`` times:

* **harness**: :func:`sslbench.trainer.train_pretext` over the pretext split as ``sslbench run`` trains it (the
  dataset read from disk through the data loader, batches moved by the runtime, the finite-loss checks, progress,
  loss logging and the periodic checkpoint);
* **bare**: the batches decoded once beforehand and kept in memory as tensors, then a hand-written loop
  (``zero_grad``; ``compute_loss``; ``backward``; ``step``). The cGAN has two optimisers and no ``compute_loss``;
  its bare loop is the pix2pix step written out here.

Both sides are timed from the first to the last step, after ``--warmup`` untimed steps, and reported in images/s
(the median over repeats), with the harness's overhead ``1 - harness/bare``. The load average is printed beside the
table: take the numbers on an otherwise idle machine (torch spreads every operation over all threads).

    .venv/bin/python benchmarks/bench_train.py [--pretexts regression,quantized] [--steps 40] [--repeats 3]

Real images come from ``$SSLBENCH_DATA`` or ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchcommon import data_root, load_average  # first: it puts the repository on sys.path

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from sslbench.checkpoints import CheckpointStore  # noqa: E402
from sslbench.config import TrainBudget  # noqa: E402
from sslbench.experiment import Budget, DatasetSpec, Experiment, VariantSpec  # noqa: E402
from sslbench.plan import RunPlan, Unit, build_pretext, resolve_plan  # noqa: E402
from sslbench.progress import Progress  # noqa: E402
from sslbench.runtime import Runtime, seed_everything  # noqa: E402

DEFAULT_PRETEXTS = "regression,quantized,hypercolumn,splitbrain,cgan,supervised"



def plan_for(pretexts: list[str], subset: int, batch_size: int, steps: int, cache: Path) -> RunPlan:
    exp = Experiment(
        name="bench-train", variants=[VariantSpec(name, name) for name in pretexts], protocols={"linear": {}},
        datasets=[DatasetSpec("cifar10", data_root=str(data_root() / "cifar10"), subset=subset)],
        budget=Budget(steps=steps, batch_size=batch_size), device="cpu", out=cache / "records", cache_dir=cache)
    return resolve_plan(exp, cache)


def fresh_pretext(unit: Unit) -> Any:
    seed_everything(unit.seed)
    return build_pretext(unit.variant, unit.encoder, unit.run_config)


def harness_images_per_s(unit: Unit, runtime: Runtime, batch_size: int, steps: int, warmup: int, cache: Path) -> float:
    """Images/s of the harness's own training loop, from its first timed step to its last."""
    from sslbench.trainer import train_pretext

    pretext = fresh_pretext(unit)
    store = CheckpointStore(cache / f"harness-{time.monotonic_ns()}", unit.variant.pretext, unit.checkpoint_hash)
    stamps: list[float] = []

    def stamp(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Called by the loop on every batch once it is on the device, just before its step: the time between two
        calls is one whole iteration (the step, then loading and moving the next batch)."""
        stamps.append(time.perf_counter())
        return batch

    # Stamps start at the first step, so the data-dependent ``prepare`` pass before it is left out.
    train_pretext(pretext, unit.train_split_data, runtime, TrainBudget(steps=warmup + steps + 1, batch_size=batch_size),
                  store, unit.seed, Progress.disabled(), checkpoint_every=200, batch_transform=stamp)
    timed = stamps[warmup:]
    return batch_size * (len(timed) - 1) / (timed[-1] - timed[0])


def ready_batches(unit: Unit, runtime: Runtime, batch_size: int, count: int) -> list[dict[str, torch.Tensor]]:
    loader = runtime.loader(unit.train_split_data, batch_size, shuffle=True, seed=unit.seed, drop_last=True)
    batches = []
    while len(batches) < count:
        for batch in loader:
            batches.append(runtime.to_device(batch))
            if len(batches) == count:
                break
    return batches


def bare_step_fn(pretext: Any) -> Callable[[dict[str, torch.Tensor]], None]:
    """One optimisation step written without the harness: the pretext's modules and loss, plain autograd."""
    if type(pretext).__name__ == "CGAN":
        return _bare_cgan_step(pretext)
    (opt,) = pretext.optimizers.values()

    def step(batch: dict[str, torch.Tensor]) -> None:
        opt.zero_grad(set_to_none=True)
        loss, _ = pretext.compute_loss(batch)
        loss.backward()
        opt.step()
    return step


def _bare_cgan_step(pretext: Any) -> Callable[[dict[str, torch.Tensor]], None]:
    from sslbench.colour import normalize_l, rgb_to_lab
    from sslbench.pretext import images_to_rgb

    opt_g, opt_d = pretext.optimizers["generator"], pretext.optimizers["discriminator"]
    gen, disc, cfg = pretext.generator, pretext.discriminator, pretext.config

    def step(batch: dict[str, torch.Tensor]) -> None:
        lab = rgb_to_lab(images_to_rgb(batch["image"]))
        cond, target = normalize_l(lab[:, :1]), lab[:, 1:] / cfg.ab_scale
        fake = gen(cond)
        real_logits = disc(torch.cat([cond, target], dim=1))
        fake_logits = disc(torch.cat([cond, fake.detach()], dim=1))
        loss_d = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                        + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        for p in disc.parameters():
            p.requires_grad_(False)
        gen_logits = disc(torch.cat([cond, fake], dim=1))
        loss_g = (F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
                  + cfg.lambda_l1 * F.l1_loss(fake, target))
        for p in disc.parameters():
            p.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    return step


def bare_images_per_s(unit: Unit, runtime: Runtime, batch_size: int, steps: int, warmup: int) -> float:
    pretext = fresh_pretext(unit)
    batches = ready_batches(unit, runtime, batch_size, warmup + steps)
    pretext.prepare(iter(ready_batches(unit, runtime, batch_size, 4)), runtime)
    pretext.to(runtime.device)
    pretext.optimizers = pretext.configure_optimizers()
    pretext.train()
    step = bare_step_fn(pretext)
    stamps = []
    for batch in batches:
        step(batch)
        stamps.append(time.perf_counter())
    timed = stamps[warmup:]
    return batch_size * (len(timed) - 1) / (timed[-1] - timed[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretexts", default=DEFAULT_PRETEXTS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subset", type=int, default=5000, help="CIFAR-10 training images the harness reads")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pretexts = [p.strip() for p in args.pretexts.split(",") if p.strip()]
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sslbench-bench-train-") as tmp:
        cache = Path(tmp)
        plan = plan_for(pretexts, args.subset, args.batch_size, args.steps, cache)
        runtime = Runtime("cpu")
        for unit in plan.units:
            harness, bare = [], []
            for _ in range(args.repeats):
                harness.append(harness_images_per_s(unit, runtime, args.batch_size, args.steps, args.warmup, cache))
                bare.append(bare_images_per_s(unit, runtime, args.batch_size, args.steps, args.warmup))
            h, b = statistics.median(harness), statistics.median(bare)
            rows.append((unit.variant.name, h, b, 1 - h / b))
            print(f"{unit.variant.name}: harness {h:.1f} img/s, bare {b:.1f} img/s", file=sys.stderr, flush=True)
    load_after = load_average()
    print(f"\nCIFAR-10 32x32, vgg_small, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, "
          f"median of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average before {load_before}, after {load_after}\n")
    print("| pretext | harness (images/s) | bare loop (images/s) | harness overhead |")
    print("|---|---:|---:|---:|")
    for name, h, b, overhead in rows:
        print(f"| {name} | {h:,.1f} | {b:,.1f} | {100 * overhead:+.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of data-parallel scaling on the CPU: pretext training images/s on 1 process and under ``torchrun``.

The same training, at the same GLOBAL batch (``--batch-size``, which is what sslbench's batch size means under
``torchrun``: each process takes an equal chunk of every batch), on real CIFAR-10 images:

* **1 process**: ``python bench_scaling.py --worker ...`` with ``--threads`` intra-op threads (default: all cores);
* **N processes**: ``torchrun --standalone --nproc_per_node=N bench_scaling.py --worker ...`` under gloo, each with
  ``threads / N`` threads, so both use the same cores.

Each worker builds the pretext (``--pretext``, default ``regression``, on ``vgg_small``), does ``--warmup`` steps,
then times ``--steps`` steps of :meth:`Pretext.training_step` over :meth:`Runtime.loader` batches (data loading
included, the processes meeting at a barrier before and after), and rank 0 prints the images/s as JSON. The script
prints a table of images/s and the speed-up, with the load average beside it.

    python benchmarks/bench_scaling.py --data-root ../shared/data [--nproc 2] [--steps 30] [--batch-size 64]

Take timings on an idle machine: on a busy one a process that is not scheduled stalls every other at each gradient
all-reduce. A smoke run: ``--steps 2 --warmup 1 --batch-size 16 --images 256``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchcommon import data_root, load_average  # first: it puts the repository on sys.path



def worker(args: argparse.Namespace) -> None:
    """One process of the measurement (alone, or one rank of a torchrun job)."""
    import torch

    from sslbench.datasets import create_dataset
    from sslbench.pretext import DataInfo, EncoderSpec
    from sslbench.registry import PRETEXTS
    from sslbench.runtime import Runtime, seed_everything

    torch.set_num_threads(args.threads)
    runtime = Runtime("cpu")
    dataset = create_dataset("cifar10", root=args.data_root / "cifar10", split="train", subset=args.images, seed=0)
    seed_everything(0)
    cls = PRETEXTS.get(args.pretext)
    pretext = cls(cls.Config(), EncoderSpec("vgg_small", {}, 32),
                  DataInfo("cifar10", 32, dataset.num_classes, tuple(dataset.class_names)))
    pretext.setup(runtime)
    pretext.train()

    def batches():
        epoch = 0
        while True:
            for batch in runtime.loader(dataset, args.batch_size, shuffle=True, seed=0, epoch=epoch, drop_last=True):
                yield runtime.to_device(batch)
            epoch += 1

    stream = batches()

    def run(steps: int) -> int:
        images = 0
        for _ in range(steps):
            batch = next(stream)
            pretext.training_step(batch, runtime)
            runtime.end_step()
            images += int(batch["image"].shape[0]) * runtime.world_size
        return images

    run(args.warmup)
    runtime.barrier()
    start = time.perf_counter()
    images = run(args.steps)
    runtime.barrier()
    wall = time.perf_counter() - start
    if runtime.is_main:
        print(json.dumps({"processes": runtime.world_size, "images": images, "wall_s": wall,
                          "images_per_s": images / wall}))
    if runtime.distributed:
        torch.distributed.destroy_process_group()


def measure(args: argparse.Namespace, nproc: int) -> dict[str, float]:
    """Run the workers for ``nproc`` processes; rank 0's JSON line."""
    threads = max(1, args.threads // nproc)
    common = ["--worker", "--data-root", str(args.data_root), "--pretext", args.pretext, "--images",
              str(args.images), "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup",
              str(args.warmup), "--threads", str(threads)]
    script = str(Path(__file__).resolve())
    if nproc == 1:
        command = [sys.executable, script, *common]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   script, *common]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=data_root())
    parser.add_argument("--pretext", default="regression")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the torchrun row")
    parser.add_argument("--images", type=int, default=5000, help="CIFAR-10 training images the loader draws from")
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch, the same in both rows")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads in all (divided among the processes)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.batch_size % args.nproc:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of --nproc {args.nproc}")
    rows = [measure(args, 1), measure(args, args.nproc)]
    print(f"pretext {args.pretext} on vgg_small, CIFAR-10 32x32, global batch {args.batch_size}, {args.steps} timed "
          f"steps, {args.threads} threads in all")
    print("| processes | images/s | speed-up |")
    print("|---:|---:|---:|")
    for row in rows:
        print(f"| {row['processes']} | {row['images_per_s']:,.1f} | {row['images_per_s'] / rows[0]['images_per_s']:.2f}x |")
    print(f"load average: {load_average()} (1, 5, 15 min)")


if __name__ == "__main__":
    main()

"""Benchmark of the data path: one epoch of PIL decoding against one epoch read from the decoded-image cache.

Two workloads on real images, each timed side by side in one run:

* **CIFAR-10**: the first ``--cifar-images`` (default 5000) of the JPEG train split, at 32 x 32 (no resize);
* **CamVid**: the train split (367 frames of 360 x 480 PNG), at the adapter's default (96, 128);

For each, and for each ``--workers`` count, it times a shuffled epoch of :meth:`sslbench.runtime.Runtime.loader`
batches (``--batch-size``, on the CPU) over the adapter as it is (PIL decodes, resizes and crops every image) and over
the same split wrapped in :class:`sslbench.datasets.decoded_cache.DecodedSplit` (memmap slices). The cold build of
the cache (every image decoded once, with the same number of workers) is timed separately. Before timing, the first
batch of both paths is checked to be identical. Each number is the median of ``--repeats`` epochs; the cache is
built in a temporary folder (or ``--cache-dir``) and removed afterwards.

    python benchmarks/bench_data.py --data-root ../shared/data [--workers 0,2] [--repeats 3]

Take timings on an idle machine: the script prints the load average next to the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchcommon import data_root, load_average  # first: it puts the repository on sys.path

import torch

from sslbench.datasets import create_dataset
from sslbench.datasets.decoded_cache import DecodedSplit
from sslbench.runtime import Runtime



@dataclass
class Row:
    workload: str
    workers: int
    images: int
    pil: float
    cached: float
    build_s: float

    @property
    def speedup(self) -> float:
        return self.cached / self.pil if self.pil else float("nan")


def epoch_seconds(runtime: Runtime, dataset: Any, batch_size: int, epoch: int) -> float:
    """Wall time of one shuffled epoch of batches (nothing done with them)."""
    start = time.perf_counter()
    for _ in runtime.loader(dataset, batch_size, shuffle=True, seed=0, epoch=epoch):
        pass
    return time.perf_counter() - start


def median_rate(images: int, timer: Callable[[int], float], repeats: int) -> float:
    return images / statistics.median(timer(epoch) for epoch in range(repeats))


def measure(name: str, make: Callable[[], Any], workers: int, batch_size: int, repeats: int, cache_root: Path
            ) -> Row:
    runtime = Runtime(device="cpu", workers=workers)
    pil = make()
    folder = cache_root / f"{name.split()[0]}-w{workers}"
    cached = DecodedSplit(make(), folder)
    start = time.perf_counter()
    cached.materialize(workers)
    build_s = time.perf_counter() - start
    first_pil = next(iter(runtime.loader(pil, batch_size, shuffle=False, seed=0)))
    first_cached = next(iter(runtime.loader(cached, batch_size, shuffle=False, seed=0)))
    for key, value in first_pil.items():
        if not torch.equal(value, first_cached[key]):
            raise SystemExit(f"{name}: the cached batch differs from the PIL batch in {key!r}")
    n = len(pil)
    pil_rate = median_rate(n, lambda e: epoch_seconds(runtime, pil, batch_size, e), repeats)
    cached_rate = median_rate(n, lambda e: epoch_seconds(runtime, cached, batch_size, e), repeats)
    shutil.rmtree(folder, ignore_errors=True)
    return Row(name, workers, n, pil_rate, cached_rate, build_s)


def results_table(rows: list[Row]) -> str:
    lines = ["| workload | workers | PIL decode (images/s) | decoded cache (images/s) | speed-up | cold build (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.workload} | {r.workers} | {r.pil:,.0f} | {r.cached:,.0f} | {r.speedup:.1f}x | "
                     f"{r.build_s:.2f} ({r.images / r.build_s:,.0f} images/s) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=data_root(),
                        help="folder holding cifar10/ and camvid/ (default: $SSLBENCH_DATA or ../shared/data)")
    parser.add_argument("--cifar-images", type=int, default=5000, help="CIFAR-10 train images (default 5000)")
    parser.add_argument("--camvid-images", type=int, default=None, help="CamVid train frames (default: all 367)")
    parser.add_argument("--workers", default="0", help="comma-separated loader worker counts (default 0)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="epochs per measurement; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where to build the caches (default: a "
                                                                     "temporary folder, removed after)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.data_root
    if not (root / "cifar10").is_dir() or not (root / "camvid").is_dir():
        raise SystemExit(f"--data-root {root}: expected cifar10/ and camvid/ there")
    workloads = [
        (f"cifar10 32x32 ({args.cifar_images} images)",
         lambda: create_dataset("cifar10", root=root / "cifar10", split="train",
                                subset=args.cifar_images if args.cifar_images < 50_000 else None)),
        (f"camvid 96x128 ({args.camvid_images or 367} frames)",
         lambda: create_dataset("camvid", root=root / "camvid", split="train", subset=args.camvid_images)),
    ]
    scratch = Path(tempfile.mkdtemp(prefix="bench_data-")) if args.cache_dir is None else args.cache_dir
    try:
        rows = [measure(name, make, int(w), args.batch_size, args.repeats, scratch)
                for name, make in workloads for w in args.workers.split(",")]
    finally:
        if args.cache_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    load = load_average()
    print(f"one epoch, batch {args.batch_size}, median of {args.repeats}; torch threads {torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs; load average {load}")
    print(results_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

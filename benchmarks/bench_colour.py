"""Benchmarks of sslbench.colour against the reference code's per-image CPU path, on real photos.

Two workloads, each timed side by side with its reference in one run:

* **Lab conversion**: ``skimage.color.rgb2lab`` image by image (as the reference code does) vs
  :func:`sslbench.colour.rgb_uint8_to_lab` on the whole uint8 batch (its compiled CPU kernel, and
  for comparison its torch path, the one CUDA runs);
* **soft-encoding** (Zhang et al.): sklearn ``NearestNeighbors(n_neighbors=10, algorithm="ball_tree")``
  fitted on the bin centres, ``kneighbors`` on all pixels, then Gaussian weights (the reference
  code's way) vs :func:`sslbench.colour.soft_encode` (its compiled CPU kernel, and for comparison its
  torch path, the one CUDA runs);

on 16 CamVid road scenes resized to 256 x 256 and 256 CIFAR-10 images (32 x 32).  Both sides of each
pair are checked to give the same result (Lab within 1e-3; same neighbour sets where not tied and
weights within 1e-5) before anything is timed.  Torch uses its default number of threads.

Run with pytest-benchmark (pairs are grouped side by side, and an images/s table is printed at the
end)::

    .venv/bin/python -m pytest benchmarks/bench_colour.py --benchmark-only

or as a script, which prints the same table without pytest::

    .venv/bin/python benchmarks/bench_colour.py [--repeats 5] [--threads N]

Real images come from ``$SSLBENCH_DATA`` or ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchcommon import data_root, load_average  # first: it puts the repository on sys.path

import torch
from PIL import Image

from sslbench.colour import ABBins, ab_bins_from_gamut, rgb_uint8_to_lab, soft_encode

K, SIGMA = 10, 5.0



@dataclasses.dataclass
class Workload:
    """A batch of real images, as the reference (list of HWC uint8 arrays) and as one NCHW tensor."""

    name: str
    arrays: list[np.ndarray]
    tensor: torch.Tensor

    @property
    def count(self) -> int:
        return len(self.arrays)


def load_workloads(root: Path) -> list[Workload]:
    camvid_paths = sorted((root / "camvid" / "train").glob("*.png"))[:: 367 // 16][:16]
    camvid = [np.asarray(Image.open(p).convert("RGB").resize((256, 256), Image.BILINEAR)) for p in camvid_paths]
    cifar_paths = sorted((root / "cifar10" / "train").glob("*/*.jpg"))[:: 50000 // 256][:256]
    cifar = [np.asarray(Image.open(p).convert("RGB")) for p in cifar_paths]
    return [
        Workload(f"camvid 256x256 ({len(camvid)} images)", camvid, _to_tensor(camvid)),
        Workload(f"cifar10 32x32 ({len(cifar)} images)", cifar, _to_tensor(cifar)),
    ]


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# The two sides of each comparison.


def lab_reference(work: Workload) -> list[np.ndarray]:
    from skimage.color import rgb2lab

    return [rgb2lab(image) for image in work.arrays]


def lab_sslbench(work: Workload, backend: str = "auto") -> torch.Tensor:
    return rgb_uint8_to_lab(work.tensor, backend=backend)


class SklearnSoftEncoder:
    """The reference code's soft-encoding: ball-tree k-NN over the bin centres, Gaussian weights."""

    def __init__(self, bins: ABBins) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.nn = NearestNeighbors(n_neighbors=K, algorithm="ball_tree").fit(bins.centers.double().numpy())

    def __call__(self, ab: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        n, _, h, w = ab.shape
        points = ab.permute(0, 2, 3, 1).reshape(-1, 2).numpy().astype(np.float64)
        distances, indices = self.nn.kneighbors(points)
        weights = np.exp(-(distances**2) / (2 * SIGMA**2))
        weights /= weights.sum(axis=1, keepdims=True)
        return indices.reshape(n, h, w, K), weights.reshape(n, h, w, K)


def softenc_sslbench(ab: torch.Tensor, bins: ABBins, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    return soft_encode(ab, bins, k=K, sigma=SIGMA, backend=backend)


# Equivalence checks (run once per workload, untimed).


def check_lab(work: Workload, backend: str = "auto") -> float:
    reference = np.stack(lab_reference(work))
    got = lab_sslbench(work, backend).permute(0, 2, 3, 1).double().numpy()
    err = float(np.abs(got - reference).max())
    assert err <= 1e-3, f"Lab differs from skimage by {err}"
    return err


def check_softenc(
    ab: torch.Tensor, bins: ABBins, sklearn_encoder: SklearnSoftEncoder, backend: str = "auto"
) -> float:
    ref_idx, ref_w = sklearn_encoder(ab)
    idx, w = softenc_sslbench(ab, bins, backend)
    idx = idx.permute(0, 2, 3, 1).reshape(-1, K).numpy()
    w = w.permute(0, 2, 3, 1).reshape(-1, K).double().numpy()
    ref_idx, ref_w = ref_idx.reshape(-1, K), ref_w.reshape(-1, K)
    points = ab.permute(0, 2, 3, 1).reshape(-1, 2).double().numpy()
    centers = bins.centers.double().numpy()
    d2_ref = np.sort(((points[:, None] - centers[ref_idx]) ** 2).sum(-1), axis=1)
    d2_got = np.sort(((points[:, None] - centers[idx]) ** 2).sum(-1), axis=1)
    assert np.allclose(d2_got, d2_ref, rtol=1e-6, atol=1e-6), "different neighbour distances"
    # Sets must agree wherever the 10th and 11th nearest distances differ.
    all_d2 = ((points[:, None] - centers[None]) ** 2).sum(-1)
    kth = np.partition(all_d2, (K - 1, K), axis=1)
    untied = kth[:, K] - kth[:, K - 1] > 1e-5 * (1 + kth[:, K])
    same = (np.sort(idx, 1) == np.sort(ref_idx, 1)).all(1)
    assert same[untied].all(), "different neighbour sets"
    err = float(np.abs(np.sort(w, 1) - np.sort(ref_w, 1)).max())
    assert err <= 1e-5, f"weights differ by {err}"
    return err


# pytest-benchmark.

_RESULTS: dict[tuple[str, str], dict[str, float]] = {}


@pytest.fixture(scope="module")
def workloads() -> list[Workload]:
    root = data_root()
    if not (root / "cifar10").is_dir() or not (root / "camvid").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real image data not found at {root}")
        pytest.skip(f"real image data not found at {root}; set SSLBENCH_DATA")
    return load_workloads(root)


@pytest.fixture(scope="module")
def bins() -> ABBins:
    return ab_bins_from_gamut(10)


@pytest.fixture(scope="module")
def sklearn_encoder(bins) -> SklearnSoftEncoder:
    return SklearnSoftEncoder(bins)


def _record(benchmark, task: str, work: Workload, side: str) -> None:
    if benchmark.stats is None:  # --benchmark-disable
        return
    stats = benchmark.stats.stats
    benchmark.extra_info["images"] = work.count
    benchmark.extra_info["images_per_s_median"] = work.count / stats.median
    _RESULTS[(task, work.name)] = {**_RESULTS.get((task, work.name), {}), side: work.count / stats.median}


WORKLOAD_IDS = ["camvid256", "cifar32"]


@pytest.mark.parametrize("which", [0, 1], ids=WORKLOAD_IDS)
@pytest.mark.parametrize("side", ["skimage", "sslbench", "sslbench-torch-path"])
def test_lab(benchmark, workloads, which, side):
    work = workloads[which]
    benchmark.group = f"lab conversion: {work.name}"
    backend = "torch" if side == "sslbench-torch-path" else "auto"
    check_lab(work, backend)
    fn = (lambda: lab_reference(work)) if side == "skimage" else (lambda: lab_sslbench(work, backend))
    benchmark.pedantic(fn, rounds=5 if side == "skimage" else 20, warmup_rounds=1)
    if side == "sslbench-torch-path":
        _record(benchmark, "lab, torch path", work, "sslbench")
    else:
        _record(benchmark, "lab", work, side)


@pytest.mark.parametrize("which", [0, 1], ids=WORKLOAD_IDS)
@pytest.mark.parametrize("side", ["sklearn", "sslbench", "sslbench-torch-path"])
def test_soft_encode(benchmark, workloads, bins, sklearn_encoder, which, side):
    work = workloads[which]
    benchmark.group = f"soft-encoding: {work.name}"
    ab = lab_sslbench(work)[:, 1:].contiguous()
    backend = "torch" if side == "sslbench-torch-path" else "auto"
    check_softenc(ab, bins, sklearn_encoder, backend)
    fn = (lambda: sklearn_encoder(ab)) if side == "sklearn" else (lambda: softenc_sslbench(ab, bins, backend))
    benchmark.pedantic(fn, rounds=3 if side == "sklearn" else 15, warmup_rounds=1)
    if side == "sslbench-torch-path":
        _record(benchmark, "soft-encoding, torch path", work, "sslbench")
    else:
        _record(benchmark, "soft-encoding", work, side)


def results_table(results: dict[tuple[str, str], dict[str, float]]) -> str:
    """Markdown table: images/s of the reference and of sslbench, and the speed-up."""
    lines = [
        "| task | workload | reference (images/s) | sslbench (images/s) | speed-up |",
        "|---|---|---:|---:|---:|",
    ]
    for (task, name), sides in results.items():
        reference_sides = results.get((task.split(",")[0], name), {})  # variants share their task's reference
        ref = next((s[side] for s in (sides, reference_sides) for side in ("skimage", "sklearn") if side in s), None)
        ours = sides.get("sslbench")
        if ref is None or ours is None:
            continue
        lines.append(f"| {task} | {name} | {ref:,.1f} | {ours:,.1f} | {ours / ref:.1f}x |")
    return "\n".join(lines)


# Script mode.


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    root = data_root()
    works = load_workloads(root)
    bins = ab_bins_from_gamut(10)
    sklearn_encoder = SklearnSoftEncoder(bins)
    results: dict[tuple[str, str], dict[str, float]] = {}
    for work in works:
        check_lab(work)
        check_lab(work, "torch")
        ab = lab_sslbench(work)[:, 1:].contiguous()
        check_softenc(ab, bins, sklearn_encoder)
        slow = max(2, args.repeats // 2)
        results[("lab", work.name)] = {
            "skimage": work.count / _time(functools.partial(lab_reference, work), slow),
            "sslbench": work.count / _time(functools.partial(lab_sslbench, work), args.repeats),
        }
        lab_torch = functools.partial(lab_sslbench, work, "torch")
        results[("lab, torch path", work.name)] = {"sslbench": work.count / _time(lab_torch, args.repeats)}
        reference = work.count / _time(functools.partial(sklearn_encoder, ab), slow)
        results[("soft-encoding", work.name)] = {
            "sklearn": reference,
            "sslbench": work.count / _time(functools.partial(softenc_sslbench, ab, bins), args.repeats),
        }
        buffers = tuple(torch.empty_like(t) for t in softenc_sslbench(ab, bins))
        reuse = functools.partial(soft_encode, ab, bins, k=K, sigma=SIGMA, out=buffers)
        results[("soft-encoding, reused out=", work.name)] = {"sslbench": work.count / _time(reuse, args.repeats)}
        check_softenc(ab, bins, sklearn_encoder, "torch")
        torch_path = functools.partial(softenc_sslbench, ab, bins, "torch")
        results[("soft-encoding, torch path", work.name)] = {"sslbench": work.count / _time(torch_path, args.repeats)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load_average()}; outputs checked equal\n")
    print(results_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU training throughput per pretext: fp32 eager against bf16 + channels_last (+ torch.compile), at 224 x 224.

For each pretext, one model is built from a resolved plan (synthetic data at 224 x 224, the given encoder) and its
``training_step`` is run through the :class:`~sslbench.runtime.Runtime` under each setting, on batches prepared on
the device beforehand (so the numbers are the model's, not the data path's). Reported: images/s per setting and the
speed-up over fp32.

It also measures what fraction of the GPU's bf16 matrix throughput the encoder's forward + backward reaches: the
FLOPs of one forward + backward (counted by ``torch.utils.flop_counter.FlopCounterMode``) per second, against
(a) the throughput this GPU reaches on a large bf16 matrix product, measured here, and (b) the datasheet's dense
bf16 peak when the GPU is one this script knows.

    .venv/bin/python benchmarks/bench_gpu.py [--pretexts regression,quantized] [--encoder alexnet_bn] [--batch-size 64]

``--device cpu --image-size 32 --steps 2`` runs the same code on a CPU as a smoke test (the numbers then mean
nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchcommon import load_average  # first: it puts the repository on sys.path

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from sslbench.experiment import Budget, DatasetSpec, Experiment, VariantSpec  # noqa: E402
from sslbench.plan import build_pretext, resolve_plan  # noqa: E402
from sslbench.runtime import Runtime, seed_everything  # noqa: E402

#: Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity), by device-name substring.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 756.0, "A100": 312.0,
                         "L40S": 362.0, "A10": 125.0, "L4": 121.0, "RTX 4090": 165.0}

SETTINGS = {
    "fp32": dict(precision="fp32", channels_last=False, compile=False),
    "bf16+cl": dict(precision="bf16", channels_last=True, compile=False),
    "bf16+cl+compile": dict(precision="bf16", channels_last=True, compile=True),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(pretext: str, encoder: str, image_size: int, batch_size: int, cache: Path) -> tuple[Any, Any]:
    exp = Experiment(name="bench-gpu", variants=[VariantSpec(pretext, pretext)], protocols={"linear": {}},
                     datasets=[DatasetSpec("synthetic", image_size=image_size, subset=batch_size * 4)],
                     encoders={encoder: {}}, budget=Budget(steps=1, batch_size=batch_size), device="cpu",
                     out=cache / "records", cache_dir=cache)
    (unit,) = resolve_plan(exp, cache).units
    return unit, unit.train_split_data


def step_rate(pretext_name: str, unit: Any, data: Any, setting: dict[str, Any], device: str, batch_size: int,
              steps: int, warmup: int) -> float:
    runtime = Runtime(device, setting["precision"], channels_last=setting["channels_last"],
                      compile=setting["compile"])
    seed_everything(0)
    pretext = build_pretext(unit.variant, unit.encoder, unit.run_config)
    loader = runtime.loader(data, batch_size, shuffle=False, seed=0, drop_last=True)
    batches = [runtime.to_device(b) for b in loader]
    pretext.prepare(iter(batches), runtime)
    pretext.setup(runtime)
    pretext.train()
    for i in range(warmup):
        pretext.training_step(batches[i % len(batches)], runtime)
        runtime.end_step()
    synchronize(runtime.device)
    start = time.perf_counter()
    for i in range(steps):
        pretext.training_step(batches[i % len(batches)], runtime)
        runtime.end_step()
    synchronize(runtime.device)
    return batch_size * steps / (time.perf_counter() - start)


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """bf16 matrix-product throughput this device reaches (TFLOP/s)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def encoder_tflops(encoder: str, image_size: int, batch_size: int, device: torch.device, steps: int) -> tuple[float,
                                                                                                            float]:
    """FLOPs of one forward + backward of ``encoder`` (bf16 autocast, channels_last) and the TFLOP/s it runs at."""
    from sslbench.pretext import EncoderSpec

    model = EncoderSpec(encoder, {}, image_size).build(in_chans=1).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 1, image_size, image_size, device=device).to(memory_format=torch.channels_last)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    def fwd_bwd() -> None:
        with autocast:
            out = model(x)
        sum(o.float().mean() for o in out).backward()

    counter = FlopCounterMode(display=False)
    with counter:
        fwd_bwd()
    flops = counter.get_total_flops()
    for _ in range(3):
        fwd_bwd()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fwd_bwd()
    synchronize(device)
    return flops, flops * steps / (time.perf_counter() - start) / 1e12


def datasheet_peak(name: str) -> float | None:
    for key, value in DATASHEET_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretexts", default="regression,quantized,hypercolumn,splitbrain,cgan")
    parser.add_argument("--encoder", default="alexnet_bn")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    with tempfile.TemporaryDirectory(prefix="sslbench-bench-gpu-") as tmp:
        for pretext in [p.strip() for p in args.pretexts.split(",") if p.strip()]:
            unit, data = build(pretext, args.encoder, args.image_size, args.batch_size, Path(tmp))
            rates = {}
            for setting in settings:
                try:
                    rates[setting] = step_rate(pretext, unit, data, SETTINGS[setting], args.device,
                                               args.batch_size, args.steps, args.warmup)
                except Exception as exc:  # a failing setting is reported in the table, the others still run
                    print(f"{pretext} {setting}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    rates[setting] = float("nan")
                print(f"{pretext} {setting}: {rates[setting]:.1f} img/s", file=sys.stderr, flush=True)
            rows.append((pretext, rates))
    print(f"\n{name}, {args.encoder}, {args.image_size}x{args.image_size}, batch {args.batch_size}, {args.steps} "
          f"steps after {args.warmup}; torch {torch.__version__}; load average {load_average()}\n")
    print("| pretext | " + " | ".join(f"{s} (images/s)" for s in settings) + " | speed-up over fp32 |")
    print("|---|" + "---:|" * (len(settings) + 1))
    for pretext, rates in rows:
        best = max((v for k, v in rates.items() if k != "fp32"), default=float("nan"))
        speedup = best / rates["fp32"] if "fp32" in rates else float("nan")
        print(f"| {pretext} | " + " | ".join(f"{rates[s]:,.1f}" for s in settings) + f" | {speedup:.2f}x |")
    flops, achieved = encoder_tflops(args.encoder, args.image_size, args.batch_size, device, args.steps)
    measured = matmul_tflops(device)
    peak = datasheet_peak(name)
    print(f"\n{args.encoder} forward + backward: {flops / 1e9 / args.batch_size:.2f} GFLOP per image, "
          f"{achieved:.1f} TFLOP/s = {100 * achieved / measured:.1f}% of the {measured:.1f} TFLOP/s a large bf16 "
          "matrix product reaches here"
          + (f", {100 * achieved / peak:.1f}% of the datasheet's {peak:.0f} TFLOP/s" if peak else "")
          + ".")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

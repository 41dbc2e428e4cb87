"""Device-agnosticism of sslbench.metrics: on CUDA (skipped without a GPU) every metric must
compute on the inputs' device and agree with its CPU result on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2lab

from sslbench.metrics import (
    AuCAccumulator,
    SegmentationMetrics,
    auc_ab,
    colourfulness,
    confusion_matrix,
    exact_match_accuracy,
    knn_classify,
    mean_average_precision,
    psnr,
    ssim,
    top1_accuracy,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


@requires_cuda
def test_all_metrics_run_on_cuda_and_match_cpu(shared_data: Path) -> None:
    cuda = torch.device("cuda")
    paths = sorted((shared_data / "camvid" / "val").glob("*.png"))[:2]
    rgb = np.stack(
        [np.asarray(Image.open(p).convert("RGB"), np.float64)[:128, :128] / 255 for p in paths]
    )
    true = torch.from_numpy(rgb.transpose(0, 3, 1, 2).copy())
    pred = (true * 0.9 + 0.05).flip(-1)

    for name, fn in {"psnr": psnr, "ssim": ssim}.items():
        on_gpu = fn(pred.to(cuda), true.to(cuda))
        assert on_gpu.device.type == "cuda", name
        torch.testing.assert_close(on_gpu.cpu(), fn(pred, true), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(colourfulness(true.to(cuda)).cpu(), colourfulness(true))

    ab = torch.from_numpy(np.stack([rgb2lab(x)[..., 1:] for x in rgb]).transpose(0, 3, 1, 2).copy())
    ab_pred = 0.5 * ab.roll(3, dims=-1)
    weights = torch.rand(ab.shape[0], ab.shape[2], ab.shape[3], dtype=torch.float64)
    acc = AuCAccumulator()
    acc.update(ab_pred.to(cuda), ab.to(cuda), weights.to(cuda))
    assert acc.curve().device.type == "cuda"
    assert acc.compute() == pytest.approx(auc_ab(ab_pred, ab, pixel_weights=weights), abs=1e-12)

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(300, 6, generator=g, dtype=torch.float64)
    targets = (torch.rand(300, 6, generator=g) < 0.3).long()
    ignore = torch.rand(300, 6, generator=g) < 0.1
    m_gpu, per_gpu = mean_average_precision(scores.to(cuda), targets.to(cuda), ignore.to(cuda))
    m_cpu, per_cpu = mean_average_precision(scores, targets, ignore)
    assert per_gpu.device.type == "cuda" and m_gpu == pytest.approx(m_cpu, abs=1e-12)
    torch.testing.assert_close(per_gpu.cpu(), per_cpu)
    exact_gpu = exact_match_accuracy(scores.to(cuda), targets.to(cuda))
    assert exact_gpu == exact_match_accuracy(scores, targets)
    labels = targets.argmax(1)
    assert top1_accuracy(scores.to(cuda), labels.to(cuda)) == top1_accuracy(scores, labels)

    mask_paths = sorted((shared_data / "camvid" / "valannot").glob("*.png"))[:2]
    target = torch.from_numpy(np.stack([np.asarray(Image.open(p), np.int64) for p in mask_paths]))
    seg_pred = target.roll(5, dims=-1).clamp(max=10)
    seg = SegmentationMetrics(11, ignore_index=11)
    seg.update(seg_pred.to(cuda), target.to(cuda))
    assert seg.confusion is not None and seg.confusion.device.type == "cuda"
    assert torch.equal(seg.confusion.cpu(), confusion_matrix(seg_pred, target, 11, 11))

    feats = true.flatten(1)
    knn_gpu = knn_classify(
        feats.to(cuda), labels[:2].to(cuda), feats.to(cuda), 6, k=2, chunk_size=1
    )
    assert knn_gpu.device.type == "cuda"
    torch.testing.assert_close(knn_gpu.cpu(), knn_classify(feats, labels[:2], feats, 6, k=2))

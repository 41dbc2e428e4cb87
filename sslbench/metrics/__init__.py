"""Evaluation metrics of sslbench (torch only, batched, device-agnostic).

Return-type convention: dataset-level scalars (AuC, accuracy, AP, mAP, mIoU, pixel accuracy)
are Python ``float``; per-image metrics are ``(N,)`` tensors and per-class metrics ``(C,)``
tensors, on the device of the inputs.

Modules:
    colorization: ab-error AuC (Zhang et al. 2016), PSNR, SSIM, colourfulness.
    classification: top-1, PASCAL VOC AP / mAP, multi-label exact-match accuracy.
    segmentation: confusion matrix, split-level mIoU and pixel accuracy.
    knn: weighted kNN classifier on frozen features.
"""

from sslbench.metrics.classification import (
    average_precision_voc,
    exact_match_accuracy,
    mean_average_precision,
    top1_accuracy,
)
from sslbench.metrics.colorization import (
    AuCAccumulator,
    ab_error_curve,
    auc_ab,
    colourfulness,
    psnr,
    ssim,
)
from sslbench.metrics.knn import knn_classify
from sslbench.metrics.segmentation import (
    SegmentationMetrics,
    confusion_matrix,
    iou_from_confusion,
)

__all__ = [
    "AuCAccumulator",
    "SegmentationMetrics",
    "ab_error_curve",
    "auc_ab",
    "average_precision_voc",
    "colourfulness",
    "confusion_matrix",
    "exact_match_accuracy",
    "iou_from_confusion",
    "knn_classify",
    "mean_average_precision",
    "psnr",
    "ssim",
    "top1_accuracy",
]

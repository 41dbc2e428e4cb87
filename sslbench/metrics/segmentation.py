"""Semantic segmentation metrics: confusion matrix, mean IoU and pixel accuracy.

The mIoU of a split is computed from ONE confusion matrix accumulated over every pixel of the
split (the standard protocol of FCN / SegNet / CamVid and VOC benchmarks), not as a mean of
per-image IoUs. Matrices are ``int64`` tensors on the inputs' device, rows indexed by the
ground-truth class and columns by the predicted class (the ``sklearn.metrics.confusion_matrix``
convention).
"""

from __future__ import annotations

import torch

__all__ = ["SegmentationMetrics", "confusion_matrix", "iou_from_confusion"]


def confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Pixel confusion matrix, accumulated with a single ``bincount``.

    Args:
        pred: predicted class indices, integer tensor of any shape (typically ``(N, H, W)``),
            values in ``[0, num_classes)`` wherever the target is not ignored.
        target: ground-truth class indices, same shape as ``pred``.
        num_classes: number of classes ``C``.
        ignore_index: target value whose pixels are skipped (e.g. 11 = "unlabelled" in the
            11-class CamVid); the prediction at those pixels is irrelevant.

    Returns:
        ``(C, C)`` int64 tensor on the inputs' device; entry ``[t, p]`` counts pixels of true
        class ``t`` predicted as ``p``.

    Raises:
        ValueError: if shapes differ or a non-ignored label/prediction is out of range.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("pred and target must be integer class-index tensors")
    target = target.to(pred.device).reshape(-1).long()
    pred = pred.reshape(-1).long()
    if ignore_index is not None:
        valid = target != ignore_index
        target = target[valid]
        pred = pred[valid]
    if target.numel() > 0:
        bad_target = bool(((target < 0) | (target >= num_classes)).any())
        bad_pred = bool(((pred < 0) | (pred >= num_classes)).any())
        if bad_target or bad_pred:
            which = "target" if bad_target else "pred"
            raise ValueError(
                f"{which} has values outside [0, {num_classes}) at non-ignored pixels"
            )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``TP / (TP + FP + FN)`` from a ``(C, C)`` confusion matrix.

    Returns a ``(C,)`` float64 tensor; a class that never occurs in the ground truth and is
    never predicted has IoU ``nan`` (undefined). A class that is predicted but absent from the
    ground truth gets IoU 0.
    """
    cm = confusion.to(torch.float64)
    tp = torch.diagonal(cm)
    union = cm.sum(dim=0) + cm.sum(dim=1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1.0), torch.full_like(tp, float("nan")))


class SegmentationMetrics:
    """Accumulates one confusion matrix over a split and reports mIoU and pixel accuracy.

    Args:
        num_classes: number of evaluated classes ``C`` (11 for CamVid).
        ignore_index: ground-truth value to skip (11 for CamVid), or ``None``.

    The matrix is created on the device of the first :meth:`update` and stays there.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch.

        Args:
            pred: either class indices ``(N, H, W)`` or per-class scores ``(N, C, H, W)``
                (reduced with ``argmax`` over dim 1).
            target: ground-truth class indices ``(N, H, W)``.
        """
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(dim=1)
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self.confusion is None:
            self.confusion = cm
        else:
            self.confusion += cm.to(self.confusion.device)

    def compute(self) -> dict[str, float | torch.Tensor]:
        """Return ``{"miou": float, "pixel_acc": float, "per_class_iou": (C,) float64 tensor}``.

        ``miou`` is the mean of the defined per-class IoUs (classes with neither ground-truth
        pixels nor predictions are ``nan`` and excluded); ``pixel_acc`` is the fraction of
        non-ignored pixels predicted correctly. Both are ``nan`` if nothing was counted.
        """
        if self.confusion is None:
            raise RuntimeError("SegmentationMetrics.compute() called before any update()")
        per_class = iou_from_confusion(self.confusion)
        defined = ~torch.isnan(per_class)
        miou = float(per_class[defined].mean()) if bool(defined.any()) else float("nan")
        total = self.confusion.sum()
        correct = torch.diagonal(self.confusion).sum()
        pixel_acc = float(correct.double() / total.double()) if int(total) > 0 else float("nan")
        return {"miou": miou, "pixel_acc": pixel_acc, "per_class_iou": per_class}

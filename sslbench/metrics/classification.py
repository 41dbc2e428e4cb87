"""Classification metrics: top-1 accuracy, VOC average precision / mAP, exact-match accuracy.

Dataset-level scores are returned as Python ``float``; per-class vectors as ``float64``
tensors on the inputs' device. Everything is computed on the inputs' device without Python
loops over samples or classes.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "average_precision_voc",
    "exact_match_accuracy",
    "mean_average_precision",
    "top1_accuracy",
]


def top1_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class equals the target.

    Args:
        logits: class scores ``(N, C)`` (logits, probabilities or kNN votes; only the order
            matters). Ties go to the lowest class index (``torch.argmax`` convention).
        targets: integer class indices ``(N,)``.

    Returns:
        Accuracy in ``[0, 1]`` as a Python float.
    """
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected logits (N, C) and targets (N,), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if targets.numel() == 0:
        raise ValueError("top1_accuracy of an empty batch is undefined")
    pred = logits.argmax(dim=1)
    return float((pred == targets.to(pred.device)).to(torch.float64).mean())


def _voc_ap_columns(
    scores: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None
) -> torch.Tensor:
    """VOC all-point interpolated AP of every column of ``scores`` ``(N, C)`` -> ``(C,)``."""
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be (N, C), got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if ignore is not None and ignore.shape != scores.shape:
        raise ValueError(
            f"ignore must match scores {tuple(scores.shape)}, got {tuple(ignore.shape)}"
        )
    device = scores.device
    positive = targets.to(device) > 0
    if ignore is None:
        keep = torch.ones_like(positive)
    else:
        keep = ~ignore.to(device=device, dtype=torch.bool)

    sorted_scores, order = torch.sort(scores, dim=0, descending=True, stable=True)
    pos = torch.gather(positive & keep, 0, order).to(torch.float64)
    neg = torch.gather(~positive & keep, 0, order).to(torch.float64)
    tp = torch.cumsum(pos, dim=0)
    fp = torch.cumsum(neg, dim=0)
    n_pos = pos.sum(dim=0)

    # Only the last row of each group of tied scores is an operating point: a tie group is
    # admitted as a whole, so the result does not depend on the order of the samples.
    group_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    group_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]

    recall = tp / n_pos.clamp(min=1.0)
    admitted = tp + fp
    precision = torch.where(admitted > 0, tp / admitted.clamp(min=1.0), torch.zeros_like(tp))
    zero = torch.zeros_like(recall)
    # Recall at operating points, carried forward over non-operating rows (recall is monotone).
    recall_op = torch.cummax(torch.where(group_end, recall, zero), dim=0).values
    delta_recall = torch.diff(recall_op, dim=0, prepend=torch.zeros_like(recall_op[:1]))
    # Monotone precision envelope: max precision at any operating point at or below this rank.
    envelope = torch.flip(
        torch.cummax(torch.flip(torch.where(group_end, precision, zero), dims=[0]), dim=0).values,
        dims=[0],
    )
    ap = (delta_recall * envelope).sum(dim=0)
    return torch.where(n_pos > 0, ap, torch.full_like(ap, math.nan))


def average_precision_voc(
    scores: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None = None
) -> float:
    """PASCAL VOC (2010+) all-point interpolated average precision of one class.

    Samples are ranked by decreasing score; precision is made monotonically non-increasing
    from the right (``mpre[i] = max(mpre[i:])``) and summed over the recall changes,
    exactly as the devkit's ``VOCap`` / ``voc_ap(rec, prec)`` with ``use_07_metric=False``.

    Ties: all samples sharing a score are admitted together (one operating point per distinct
    score), so the AP does not depend on the order of the samples. This equals the devkit run
    on a ranking where tied negatives come before tied positives; without ties it is identical
    to the devkit. (scikit-learn groups ties the same way.)

    Args:
        scores: ``(N,)`` confidence for the class (higher = more confident).
        targets: ``(N,)`` in ``{0, 1}`` (anything ``> 0`` is positive).
        ignore: optional ``(N,)`` bool; ``True`` samples are dropped for this class (VOC
            "difficult": the image contains the class only as difficult objects).

    Returns:
        AP in ``[0, 1]`` as a Python float, or ``nan`` if no (non-ignored) positive exists.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    ign = None if ignore is None else ignore.reshape(-1, 1)
    return float(_voc_ap_columns(scores.reshape(-1, 1), targets.reshape(-1, 1), ign)[0])


def mean_average_precision(
    scores: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None = None
) -> tuple[float, torch.Tensor]:
    """Mean over classes of :func:`average_precision_voc` (PASCAL VOC classification mAP).

    Args:
        scores: ``(N, C)`` per-class confidences.
        targets: ``(N, C)`` multi-label indicators in ``{0, 1}``.
        ignore: optional ``(N, C)`` bool mask of (sample, class) pairs to drop ("difficult").

    Returns:
        ``(mAP, per_class_ap)``: mAP as a Python float, the mean over the classes whose AP is
        defined (classes without positives have AP ``nan`` and are left out; ``nan`` if none is
        defined); ``per_class_ap`` is a ``(C,)`` float64 tensor on the inputs' device.
    """
    per_class = _voc_ap_columns(scores, targets, ignore)
    defined = ~torch.isnan(per_class)
    if not bool(defined.any()):
        return math.nan, per_class
    return float(per_class[defined].mean()), per_class


def exact_match_accuracy(
    scores: torch.Tensor,
    targets: torch.Tensor,
    threshold: float = 0.5,
    from_logits: bool = True,
) -> float:
    """Multi-label subset accuracy: fraction of samples whose predicted label set is exact.

    A label is predicted when its probability exceeds ``threshold`` (strictly). With
    ``from_logits=True`` the probability is ``sigmoid(scores)``; the comparison is made in logit
    space (``scores > log(threshold / (1 - threshold))``), which is equivalent and free of
    sigmoid saturation. This is the "accuracy" reported by Treneska et al. (2022) and equals
    ``sklearn.metrics.accuracy_score`` on the indicator matrices.

    Args:
        scores: ``(N, C)`` logits (``from_logits=True``) or probabilities.
        targets: ``(N, C)`` indicators in ``{0, 1}``.
        threshold: probability threshold in ``(0, 1)``.
        from_logits: whether ``scores`` are logits.

    Returns:
        Accuracy in ``[0, 1]`` as a Python float.
    """
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be (N, C), got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if scores.shape[0] == 0:
        raise ValueError("exact_match_accuracy of an empty batch is undefined")
    cut = math.log(threshold / (1.0 - threshold)) if from_logits else threshold
    predicted = scores > cut
    truth = targets.to(scores.device) > 0
    return float((predicted == truth).all(dim=1).to(torch.float64).mean())

"""Tests for sslbench.metrics.segmentation on real CamVid masks.

References: a pure-Python loop over pixels and ``sklearn.metrics.confusion_matrix``.
Predictions are made from the true masks by shifting them and corrupting a few regions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from sslbench.metrics import SegmentationMetrics, confusion_matrix, iou_from_confusion

NUM_CLASSES = 11
IGNORE = 11


@pytest.fixture(scope="module")
def camvid_masks(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(target, pred): 4 real CamVid val masks at 90x120 and a corrupted prediction of them."""
    paths = sorted((shared_data / "camvid" / "valannot").glob("*.png"))[::25][:4]
    target = np.stack(
        [np.asarray(Image.open(p).resize((120, 90), Image.NEAREST), dtype=np.int64) for p in paths]
    )
    rng = np.random.default_rng(0)
    pred = np.roll(target, shift=(3, -4), axis=(1, 2)).copy()
    pred[:, 10:30, 20:60] = 3  # a slab predicted as road
    flip = rng.random(pred.shape) < 0.05
    pred[flip] = rng.integers(0, NUM_CLASSES, size=int(flip.sum()))
    # The shifted mask contains "unlabelled" (11) where the target may be labelled.
    unlabelled = pred == IGNORE
    pred[unlabelled] = rng.integers(0, NUM_CLASSES, size=int(unlabelled.sum()))
    assert set(np.unique(target)) <= set(range(12)) and (target == IGNORE).any()
    return target, pred


def _brute_force(target: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, list[float], float]:
    """Confusion matrix, per-class IoU (nan if undefined) and pixel accuracy by explicit loops."""
    cm = [[0] * NUM_CLASSES for _ in range(NUM_CLASSES)]
    for t, p in zip(target.ravel().tolist(), pred.ravel().tolist()):
        if t != IGNORE:
            cm[t][p] += 1
    ious = []
    for c in range(NUM_CLASSES):
        tp = cm[c][c]
        fn = sum(cm[c][p] for p in range(NUM_CLASSES)) - tp
        fp = sum(cm[t][c] for t in range(NUM_CLASSES)) - tp
        ious.append(float("nan") if tp + fp + fn == 0 else tp / (tp + fp + fn))
    total = sum(map(sum, cm))
    acc = sum(cm[c][c] for c in range(NUM_CLASSES)) / total
    return np.array(cm), ious, acc


def test_confusion_matrix_matches_loop_and_sklearn(
    camvid_masks: tuple[np.ndarray, np.ndarray],
) -> None:
    target, pred = camvid_masks
    ref, _, _ = _brute_force(target, pred)
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), NUM_CLASSES, IGNORE)
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES) and cm.dtype == torch.int64
    np.testing.assert_array_equal(cm.numpy(), ref)
    keep = target != IGNORE
    sk = sk_confusion_matrix(target[keep], pred[keep], labels=list(range(NUM_CLASSES)))
    np.testing.assert_array_equal(cm.numpy(), sk)
    assert cm.sum() == keep.sum() < target.size


def test_miou_over_split_matches_brute_force(camvid_masks: tuple[np.ndarray, np.ndarray]) -> None:
    target, pred = camvid_masks
    _, ref_iou, ref_acc = _brute_force(target, pred)
    metrics = SegmentationMetrics(NUM_CLASSES, ignore_index=IGNORE)
    for i in range(len(target)):  # one image per update; the matrix is shared
        metrics.update(torch.from_numpy(pred[i : i + 1]), torch.from_numpy(target[i : i + 1]))
    out = metrics.compute()
    np.testing.assert_allclose(out["per_class_iou"].numpy(), ref_iou, rtol=1e-12, equal_nan=True)
    assert out["miou"] == pytest.approx(np.nanmean(ref_iou), abs=1e-12)
    assert out["pixel_acc"] == pytest.approx(ref_acc, abs=1e-12)
    assert 0.2 < out["miou"] < 0.95 and 0.5 < out["pixel_acc"] < 0.99
    # Split-level mIoU is not the mean of per-image mIoUs.
    per_image = []
    for i in range(len(target)):
        per_image.append(np.nanmean(_brute_force(target[i : i + 1], pred[i : i + 1])[1]))
    assert abs(out["miou"] - np.mean(per_image)) > 1e-3


def test_absent_classes_are_nan_and_excluded(camvid_masks: tuple[np.ndarray, np.ndarray]) -> None:
    target, pred = camvid_masks
    target, pred = target.copy(), pred.copy()
    target[target == 10] = IGNORE  # class 10: no ground truth ...
    pred[pred == 10] = 0  # ... and never predicted -> undefined
    target[target == 9] = IGNORE  # class 9: no ground truth but predicted -> IoU 0
    pred[:, :5, :5] = 9
    pred[target == IGNORE] = 9
    _, ref_iou, _ = _brute_force(target, pred)
    metrics = SegmentationMetrics(NUM_CLASSES, ignore_index=IGNORE)
    metrics.update(torch.from_numpy(pred), torch.from_numpy(target))
    out = metrics.compute()
    iou = out["per_class_iou"]
    assert torch.isnan(iou[10]) and iou[9] == 0.0
    assert torch.isnan(iou).sum() == 1
    assert out["miou"] == pytest.approx(np.nanmean(ref_iou), abs=1e-12)
    assert out["miou"] == pytest.approx(float(iou[:10].mean()), abs=1e-12)


def test_update_accepts_scores_and_ignores_predictions_on_unlabelled(
    camvid_masks: tuple[np.ndarray, np.ndarray],
) -> None:
    target, pred = camvid_masks
    t, p = torch.from_numpy(target), torch.from_numpy(pred)
    logits = torch.nn.functional.one_hot(p, NUM_CLASSES).permute(0, 3, 1, 2).float()
    logits += 0.1 * torch.rand(logits.shape, generator=torch.Generator().manual_seed(0))
    from_labels = SegmentationMetrics(NUM_CLASSES, IGNORE)
    from_labels.update(p, t)
    from_scores = SegmentationMetrics(NUM_CLASSES, IGNORE)
    from_scores.update(logits, t)
    assert torch.equal(from_labels.confusion, from_scores.confusion)
    # Whatever is predicted on unlabelled pixels (even an out-of-range value) is irrelevant.
    p2 = p.clone()
    p2[t == IGNORE] = 99
    assert torch.equal(confusion_matrix(p2, t, NUM_CLASSES, IGNORE), from_labels.confusion)
    from_labels.reset()
    with pytest.raises(RuntimeError):
        from_labels.compute()


def test_out_of_range_labels_raise(camvid_masks: tuple[np.ndarray, np.ndarray]) -> None:
    target, pred = (torch.from_numpy(a) for a in camvid_masks)
    with pytest.raises(ValueError):
        confusion_matrix(pred, target, NUM_CLASSES)  # 11 in the target, no ignore_index
    bad = pred.clone()
    bad[target != IGNORE] = NUM_CLASSES
    with pytest.raises(ValueError):
        confusion_matrix(bad, target, NUM_CLASSES, IGNORE)
    with pytest.raises(ValueError):
        confusion_matrix(pred.float(), target, NUM_CLASSES, IGNORE)


def test_iou_from_confusion_small_example() -> None:
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    iou = iou_from_confusion(cm)
    np.testing.assert_allclose(iou[:2].numpy(), [5 / 8, 3 / 6])
    assert torch.isnan(iou[2])

"""Tests for sslbench.metrics.classification.

References: ``sklearn.metrics`` (accuracy_score, average_precision_score) and a line-by-line
port of the PASCAL VOC devkit's all-point ``voc_ap(rec, prec)`` (VOC2010+, as in
py-faster-rcnn's ``voc_eval.py`` with ``use_07_metric=False``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, average_precision_score

from sslbench.metrics import (
    average_precision_voc,
    exact_match_accuracy,
    mean_average_precision,
    top1_accuracy,
)


def _devkit_voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """The VOC devkit's all-point AP: monotone precision envelope summed over recall changes."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _devkit_ap_from_ranking(labels_in_rank_order: np.ndarray) -> float:
    """VOCevalcls: cumulative tp/fp along a given ranking, then ``voc_ap``."""
    tp = np.cumsum(labels_in_rank_order > 0).astype(np.float64)
    fp = np.cumsum(labels_in_rank_order <= 0).astype(np.float64)
    rec = tp / np.sum(labels_in_rank_order > 0)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _devkit_voc_ap(rec, prec)


def _devkit_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Devkit AP, ranking by decreasing score; ties put negatives before positives."""
    order = np.lexsort((labels, -scores))
    return _devkit_ap_from_ranking(labels[order])


def _cifar_centroid_scores(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real-ish class scores: cosine similarity of 8x8 CIFAR test images to train-class means."""
    classes = sorted(p.name for p in (root / "cifar10" / "train").iterdir())

    def load(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        feats, labels = [], []
        for c, name in enumerate(classes):
            for i in range(count):
                img = Image.open(root / "cifar10" / split / name / f"{i:04d}.jpg").convert("RGB")
                feats.append(np.asarray(img.resize((8, 8), Image.BILINEAR), np.float64).ravel())
                labels.append(c)
        return np.stack(feats) / 255.0, np.array(labels)

    train_x, train_y = load("train", 30)
    test_x, test_y = load("test", 20)
    mean = train_x.mean(axis=0)
    centroids = np.stack([train_x[train_y == c].mean(axis=0) for c in range(len(classes))]) - mean
    test_x = test_x - mean
    sims = (test_x @ centroids.T) / (
        np.linalg.norm(test_x, axis=1, keepdims=True) * np.linalg.norm(centroids, axis=1)
    )
    return sims, np.eye(len(classes), dtype=np.int64)[test_y]


def test_top1_accuracy_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g)
    targets = torch.randint(0, 10, (500,), generator=g)
    ref = accuracy_score(targets.numpy(), logits.argmax(1).numpy())
    assert top1_accuracy(logits, targets) == pytest.approx(ref, abs=1e-12)
    assert 0.03 < ref < 0.2
    # Ties go to the lowest index.
    tied = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert top1_accuracy(tied, torch.tensor([0, 1])) == 1.0
    assert top1_accuracy(tied, torch.tensor([1, 2])) == 0.0


@pytest.mark.parametrize(
    "seed,n,pos_rate", [(0, 50, 0.5), (1, 300, 0.1), (2, 1000, 0.02), (3, 7, 0.4)]
)
def test_ap_matches_devkit_on_random_scores(seed: int, n: int, pos_rate: float) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos_rate).astype(np.int64)
    labels[0] = 1
    scores = rng.normal(size=n) + 1.0 * labels
    ref = _devkit_ap(scores, labels)
    out = average_precision_voc(torch.from_numpy(scores), torch.from_numpy(labels))
    assert out == pytest.approx(ref, abs=1e-12)
    # float32 scores, labels as bool: same ranking, same AP.
    out32 = average_precision_voc(torch.from_numpy(scores).float(), torch.from_numpy(labels > 0))
    assert out32 == pytest.approx(ref, abs=1e-6)


def test_map_matches_devkit_on_real_cifar_scores(shared_data: Path) -> None:
    scores, targets = _cifar_centroid_scores(shared_data)
    ref = np.array([_devkit_ap(scores[:, c], targets[:, c]) for c in range(targets.shape[1])])
    m, per_class = mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    assert per_class.shape == (10,) and per_class.dtype == torch.float64
    np.testing.assert_allclose(per_class.numpy(), ref, rtol=0, atol=1e-12)
    assert m == pytest.approx(ref.mean(), abs=1e-12)
    # The scores carry signal (well above the 0.1 chance AP) but are far from perfect.
    assert 0.15 < m < 0.8
    # Interpolated AP is never below sklearn's step-wise AP, and differs on real data.
    sk = np.array([average_precision_score(targets[:, c], scores[:, c]) for c in range(10)])
    assert np.all(ref >= sk - 1e-12) and np.any(ref > sk + 1e-3)


def _monotone_precision_ranking(gaps: list[int]) -> np.ndarray:
    """Labels in rank order: gaps[k] negatives precede the k-th positive."""
    ranking: list[int] = []
    for gap in gaps:
        ranking += [0] * gap + [1]
    return np.array(ranking + [0, 0, 0])


@pytest.mark.parametrize(
    "gaps", [[0, 0, 1, 2, 3], [0, 1, 1, 2, 4, 6], [2, 3, 4], [0, 0, 0, 5], [1] * 6]
)
def test_ap_equals_sklearn_when_precision_is_monotone(gaps: list[int]) -> None:
    labels = _monotone_precision_ranking(gaps)
    # Precision at each positive is non-increasing for these rankings (checked here), so the
    # VOC envelope is the identity and interpolated AP == sklearn's step-wise AP.
    tp = np.cumsum(labels)
    prec_at_pos = (tp / np.arange(1, len(labels) + 1))[labels == 1]
    assert np.all(np.diff(prec_at_pos) <= 1e-15)
    rng = np.random.default_rng(len(gaps))
    scores = np.sort(rng.random(len(labels)))[::-1].copy()
    perm = rng.permutation(len(labels))
    scores, labels = scores[perm], labels[perm]
    ref = average_precision_score(labels, scores)
    assert average_precision_voc(torch.from_numpy(scores), torch.from_numpy(labels)) == (
        pytest.approx(ref, abs=1e-6)
    )


def test_ap_equals_sklearn_for_tie_groups_with_monotone_precision() -> None:
    # Score levels 3 > 2 > 1 > 0; group precisions 3/4 >= 4/7 >= 5/10 >= 5/12 are monotone.
    labels = np.array([1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0])
    scores = np.array([3.0, 3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0])
    ref = average_precision_score(labels, scores)
    out = average_precision_voc(torch.from_numpy(scores), torch.from_numpy(labels))
    assert out == pytest.approx(ref, abs=1e-6)
    assert out == pytest.approx(3 / 5 * 3 / 4 + 1 / 5 * 4 / 7 + 1 / 5 * 5 / 10, abs=1e-12)


def test_ties_are_order_independent_and_pessimistic() -> None:
    rng = np.random.default_rng(7)
    n = 200
    labels = (rng.random(n) < 0.3).astype(np.int64)
    scores = np.round(rng.normal(size=n) + labels, 0)  # a handful of heavily tied levels
    assert len(np.unique(scores)) < 10
    reference = _devkit_ap(scores, labels)  # devkit, negatives before positives within ties
    optimistic = _devkit_ap_from_ranking(labels[np.lexsort((-labels, -scores))])
    assert optimistic > reference + 1e-3  # the tie convention matters on this data
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(n)
        out = average_precision_voc(torch.from_numpy(scores[perm]), torch.from_numpy(labels[perm]))
        assert out == pytest.approx(reference, abs=1e-12)
    # Integer scores are handled like floats.
    int_scores = torch.from_numpy(scores.astype(np.int64))
    out_int = average_precision_voc(int_scores, torch.from_numpy(labels))
    assert out_int == pytest.approx(reference, abs=1e-12)


def test_ignore_drops_difficult_samples_per_class() -> None:
    rng = np.random.default_rng(3)
    n, c = 120, 4
    targets = (rng.random((n, c)) < 0.3).astype(np.int64)
    targets[0] = 1
    scores = rng.normal(size=(n, c)) + targets
    ignore = rng.random((n, c)) < 0.2
    ignore[0] = False
    ref = [_devkit_ap(scores[~ignore[:, k], k], targets[~ignore[:, k], k]) for k in range(c)]
    m, per_class = mean_average_precision(
        torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(ignore)
    )
    np.testing.assert_allclose(per_class.numpy(), ref, atol=1e-12)
    assert m == pytest.approx(np.mean(ref), abs=1e-12)
    single = average_precision_voc(
        torch.from_numpy(scores[:, 1]),
        torch.from_numpy(targets[:, 1]),
        torch.from_numpy(ignore[:, 1]),
    )
    assert single == pytest.approx(ref[1], abs=1e-12)
    # Ignoring must matter here (otherwise the test could not fail).
    unignored = mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets))[1]
    assert not torch.allclose(unignored, per_class)


def test_class_without_positives_is_nan_and_left_out_of_map() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.5], [0.4, 0.7, 0.6], [0.1, 0.3, 0.2]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    m, per_class = mean_average_precision(scores, targets)
    assert torch.isnan(per_class[2]) and not torch.isnan(per_class[:2]).any()
    expected = [_devkit_ap(scores[:, k].numpy(), targets[:, k].numpy()) for k in range(2)]
    np.testing.assert_allclose(per_class[:2].numpy(), expected, atol=1e-12)
    assert m == pytest.approx(np.mean(expected), abs=1e-12)
    # A positive that is ignored does not count either.
    ignore = torch.zeros_like(targets, dtype=torch.bool)
    ignore[:, 0] = targets[:, 0] > 0
    m2, per_class2 = mean_average_precision(scores, targets, ignore)
    assert torch.isnan(per_class2[0]) and m2 == pytest.approx(expected[1], abs=1e-12)
    assert np.isnan(mean_average_precision(scores, torch.zeros_like(targets))[0])
    assert np.isnan(average_precision_voc(scores[:, 2], targets[:, 2]))


def test_exact_match_accuracy_matches_sklearn() -> None:
    rng = np.random.default_rng(11)
    n, c = 400, 5
    targets = (rng.random((n, c)) < 0.3).astype(np.int64)
    logits = 4.0 * (targets - 0.5) + rng.normal(scale=2.5, size=(n, c))
    probs = 1.0 / (1.0 + np.exp(-logits))
    for threshold in (0.5, 0.3, 0.8):
        ref = accuracy_score(targets, (probs > threshold).astype(np.int64))
        assert 0.05 < ref < 0.95
        out = exact_match_accuracy(torch.from_numpy(logits), torch.from_numpy(targets), threshold)
        assert out == pytest.approx(ref, abs=1e-12)
        out_p = exact_match_accuracy(
            torch.from_numpy(probs), torch.from_numpy(targets), threshold, from_logits=False
        )
        assert out_p == pytest.approx(ref, abs=1e-12)
    # It is an all-labels-correct measure, stricter than per-label accuracy.
    per_label = float(((logits > 0) == (targets > 0)).mean())
    assert exact_match_accuracy(torch.from_numpy(logits), torch.from_numpy(targets)) < per_label


def test_exact_match_rejects_bad_threshold() -> None:
    x = torch.zeros(2, 3)
    for threshold in (0.0, 1.0):
        with pytest.raises(ValueError):
            exact_match_accuracy(x, x, threshold)


def test_ap_small_exhaustive_against_devkit() -> None:
    # Every labelling of 6 ranked samples with distinct scores and at least one positive.
    scores = np.linspace(1.0, 0.0, 6)
    for bits in itertools.product([0, 1], repeat=6):
        labels = np.array(bits)
        if labels.sum() == 0:
            continue
        out = average_precision_voc(torch.from_numpy(scores), torch.from_numpy(labels))
        assert out == pytest.approx(_devkit_ap(scores, labels), abs=1e-12)

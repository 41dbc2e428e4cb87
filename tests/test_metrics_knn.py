"""Tests for sslbench.metrics.knn against a brute-force numpy kNN on real CIFAR-10 features.

Features are flattened, mean-centred 8x8 thumbnails of real CIFAR-10 images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.metrics import knn_classify, top1_accuracy


@pytest.fixture(scope="module")
def cifar_features(shared_data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    classes = sorted(p.name for p in (shared_data / "cifar10" / "train").iterdir())

    def load(split: str, offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        feats, labels = [], []
        for c, name in enumerate(classes):
            for i in range(offset, offset + count):
                path = shared_data / "cifar10" / split / name / f"{i:04d}.jpg"
                img = Image.open(path).convert("RGB").resize((8, 8), Image.BILINEAR)
                feats.append(np.asarray(img, dtype=np.float64).ravel() / 255.0)
                labels.append(c)
        return np.stack(feats), np.array(labels, dtype=np.int64)

    train_x, train_y = load("train", 0, 40)
    test_x, test_y = load("test", 0, 12)
    mean = train_x.mean(axis=0)
    return train_x - mean, train_y, test_x - mean, test_y


def _brute_force_knn(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, t: float, c: int
) -> np.ndarray:
    """Per query: cosine similarities, k most similar, add exp(s / T) to their labels' scores."""
    scores = np.zeros((len(test_x), c))
    train_norms = np.linalg.norm(train_x, axis=1)
    for i, q in enumerate(test_x):
        sims = (train_x @ q) / (train_norms * np.linalg.norm(q))
        for j in np.argsort(-sims, kind="stable")[: min(k, len(train_x))]:
            scores[i, train_y[j]] += np.exp(sims[j] / t)
    return scores


@pytest.mark.parametrize("k,temperature", [(20, 0.07), (200, 0.1), (1, 0.5)])
def test_knn_matches_brute_force(
    cifar_features: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    k: int,
    temperature: float,
) -> None:
    train_x, train_y, test_x, _ = cifar_features
    ref = _brute_force_knn(train_x, train_y, test_x, k, temperature, 10)
    out = knn_classify(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        num_classes=10,
        k=k,
        temperature=temperature,
        chunk_size=32,
    )
    assert out.shape == (len(test_x), 10) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10)
    out32 = knn_classify(
        torch.from_numpy(train_x).float(),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x).float(),
        num_classes=10,
        k=k,
        temperature=temperature,
    )
    assert out32.dtype == torch.float32
    # float32 may swap near-equal neighbours at the k-th place; predictions must still agree.
    agree = (out32.argmax(1).numpy() == ref.argmax(1)).mean()
    assert agree >= 0.95


def test_knn_is_better_than_chance_on_real_images(
    cifar_features: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    train_x, train_y, test_x, test_y = cifar_features
    scores = knn_classify(
        torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x), 10, k=20
    )
    assert top1_accuracy(scores, torch.from_numpy(test_y)) > 0.15


def test_k_larger_than_train_set_is_clamped(
    cifar_features: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    train_x, train_y, test_x, _ = cifar_features
    small_x, small_y = train_x[::8], train_y[::8]  # 50 training samples
    args = (torch.from_numpy(small_x), torch.from_numpy(small_y), torch.from_numpy(test_x), 10)
    clamped = knn_classify(*args, k=10_000)
    np.testing.assert_allclose(clamped.numpy(), knn_classify(*args, k=len(small_x)).numpy())
    ref = _brute_force_knn(small_x, small_y, test_x, len(small_x), 0.1, 10)
    np.testing.assert_allclose(clamped.numpy(), ref, rtol=1e-10)


def test_chunking_does_not_change_scores(
    cifar_features: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    train_x, train_y, test_x, _ = cifar_features
    args = (torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x), 10)
    whole = knn_classify(*args, k=50, chunk_size=10_000)
    for chunk in (5, 64):
        torch.testing.assert_close(knn_classify(*args, k=50, chunk_size=chunk), whole)


def test_feature_scale_is_irrelevant(
    cifar_features: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    train_x, train_y, test_x, _ = cifar_features
    y = torch.from_numpy(train_y)
    a = knn_classify(torch.from_numpy(train_x), y, torch.from_numpy(test_x), 10)
    b = knn_classify(torch.from_numpy(train_x * 7.0), y, torch.from_numpy(test_x * 0.01), 10)
    torch.testing.assert_close(a, b)


def test_knn_rejects_bad_input() -> None:
    x = torch.randn(5, 3)
    y = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError):
        knn_classify(x, y, torch.randn(2, 4), 2)
    with pytest.raises(ValueError):
        knn_classify(x, y[:4], x, 2)
    with pytest.raises(ValueError):
        knn_classify(x, y, x, 2, k=0)

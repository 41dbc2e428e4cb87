"""Weighted k-nearest-neighbour classifier on frozen features (InstDisc / VISSL protocol).

Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"
(CVPR 2018), evaluate features with a kNN vote: cosine similarity between L2-normalised
features, the ``k`` most similar training samples each vote for their label with weight
``exp(similarity / temperature)``. VISSL and DINO use the same rule (k=200, T=0.1 and k=20,
T=0.07 are the common settings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_classify"]


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Weighted kNN class scores for every test sample.

    Both feature sets are L2-normalised (a zero vector stays zero, so its similarity is 0);
    for each test row the ``k`` training rows with the highest cosine similarity ``s`` are
    selected and ``exp(s / temperature)`` is added to the score of their label. Scores are
    the raw (unnormalised) weighted votes, so ``scores.argmax(1)`` is the prediction and
    ``scores / scores.sum(1, keepdim=True)`` a distribution over classes.

    The test set is processed in chunks of ``chunk_size`` rows, so peak extra memory is
    ``O(chunk_size * N)`` for the similarity block. ``k`` larger than the number of training
    samples is clamped to ``N`` (every training sample votes). Among exactly equal
    similarities at the k-th place, which neighbour is kept is decided by ``torch.topk``.

    Args:
        train_features: ``(N, D)`` training (memory bank) features.
        train_labels: ``(N,)`` integer labels in ``[0, num_classes)``.
        test_features: ``(M, D)`` query features.
        num_classes: number of classes ``C``.
        k: number of neighbours (clamped to ``N``).
        temperature: softmax-style temperature ``T`` of the vote weights.
        chunk_size: test rows per similarity block.

    Returns:
        ``(M, C)`` tensor of vote scores on the device and in the (floating) dtype of the
        features.
    """
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError("train_features and test_features must be 2-D (N, D) / (M, D)")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"feature dims differ: {train_features.shape[1]} vs {test_features.shape[1]}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels must have shape ({train_features.shape[0]},)")
    if train_features.shape[0] == 0:
        raise ValueError("the training set is empty")
    if k < 1 or chunk_size < 1 or temperature <= 0:
        raise ValueError("k and chunk_size must be >= 1 and temperature > 0")

    dtype = torch.promote_types(train_features.dtype, test_features.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    device = test_features.device
    bank = F.normalize(train_features.to(device=device, dtype=dtype), dim=1)
    labels = train_labels.to(device=device, dtype=torch.long)
    k = min(k, bank.shape[0])

    m = test_features.shape[0]
    scores = torch.zeros(m, num_classes, dtype=dtype, device=device)
    for start in range(0, m, chunk_size):
        query = F.normalize(test_features[start : start + chunk_size].to(dtype), dim=1)
        sim, idx = torch.topk(query @ bank.T, k, dim=1)
        weights = torch.exp(sim / temperature)
        scores[start : start + chunk_size].scatter_add_(1, labels[idx], weights)
    return scores

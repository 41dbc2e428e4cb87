"""``quantized`` (Zhang et al. 2016) on real CIFAR-10 images: training through the real trainer, checkpoint
round-trip of data-dependent bins, colorization, determinism, and the sparse loss against a brute-force dense one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from sslbench.checkpoints import CheckpointStore
from sslbench.colour import rgb_to_lab
from sslbench.config import TrainBudget
from sslbench.datasets import create_dataset
from sslbench.pretext import DataInfo, EncoderSpec, images_to_rgb
from sslbench.pretexts.quantized import Quantized, QuantizedConfig
from sslbench.progress import Progress
from sslbench.runtime import Runtime, seed_everything
from sslbench.trainer import load_trained, train_pretext

SPEC = EncoderSpec("vgg_small", {"width_mult": 0.5}, 32)
INFO = DataInfo("cifar10", 32, 10)


@pytest.fixture(scope="module")
def images(shared_data: Path):
    return create_dataset("cifar10", root=shared_data / "cifar10", split="test", subset=128)


def _train(config: QuantizedConfig, dataset, tmp: Path, seed: int, steps: int, batch_size: int = 32):
    seed_everything(seed)
    pretext = Quantized(config, SPEC, INFO)
    store = CheckpointStore(tmp, "quantized", f"s{seed}-{steps}")
    summary = train_pretext(pretext, dataset, Runtime("cpu"), TrainBudget(steps=steps, batch_size=batch_size),
                            store, seed, Progress.disabled(), log_every=1)
    return pretext, store, summary


def _batch(dataset, n: int = 8) -> torch.Tensor:
    return torch.stack([dataset[i]["image"] for i in range(n)])


def test_trains_reloads_and_colorizes(images, tmp_path: Path) -> None:
    pretext, store, summary = _train(QuantizedConfig(), images, tmp_path, seed=0, steps=30)
    losses = [h["loss"] for h in summary.history]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses
    assert all(0.0 <= h["gray_fraction"] <= 1.0 for h in summary.history)

    # A fresh instance knows no bins until its checkpoint is loaded, then reproduces the outputs exactly.
    seed_everything(123)
    fresh = Quantized(QuantizedConfig(), SPEC, INFO)
    assert not fresh.classifier.ready
    load_trained(fresh, store, Runtime("cpu"))
    rgb = images_to_rgb(_batch(images))
    pretext.eval()
    fresh.eval()
    lightness = rgb_to_lab(rgb)[:, :1]
    with torch.no_grad():
        assert torch.equal(pretext.logits(lightness), fresh.logits(lightness))
    assert torch.equal(pretext.classifier.class_weights, fresh.classifier.class_weights)
    assert fresh.classifier.num_bins == pretext.classifier.num_bins > 50

    out = fresh.colorize(rgb)
    assert out.shape == rgb.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert (rgb_to_lab(out)[:, 0] - lightness[:, 0]).abs().max() <= 1.0
    assert rgb_to_lab(out)[:, 1:].abs().mean() > 1.0  # it did predict colour, not gray


def test_same_seed_same_weights(images, tmp_path: Path) -> None:
    small = torch.utils.data.Subset(images, range(32))
    states = [_train(QuantizedConfig(), small, tmp_path / str(i), seed=s, steps=2, batch_size=16)[0].state_dict()
              for i, s in enumerate((1, 1, 2))]
    keys = [k for k in states[0] if torch.is_tensor(states[0][k]) and states[0][k].is_floating_point()]
    assert all(torch.equal(states[0][k], states[1][k]) for k in keys)
    assert any(not torch.equal(states[0][k], states[2][k]) for k in keys)


def _dense_reference(logits: torch.Tensor, ab: torch.Tensor, centers: torch.Tensor, class_weights: torch.Tensor,
                     stride: int) -> torch.Tensor:
    """Brute force: a dense Q-vector target per pixel from all distances, dense cross-entropy, loops over pixels."""
    target_ab = ab[:, :, ::stride, ::stride]
    log_probs = F.log_softmax(logits.double(), dim=1)
    total = torch.zeros((), dtype=torch.float64)
    n, _, h, w = target_ab.shape
    for i in range(n):
        gray = not bool((ab[i].abs() > 5).any())
        for y in range(h):
            for x in range(w):
                d2 = ((centers.double() - target_ab[i, :, y, x].double()) ** 2).sum(1)
                near = d2.argsort()[:10]
                dense = torch.zeros(centers.shape[0], dtype=torch.float64)
                dense[near] = torch.exp(-d2[near] / (2 * 5.0**2))
                dense /= dense.sum()
                weight = 0.0 if gray else float(class_weights[dense.argmax()])
                total -= weight * (dense * log_probs[i, :, y, x]).sum()
    return total / (n * h * w)


@pytest.mark.parametrize("rebalance", [True, False])
def test_sparse_loss_equals_dense_brute_force(images, rebalance: bool) -> None:
    torch.manual_seed(0)
    pretext = Quantized(QuantizedConfig(bins="gamut", rebalance=rebalance), SPEC, INFO)
    classifier = pretext.classifier
    prior = torch.rand(classifier.num_bins) ** 4
    classifier.install(classifier.bins, prior / prior.sum())
    if rebalance:
        assert classifier.class_weights.std() > 0.1
    else:
        assert torch.equal(classifier.class_weights, torch.ones(classifier.num_bins))
    rgb = images_to_rgb(_batch(images, 3))[:, :, :12, :12]
    gray = rgb.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    lab = rgb_to_lab(torch.cat([rgb, gray[:1]]))  # the last image is gray: masked out
    logits = torch.randn(4, classifier.num_bins, 3, 3)
    loss, logs = classifier.loss(logits, lab[:, 1:])
    reference = _dense_reference(logits, lab[:, 1:], classifier.centers, classifier.class_weights, 4)
    assert float(logs["gray_fraction"]) == pytest.approx(0.25)
    assert float(loss) == pytest.approx(float(reference), rel=1e-4)


def test_all_gray_batch_contributes_nothing(images) -> None:
    torch.manual_seed(0)
    pretext = Quantized(QuantizedConfig(bins="gamut"), SPEC, INFO)
    rgb = images_to_rgb(_batch(images, 4))
    gray = (rgb.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)
    loss, logs = pretext.compute_loss({"image": gray})
    assert float(logs["gray_fraction"]) == 1.0
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in pretext.parameters())

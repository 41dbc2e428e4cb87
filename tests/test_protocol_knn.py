"""The ``knn`` protocol on real CIFAR-10 images with a real (randomly initialised) encoder.

The protocol's top-1 at every tap is checked against a brute-force NumPy kNN (k = 200, cosine, T = 0.1) on features
computed here straight from the representation, without ``extract_features`` or ``knn_classify``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sslbench.cli import main
from sslbench.datasets import create_dataset
from sslbench.pretext import DataInfo, EncoderSpec, images_to_rgb
from sslbench.progress import Progress
from sslbench.protocol import EvalData
from sslbench.records import read_per_image
from sslbench.registry import get_pretext_class, get_protocol_class
from sslbench.runtime import Runtime, seed_everything

NUM_TRAIN, NUM_TEST = 500, 200


@pytest.fixture(scope="module")
def cifar(shared_data):
    train = create_dataset("cifar10", root=shared_data / "cifar10", split="train", subset=NUM_TRAIN)
    test = create_dataset("cifar10", root=shared_data / "cifar10", split="test", subset=NUM_TEST)
    return train, test


@pytest.fixture(scope="module")
def pretext(cifar):
    seed_everything(0)
    cls = get_pretext_class("random")
    model = cls(cls.Config(), EncoderSpec("vgg_small", {}, 32), DataInfo("cifar10", 32, 10))
    return model.eval()


def _evaluate(pretext, cifar, **options):
    protocol_cls = get_protocol_class("knn")
    protocol = protocol_cls(protocol_cls.Config(**options))
    data = EvalData(train=cifar[0], test=cifar[1], batch_size=100, seed=0)
    return protocol.evaluate(pretext, data, Runtime("cpu"), Progress.disabled())


def _brute_force_top1(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray,
                      k: int, temperature: float, num_classes: int) -> float:
    train_n = train_f / np.maximum(np.linalg.norm(train_f, axis=1, keepdims=True), 1e-12)
    test_n = test_f / np.maximum(np.linalg.norm(test_f, axis=1, keepdims=True), 1e-12)
    correct = 0
    for row, label in zip(test_n, test_y):
        sims = train_n @ row
        nearest = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[train_y[j]] += np.exp(sims[j] / temperature)
        correct += int(np.argmax(votes) == label)
    return 100.0 * correct / len(test_y)


@torch.no_grad()
def _global_features(pretext, dataset) -> tuple[list[np.ndarray], np.ndarray]:
    """Per tap, the spatial mean of each map (through float16, as the harness stores features), and the labels."""
    representation = pretext.representation().eval()
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([item["image"] for item in items])
    maps = representation(images_to_rgb(images))
    feats = [m.mean(dim=(2, 3)).half().double().numpy() for m in maps]
    return feats, np.array([item["label"] for item in items])


def test_knn_metrics_match_brute_force_and_are_deterministic(pretext, cifar):
    before = {k: v.clone() for k, v in pretext.state_dict().items()}
    metrics = _evaluate(pretext, cifar)
    taps = [tap.name for tap in pretext.representation().taps]
    assert set(metrics) == ({f"layer/{t}/{m}" for t in taps for m in ("top1", "val_top1", "dims")}
                            | {"best/top1", "best/val_top1", "best/layer", "train/val_images"})
    for tap, tap_info in zip(taps, pretext.representation().taps):
        assert 0.0 <= metrics[f"layer/{tap}/top1"] <= 100.0
        assert metrics[f"layer/{tap}/dims"] == tap_info.channels
    assert metrics["train/val_images"] == NUM_TRAIN // 10
    # The best layer is the one with the best top-1 on the held-out part of the training split (first on ties).
    best = next(t for t in taps if metrics[f"layer/{t}/val_top1"] == max(metrics[f"layer/{u}/val_top1"] for u in taps))
    assert metrics["best/layer"] == best
    assert metrics["best/top1"] == metrics[f"layer/{best}/top1"]
    assert metrics["best/val_top1"] == metrics[f"layer/{best}/val_top1"]

    train_feats, train_y = _global_features(pretext, cifar[0])
    test_feats, test_y = _global_features(pretext, cifar[1])
    for tap, train_f, test_f in zip(taps, train_feats, test_feats):
        expected = _brute_force_top1(train_f, train_y, test_f, test_y, k=200, temperature=0.1, num_classes=10)
        assert metrics[f"layer/{tap}/top1"] == pytest.approx(expected, abs=1e-9), tap

    assert _evaluate(pretext, cifar) == metrics
    assert all(torch.equal(before[k], v) for k, v in pretext.state_dict().items())


def test_knn_options_reduction_and_k(pretext, cifar):
    metrics = _evaluate(pretext, cifar, reduction="avg", target_dims=512, k=1)
    taps = pretext.representation().taps
    # avg keeps an s x s grid with channels * s^2 close to target_dims: 32 * 4^2 = 512 at the first tap.
    assert metrics[f"layer/{taps[0].name}/dims"] == 512
    assert metrics[f"layer/{taps[-1].name}/dims"] == 256
    train_feats, train_y = _global_features(pretext, cifar[0])
    test_feats, test_y = _global_features(pretext, cifar[1])
    # At the deepest tap (256 channels) the avg grid is 1x1: the same features as global, here with one neighbour.
    expected = _brute_force_top1(train_feats[-1], train_y, test_feats[-1], test_y, k=1, temperature=0.1,
                                 num_classes=10)
    assert metrics[f"layer/{taps[-1].name}/top1"] == pytest.approx(expected, abs=1e-9)
    # With a spatial grid and one neighbour even random conv features are clearly above chance (10%): 26% here.
    assert metrics["best/top1"] > 18.0
    with pytest.raises(ValueError, match="reduction"):
        _evaluate(pretext, cifar, reduction="max")


def test_knn_through_the_runner(shared_data, tmp_path, capsys):
    code = main(["run", "--pretext", "random", "--protocol", "knn", "--dataset", "cifar10", "--data-root",
                 str(shared_data / "cifar10"), "--device", "cpu", "--quiet", "--out", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--subset", str(NUM_TRAIN), "--eval-subset", str(NUM_TEST),
                 "--eval-batch-size", "100", "--set", "knn.cache_features=true"])
    assert code == 0, capsys.readouterr().err
    (path,) = (tmp_path / "runs").rglob("*__seed*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record.get("reason")
    metrics = record["metrics"]
    assert metrics["best"]["layer"] in metrics["layer"]
    assert 0.0 <= metrics["best"]["top1"] <= 100.0
    best = read_per_image(path)["best/top1"].arrays["values"]
    assert best.shape == (NUM_TEST,) and float(best.mean()) == metrics["best"]["top1"]
    assert record["config"]["protocol_options"]["k"] == 200
    assert any((tmp_path / "cache" / "features").rglob("*global*.pt"))

"""Can a protocol's numbers be trusted? Real synthetic images, a real quarter-width ``vgg_small``, real training.

Checked: a learning rate that blows training up (1e30, inf) stops ``linear``, ``finetune_cls``, ``finetune_seg`` and
the ``semantic`` judge with a :class:`NonFiniteLossError` naming the step, also when only the last step breaks the
weights, and through the CLI (exit 1, a ``failed`` record); a training split too small for batch norm is refused
instead of looping; the best layer of ``linear`` and ``knn`` is picked on held-out training images (shown by probing
the training split itself: the probe is perfect on the images it was fitted on and ``val_top1`` is exactly its
accuracy on the others); and every protocol's per-image values recompute its reported metric exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sslbench.datasets import create_dataset
from sslbench.datasets.base import ImageDataset
from sslbench.errors import NonFiniteLossError, UsageError
from sslbench.metrics import iou_from_confusion, mean_average_precision
from sslbench.pretext import DataInfo, EncoderSpec
from sslbench.progress import Progress
from sslbench.protocol import EvalData
from sslbench.protocols._finetune import run_phase
from sslbench.protocols.finetune_cls import FinetuneCls, FinetuneClsConfig, bce_loss, build_classifier
from sslbench.protocols.finetune_seg import PREDICTIONS_FILE, FinetuneSeg, FinetuneSegConfig
from sslbench.protocols.knn import KNNConfig, KNNProtocol
from sslbench.protocols.linear import (LinearConfig, LinearProbe, check_finite, train_linear_probe,
                                       validation_split)
from sslbench.protocols.semantic import SemanticConfig, SemanticProtocol
from sslbench.registry import get_pretext_class
from sslbench.runtime import Runtime, seed_everything

ENCODER = EncoderSpec("vgg_small", {"width_mult": 0.25}, 32)
#: The message every non-finite stop must carry: which step of how many.
STEP = r"step \d+ of \d+"


def _pretext(name: str = "random") -> Any:
    seed_everything(0)
    cls = get_pretext_class(name)
    return cls(cls.Config(), ENCODER, DataInfo("synthetic", 32, 8)).eval()


def _evaluate(protocol: Any, train: ImageDataset, test: ImageDataset, pretext: Any | None = None,
              **data: Any) -> dict[str, Any]:
    seed_everything(0)
    eval_data = EvalData(train=train, test=test, batch_size=32, seed=0, **data)
    return protocol.evaluate(pretext or _pretext(), eval_data, Runtime("cpu"), Progress.disabled())


@pytest.fixture(scope="module")
def synthetic(one_thread) -> tuple[ImageDataset, ImageDataset]:
    return (create_dataset("synthetic", split="train", subset=64, num_train=64),
            create_dataset("synthetic", split="test", subset=32, num_test=32))


# -- finiteness ------------------------------------------------------------------------------------------------------
def test_linear_probe_with_an_exploding_lr_fails_naming_tap_and_step(synthetic):
    with pytest.raises(NonFiniteLossError, match=rf"linear probe on stage1: loss at {STEP} is nan.*linear\.lr"):
        _evaluate(LinearProbe(LinearConfig(lr=1e30)), *synthetic)


def test_linear_probe_broken_by_its_last_step_is_not_scored(synthetic):
    # One step (58 training images, batch 256, one epoch): its loss is finite, the infinite update is not.
    with pytest.raises(NonFiniteLossError, match=r"linear probe on stage1 after step 1 of 1: .*weight.* not finite"):
        _evaluate(LinearProbe(LinearConfig(lr=float("inf"), epochs=1.0)), *synthetic)
    probe = nn.Linear(4, 3)
    check_finite("a finite probe", probe, outputs=probe(torch.ones(2, 4)))
    with torch.no_grad():
        probe.bias[1] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"a probe: bias not finite"):
        check_finite("a probe", probe)
    with pytest.raises(NonFiniteLossError, match=r"its outputs not finite"):
        check_finite("a probe", outputs=torch.tensor([[0.0, float("inf")]]))


def test_linear_probe_refuses_what_batch_norm_cannot_train_instead_of_looping():
    one = torch.ones(1, 8)
    with pytest.raises(UsageError, match=r"stage3: 1 training image.*at least 2"):
        train_linear_probe(one, torch.zeros(1, dtype=torch.long), 2, LinearConfig(), 0, runtime=Runtime("cpu"),
                           tap="stage3")
    with pytest.raises(UsageError, match=r"linear\.batch_size=1"):
        train_linear_probe(torch.randn(8, 8), torch.zeros(8, dtype=torch.long), 2, LinearConfig(batch_size=1), 0,
                           runtime=Runtime("cpu"))
    two = create_dataset("synthetic", split="train", subset=2, num_train=2)
    with pytest.raises(UsageError, match=r"1 training image"):  # two images: one held out, one left to train on
        _evaluate(LinearProbe(LinearConfig()), two, two)
    with pytest.raises(UsageError, match=r"linear\.val_fraction=0"):
        validation_split(10, 0.0, 0)


def test_finetune_cls_with_an_exploding_lr_fails_naming_phase_and_step(synthetic):
    frozen = FinetuneCls(FinetuneClsConfig(frozen_epochs=1, frozen_lr=float("inf"), epochs=1, hidden=32))
    with pytest.raises(NonFiniteLossError, match=rf"finetune_cls \(frozen phase\): loss at {STEP} is nan"
                                                 r".*finetune_cls\.frozen_lr"):
        _evaluate(frozen, *synthetic)
    unfrozen = FinetuneCls(FinetuneClsConfig(frozen_epochs=0, epochs=1, lr=1e30, hidden=32))
    with pytest.raises(NonFiniteLossError, match=rf"finetune_cls \(unfrozen phase\): loss at {STEP} is .*"
                                                 r"finetune_cls\.lr \(now 1e\+30\)"):
        _evaluate(unfrozen, *synthetic)


def test_finetune_phase_broken_by_its_last_step_fails(synthetic):
    train = synthetic[0]
    data = EvalData(train=train, test=synthetic[1], batch_size=32)
    runtime = Runtime("cpu")
    model = build_classifier(_pretext(), data, FinetuneClsConfig(hidden=32), runtime)
    with pytest.raises(NonFiniteLossError, match=r"finetune_cls \(frozen phase\): weights not finite after step 1 "
                                                 r"of 1 \(head\..*finetune_cls\.frozen_lr"):
        run_phase(model, name="frozen", head=model.head, epochs=0.5, lr=float("inf"), weight_decay=0.0,
                  dataset=train, batch_size=32, loss_fn=bce_loss, runtime=runtime, progress=Progress.disabled(),
                  seed=0, protocol="finetune_cls", lr_option="finetune_cls.frozen_lr")


def test_finetune_seg_with_an_exploding_lr_fails_naming_phase_and_step(synthetic):
    protocol = FinetuneSeg(FinetuneSegConfig(frozen_epochs=0, epochs=1, lr=float("inf"), decoder_channels=16))
    with pytest.raises(NonFiniteLossError, match=rf"finetune_seg \(unfrozen phase\): loss at {STEP} is nan"
                                                 r".*finetune_seg\.lr"):
        _evaluate(protocol, *synthetic)


def test_semantic_judge_with_an_exploding_lr_fails_naming_the_step(synthetic, tmp_path):
    protocol = SemanticProtocol(SemanticConfig(judge_width_mult=0.25, judge_epochs=2, judge_batch_size=32,
                                               judge_lr=float("inf")))
    with pytest.raises(NonFiniteLossError, match=rf"semantic judge training: loss at {STEP} is nan"
                                                 r".*semantic\.judge_lr"):
        _evaluate(protocol, *synthetic, pretext=_pretext("regression"), cache_dir=str(tmp_path / "features" / "x"))
    assert not list(tmp_path.rglob("judge.pt"))  # nothing cached for a judge that failed


@pytest.mark.slow
def test_cli_run_with_an_exploding_linear_lr_exits_1_with_a_failed_record(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    command = [sys.executable, "-m", "sslbench", "run", "--pretext", "random", "--protocol", "linear",
               "--set", "linear.lr=1e30", "--out", str(out), "--cache-dir", str(cache), "--subset", "64",
               "--eval-subset", "64", "--device", "cpu", "--quiet", "--set", "encoder.width_mult=0.25"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    records = [json.loads(p.read_text()) for p in out.glob("**/*.json") if p.name != "manifest.json"]
    assert len(records) == 1
    assert records[0]["status"] == "failed"
    assert "NonFiniteLossError" in records[0]["reason"] and "step" in records[0]["reason"]


# -- the best layer is chosen on held-out images -------------------------------------------------------------------
def test_validation_split_is_seeded_disjoint_and_complete():
    fit, val = validation_split(64, 0.1, 3)
    assert len(val) == 6 and len(fit) == 58
    assert set(fit.tolist()).isdisjoint(val.tolist()) and sorted(fit.tolist() + val.tolist()) == list(range(64))
    again = validation_split(64, 0.1, 3)
    assert torch.equal(again[0], fit) and torch.equal(again[1], val)
    assert not torch.equal(validation_split(64, 0.1, 4)[1], val)
    assert len(validation_split(3, 0.01, 0)[1]) == 1 and len(validation_split(3, 0.99, 0)[1]) == 2


def test_linear_validation_top1_is_on_images_the_probe_never_saw(synthetic):
    train = synthetic[0]
    # Probe the training split itself: per-image values on the "evaluation" split are then the probe's results on
    # the training images, in order, so they show which images it was fitted on.
    protocol = LinearProbe(LinearConfig(epochs=100.0))
    metrics = _evaluate(protocol, train, train)
    fit, val = (part.numpy() for part in validation_split(len(train), 0.1, 0))
    assert metrics["train/probe_images"] == len(fit) and metrics["train/val_images"] == len(val)
    taps = [key.split("/")[1] for key in metrics if key.startswith("layer/") and key.endswith("/val_top1")]
    assert taps == ["stage1", "stage2", "stage3", "stage4"]
    for tap in taps:
        values = protocol.per_image[f"layer/{tap}/top1"].arrays["values"]
        assert values[fit].mean() == 100.0  # 58 images in thousands of dimensions: memorised
        assert metrics[f"layer/{tap}/val_top1"] == values[val].mean() < 100.0
    best = metrics["best/layer"]
    assert metrics["best/val_top1"] == max(metrics[f"layer/{tap}/val_top1"] for tap in taps)
    assert best == next(t for t in taps if metrics[f"layer/{t}/val_top1"] == metrics["best/val_top1"])
    assert metrics["best/top1"] == metrics[f"layer/{best}/top1"]


def _brute_force_knn(bank: np.ndarray, bank_y: np.ndarray, queries: np.ndarray, k: int, temperature: float,
                     classes: int) -> np.ndarray:
    """Weighted cosine kNN predictions, one query at a time in float64."""
    bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    predictions = []
    for row in queries:
        sims = bank @ row
        votes = np.zeros(classes)
        for j in np.argsort(-sims, kind="stable")[:k]:
            votes[bank_y[j]] += np.exp(sims[j] / temperature)
        predictions.append(int(np.argmax(votes)))
    return np.array(predictions)


@torch.no_grad()
def _global_features(pretext: Any, dataset: ImageDataset) -> tuple[list[np.ndarray], np.ndarray]:
    from sslbench.pretext import images_to_rgb

    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    maps = pretext.representation().eval()(images_to_rgb(images))
    labels = np.array([dataset[i]["label"] for i in range(len(dataset))])
    return [m.mean(dim=(2, 3)).half().double().numpy() for m in maps], labels


def test_knn_validation_uses_a_bank_without_the_validation_images(synthetic):
    train = synthetic[0]
    protocol = KNNProtocol(KNNConfig(k=1))
    metrics = _evaluate(protocol, train, train)
    fit, val = (part.numpy() for part in validation_split(len(train), 0.1, 0))
    features, labels = _global_features(_pretext(), train)
    taps = ["stage1", "stage2", "stage3", "stage4"]
    for tap, feats in zip(taps, features):
        expected = _brute_force_knn(feats[fit], labels[fit], feats[val], 1, 0.1, train.num_classes)
        assert metrics[f"layer/{tap}/val_top1"] == pytest.approx(100.0 * np.mean(expected == labels[val]), abs=1e-9)
        # With one neighbour an image in the bank finds itself: the evaluation split (here the training split, with
        # the whole split as the bank) is all correct, the held-out validation images are not.
        assert metrics[f"layer/{tap}/top1"] == 100.0 > metrics[f"layer/{tap}/val_top1"]
    assert metrics["train/val_images"] == len(val)
    assert metrics["best/val_top1"] == max(metrics[f"layer/{tap}/val_top1"] for tap in taps)
    assert metrics["best/val_top1"] == metrics[f"layer/{metrics['best/layer']}/val_top1"]


# -- per-image values reproduce the reported metrics -----------------------------------------------------------------
@pytest.mark.parametrize("protocol", [LinearProbe(LinearConfig(epochs=5.0)), KNNProtocol(KNNConfig())],
                         ids=["linear", "knn"])
def test_top1_per_image_values_reproduce_the_metrics(synthetic, protocol):
    train, test = synthetic
    metrics = _evaluate(protocol, train, test)
    taps = ["stage1", "stage2", "stage3", "stage4"]
    assert set(protocol.per_image) == {f"layer/{tap}/top1" for tap in taps} | {"best/top1"}
    labels = np.array([test[i]["label"] for i in range(len(test))])
    for name, entry in protocol.per_image.items():
        values = entry.arrays["values"]
        assert entry.kind == "mean" and values.shape == (len(test),) and set(np.unique(values)) <= {0.0, 100.0}
        assert float(values.mean()) == metrics[name]
    best = protocol.per_image["best/top1"].arrays["values"]
    assert np.array_equal(best, protocol.per_image[f"layer/{metrics['best/layer']}/top1"].arrays["values"])
    if isinstance(protocol, KNNProtocol):  # an independent check of which images are right
        features, train_y = _global_features(_pretext(), train)
        test_features, _ = _global_features(_pretext(), test)
        predicted = _brute_force_knn(features[-1], train_y, test_features[-1], 200, 0.1, train.num_classes)
        assert np.array_equal(protocol.per_image["layer/stage4/top1"].arrays["values"],
                              100.0 * (predicted == labels))


@pytest.fixture(scope="module")
def camvid(shared_data, one_thread) -> tuple[ImageDataset, ImageDataset]:
    root, size = shared_data / "camvid", (48, 64)
    return (create_dataset("camvid", root=root, split="train", image_size=size, subset=16),
            create_dataset("camvid", root=root, split="val", image_size=size, subset=12))


@pytest.mark.parametrize("dataset", ["synthetic", "camvid"])
def test_finetune_seg_per_image_confusions_sum_to_the_reported_miou(dataset, request, tmp_path):
    train, test = request.getfixturevalue(dataset)
    if dataset == "camvid":  # real masks have unlabelled pixels, which no matrix may count
        assert any(bool((test[i]["mask"] == test.ignore_index).any()) for i in range(len(test)))
    protocol = FinetuneSeg(FinetuneSegConfig(frozen_epochs=1, epochs=1, decoder_channels=16, save_predictions=True))
    metrics = _evaluate(protocol, train, test, cache_dir=str(tmp_path))
    entry = protocol.per_image["miou"]
    confusions = entry.arrays["confusion"]
    classes = test.num_mask_classes
    assert entry.kind == "confusion" and confusions.shape == (len(test), classes, classes)
    assert confusions.dtype == np.int64
    per_class = iou_from_confusion(torch.from_numpy(confusions.sum(axis=0)))
    assert 100.0 * float(per_class[~per_class.isnan()].mean()) == metrics["miou"]
    labelled = [int((test[i]["mask"] != test.ignore_index).sum()) for i in range(len(test))]
    assert confusions.sum(axis=(1, 2)).tolist() == labelled
    # Each image's matrix is scikit-learn's over its own labelled pixels and saved prediction.
    from sklearn.metrics import confusion_matrix

    predictions = torch.load(tmp_path / PREDICTIONS_FILE)["predictions"].numpy()
    for i in range(len(test)):
        mask = test[i]["mask"].numpy()
        labelled = mask != test.ignore_index
        expected = confusion_matrix(mask[labelled], predictions[i][labelled], labels=list(range(classes)))
        assert np.array_equal(confusions[i], expected), i


def test_finetune_cls_per_image_scores_reproduce_the_map(synthetic):
    train, test = synthetic
    protocol = FinetuneCls(FinetuneClsConfig(frozen_epochs=1, epochs=0.5, hidden=32))
    metrics = _evaluate(protocol, train, test)
    entry = protocol.per_image["map"]
    scores, targets, difficult = (entry.arrays[k] for k in ("scores", "targets", "difficult"))
    assert entry.kind == "ap" and scores.shape == targets.shape == difficult.shape == (len(test), train.num_classes)
    assert np.array_equal(targets, np.stack([test[i]["labels"].numpy() for i in range(len(test))]))
    assert difficult.dtype == np.bool_ and not difficult.any()  # synthetic images flag nothing as difficult
    mean_ap, _ = mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets),
                                        torch.from_numpy(difficult))
    assert 100.0 * mean_ap == metrics["map"]

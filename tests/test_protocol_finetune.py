"""``finetune_cls`` and ``finetune_seg``: real images, real encoders, real optimisation, tiny budgets.

Checked: the two-phase schedule (the frozen phase leaves every encoder parameter and batch-norm statistic as it was,
the unfrozen phase moves them, the loss falls), the pretext's own weights never change, difficult flags reach the
VOC AP, the whole-network path (a pretext offering its U-Net generator), and end-to-end runs through the runner on
synthetic multi-labels and on real CamVid, whose mIoU is recomputed from the saved predictions with scikit-learn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sslbench.cli import main
from sslbench.colour import normalize_l, rgb_to_lab
from sslbench.datasets import create_dataset
from sslbench.datasets.base import ImageDataset
from sslbench.encoders.unet import UNetGenerator
from sslbench.errors import SslbenchError
from sslbench.metrics import mean_average_precision
from sslbench.pretext import DataInfo, EncoderSpec
from sslbench.progress import Progress
from sslbench.protocol import EvalData
from sslbench.protocols._finetune import run_phase, state_snapshot
from sslbench.protocols.finetune_cls import FinetuneCls, FinetuneClsConfig, bce_loss, build_classifier
from sslbench.protocols.finetune_seg import (PREDICTIONS_FILE, FinetuneSeg, FinetuneSegConfig, build_segmenter,
                                            make_loss)
from sslbench.registry import get_pretext_class
from sslbench.runtime import Runtime, seed_everything

RandomInit = get_pretext_class("random")
#: Half-width vgg_small: a quarter of the convolution cost, the same architecture.
ENCODER = EncoderSpec("vgg_small", {"width_mult": 0.5}, 32)


def _random_pretext() -> Any:
    seed_everything(0)
    return RandomInit(RandomInit.Config(), ENCODER, DataInfo("synthetic", 32, 8)).eval()


def _run_cli(args: list[str], out: Path, cache: Path) -> list[dict[str, Any]]:
    """``sslbench run`` on the CPU, quietly, with these arguments; its records, in path order."""
    code = main(["run", "--device", "cpu", "--quiet", "--out", str(out), "--cache-dir", str(cache), *args])
    assert code == 0
    return [json.loads(path.read_text()) for path in sorted(out.rglob("*__seed*.json"))]


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, value in after.items() if not torch.equal(before[name], value)}


@pytest.fixture(scope="module")
def synthetic() -> tuple[ImageDataset, ImageDataset]:
    return (create_dataset("synthetic", split="train", subset=64, num_train=64),
            create_dataset("synthetic", split="test", subset=48, num_test=48))


@pytest.fixture(scope="module")
def small_synthetic() -> tuple[ImageDataset, ImageDataset]:
    return (create_dataset("synthetic", split="train", subset=32, num_train=32),
            create_dataset("synthetic", split="test", subset=16, num_test=16))


class MarkedDifficult(ImageDataset):
    """A dataset whose items gain VOC-style ``difficult`` flags: every positive of class ``cls`` is difficult."""

    def __init__(self, base: ImageDataset, cls: int) -> None:
        self.base, self.cls = base, cls
        self.class_names = base.class_names
        self.mask_class_names = base.mask_class_names

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        difficult = torch.zeros(len(self.class_names), dtype=torch.bool)
        difficult[self.cls] = bool(item["labels"][self.cls] > 0)
        item["difficult"] = difficult
        return item


def test_frozen_phase_keeps_the_encoder_and_the_unfrozen_phase_trains_it(synthetic):
    pretext = _random_pretext()
    pretext_before = state_snapshot(pretext)
    cfg = FinetuneClsConfig(hidden=64)
    data = EvalData(train=synthetic[0], test=synthetic[1], batch_size=16)
    runtime, progress = Runtime("cpu"), Progress.disabled()
    model = build_classifier(pretext, data, cfg, runtime)
    encoder_before, head_before = state_snapshot(model.encoder), state_snapshot(model.head)
    common = dict(weight_decay=0.0, dataset=synthetic[0], batch_size=16, loss_fn=bce_loss, runtime=runtime,
                  progress=progress, seed=0)

    frozen = run_phase(model, name="frozen", head=model.head, epochs=4, lr=1e-3, **common)
    assert frozen.steps == 16 and len(frozen.epoch_losses) == 4
    assert frozen.epoch_losses[-1] < frozen.epoch_losses[0] - 0.02
    assert _changed(encoder_before, state_snapshot(model.encoder)) == set()  # weights AND batch-norm statistics
    assert _changed(head_before, state_snapshot(model.head)) == set(head_before)

    unfrozen = run_phase(model, name="unfrozen", head=None, epochs=1, lr=5e-5, first_epoch=4, **common)
    assert unfrozen.steps == 4
    moved = _changed(encoder_before, state_snapshot(model.encoder))
    assert any(name.endswith("conv.weight") for name in moved)
    assert any(name.endswith("running_mean") for name in moved)
    assert _changed(pretext_before, state_snapshot(pretext)) == set()


def test_finetune_cls_metrics_and_difficult_flags(synthetic):
    pretext = _random_pretext()
    pretext_before = state_snapshot(pretext)
    test = MarkedDifficult(synthetic[1], cls=0)
    data = EvalData(train=synthetic[0], test=test, batch_size=16, seed=0)
    protocol = FinetuneCls(FinetuneClsConfig(frozen_epochs=2, epochs=1, hidden=64))
    metrics = protocol.evaluate(pretext, data, Runtime("cpu"), Progress.disabled())

    names = synthetic[0].class_names
    assert f"class/{names[0]}/ap" not in metrics  # all its positives are difficult: AP undefined, left out
    aps = [metrics[f"class/{name}/ap"] for name in names[1:]]
    assert all(0.0 <= ap <= 100.0 for ap in aps)
    assert metrics["map"] == pytest.approx(float(np.mean(aps)), abs=1e-9)
    assert 0.0 <= metrics["exact_match"] <= 100.0
    assert metrics["train/frozen_steps"] == 8 and metrics["train/unfrozen_steps"] == 4
    assert metrics["train/frozen_loss_last"] < metrics["train/frozen_loss_first"]
    assert _changed(pretext_before, state_snapshot(pretext)) == set()

    # The per-image arrays kept for bootstrap intervals carry the difficult flags and give back the same mAP.
    arrays = protocol.per_image["map"].arrays
    assert np.array_equal(arrays["difficult"][:, 0], arrays["targets"][:, 0] > 0)
    assert not arrays["difficult"][:, 1:].any()
    recomputed, _ = mean_average_precision(*(torch.from_numpy(arrays[k]) for k in ("scores", "targets", "difficult")))
    assert 100.0 * recomputed == metrics["map"]


def test_finetune_cls_through_the_runner(tmp_path):
    (record,) = _run_cli(["--pretext", "random", "--protocol", "finetune_cls", "--subset", "96", "--eval-subset", "64",
                          "--eval-batch-size", "32", "--eval-epochs", "0.5", "--set", "finetune_cls.frozen_epochs=1",
                          "--set", "finetune_cls.hidden=32", "--set", "encoder.width_mult=0.5"],
                         tmp_path / "runs", tmp_path / "cache")
    assert record["status"] == "ok", record.get("reason")
    assert record["config"]["protocol_options"]["epochs"] == 0.5  # --eval-epochs sets the unfrozen phase
    metrics = record["metrics"]
    assert metrics["train"]["frozen_steps"] == 3 and metrics["train"]["unfrozen_steps"] == 2
    assert 0.0 <= metrics["map"] <= 100.0 and 0.0 <= metrics["exact_match"] <= 100.0
    assert len(metrics["class"]) == 8


class LGenerator(nn.Module):
    """A U-Net generator over the image's normalised L, with ``num_classes`` raw outputs (Treneska's reuse)."""

    def __init__(self, generator: UNetGenerator) -> None:
        super().__init__()
        self.generator = generator

    @property
    def head(self) -> nn.Module:
        return self.generator.head

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.generator(normalize_l(rgb_to_lab(rgb)[:, :1]))


class HeadlessGenerator(LGenerator):
    """Hides its new output layer: finetune_seg cannot know what to train first."""

    head = None


class HeadlessPretext(RandomInit):
    def segmentation_model(self, num_classes: int) -> nn.Module:
        generator = UNetGenerator(in_chans=1, out_chans=2, image_size=32, ngf=8)
        generator.replace_head(num_classes)
        return HeadlessGenerator(generator)


def test_finetune_seg_refuses_a_network_without_a_head():
    pretext = HeadlessPretext(None, ENCODER, DataInfo("synthetic", 32, 8)).eval()
    with pytest.raises(SslbenchError, match="without a `head` submodule"):
        build_segmenter(pretext, 8, FinetuneSegConfig(), Runtime("cpu"))


class GeneratorPretext(RandomInit):
    """The random pretext, but offering a whole U-Net to fine-tune for segmentation."""

    def segmentation_model(self, num_classes: int) -> nn.Module:
        generator = UNetGenerator(in_chans=1, out_chans=2, image_size=32, ngf=8)
        generator.replace_head(num_classes)
        return LGenerator(generator)


def test_finetune_seg_whole_network_path(small_synthetic):
    synthetic = small_synthetic
    seed_everything(0)
    pretext = GeneratorPretext(None, ENCODER, DataInfo("synthetic", 32, 8)).eval()
    runtime = Runtime("cpu")
    num_classes = synthetic[0].num_mask_classes
    decoder_model, _, kind = build_segmenter(pretext, num_classes, FinetuneSegConfig(model="decoder"), runtime)
    assert kind == "decoder" and decoder_model(torch.rand(2, 3, 32, 32)).shape == (2, num_classes, 32, 32)

    model, head, kind = build_segmenter(pretext, num_classes, FinetuneSegConfig(), runtime)
    assert kind == "pretext" and head is model.generator.head
    before = state_snapshot(model)
    phase = run_phase(model, name="frozen", head=head, epochs=1, lr=1e-3, weight_decay=0.0, dataset=synthetic[0],
                      batch_size=16, loss_fn=make_loss(synthetic[0].ignore_index), runtime=runtime,
                      progress=Progress.disabled(), seed=0)
    assert phase.steps == 2
    assert _changed(before, state_snapshot(model)) == {"generator.head.conv.weight", "generator.head.conv.bias"}

    data = EvalData(train=synthetic[0], test=synthetic[1], batch_size=16, seed=0)
    metrics = FinetuneSeg(FinetuneSegConfig(frozen_epochs=1, epochs=1)).evaluate(
        pretext, data, runtime, Progress.disabled())
    assert metrics["model"] == "pretext" and 0.0 <= metrics["miou"] <= 100.0


def _iou_from_saved(predictions: torch.Tensor, masks: np.ndarray, num_classes: int, ignore: int
                     ) -> tuple[float, dict[int, float], float]:
    """mIoU, per-class IoU and pixel accuracy from scikit-learn's confusion matrix over the labelled pixels."""
    from sklearn.metrics import confusion_matrix

    labelled = masks != ignore
    cm = confusion_matrix(masks[labelled], predictions.numpy()[labelled], labels=list(range(num_classes)))
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    per_class = {c: tp[c] / union[c] for c in range(num_classes) if union[c] > 0}
    return 100 * float(np.mean(list(per_class.values()))), per_class, 100 * tp.sum() / cm.sum()


def test_finetune_seg_on_real_camvid_through_the_runner(shared_data, tmp_path):
    size = (48, 64)
    args = ["--protocol", "finetune_seg", "--dataset", "camvid", "--data-root", str(shared_data / "camvid"),
            "--image-size", "48,64", "--subset", "32", "--eval-subset", "16", "--eval-batch-size", "16",
            "--steps", "2", "--batch-size", "8", "--set", "encoder.width_mult=0.5"]
    for option in ("frozen_epochs=1", "epochs=2", "batch_size=8", "decoder_channels=32", "save_predictions=true"):
        args += ["--set", f"finetune_seg.{option}"]
    # One run per pretext, each with its own cache, so each cache holds the predictions of one record.
    records = [_run_cli(["--pretext", name, *args], tmp_path / f"runs-{name}", tmp_path / f"cache-{name}")[0]
               for name in ("random", "cgan")]
    assert [r["pretext"] for r in records] == ["random", "cgan"]
    val = create_dataset("camvid", root=shared_data / "camvid", split="val", image_size=size, subset=16)
    masks = torch.stack([val[i]["mask"] for i in range(len(val))]).numpy()
    for record in records:
        assert record["status"] == "ok", record.get("reason")
        metrics = record["metrics"]
        assert 0.0 <= metrics["miou"] <= 100.0 and 0.0 <= metrics["pixel_acc"] <= 100.0
        ious = {name: value["iou"] for name, value in metrics["class"].items()}
        assert set(ious) <= set(val.mask_class_names) and len(ious) >= 2
        assert metrics["miou"] == pytest.approx(float(np.mean(list(ious.values()))), abs=1e-9)
        assert metrics["train"]["unfrozen_loss_last"] < metrics["train"]["frozen_loss_first"]

        (saved_file,) = (tmp_path / f"cache-{record['pretext']}").rglob(PREDICTIONS_FILE)
        saved = torch.load(saved_file)
        assert saved["predictions"].shape == masks.shape
        miou, per_class, pixel_acc = _iou_from_saved(saved["predictions"], masks, 11, val.ignore_index)
        assert metrics["miou"] == pytest.approx(miou, abs=1e-9)
        assert metrics["pixel_acc"] == pytest.approx(pixel_acc, abs=1e-6)
        assert ious == pytest.approx({val.mask_class_names[c]: 100 * v for c, v in per_class.items()}, abs=1e-9)
    # The cGAN fine-tunes its own generator; the random encoder gets the hypercolumn decoder.
    assert records[0]["metrics"]["model"] == "decoder"
    assert records[1]["metrics"]["model"] == "pretext"

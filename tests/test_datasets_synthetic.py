"""Tests of the embedded ``synthetic`` dataset: the contract, determinism, and that its structure is real.

The structure tests measure, on the default splits (2,000 train / 500 test images, 8 classes, chance 1/8), the four
properties that make the dataset a colorization benchmark: colour follows the class, the background's colour does
not, the class can be read from the L channel alone, and the L value of a pixel does not give its colour away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from sslbench.datasets.base import ImageDataset, subset_indices
from sslbench.datasets.synthetic import CLASS_SPECS, SyntheticShapes, lab_to_rgb
from sslbench.errors import UsageError
from sslbench.registry import DATASETS, get_dataset_class

NUM_CLASSES = len(CLASS_SPECS)
CHANCE = 1.0 / NUM_CLASSES


def _small(**options) -> SyntheticShapes:
    """A small test split, so contract tests stay fast."""
    return SyntheticShapes(split="test", num_test=options.pop("num_test", 96), **options)


def _to_lab(ds: SyntheticShapes) -> np.ndarray:
    """The dataset's images in CIE Lab, ``(N, H, W, 3)`` float32, converted by scikit-image (an independent check)."""
    return rgb2lab(ds.images.permute(0, 2, 3, 1).numpy()).astype(np.float32)


@dataclass
class _Split:
    ds: SyntheticShapes
    lab: np.ndarray  # (N, H, W, 3)
    mask: np.ndarray  # (N, H, W)
    label: np.ndarray  # (N,)


@dataclass
class _Default:
    train: _Split
    test: _Split
    cpu_seconds: float


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def default() -> _Default:
    """The default train and test splits, generated once, with the CPU time their generation took."""
    start = time.process_time()
    train, test = SyntheticShapes(split="train"), SyntheticShapes(split="test")
    cpu_seconds = time.process_time() - start
    splits = [_Split(ds, _to_lab(ds), ds.masks.numpy(), ds.targets.numpy()) for ds in (train, test)]
    return _Default(*splits, cpu_seconds=cpu_seconds)


def _mean_ab(lab: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Mean ab ``(N, 2)`` over the selected pixels of each image."""
    weight = where[..., None].astype(np.float32)
    return (lab[..., 1:] * weight).sum(axis=(1, 2)) / np.maximum(weight.sum(axis=(1, 2)), 1.0)


def _nearest_centroid_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """Fit one centroid per class on train features, classify test features by the nearest one."""
    train_x = train_x.reshape(len(train_x), -1)
    test_x = test_x.reshape(len(test_x), -1)
    centroids = np.stack([train_x[train_y == c].mean(axis=0) for c in range(NUM_CLASSES)])
    predicted = ((test_x[:, None, :] - centroids[None]) ** 2).sum(axis=-1).argmin(axis=1)
    return float((predicted == test_y).mean())


def _explained_variance(groups: np.ndarray, values: np.ndarray) -> float:
    """R^2 of predicting ``values`` ``(P, 2)`` by the mean of their group: 1 - within-group SS / total SS."""
    total = ((values - values.mean(axis=0)) ** 2).sum()
    within = sum(((values[groups == g] - values[groups == g].mean(axis=0)) ** 2).sum() for g in np.unique(groups))
    return float(1.0 - within / total)


# --------------------------------------------------------------------------------------------------------------
# Contract
# --------------------------------------------------------------------------------------------------------------
def test_registered_as_synthetic_and_says_so() -> None:
    entry = DATASETS.entries("synthetic")[0]
    assert entry.name == "synthetic" and entry.module == "sslbench.datasets.synthetic"
    assert "synthetic" in entry.summary.lower()
    assert get_dataset_class("synthetic") is SyntheticShapes
    assert issubclass(SyntheticShapes, ImageDataset)
    assert SyntheticShapes.synthetic is True and SyntheticShapes.env_var is None
    assert SyntheticShapes.provides == frozenset({"label", "labels", "mask"})
    assert SyntheticShapes.splits == ("train", "test") and SyntheticShapes.eval_split == "test"
    assert SyntheticShapes.default_image_size == 32 and SyntheticShapes.ignore_index == 255

    ds = _small(root="/nonexistent/ignored")
    info = ds.describe()
    assert info["synthetic"] is True and info["root"] is None and info["name"] == "synthetic"
    assert info["size"] == 96 and info["image_size"] == 32 and info["num_classes"] == NUM_CLASSES
    assert info["num_mask_classes"] == NUM_CLASSES + 1
    assert len(set(ds.class_names)) == NUM_CLASSES
    assert ds.mask_class_names == ("background",) + ds.class_names


def test_items_have_contract_shapes_dtypes_and_values() -> None:
    ds = _small()
    assert len(ds) == 96
    for index in (0, 1, len(ds) - 1):
        item = ds[index]
        assert set(item) == {"image", "label", "labels", "mask"}
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
        assert isinstance(item["label"], int) and 0 <= item["label"] < NUM_CLASSES
        assert item["labels"].dtype == torch.float32 and item["labels"].shape == (NUM_CLASSES,)
        assert set(item["labels"].unique().tolist()) <= {0.0, 1.0}
        assert item["mask"].dtype == torch.int64 and item["mask"].shape == (32, 32)
    # Hard edges: every pixel is labelled, so ignore_index never appears.
    assert int(ds.masks.max()) <= NUM_CLASSES
    # Items are copies: editing one leaves the dataset intact.
    item = ds[0]
    item["image"].zero_()
    assert ds[0]["image"].any()


def test_mask_agrees_with_labels(default: _Default) -> None:
    ds = default.test.ds
    counts = torch.stack([torch.bincount(m.flatten().long(), minlength=NUM_CLASSES + 1) for m in ds.masks])
    present = (counts[:, 1:] > 0).float()
    assert torch.equal(present, ds.multi_hot), "labels must be exactly the object classes in the mask"
    assert (counts[:, 0] > 0).all(), "every image shows some background"
    primary = counts[torch.arange(len(ds)), ds.targets + 1]
    assert (ds.multi_hot[torch.arange(len(ds)), ds.targets] == 1).all()
    # The primary object is in front and is at least 86 px (8%) of a 32x32 image by construction.
    assert int(primary.min()) >= 0.05 * 32 * 32
    # It is the largest object, so its class covers the most pixels (two smaller objects of one class may outdo it).
    assert (primary >= counts[:, 1:].max(dim=1).values).float().mean() >= 0.95
    objects = ds.multi_hot.sum(dim=1)
    assert objects.min() >= 1 and objects.max() <= 3 and (objects > 1).float().mean() > 0.3


def test_options_classes_and_objects() -> None:
    four = _small(num_classes=4)
    assert four.class_names == tuple(spec.name for spec in CLASS_SPECS[:4])
    assert four.multi_hot.shape[1] == 4 and int(four.targets.max()) < 4 and int(four.masks.max()) <= 4
    single = _small(max_objects=1)
    assert (single.multi_hot.sum(dim=1) == 1).all()
    for item in (single[i] for i in range(len(single))):
        assert set(item["mask"].unique().tolist()) == {0, item["label"] + 1}


@pytest.mark.parametrize(
    "options",
    [
        {"split": "val"},
        {"image_size": 8},
        {"image_size": (32, 48)},
        {"num_classes": 9},
        {"num_classes": 1},
        {"max_objects": 0},
        {"num_test": 0},
        {"num_test": "many"},
        {"subset": 0},
        {"seed": -1},
    ],
)
def test_rejects_bad_options(options: dict) -> None:
    with pytest.raises(UsageError):
        SyntheticShapes(**{"split": "test", "num_test": 8, **options})


def test_accepts_a_square_size_pair() -> None:
    assert _small(num_test=8, image_size=(24, 24)).images.shape == (8, 3, 24, 24)


# --------------------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------------------
def _same(a: SyntheticShapes, b: SyntheticShapes) -> bool:
    return (
        torch.equal(a.images, b.images)
        and torch.equal(a.masks, b.masks)
        and torch.equal(a.targets, b.targets)
        and torch.equal(a.multi_hot, b.multi_hot)
    )


def test_same_seed_is_bit_identical_and_other_seed_differs() -> None:
    assert _same(_small(seed=3), _small(seed=3))
    other = _small(seed=4)
    assert not torch.equal(_small(seed=3).images, other.images)
    assert not torch.equal(_small(seed=3).targets, other.targets)


def test_train_and_test_are_different_streams() -> None:
    train = SyntheticShapes(split="train", num_train=96)
    test = _small()
    assert not torch.equal(train.targets, test.targets)
    train_images = {bytes(img.numpy()) for img in train.images}
    assert not any(bytes(img.numpy()) in train_images for img in test.images)


def test_subset_picks_from_the_full_split_deterministically() -> None:
    full = _small(num_test=300, seed=7)
    part = _small(num_test=300, seed=7, subset=40)
    assert len(part) == 40 and _same(part, _small(num_test=300, seed=7, subset=40))
    chosen = subset_indices(300, 40, 7)
    assert torch.equal(part.images, full.images[chosen]) and torch.equal(part.masks, full.masks[chosen])
    assert len(_small(num_test=30, subset=100)) == 30


def test_longer_split_extends_shorter_one() -> None:
    short, long = _small(num_test=300), _small(num_test=600)
    assert torch.equal(long.images[:300], short.images) and torch.equal(long.masks[:300], short.masks)


@pytest.mark.parametrize("size", [16, 64, 128])
def test_other_sizes_render_the_same_scenes(size: int) -> None:
    base = _small(num_test=32)
    other = _small(num_test=32, image_size=size)
    assert other.images.shape == (32, 3, size, size) and other.masks.shape == (32, size, size)
    assert other.describe()["image_size"] == size
    assert torch.equal(other.targets, base.targets)
    # Resample both masks to 16x16 at the same points (nearest) and compare: same scenes, differing at edges only.
    common = torch.nn.functional.interpolate(other.masks[:, None].float(), size=16, mode="nearest")
    reference = torch.nn.functional.interpolate(base.masks[:, None].float(), size=16, mode="nearest")
    assert (common == reference).float().mean() > 0.9


# --------------------------------------------------------------------------------------------------------------
# Colour conversion
# --------------------------------------------------------------------------------------------------------------
def test_lab_to_rgb_agrees_with_skimage_and_keeps_hue_out_of_gamut() -> None:
    g = torch.Generator().manual_seed(0)
    lightness = torch.rand(4096, generator=g) * 80 + 10
    ab = torch.randn(4096, 2, generator=g) * 40
    lab = torch.cat((lightness[:, None], ab), dim=1).reshape(64, 64, 3)
    rgb = lab_to_rgb(lab.permute(2, 0, 1)[None])[0].permute(1, 2, 0).double().numpy()
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    back = torch.from_numpy(rgb2lab(rgb)).float()
    # Lightness is kept everywhere (in gamut or not); chroma only ever shrinks, hue is kept where chroma remains.
    assert (back[..., 0] - lab[..., 0]).abs().max() < 0.5
    chroma, back_chroma = lab[..., 1:].norm(dim=-1), back[..., 1:].norm(dim=-1)
    assert (back_chroma <= chroma + 0.5).all()
    coloured = back_chroma > 5
    cosine = (lab[..., 1:] * back[..., 1:]).sum(dim=-1) / (chroma * back_chroma).clamp(min=1e-6)
    assert cosine[coloured].min() > 0.99
    inside = back_chroma > chroma - 0.5
    assert inside.float().mean() > 0.2, "a good share of random colours is in gamut and unchanged"


# --------------------------------------------------------------------------------------------------------------
# The structure is real
# --------------------------------------------------------------------------------------------------------------
def test_generation_is_fast(default: _Default) -> None:
    # About 1.5 s of one core for 2,500 images at 32x32 here; the bound only catches a lost vectorisation.
    assert default.cpu_seconds < 12.0


def test_class_predicts_object_colour(default: _Default) -> None:
    """(a) Object colour clusters by class: the mean ab of the primary object's pixels, classified by nearest class
    centroid, is right almost always (measured 0.99; 0.8 leaves room for any reasonable generator change)."""
    train, test = default.train, default.test
    features = [_mean_ab(s.lab, s.mask == s.label[:, None, None] + 1) for s in (train, test)]
    accuracy = _nearest_centroid_accuracy(features[0], train.label, features[1], test.label)
    assert accuracy >= 0.8


def test_background_colour_does_not_predict_class(default: _Default) -> None:
    """(b) Background colour is drawn independently of the objects: nearest-centroid on the mean background ab is at
    chance (1/8; the standard error on 500 images is 0.015, so 0.2 is five of them above chance)."""
    train, test = default.train, default.test
    features = [_mean_ab(s.lab, s.mask == 0) for s in (train, test)]
    accuracy = _nearest_centroid_accuracy(features[0], train.label, features[1], test.label)
    assert accuracy <= 0.2


def _tiny_cnn() -> torch.nn.Module:
    """Three conv layers (the first strided, a pool after the second) and a global max pool: position-invariant
    and cheap on a CPU."""

    def block(c_in: int, c_out: int, stride: int = 1) -> list[torch.nn.Module]:
        return [torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()]

    return torch.nn.Sequential(
        *block(1, 16, stride=2),
        *block(16, 32),
        torch.nn.MaxPool2d(2),
        *block(32, 64),
        torch.nn.AdaptiveMaxPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, NUM_CLASSES),
    )


def test_class_is_recognisable_from_lightness_alone(default: _Default) -> None:
    """(c) A tiny CNN trained for 4 epochs (about 5 s of one core) on the L channel of the train split names the
    primary class of test images far above chance (measured 0.71-0.78 over seeds; 0.5 is four times chance)."""
    torch.manual_seed(0)

    def lightness(s: _Split) -> torch.Tensor:
        return torch.from_numpy(s.lab[..., 0])[:, None] / 50.0 - 1.0

    x_train, x_test = lightness(default.train), lightness(default.test)
    y_train, y_test = torch.from_numpy(default.train.label), torch.from_numpy(default.test.label)
    net = _tiny_cnn()
    epochs, batch_size = 4, 64
    optimiser = torch.optim.Adam(net.parameters())
    steps = epochs * -(-len(x_train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=0.01, total_steps=steps)
    for _ in range(epochs):
        order = torch.randperm(len(x_train))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_test).argmax(dim=1) == y_test).float().mean().item()
    assert accuracy >= 0.5


def test_lightness_does_not_give_colour_away(default: _Default) -> None:
    """(d) Per pixel, the class explains most of an object pixel's ab (measured R^2 0.94), a lookup from L (2-unit
    bins) almost none of it (measured 0.03): object lightness is drawn from one range for every class. Likewise
    the primary object's mean L names its class only at chance (measured 0.13)."""
    test = default.test
    on_object = test.mask > 0
    ab = test.lab[..., 1:][on_object]
    by_class = _explained_variance(test.mask[on_object], ab)
    by_lightness = _explained_variance(np.floor(test.lab[..., 0][on_object] / 2.0).astype(int), ab)
    assert by_class >= 0.7
    assert by_lightness <= 0.15
    assert by_class >= 5 * by_lightness

    train = default.train
    primary_l = [
        (s.lab[..., 0] * (s.mask == s.label[:, None, None] + 1)).sum(axis=(1, 2))
        / (s.mask == s.label[:, None, None] + 1).sum(axis=(1, 2))
        for s in (train, test)
    ]
    assert _nearest_centroid_accuracy(primary_l[0][:, None], train.label, primary_l[1][:, None], test.label) <= 0.2

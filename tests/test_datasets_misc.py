"""``cifar10`` (pickled layout), ``stl10``, ``coco``, the shared transforms, and the error contract of every adapter.

The pickled CIFAR and binary STL-10 trees are written here from real photographs in the exact formats torchvision
reads; torchvision's own readers (with only their MD5 checks bypassed, as the files are not the released ones)
serve as the reference for what those formats mean.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from sslbench.datasets.base import ImageDataset
from sslbench.datasets.cifar10 import CIFAR10_CLASSES, CIFAR10Dataset
from sslbench.datasets.coco import COCOImagesDataset
from sslbench.datasets.imagefolder import ImageFolderDataset
from sslbench.datasets.stl10 import STL10Dataset
from sslbench.datasets.transforms import (
    normalize_image_size,
    resize_crop_geometry,
    resize_crop_image,
    resize_crop_mask,
)
from sslbench.errors import DataError, UsageError
from sslbench.registry import get_dataset_class

ADAPTERS = ("imagefolder", "cifar10", "stl10", "voc2007", "voc2012", "camvid", "coco")


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


# -- cifar10, pickled ------------------------------------------------------------------------------------------------


def _cifar_pixels(shared_data: Path, split: str, count: int) -> tuple[np.ndarray, list[int]]:
    """``count`` real CIFAR images (N, 32, 32, 3) cycling through the classes, with their labels."""
    images, labels = [], []
    for k in range(count):
        label = (3 * k + 1) % 10
        images.append(_rgb(shared_data / "cifar10" / split / CIFAR10_CLASSES[label] / f"{k:04d}.jpg"))
        labels.append(label)
    return np.stack(images), labels


def _write_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """A batch as the python release stores it: ``data`` (N, 3072) = R plane, G plane, B plane, row-major."""
    entry = {
        "batch_label": path.name,
        "labels": labels,
        "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


@pytest.fixture()
def cifar_pickled(shared_data: Path, tmp_path: Path) -> tuple[Path, np.ndarray, list[int], np.ndarray, list[int]]:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_images, train_labels = _cifar_pixels(shared_data, "train", 7)
    bounds = [0, 3, 4, 5, 6, 7]  # five batches of unequal sizes
    for b in range(5):
        lo, hi = bounds[b], bounds[b + 1]
        _write_batch(folder / f"data_batch_{b + 1}", train_images[lo:hi], train_labels[lo:hi])
    test_images, test_labels = _cifar_pixels(shared_data, "test", 4)
    _write_batch(folder / "test_batch", test_images, test_labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": 10000, "num_vis": 3072}, f)
    return tmp_path, train_images, train_labels, test_images, test_labels


def test_cifar10_pickled_pixels_round_trip(cifar_pickled, monkeypatch: pytest.MonkeyPatch) -> None:
    root, train_images, train_labels, test_images, test_labels = cifar_pickled
    train = CIFAR10Dataset(root=root, split="train")
    assert train.layout == "pickle" and train.describe()["layout"] == "pickle" and len(train) == 7
    for index in range(7):
        item = train[index]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), train_images[index])
        assert item["label"] == train_labels[index]
    test = CIFAR10Dataset(root=root / "cifar-10-batches-py", split="test")  # root = the batch folder itself
    assert test.targets == test_labels
    np.testing.assert_array_equal(test[3]["image"].permute(1, 2, 0).numpy(), test_images[3])
    # torchvision reads the same files to the same pixels and labels (its MD5 checks aside)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    reference = torchvision.datasets.CIFAR10(str(root), train=True, download=False)
    np.testing.assert_array_equal(reference.data, train_images)
    assert reference.targets == train_labels and reference.classes == list(CIFAR10_CLASSES)


def test_cifar10_pickled_subset_and_resize(cifar_pickled) -> None:
    root, train_images, _, _, _ = cifar_pickled
    a = CIFAR10Dataset(root=root, subset=3, seed=2)
    b = CIFAR10Dataset(root=root, subset=3, seed=2, image_size=64)
    assert len(a) == 3 and a.targets == b.targets
    assert b[0]["image"].shape == (3, 64, 64)
    assert any(np.array_equal(a[0]["image"].permute(1, 2, 0).numpy(), img) for img in train_images)


def test_cifar10_pickled_broken_batches_are_named(cifar_pickled) -> None:
    root = cifar_pickled[0]
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_4").write_bytes(b"\x80\x02 garbage, not a pickle")
    with pytest.raises(DataError, match="data_batch_4"):
        CIFAR10Dataset(root=root)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="lacks data_batch_4"):
        CIFAR10Dataset(root=root)
    assert len(CIFAR10Dataset(root=root, split="test")) == 4  # the test split needs only test_batch


def test_cifar10_error_names_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        CIFAR10Dataset(root=tmp_path)
    message = str(info.value)
    assert "cifar-10-batches-py" in message and str(tmp_path / "train") in message and "<class>" in message
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="missing: airplane automobile bird deer"):
        CIFAR10Dataset(root=tmp_path)


# -- stl10 -----------------------------------------------------------------------------------------------------------


def _camvid_tiles(shared_data: Path, count: int) -> np.ndarray:
    """``count`` real 96x96 crops (N, 96, 96, 3) cut from CamVid frames, without resampling."""
    frames = sorted((shared_data / "camvid" / "val").glob("*.png"))
    tiles = []
    for k in range(count):
        frame = _rgb(frames[(7 * k) % len(frames)])
        top, left = 40 + 17 * k, 60 + 29 * k
        tiles.append(frame[top:top + 96, left:left + 96])
    return np.stack(tiles)


def _write_stl(path: Path, images: np.ndarray) -> None:
    """STL-10's layout: per image, the R, G and B planes, each stored column by column."""
    path.write_bytes(np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes())


@pytest.fixture()
def stl_root(shared_data: Path, tmp_path: Path) -> tuple[Path, np.ndarray, list[int]]:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    tiles = _camvid_tiles(shared_data, 12)
    labels = [1, 10, 3, 3, 7, 2]  # 1-based, as stored
    _write_stl(folder / "train_X.bin", tiles[:6])
    (folder / "train_y.bin").write_bytes(bytes(labels))
    _write_stl(folder / "test_X.bin", tiles[6:9])
    (folder / "test_y.bin").write_bytes(bytes([5, 9, 4]))
    _write_stl(folder / "unlabeled_X.bin", tiles[9:])
    (folder / "fold_indices.txt").write_text("0 2 4\n5 1\n")
    return tmp_path, tiles, labels


def test_stl10_pixels_round_trip(stl_root, monkeypatch: pytest.MonkeyPatch) -> None:
    root, tiles, labels = stl_root
    train = STL10Dataset(root=root, split="train")
    assert len(train) == 6 and train.has_labels and train.targets == [v - 1 for v in labels]
    for index in range(6):
        item = train[index]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 96, 96)
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), tiles[index])
        assert item["label"] == labels[index] - 1
    test = STL10Dataset(root=root / "stl10_binary", split="test", image_size=32)
    assert test.targets == [4, 8, 3] and test[2]["image"].shape == (3, 32, 32)
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)
    reference = torchvision.datasets.STL10(str(root), split="train", download=False)
    np.testing.assert_array_equal(reference.data, tiles[:6].transpose(0, 3, 1, 2))
    assert reference.labels.tolist() == train.targets


def test_stl10_unlabeled_has_no_label_key(stl_root) -> None:
    root, tiles, _ = stl_root
    ds = STL10Dataset(root=root, split="unlabeled")
    assert not ds.has_labels and ds.describe()["has_labels"] is False
    assert ds.provides == frozenset({"label"})  # the labelled splits' keys; has_labels tells this split apart
    item = ds[2]
    assert set(item) == {"image"}
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), tiles[11])


def test_stl10_folds_subset_and_pickling(stl_root) -> None:
    root, tiles, labels = stl_root
    fold = STL10Dataset(root=root, split="train", fold=1)
    assert fold.indices.tolist() == [5, 1] and fold.targets == [labels[5] - 1, labels[1] - 1]
    np.testing.assert_array_equal(fold[1]["image"].permute(1, 2, 0).numpy(), tiles[1])
    with pytest.raises(DataError, match="no fold 2"):
        STL10Dataset(root=root, split="train", fold=2)
    with pytest.raises(DataError, match="'train' split only"):
        STL10Dataset(root=root, split="test", fold=0)
    sub = STL10Dataset(root=root, split="train", subset=4, seed=1)
    assert sub.indices.tolist() == STL10Dataset(root=root, split="train", subset=4, seed=1).indices.tolist()
    assert sub[0]["image"].shape == (3, 96, 96) and sub._images is not None  # the map is open now
    clone = pickle.loads(pickle.dumps(sub))  # the memory map is reopened, not copied into the pickle
    assert len(pickle.dumps(sub)) < 4096
    torch.testing.assert_close(clone[3]["image"], sub[3]["image"], rtol=0, atol=0)


def test_stl10_truncated_file(stl_root) -> None:
    root = stl_root[0]
    path = root / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"test_X\.bin has .* bytes"):
        STL10Dataset(root=root, split="test")
    (root / "stl10_binary" / "train_y.bin").unlink()
    with pytest.raises(DataError, match=r"train_y\.bin not found"):
        STL10Dataset(root=root, split="train")


# -- coco ------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def coco_root(shared_data: Path, tmp_path: Path) -> Path:
    (tmp_path / "train2017").mkdir()
    (tmp_path / "val2017").mkdir()
    for k in range(5):
        suffix = ".JPG" if k == 3 else ".jpg"
        shutil.copyfile(shared_data / "cifar10" / "train" / "horse" / f"{k:04d}.jpg",
                        tmp_path / "train2017" / f"{k:012d}{suffix}")
    frame = sorted((shared_data / "camvid" / "train").glob("*.png"))[0]
    shutil.copyfile(frame, tmp_path / "val2017" / "000000000139.png")
    (tmp_path / "train2017" / "notes.txt").write_text("not an image")
    return tmp_path


def test_coco_lists_images_only(coco_root: Path) -> None:
    train = COCOImagesDataset(root=coco_root, image_size=48)
    assert len(train) == 5 and train.provides == frozenset()
    assert [p.name for p in train.paths][3] == "000000000003.JPG"
    item = train[3]
    assert set(item) == {"image"} and item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.uint8
    val = COCOImagesDataset(root=coco_root, split="val", image_size=(60, 80))
    assert len(val) == 1 and val[0]["image"].shape == (3, 60, 80)
    flat = COCOImagesDataset(root=coco_root / "train2017", subset=2, seed=0)
    assert len(flat) == 2 and flat.image_dir == coco_root / "train2017"
    np.testing.assert_array_equal(
        COCOImagesDataset(root=coco_root / "train2017", image_size=32)[0]["image"].permute(1, 2, 0).numpy(),
        _rgb(coco_root / "train2017" / "000000000000.jpg"),
    )
    with pytest.raises(DataError, match="only the 'train' split"):
        COCOImagesDataset(root=coco_root / "train2017", split="val")
    (coco_root / "train2014").mkdir()
    with pytest.raises(DataError, match="no image files"):
        COCOImagesDataset(root=coco_root, year=2014)
    with pytest.raises(DataError, match="val2014"):
        COCOImagesDataset(root=coco_root, split="val", year=2014)


# -- transforms ------------------------------------------------------------------------------------------------------


def test_resize_crop_geometry() -> None:
    assert resize_crop_geometry(480, 360, 96) == (128, 96, 16, 0)  # shorter side to 96, centre crop
    assert resize_crop_geometry(480, 360, (96, 128)) == (128, 96, 0, 0)  # same aspect: a plain resize
    assert resize_crop_geometry(480, 360, (120, 120)) == (160, 120, 20, 0)
    assert resize_crop_geometry(32, 32, (16, 64)) == (64, 64, 0, 24)  # cover the box, then crop rows
    assert normalize_image_size(None, (96, 128)) == (96, 128)
    assert normalize_image_size([24, 32], 8) == (24, 32) and normalize_image_size(np.int64(5), 8) == 5
    for bad in (0, -3, (1, 2, 3), (4, 0), True, 2.5, "64"):
        with pytest.raises(UsageError, match="image_size"):
            normalize_image_size(bad, 32)


def test_resize_crop_keeps_native_images_and_mask_values(shared_data: Path) -> None:
    path = sorted((shared_data / "camvid" / "valannot").glob("*.png"))[0]
    mask = Image.open(path)
    assert resize_crop_mask(mask, (360, 480)) is mask
    small = np.array(resize_crop_mask(mask, 50))
    assert small.shape == (50, 50) and set(np.unique(small)) <= set(np.unique(np.array(mask)))
    image = Image.open(shared_data / "cifar10" / "test" / "cat" / "0000.jpg").convert("RGB")
    assert resize_crop_image(image, 32) is image and resize_crop_image(image, (20, 30)).size == (30, 20)


# -- the error contract, for every adapter ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_declarations(name: str) -> None:
    cls = get_dataset_class(name)
    assert issubclass(cls, ImageDataset) and cls.name == name and not cls.synthetic
    assert cls.eval_split in cls.splits and "train" in cls.splits
    assert cls.provides <= {"label", "labels", "difficult", "mask"}
    assert cls.env_var == f"SSLBENCH_{name.upper()}"
    assert ("mask" in cls.provides) == bool(cls.mask_class_names)
    if name != "imagefolder":  # its class names are the folders it finds, known per instance
        assert bool({"label", "labels"} & cls.provides) == bool(cls.class_names)
    normalize_image_size(cls.default_image_size, 1)


@pytest.mark.parametrize("name", ADAPTERS)
def test_unknown_split_lists_the_valid_ones(name: str) -> None:
    cls = get_dataset_class(name)
    with pytest.raises(DataError) as info:
        cls(split="validation")
    assert "'validation'" in str(info.value) and ", ".join(cls.splits) in str(info.value)


@pytest.mark.parametrize("name", ADAPTERS)
def test_missing_root_names_the_path_and_layout(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = get_dataset_class(name)
    missing = tmp_path / "no" / name
    with pytest.raises(DataError) as info:
        cls(root=missing)
    assert str(missing) in str(info.value) and "Expected layout" in str(info.value)
    monkeypatch.delenv("SSLBENCH_DATA", raising=False)
    monkeypatch.delenv(cls.env_var, raising=False)
    with pytest.raises(DataError, match=cls.env_var):
        cls()
    monkeypatch.setenv(cls.env_var, str(missing))
    with pytest.raises(DataError, match=f"{cls.env_var}.*Expected layout"):
        cls()


@pytest.mark.parametrize("name", ["imagefolder", "coco", "camvid", "voc2007", "voc2012", "stl10"])
def test_empty_root_names_what_was_expected(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        get_dataset_class(name)(root=tmp_path)
    assert str(tmp_path) in str(info.value)


def test_imagefolder_tree_checks(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "cifar10" / "test" / "frog" / "0001.jpg"
    (tmp_path / "train" / "frog" / "nested").mkdir(parents=True)
    (tmp_path / "train" / "toad").mkdir()
    (tmp_path / "train" / ".cache").mkdir()
    shutil.copyfile(source, tmp_path / "train" / "frog" / "a.JPEG")
    shutil.copyfile(source, tmp_path / "train" / "frog" / "nested" / "b.webp")
    (tmp_path / "train" / "toad" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"train/toad hold no image files"):
        ImageFolderDataset(root=tmp_path)
    shutil.copyfile(source, tmp_path / "train" / "toad" / "c.png")
    ds = ImageFolderDataset(root=tmp_path, image_size=32)
    assert ds.class_names == ("frog", "toad") and ds.targets == [0, 0, 1]
    assert [Path(p).name for p, _ in ds.samples] == ["a.JPEG", "b.webp", "c.png"]
    (tmp_path / "val" / "newt").mkdir(parents=True)
    with pytest.raises(DataError, match="newt"):
        ImageFolderDataset(root=tmp_path, split="val")
    with pytest.raises(DataError, match="holds no class folders"):
        ImageFolderDataset(root=tmp_path / "train" / "frog" / "nested")


@pytest.mark.parametrize("name", ["imagefolder", "coco"])
def test_corrupt_jpeg_names_the_file(name: str, shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "train" / "cat" if name == "imagefolder" else tmp_path / "train2017"
    folder.mkdir(parents=True)
    shutil.copyfile(shared_data / "cifar10" / "test" / "cat" / "0002.jpg", folder / "good.jpg")
    bad = folder / "truncated.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not image data" * 3)
    ds = get_dataset_class(name)(root=tmp_path, image_size=32)
    assert ds[0]["image"].shape == (3, 32, 32)
    with pytest.raises(DataError, match=str(bad)):
        ds[1]


def test_stl10_pretrains_on_train_and_unlabeled_by_default(stl_root, tmp_path) -> None:
    from sslbench.experiment import DatasetSpec, Experiment, VariantSpec
    from sslbench.plan import resolve_plan

    root, tiles, labels = stl_root
    exp = Experiment(variants=[VariantSpec("regression", "regression"), VariantSpec("supervised", "supervised")],
                     datasets=[DatasetSpec("stl10", data_root=str(root), image_size=32)])
    plan = resolve_plan(exp, tmp_path / "cache")
    dataset = plan.datasets[0]
    assert (dataset.pretext_split, dataset.probe_split, dataset.eval_split) == ("train+unlabeled", "train", "test")
    assert len(dataset.pretext_data) == 6 + 3 and len(dataset.probe_data) == 6 and len(dataset.eval_data) == 3
    units = {u.variant.name: u for u in plan.units}
    assert units["regression"].run_config["pretext_split"] == "train+unlabeled"
    assert units["supervised"].run_config["pretext_split"] == "train"  # the labelled bound trains on labels
    assert set(dataset.pretext_data[0]) == set(dataset.pretext_data[8]) == {"image"}  # unlabeled: no label key
    batch = next(iter(torch.utils.data.DataLoader(dataset.pretext_data, batch_size=9)))
    assert batch["image"].shape == (9, 3, 32, 32)

"""The ``voc2007`` and ``voc2012`` adapters on small VOCdevkit trees written to tmp_path.

Images are real photographs (CIFAR-10 test JPEGs, downsized CamVid frames); annotations are hand-written XML with
difficult flags; masks are palette PNGs with a 255 void band, as VOC ships them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.datasets.voc import VOC_CLASSES, VOC2007Dataset, VOC2012Dataset, parse_voc_annotation
from sslbench.errors import DataError

# id -> [(class, difficult flag as written, or None for no <difficult> tag)]
ANNOTATIONS: dict[str, list[tuple[str, str | None]]] = {
    "000005": [("dog", "0"), ("person", "1")],
    "000007": [("cat", "1"), ("cat", "0")],
    "000009": [("car", "1"), ("car", "1"), ("bird", None)],
    "000012": [("aeroplane", "0"), ("tvmonitor", "0"), ("aeroplane", "0")],
    "000016": [("sofa", "1")],
    "000017": [("chair", "0"), ("diningtable", "0")],
}
CIFAR_FOLDERS = ["dog", "cat", "bird", "airplane", "ship", "truck"]
IMAGE_SETS = {
    "train": ["000005", "000007", "000012"],
    "val": ["000009"],
    "trainval": ["000005", "000007", "000009", "000012"],
    "test": ["000016", "000017"],
}


def _xml(image_id: str, objects: list[tuple[str, str | None]]) -> str:
    parts = [f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>",
             "<size><width>32</width><height>32</height><depth>3</depth></size>"]
    for cls, flag in objects:
        difficult = "" if flag is None else f"<difficult>{flag}</difficult>"
        parts.append(f"<object><name>{cls}</name><pose>Unspecified</pose><truncated>0</truncated>{difficult}"
                     "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object>")
    return "\n".join(parts) + "\n</annotation>\n"


@pytest.fixture()
def voc2007_root(shared_data: Path, tmp_path: Path) -> Path:
    year = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    for k, (image_id, objects) in enumerate(ANNOTATIONS.items()):
        source = shared_data / "cifar10" / "test" / CIFAR_FOLDERS[k] / f"{k:04d}.jpg"
        shutil.copyfile(source, year / "JPEGImages" / f"{image_id}.jpg")
        (year / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, objects))
    for name, ids in IMAGE_SETS.items():
        (year / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return tmp_path


def _vec(classes: list[str]) -> list[int]:
    return [int(c in classes) for c in VOC_CLASSES]


def test_voc2007_parses_labels_and_difficult(voc2007_root: Path) -> None:
    ds = VOC2007Dataset(root=voc2007_root, split="trainval", image_size=32)
    assert ds.ids == IMAGE_SETS["trainval"]
    expected = {
        "000005": (["dog"], ["person"]),
        "000007": (["cat"], []),  # one difficult and one normal cat: a positive, not difficult
        "000009": (["bird"], ["car"]),  # a missing <difficult> tag means 0
        "000012": (["aeroplane", "tvmonitor"], []),
    }
    for index, image_id in enumerate(ds.ids):
        item = ds[index]
        assert set(item) == {"image", "labels", "difficult"}
        assert item["labels"].dtype == torch.float32 and item["labels"].shape == (20,)
        assert item["difficult"].dtype == torch.bool and item["difficult"].shape == (20,)
        positives, difficult = expected[image_id]
        assert item["labels"].tolist() == _vec(positives)
        assert item["difficult"].int().tolist() == _vec(difficult)
        assert not (item["labels"].bool() & item["difficult"]).any()
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
    path = voc2007_root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000009.jpg"
    np.testing.assert_array_equal(ds[2]["image"].permute(1, 2, 0).numpy(), np.array(Image.open(path).convert("RGB")))


def test_voc2007_split_mapping(voc2007_root: Path) -> None:
    train = VOC2007Dataset(root=voc2007_root, split="train")
    assert train.image_set == "trainval" and train.ids == IMAGE_SETS["trainval"]
    assert train.describe()["image_set"] == "trainval"
    own_train = VOC2007Dataset(root=voc2007_root, split="train", train_ids="train")
    assert own_train.ids == IMAGE_SETS["train"]
    assert VOC2007Dataset(root=voc2007_root, split="val").ids == IMAGE_SETS["val"]
    test = VOC2007Dataset(root=voc2007_root, split=VOC2007Dataset.eval_split, image_size=40)
    assert test.ids == IMAGE_SETS["test"]
    assert test[0]["difficult"].int().tolist() == _vec(["sofa"]) and test[0]["labels"].sum() == 0
    assert test[1]["labels"].tolist() == _vec(["chair", "diningtable"])
    assert test[1]["image"].shape == (3, 40, 40)
    sub = VOC2007Dataset(root=voc2007_root, split="trainval", subset=2, seed=4)
    assert len(sub) == 2 and sub.ids == [i for i in IMAGE_SETS["trainval"] if i in sub.ids]
    assert sub.labels.shape == (2, 20)
    with pytest.raises(DataError, match="train_ids"):
        VOC2007Dataset(root=voc2007_root, train_ids="test")


def test_voc2007_accepts_devkit_or_year_folder_as_root(voc2007_root: Path) -> None:
    for root in (voc2007_root / "VOCdevkit", voc2007_root / "VOCdevkit" / "VOC2007"):
        assert VOC2007Dataset(root=root, split="test").ids == IMAGE_SETS["test"]
    with pytest.raises(DataError) as info:
        VOC2007Dataset(root=voc2007_root / "VOCdevkit" / "VOC2007" / "Annotations")
    assert "JPEGImages" in str(info.value) and "VOCdevkit/VOC2007" in str(info.value)


def test_voc2007_broken_trees_name_the_file(voc2007_root: Path) -> None:
    year = voc2007_root / "VOCdevkit" / "VOC2007"
    (year / "Annotations" / "000016.xml").write_text(_xml("000016", [("unicorn", "0")]))
    with pytest.raises(DataError, match=r"000016\.xml.*unicorn"):
        VOC2007Dataset(root=voc2007_root, split="test")
    (year / "Annotations" / "000016.xml").unlink()
    with pytest.raises(DataError, match=r"000016\.xml"):
        VOC2007Dataset(root=voc2007_root, split="test")
    (year / "JPEGImages" / "000007.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ds = VOC2007Dataset(root=voc2007_root, split="trainval")
    with pytest.raises(DataError, match=r"000007\.jpg"):
        ds[1]
    (year / "ImageSets" / "Main" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"ImageSets/Main/val\.txt"):
        VOC2007Dataset(root=voc2007_root, split="val")


def test_parse_voc_annotation_rejects_bad_difficult_flag(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(_xml("a", [("dog", "yes")]))
    with pytest.raises(DataError, match="difficult"):
        parse_voc_annotation(path)
    path.write_text("<annotation><object>")
    with pytest.raises(DataError, match=str(path)):
        parse_voc_annotation(path)


# -- voc2012 ---------------------------------------------------------------------------------------------------------


def _voc_palette() -> list[int]:
    """VOC's colour map: class k gets the colour VOC's devkit assigns it (255 -> the cream void colour)."""
    palette = []
    for k in range(256):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _mask(height: int, width: int, cls: int) -> np.ndarray:
    """Background left, ``cls`` right, a 2-pixel 255 band between them and around the border."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, width // 2:] = cls
    mask[:, width // 2 - 1: width // 2 + 1] = 255
    mask[[0, -1], :] = 255
    mask[:, [0, -1]] = 255
    return mask


def _palette_png(mask: np.ndarray, path: Path) -> None:
    """Save ``mask`` as VOC does: a palette PNG whose pixel values are the class indices."""
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    image.putpalette(_voc_palette())
    image.save(path)


SEG_SETS = {"train": ["2007_000032", "2007_000039"], "val": ["2008_000002"]}
SEG_CLASSES = {"2007_000032": 15, "2007_000039": 1, "2008_000002": 20}


@pytest.fixture()
def voc2012_root(shared_data: Path, tmp_path: Path) -> Path:
    year = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (year / sub).mkdir(parents=True)
    frames = sorted((shared_data / "camvid" / "val").glob("*.png"))[::30]
    for frame, (image_id, cls) in zip(frames, SEG_CLASSES.items()):
        Image.open(frame).convert("RGB").resize((64, 48), Image.Resampling.BILINEAR).save(
            year / "JPEGImages" / f"{image_id}.jpg", quality=90)
        _palette_png(_mask(48, 64, cls), year / "SegmentationClass" / f"{image_id}.png")
    for name, ids in SEG_SETS.items():
        (year / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    (year / "ImageSets" / "Segmentation" / "trainval.txt").write_text("\n".join(sum(SEG_SETS.values(), [])))
    return tmp_path


def test_voc2012_masks_keep_class_indices_and_void(voc2012_root: Path) -> None:
    ds = VOC2012Dataset(root=voc2012_root, split="train", image_size=(48, 64))
    assert ds.ids == SEG_SETS["train"] and ds.ignore_index == 255
    assert ds.num_mask_classes == 21 and ds.mask_class_names[0] == "background"
    assert ds.mask_class_names[15] == "person"
    for index, image_id in enumerate(ds.ids):
        item = ds[index]
        assert set(item) == {"image", "mask"}
        assert item["mask"].dtype == torch.int64 and item["mask"].shape == (48, 64)
        np.testing.assert_array_equal(item["mask"].numpy(), _mask(48, 64, SEG_CLASSES[image_id]))
        assert item["image"].shape == (3, 48, 64)
    val = VOC2012Dataset(root=voc2012_root, split=VOC2012Dataset.eval_split, image_size=32)
    assert val.ids == SEG_SETS["val"]
    item = val[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    assert set(item["mask"].unique().tolist()) <= {0, 20, 255}
    assert {0, 20, 255} <= set(item["mask"].unique().tolist())
    assert len(VOC2012Dataset(root=voc2012_root, split="trainval")) == 3


def test_voc2012_rejects_non_index_masks(voc2012_root: Path) -> None:
    seg = voc2012_root / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    Image.open(seg / "2007_000032.png").convert("RGB").save(seg / "2007_000032.png")
    bad = _mask(48, 64, 15)
    bad[5, 5] = 40
    Image.fromarray(bad).save(seg / "2007_000039.png")
    ds = VOC2012Dataset(root=voc2012_root, split="train")
    with pytest.raises(DataError, match=r"2007_000032\.png.*mode 'RGB'"):
        ds[0]
    with pytest.raises(DataError, match=r"2007_000039\.png has values"):
        ds[1]
    (seg / "2008_000002.png").unlink()
    with pytest.raises(DataError, match=r"masks .*2008_000002\.png"):
        VOC2012Dataset(root=voc2012_root, split="val")

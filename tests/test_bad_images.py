"""Bad files in real image collections: decoding, the kinds of bad file, and the adapters' ``on_bad_image`` option.

Every file here is made from real photographs (CIFAR-10 test JPEGs, CamVid PNG frames) with PIL or by editing their
bytes. References are independent of the code under test: numpy's ``>> 8`` of the raw 16-bit values, the original
RGB pixels a CMYK file was made from, a palette lookup with the transparency index painted white.
"""

from __future__ import annotations

import inspect
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.datasets.bad_images import (
    BAD_KINDS,
    BadImage,
    BadImageError,
    BadImageWarning,
    count_by_kind,
    decode_image,
    read_bad_images_file,
    write_bad_images_file,
)
from sslbench.datasets.camvid import CamVidDataset
from sslbench.datasets.cifar10 import CIFAR10_CLASSES, CIFAR10Dataset
from sslbench.datasets.coco import COCOImagesDataset
from sslbench.datasets.imagefolder import ImageFolderDataset
from sslbench.errors import DataError, UsageError
from sslbench.registry import get_dataset_class

FILE_ADAPTERS = ("imagefolder", "cifar10", "stl10", "voc2007", "voc2012", "camvid", "coco")


def _cifar(shared_data: Path, cls: str = "cat", k: int = 0) -> Path:
    return shared_data / "cifar10" / "test" / cls / f"{k:04d}.jpg"


def _camvid_frame(shared_data: Path, k: int = 0) -> Path:
    return sorted((shared_data / "camvid" / "train").glob("*.png"))[k]


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def png16(values: np.ndarray, path: Path) -> None:
    """A 16-bit PNG (greyscale for (H, W), RGB for (H, W, 3)) written byte by byte, independently of PIL."""
    height, width = values.shape[:2]
    colour_type = 2 if values.ndim == 3 else 0
    rows = values.reshape(height, -1).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def sixteen_bit_grey(shared_data: Path) -> np.ndarray:
    """Real luminance spread over 16 bits, low byte not zero (so ``>> 8`` and ``/ 257`` differ from a copy)."""
    grey = np.array(Image.open(_cifar(shared_data)).convert("L"), dtype=np.uint16)
    return grey * 257 + np.uint16(77)


def cmyk_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Proper CMYK with a black channel (PIL's own RGB->CMYK leaves K at 0)."""
    rgb = rgb.astype(np.float64)
    k = 255.0 - rgb.max(axis=2)
    scale = np.where(k < 255.0, 255.0 / np.maximum(255.0 - k, 1e-9), 0.0)
    cmy = (255.0 - rgb - k[..., None]) * scale[..., None]
    return np.round(np.dstack([cmy, k])).clip(0, 255).astype(np.uint8)


def _jpeg_of_frame(shared_data: Path, path: Path) -> bytes:
    Image.open(_camvid_frame(shared_data)).convert("RGB").save(path, quality=90)
    return path.read_bytes()


def write_bad_files(shared_data: Path, folder: Path) -> dict[str, str | None]:
    """Good and bad image files in ``folder``, named so good and bad ones interleave in sorted order.

    Returns ``{file name: expected kind}``, None for a good file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(13)
    expected: dict[str, str | None] = {}

    def put(name: str, kind: str | None) -> Path:
        expected[name] = kind
        return folder / name

    shutil.copyfile(_cifar(shared_data, "cat", 0), put("00_good.jpg", None))
    put("01_empty.jpg", "empty").write_bytes(b"")
    shutil.copyfile(_camvid_frame(shared_data, 1), put("02_good_frame.png", None))
    data = _cifar(shared_data, "ship", 1).read_bytes()
    put("03_truncated.jpg", "truncated").write_bytes(data[: len(data) * 6 // 10])
    frame = _jpeg_of_frame(shared_data, put("04_good_frame.jpg", None))
    put("05_truncated_frame.jpg", "truncated").write_bytes(frame[: len(frame) * 6 // 10])
    png = _camvid_frame(shared_data, 2).read_bytes()
    put("06_truncated.png", "truncated").write_bytes(png[: len(png) // 2])
    put("07_random.jpg", "not_image").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    put("08_text.jpg", "not_image").write_text("these are notes, not a photograph\n" * 10)
    garbled = bytearray(frame)
    body = frame.index(b"\xff\xda") + 200
    garbled[body:-2] = rng.integers(0, 256, len(frame) - 2 - body, dtype=np.uint8).tobytes()
    put("09_garbled.jpg", "corrupt").write_bytes(bytes(garbled))
    rgb = _rgb(_cifar(shared_data, "frog", 2))
    Image.fromarray(cmyk_from_rgb(rgb), "CMYK").save(put("10_cmyk.jpg", None), quality=95)
    quantised = Image.fromarray(rgb).quantize(colors=16)
    quantised.save(put("11_palette_alpha.png", None), transparency=0)
    png16(rgb.astype(np.uint16) * 257 + 3, put("12_rgb16.png", None))
    Image.fromarray(rgb[:1, :1]).save(put("13_1x1.png", "too_small"))
    Image.fromarray(rgb[:7, :20]).save(put("14_7x20.png", "too_small"))
    Image.fromarray(rgb[:8, :8]).save(put("15_8x8.png", None))
    Image.fromarray(rgb).convert("L").save(put("16_grey.jpg", "grayscale"))
    Image.fromarray(rgb).convert("L").convert("RGB").save(put("17_grey_as_rgb.png", "grayscale"))
    Image.fromarray(sixteen_bit_grey(shared_data)).save(put("18_grey16.png", "grayscale"))
    Image.fromarray(sixteen_bit_grey(shared_data)).save(put("19_grey16.tif", "grayscale"))
    shutil.copyfile(_cifar(shared_data, "dog", 3), put("20_good.jpeg", None))
    return expected


@pytest.fixture()
def bad_folder(shared_data: Path, tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    """An imagefolder root with one class folder holding good files and files of every bad kind."""
    expected = write_bad_files(shared_data, tmp_path / "train" / "things")
    return tmp_path, expected


# -- decoding --------------------------------------------------------------------------------------------------------


def test_decode_kinds(bad_folder: tuple[Path, dict[str, str | None]]) -> None:
    root, expected = bad_folder
    for name, kind in expected.items():
        path = root / "train" / "things" / name
        if kind in (None, "grayscale"):
            image, _ = decode_image(path, min_size=8)
            assert image.mode == "RGB" and min(image.size) >= 8, name
            continue
        with pytest.raises(BadImageError) as info:
            decode_image(path, min_size=8)
        assert info.value.bad.kind == kind, (name, info.value.bad)
        assert info.value.bad.path == str(path) and str(path) in str(info.value) and "on_bad_image=skip" in str(
            info.value)
    assert decode_image(root / "train" / "things" / "13_1x1.png", min_size=1)[0].size == (1, 1)
    with pytest.raises(BadImageError, match="unreadable"):
        decode_image(root / "missing.jpg")
    assert set(expected.values()) - {None} <= set(BAD_KINDS)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(shared_data: Path, tmp_path: Path) -> None:
    raw = sixteen_bit_grey(shared_data)
    reference = (raw >> 8).astype(np.uint8)
    png16(raw, tmp_path / "grey16.png")
    Image.fromarray(raw).save(tmp_path / "grey16.tif")
    for name in ("grey16.png", "grey16.tif"):
        with Image.open(tmp_path / name) as img:
            assert img.mode.startswith("I")  # what PIL's convert("RGB") clips: the bug this guards against
            assert np.array(img.convert("RGB")).mean() > 250
        image, mode = decode_image(tmp_path / name)
        pixels = np.array(image)
        assert mode.startswith("I") and pixels.shape == raw.shape + (3,)
        np.testing.assert_array_equal(pixels[..., 0], reference)
        np.testing.assert_array_equal(pixels[..., 2], reference)
        assert abs(pixels.mean() - raw.mean() / 257) < 1.0 and 60 < pixels.mean() < 200


def test_sixteen_bit_rgb_png_and_tiff_keep_the_high_byte(shared_data: Path, tmp_path: Path) -> None:
    raw = _rgb(_cifar(shared_data, "bird", 4)).astype(np.uint16) * 257 + 5
    png16(raw, tmp_path / "rgb16.png")
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "rgb16.tif", raw, photometric="rgb")
    tifffile.imwrite(tmp_path / "rgb16_be.tif", raw, photometric="rgb", byteorder=">")
    tifffile.imwrite(tmp_path / "grey16_be.tif", raw[..., 1], byteorder=">")
    for name in ("rgb16.png", "rgb16.tif", "rgb16_be.tif"):
        image, mode = decode_image(tmp_path / name)
        np.testing.assert_array_equal(np.array(image), (raw >> 8).astype(np.uint8), err_msg=name)
    image, mode = decode_image(tmp_path / "grey16_be.tif")
    np.testing.assert_array_equal(np.array(image)[..., 0], (raw[..., 1] >> 8).astype(np.uint8))


def test_cmyk_jpeg_converts_to_its_rgb(shared_data: Path, tmp_path: Path) -> None:
    rgb = _rgb(_cifar(shared_data, "frog", 2))
    Image.fromarray(cmyk_from_rgb(rgb), "CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    image, mode = decode_image(tmp_path / "cmyk.jpg")
    assert mode == "CMYK"
    error = np.abs(np.array(image).astype(int) - rgb.astype(int))
    assert error.mean() < 4.0, error.mean()  # JPEG loss only; an inverted Adobe CMYK would be ~128 off


def test_palette_transparency_is_composited_over_white(shared_data: Path, tmp_path: Path) -> None:
    quantised = Image.fromarray(_rgb(_cifar(shared_data, "horse", 5))).quantize(colors=16)
    index = np.array(quantised)
    transparent = int(np.bincount(index.ravel()).argmax())
    quantised.save(tmp_path / "pal.png", transparency=transparent)
    palette = np.array(quantised.getpalette()[: 3 * 16], dtype=np.uint8).reshape(16, 3)
    expected = palette[index]
    expected[index == transparent] = 255
    image, mode = decode_image(tmp_path / "pal.png")
    assert mode == "P" and (index == transparent).any()
    np.testing.assert_array_equal(np.array(image), expected)


def test_grey_with_alpha_is_grey(shared_data: Path, tmp_path: Path) -> None:
    grey = Image.open(_cifar(shared_data)).convert("L")
    la = Image.merge("LA", [grey, Image.new("L", grey.size, 255)])
    la.save(tmp_path / "la.png")
    image, mode = decode_image(tmp_path / "la.png")
    assert mode == "LA"
    np.testing.assert_array_equal(np.array(image)[..., 1], np.array(grey))


def test_bad_images_file_format(tmp_path: Path) -> None:
    bad = [BadImage("/data/a b/x.jpg", "truncated", "JPEG data ends\tearly\n(here)"), BadImage("/y.png", "empty", "0")]
    write_bad_images_file(tmp_path / "bad_images.txt", bad)
    lines = (tmp_path / "bad_images.txt").read_text().splitlines()
    assert lines == ["truncated\t/data/a b/x.jpg\tJPEG data ends early (here)", "empty\t/y.png\t0"]
    assert read_bad_images_file(tmp_path / "bad_images.txt")[0] == BadImage("/data/a b/x.jpg", "truncated",
                                                                          "JPEG data ends early (here)")
    assert count_by_kind(bad + [BadImage("/z", "empty", "")]) == {"empty": 2, "truncated": 1}
    assert list(count_by_kind(bad)) == ["empty", "truncated"]  # BAD_KINDS order


# -- adapters --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILE_ADAPTERS)
def test_every_file_adapter_takes_the_options_keyword_only(name: str) -> None:
    cls = get_dataset_class(name)
    assert cls.handles_bad_images
    params = inspect.signature(cls.__init__).parameters
    for option, default in (("on_bad_image", "error"), ("min_image_size", 8)):
        param = params[option]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default == default
        assert param.annotation in ({"on_bad_image": "str", "min_image_size": "int"}[option],
                                    {"on_bad_image": str, "min_image_size": int}[option])
    for param in list(params.values())[1:]:
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is not inspect.Parameter.empty
        assert param.annotation is not inspect.Parameter.empty, param


def test_options_are_checked(bad_folder: tuple[Path, dict[str, str | None]]) -> None:
    root, _ = bad_folder
    with pytest.raises(UsageError, match="on_bad_image must be one of skip, error"):
        ImageFolderDataset(root=root, on_bad_image="ignore")
    for value in (0, -1, 2.5, True):
        with pytest.raises(UsageError, match="min_image_size"):
            ImageFolderDataset(root=root, min_image_size=value)


def _good_names(expected: dict[str, str | None]) -> list[str]:
    return [n for n in sorted(expected) if expected[n] is None]


def test_skip_without_scan_substitutes_the_next_good_item(bad_folder: tuple[Path, dict[str, str | None]]) -> None:
    root, expected = bad_folder
    names = sorted(expected)
    ds = ImageFolderDataset(root=root, image_size=16, on_bad_image="skip")
    reference = ImageFolderDataset(root=root, image_size=16)
    assert len(ds) == len(names)
    with pytest.warns(BadImageWarning):
        items = [ds[i]["image"] for i in range(len(ds))]
    for i, name in enumerate(names):
        j = next((i + k) % len(names) for k in range(len(names)) if expected[names[(i + k) % len(names)]] is None)
        assert torch.equal(items[i], reference[j]["image"]), (name, names[j])
    found = {Path(b.path).name: b.kind for b in ds.bad_images}
    assert found == {n: k for n, k in expected.items() if k is not None}
    assert ds.describe()["bad_images"] == count_by_kind(ds.bad_images)
    assert ds.describe()["scanned"] is False
    again = [ds[i]["image"] for i in range(len(ds))]  # known bad items are passed over without decoding again
    assert all(torch.equal(a, b) for a, b in zip(items, again))


@pytest.mark.parametrize("workers", [0, 2])
def test_scan_skip_removes_bad_items(bad_folder: tuple[Path, dict[str, str | None]], workers: int) -> None:
    root, expected = bad_folder
    ds = ImageFolderDataset(root=root, image_size=16, on_bad_image="skip")
    bad = ds.scan(workers=workers)
    assert [Path(b.path).name for b in bad] == [n for n in sorted(expected) if expected[n] is not None]
    assert [b.kind for b in bad] == [expected[Path(b.path).name] for b in bad]
    assert [Path(p).name for p, _ in ds.samples] == _good_names(expected)
    assert len(ds) == len(ds.targets) == len(_good_names(expected))
    info = ds.describe()
    assert info["scanned"] and info["size"] == len(ds) and info["on_bad_image"] == "skip"
    assert info["bad_images"] == {"empty": 1, "truncated": 3, "not_image": 2, "corrupt": 1, "too_small": 2,
                                  "grayscale": 4}
    for i in range(len(ds)):
        pixels = ds[i]["image"]
        assert pixels.shape == (3, 16, 16) and not (torch.equal(pixels[0], pixels[1])
                                                    and torch.equal(pixels[1], pixels[2]))


def test_skip_keeps_a_dataloader_epoch_full(bad_folder: tuple[Path, dict[str, str | None]]) -> None:
    root, expected = bad_folder
    ds = ImageFolderDataset(root=root, image_size=16, on_bad_image="skip")
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    batches = [batch["image"].shape[0] for batch in loader]
    assert sum(batches) == len(expected) and batches[0] == 7


def test_error_mode_names_the_file_and_scan_lists_them_all(bad_folder: tuple[Path, dict[str, str | None]]) -> None:
    root, expected = bad_folder
    names = sorted(expected)
    ds = ImageFolderDataset(root=root, image_size=16)
    with pytest.raises(DataError, match="01_empty.jpg"):
        ds[names.index("01_empty.jpg")]
    grey = ds[names.index("16_grey.jpg")]["image"]  # greyscale is not an error here
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    with pytest.raises(DataError) as info:
        ds.scan(workers=0)
    message = str(info.value)
    unreadable = [n for n, k in expected.items() if k not in (None, "grayscale")]
    assert all(n in message for n in unreadable) and "16_grey.jpg" not in message and "on_bad_image=skip" in message
    assert len(ds) == len(expected) and {Path(b.path).name for b in ds.bad_images} == set(unreadable)
    assert ds.describe()["bad_images"]["too_small"] == 2


def test_min_image_size_is_the_adapter_option(bad_folder: tuple[Path, dict[str, str | None]]) -> None:
    root, expected = bad_folder
    ds = ImageFolderDataset(root=root, image_size=16, on_bad_image="skip", min_image_size=1)
    kinds = count_by_kind(ds.scan())
    assert "too_small" not in kinds and len(ds) == len(_good_names(expected)) + 2
    ds = ImageFolderDataset(root=root, image_size=16, on_bad_image="skip", min_image_size=33)
    small = {Path(b.path).name for b in ds.scan() if b.kind == "too_small"}
    # every image made from a 32x32 CIFAR image is now too small (the size is checked before the colour); the
    # truncated CIFAR JPEG fails before its size is known
    assert small == {n for n, k in expected.items() if k in (None, "grayscale", "too_small")} - {
        "02_good_frame.png", "04_good_frame.jpg"}
    assert [Path(p).name for p, _ in ds.samples] == ["02_good_frame.png", "04_good_frame.jpg"]


def test_coco_skip_and_error(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "train2017"
    folder.mkdir()
    shutil.copyfile(_cifar(shared_data, "cat", 0), folder / "000000000001.jpg")
    data = _cifar(shared_data, "cat", 1).read_bytes()
    (folder / "000000000002.jpg").write_bytes(data[: len(data) // 2])
    assert len(COCOImagesDataset(root=tmp_path, image_size=16, on_bad_image="skip").scan()) == 1
    ds = COCOImagesDataset(root=tmp_path, image_size=16, on_bad_image="skip")
    ds.scan()
    assert [p.name for p in ds.paths] == ["000000000001.jpg"]
    with pytest.raises(DataError, match="000000000002.jpg"):
        COCOImagesDataset(root=tmp_path, image_size=16)[1]


def test_cifar_pickled_greyscale_is_found_in_the_arrays(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = np.stack([_rgb(_cifar(shared_data, CIFAR10_CLASSES[k], k)) for k in range(4)])
    images[2] = images[2].mean(axis=2, keepdims=True).astype(np.uint8)  # equal channels
    for name in ("data_batch_1", "test_batch"):
        with open(folder / name, "wb") as f:
            pickle.dump({"labels": [0, 1, 2, 3], "data": images.transpose(0, 3, 1, 2).reshape(4, -1)}, f)
    ds = CIFAR10Dataset(root=tmp_path, split="test", on_bad_image="skip")
    bad = ds.scan(workers=2)
    assert [(b.kind, b.path) for b in bad] == [("grayscale", f"{folder}/test_batch#2")]
    assert ds.targets == [0, 1, 3] and len(ds) == 3 and ds.positions == [0, 1, 3]
    np.testing.assert_array_equal(ds[2]["image"].permute(1, 2, 0).numpy(), images[3])
    assert CIFAR10Dataset(root=tmp_path, split="test").scan() == []  # grey is not bad for evaluation


def test_camvid_bad_mask_is_skipped_or_named(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "camvid"
    lines = (source / "val.txt").read_text().splitlines()[:3]
    for folder in ("val", "valannot"):
        (tmp_path / folder).mkdir()
    for line in lines:
        for entry in line.split():
            path = Path(entry)
            shutil.copyfile(source / path.parent.name / path.name, tmp_path / path.parent.name / path.name)
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    broken = tmp_path / "valannot" / Path(lines[1].split()[1]).name
    Image.open(broken).crop((0, 0, 100, 100)).save(broken)  # no longer the size of its frame
    ds = CamVidDataset(root=tmp_path, split="val", on_bad_image="skip")
    bad = ds.scan()
    assert [(b.kind, b.path) for b in bad] == [("bad_mask", str(broken))] and len(ds) == 2
    with pytest.raises(DataError, match=f"mask {broken} is 100x100"):
        CamVidDataset(root=tmp_path, split="val")[1]

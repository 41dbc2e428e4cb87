"""The decoded-image cache (``sslbench.datasets.decoded_cache``), the loader's workers and the on-device augmentation.

Every check compares against the uncached PIL path of the same adapter on real CIFAR-10 JPEGs and CamVid frames:
the cached split must yield exactly the same tensors (values, dtype, shape, layout), in the same order, with bad
images skipped the same way, and a run must train to the same weights under the same hashes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sslbench.datasets import create_dataset
from sslbench.datasets.augment import DeviceAugment, augment_generator, augment_on_device
from sslbench.datasets.bad_images import BadImageWarning
from sslbench.datasets.decoded_cache import DecodedSplit, cache_key, is_cacheable, use_decoded_cache
from sslbench.datasets.fingerprint import data_fingerprint
from sslbench.errors import DataError
from sslbench.runtime import Runtime

REPO_ROOT = Path(__file__).resolve().parents[1]


def assert_same_item(cached: dict, reference: dict, where: str = "") -> None:
    assert cached.keys() == reference.keys(), where
    for key, value in reference.items():
        got = cached[key]
        assert type(got) is type(value), (where, key)
        if torch.is_tensor(value):
            assert got.dtype == value.dtype and got.shape == value.shape and got.stride() == value.stride(), (where, key)
            assert torch.equal(got, value), (where, key)
        else:
            assert got == value, (where, key)


def complete_folders(root: Path) -> list[Path]:
    return [p.parent for p in root.glob("*/meta.json")]


def uncached_items(dataset) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def cifar_root(shared_data: Path) -> Path:
    return shared_data / "cifar10"


def small_folder(tmp_path: Path, cifar_root: Path, per_class: int = 3) -> Path:
    """An ImageFolder tree of real CIFAR-10 JPEGs (two classes), which a test may then damage."""
    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for src in sorted((cifar_root / "train" / cls).glob("*.jpg"))[:per_class]:
            shutil.copy2(src, root / cls / src.name)
    return root


# -- exact items -----------------------------------------------------------------------------------------------------

def test_cifar10_cached_items_equal_pil_items(cifar_root, tmp_path):
    pil = create_dataset("cifar10", root=cifar_root, split="train", subset=300, seed=1)
    cached = use_decoded_cache(create_dataset("cifar10", root=cifar_root, split="train", subset=300, seed=1),
                               tmp_path / "decoded")
    assert isinstance(cached, DecodedSplit)
    folder = cached.materialize(workers=2)
    assert len(cached) == len(pil) == 300
    for i in range(len(pil)):
        assert_same_item(cached[i], pil[i], f"item {i}")
    assert_same_item(cached[-1], pil[-1])
    assert cached.describe() == pil.describe() and cached.class_names == pil.class_names
    assert data_fingerprint(cached) == data_fingerprint(pil)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["schema"]["image"]["shape"] == [32, 32, 3] and meta["schema"]["label"]["kind"] == "int"
    images = np.load(folder / "image-00000.npy", mmap_mode="r")
    assert images.dtype == np.uint8 and images.shape == (300, 32, 32, 3)


@pytest.mark.parametrize("image_size", [None, 64])
def test_camvid_cached_images_and_masks_equal_pil(shared_data, tmp_path, image_size):
    """CamVid at its default (96, 128) (a plain resize) and at 64 (resize and centre crop), images and masks."""
    kwargs = dict(root=shared_data / "camvid", split="val", subset=12, image_size=image_size)
    pil = create_dataset("camvid", **kwargs)
    cached = use_decoded_cache(create_dataset("camvid", **kwargs), tmp_path / "decoded")
    folder = cached.materialize()
    for i in range(len(pil)):
        assert_same_item(cached[i], pil[i], f"item {i}")
    assert np.load(folder / "mask-00000.npy", mmap_mode="r").dtype == np.uint8


def test_only_file_backed_splits_are_wrapped(cifar_root):
    synthetic = create_dataset("synthetic", split="train", subset=8)
    assert not is_cacheable(synthetic) and use_decoded_cache(synthetic, "/nonexistent") is synthetic
    assert is_cacheable(create_dataset("cifar10", root=cifar_root, split="test", subset=4))


# -- bad images ------------------------------------------------------------------------------------------------------

def damage(root: Path) -> dict[str, Path]:
    """First file truncated, one emptied, the last made greyscale (bad only when skipping)."""
    files = sorted(root.rglob("*.jpg"))
    first, middle, last = files[0], files[2], files[-1]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 3])
    middle.write_bytes(b"")
    Image.open(last).convert("L").convert("RGB").save(last, quality=95)
    return {"truncated": first, "empty": middle, "grayscale": last}


def test_skipped_bad_images_give_the_same_items_as_pil(tmp_path, cifar_root):
    """Bad items at the start, in the middle and at the end (wrapping round): each returns the same next good item
    as the uncached ``__getitem__``, and every bad file is listed."""
    root = small_folder(tmp_path, cifar_root)
    bad = damage(root)
    pil = create_dataset("imagefolder", root=root, image_size=32, on_bad_image="skip")
    reference = uncached_items(pil)
    dataset = create_dataset("imagefolder", root=root, image_size=32, on_bad_image="skip")
    cached = use_decoded_cache(dataset, tmp_path / "decoded")
    with pytest.warns(BadImageWarning, match="left out") as warned:
        cached.materialize(workers=2)
    assert len(warned) == 3
    assert len(cached) == len(pil) == 6
    for i, item in enumerate(reference):
        assert_same_item(cached[i], item, f"item {i}")
    assert {(b.kind, Path(b.path)) for b in cached.bad_images} == {(k, p) for k, p in bad.items()}
    # A second process-like open (a fresh adapter) reports them too, from the cache's metadata.
    again = use_decoded_cache(create_dataset("imagefolder", root=root, image_size=32, on_bad_image="skip"),
                              tmp_path / "decoded")
    with pytest.warns(BadImageWarning):
        assert again.materialize() == cached.folder and len(again.bad_images) == 3
    # A scan that drops the bad items changes the index: the next read uses the cache of the scanned split.
    again.scan()
    assert len(again) == 3 and again.materialize() != cached.folder
    assert_same_item(again[0], reference[1])


def test_error_mode_names_every_bad_file_and_leaves_no_cache(tmp_path, cifar_root):
    root = small_folder(tmp_path, cifar_root)
    bad = damage(root)
    cached = use_decoded_cache(create_dataset("imagefolder", root=root, image_size=32), tmp_path / "decoded")
    with pytest.raises(DataError) as info:
        cached.materialize(workers=2)
    assert str(bad["truncated"]) in str(info.value) and str(bad["empty"]) in str(info.value)
    assert str(bad["grayscale"]) not in str(info.value)  # greyscale is not bad where images are not skipped
    assert complete_folders(tmp_path / "decoded") == []
    assert not list((tmp_path / "decoded").glob("*.tmp-*"))


# -- keys, staleness, concurrency ------------------------------------------------------------------------------------

def test_an_edited_image_is_never_read_from_the_stale_cache(tmp_path, cifar_root):
    root = small_folder(tmp_path, cifar_root)
    before = use_decoded_cache(create_dataset("imagefolder", root=root, image_size=32), tmp_path / "decoded")
    old_folder = before.materialize()
    old_image = before[1]["image"]
    target = sorted(root.rglob("*.jpg"))[1]
    replacement = sorted((cifar_root / "train" / "ship").glob("*.jpg"))[0]
    shutil.copyfile(replacement, target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    after = use_decoded_cache(create_dataset("imagefolder", root=root, image_size=32), tmp_path / "decoded")
    assert after.materialize() != old_folder
    fresh = create_dataset("imagefolder", root=root, image_size=32)[1]["image"]
    assert torch.equal(after[1]["image"], fresh) and not torch.equal(fresh, old_image)


def test_key_depends_on_size_and_bad_image_policy(cifar_root):
    def key(**kwargs):
        return cache_key(create_dataset("cifar10", root=cifar_root, split="test", subset=20, **kwargs))[0]

    assert key() == key()
    assert len({key(), key(image_size=24), key(on_bad_image="skip"), key(min_image_size=4)}) == 4


_BUILD = """
import sys, torch
from sslbench.datasets import create_dataset
from sslbench.datasets.decoded_cache import use_decoded_cache
cached = use_decoded_cache(create_dataset("cifar10", root=sys.argv[1], split="train", subset=int(sys.argv[3])),
                           sys.argv[2])
print(cached.materialize(), flush=True)
"""


def _builder(cifar_root: Path, cache: Path, subset: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _BUILD, str(cifar_root), str(cache), str(subset)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_building_one_cache_share_it(tmp_path, cifar_root):
    cache = tmp_path / "decoded"
    first, second = _builder(cifar_root, cache, 400), _builder(cifar_root, cache, 400)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    (folder,) = complete_folders(cache)
    assert Path(outs[0][0].strip()) == folder and not list(cache.glob("*.tmp-*")) and not list(cache.glob("*.lock"))
    pil = create_dataset("cifar10", root=cifar_root, split="train", subset=400)
    cached = use_decoded_cache(create_dataset("cifar10", root=cifar_root, split="train", subset=400), cache)
    for i in range(0, 400, 3):
        assert_same_item(cached[i], pil[i])


def test_a_build_killed_midway_leaves_nothing_that_looks_complete(tmp_path, cifar_root):
    cache = tmp_path / "decoded"
    builder = _builder(cifar_root, cache, 5000)
    deadline = time.monotonic() + 60
    while not list(cache.glob("*.tmp-*/image-*.npy")) and builder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    builder.send_signal(signal.SIGKILL)
    builder.communicate()
    killed_midway = builder.returncode == -signal.SIGKILL and not complete_folders(cache)
    assert killed_midway or builder.returncode == 0  # (a build that won the race completed normally)
    for folder in cache.glob("*"):
        if folder.is_dir() and ".tmp-" not in folder.name:
            assert (folder / "meta.json").is_file()  # never a final folder without its marker
    cached = use_decoded_cache(create_dataset("cifar10", root=cifar_root, split="train", subset=5000), cache)
    cached.materialize()
    assert not list(cache.glob("*.tmp-*"))
    pil = create_dataset("cifar10", root=cifar_root, split="train", subset=5000)
    for i in range(0, 5000, 97):
        assert_same_item(cached[i], pil[i])


# -- loaders ---------------------------------------------------------------------------------------------------------

def _batches(loader) -> list[dict]:
    return [batch for batch in loader]


def test_workers_give_the_batches_of_the_uncached_single_process_loader(tmp_path, cifar_root):
    pil = create_dataset("cifar10", root=cifar_root, split="train", subset=160, seed=2)
    cached = use_decoded_cache(create_dataset("cifar10", root=cifar_root, split="train", subset=160, seed=2),
                               tmp_path / "decoded")
    reference = _batches(Runtime(device="cpu", workers=0).loader(pil, 32, shuffle=True, seed=3, epoch=1))
    runtime = Runtime(device="cpu", workers=2)
    with_workers = _batches(runtime.loader(cached, 32, shuffle=True, seed=3, epoch=1))
    assert cached.folder is not None  # built by the loader, before its workers started
    assert len(with_workers) == len(reference) == 5
    for got, want in zip(with_workers, reference):
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])
    # One loader with persistent workers over two epochs gives each epoch's batches.
    loader = runtime.loader(cached, 32, shuffle=True, seed=3, repeat=True)
    assert loader.persistent_workers
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        want = _batches(Runtime(device="cpu").loader(pil, 32, shuffle=True, seed=3, epoch=epoch))
        got = _batches(loader)
        assert all(torch.equal(g["image"], w["image"]) for g, w in zip(got, want)) and len(got) == len(want)


def test_the_cached_split_pickles_without_its_memmaps(tmp_path, cifar_root):
    import pickle

    cached = use_decoded_cache(create_dataset("cifar10", root=cifar_root, split="test", subset=16),
                               tmp_path / "decoded")
    cached.materialize()
    clone = pickle.loads(pickle.dumps(cached))
    assert len(pickle.dumps(cached)) < 100_000  # the pixels are not in it
    assert_same_item(clone[5], cached[5])


# -- the command line ------------------------------------------------------------------------------------------------

def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "sslbench", "run", *args], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.mark.slow
def test_run_with_and_without_the_cache_trains_the_same_weights_under_the_same_hashes(tmp_path, cifar_root):
    common = ["--pretext", "regression", "--protocol", "knn", "--dataset", "cifar10", "--data-root", str(cifar_root),
              "--subset", "96", "--eval-subset", "64", "--steps", "3", "--batch-size", "32", "--device", "cpu",
              "--quiet"]
    results = {}
    for mode, workers in (("on", "2"), ("off", "0")):  # the cache read by two loader workers, PIL by none
        cache = tmp_path / f"cache-{mode}"
        done = _run([*common, "--decoded-cache", mode, "--workers", workers, "--out", str(tmp_path / f"runs-{mode}"),
                     "--cache-dir", str(cache)], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        (record_path,) = (tmp_path / f"runs-{mode}").rglob("*__seed*.json")
        record = json.loads(record_path.read_text())
        (final,) = cache.rglob("final.pt")
        results[mode] = (record, torch.load(final, weights_only=True), complete_folders(cache / "decoded"))
    (on, on_state, on_folders), (off, off_state, off_folders) = results["on"], results["off"]
    # The pretext and probe splits (train, same subset, both skipping bad images) share one cache; eval has its own.
    assert len(on_folders) == 2 and off_folders == []
    assert on["config_hash"] == off["config_hash"] and on["metrics"] == off["metrics"]
    assert on_state["state_dict"].keys() == off_state["state_dict"].keys()
    for name, value in on_state["state_dict"].items():
        assert torch.equal(value, off_state["state_dict"][name]), name


def test_decoded_cache_flag_rejects_other_values(tmp_path):
    done = _run(["--decoded-cache", "maybe", "--dry-run"], tmp_path)
    assert done.returncode == 2 and "--decoded-cache" in done.stderr


# -- augmentation on the device --------------------------------------------------------------------------------------

def _reference_augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, pad: int):
    """torchvision's way, one image at a time: reflect-pad, crop at the drawn offset, then flip."""
    n, _, h, w = images.shape
    flips = torch.rand(n, generator=generator) < 0.5
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    out_images, out_masks = [], []
    for i in range(n):
        image = F.pad(images[i:i + 1].float(), (pad,) * 4, mode="reflect")[0, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        mask = F.pad(masks[i:i + 1, None].float(), (pad,) * 4, mode="reflect")[0, 0, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        if flips[i]:
            image, mask = image.flip(-1), mask.flip(-1)
        out_images.append(image.to(images.dtype))
        out_masks.append(mask.to(masks.dtype))
    return torch.stack(out_images), torch.stack(out_masks)


def test_augment_on_device_matches_pad_crop_flip_and_keeps_masks_aligned(shared_data):
    camvid = create_dataset("camvid", root=shared_data / "camvid", split="val", subset=6, image_size=(48, 64))
    batch = {"image": torch.stack([camvid[i]["image"] for i in range(6)]),
             "mask": torch.stack([camvid[i]["mask"] for i in range(6)]), "label": torch.arange(6)}
    out = augment_on_device(batch, augment_generator(0, 7))
    images, masks = _reference_augment(batch["image"], batch["mask"], augment_generator(0, 7), pad=6)
    assert out["image"].dtype == torch.uint8 and torch.equal(out["image"], images)
    assert torch.equal(out["mask"], masks) and out["label"] is batch["label"]
    assert not torch.equal(out["image"], batch["image"])
    cl = augment_on_device({"image": batch["image"].contiguous(memory_format=torch.channels_last)},
                           augment_generator(0, 7))
    assert cl["image"].is_contiguous(memory_format=torch.channels_last) and torch.equal(cl["image"], images)


def test_device_augment_resumes_with_the_same_draws(cifar_root):
    data = create_dataset("cifar10", root=cifar_root, split="test", subset=8)
    batch = {"image": torch.stack([data[i]["image"] for i in range(8)])}
    straight = DeviceAugment(seed=4)
    outputs = [straight(batch)["image"] for _ in range(5)]
    resumed = DeviceAugment(seed=4, start=3)
    assert torch.equal(resumed(batch)["image"], outputs[3]) and torch.equal(resumed(batch)["image"], outputs[4])
    assert not torch.equal(outputs[0], outputs[1])
    assert not torch.equal(DeviceAugment(seed=5)(batch)["image"], outputs[0])
    if torch.cuda.is_available():
        on_gpu = augment_on_device({"image": batch["image"].cuda()}, augment_generator(4, 2))["image"]
        assert torch.equal(on_gpu.cpu(), outputs[2])

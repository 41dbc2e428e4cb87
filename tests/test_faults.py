"""Faults at scale: two processes on one checkpoint, full disks, unwritable output folders."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sslbench.checkpoints import atomic_write_bytes
from sslbench.locks import CheckpointLock
from sslbench.runner import _disk_full

TRAIN = ["run", "--pretext", "regression", "--protocol", "linear", "--steps", "40", "--checkpoint-every", "5",
         "--subset", "128", "--eval-subset", "64", "--set", "linear.epochs=1", "--set", "encoder.width_mult=0.25",
         "--device", "cpu", "--quiet"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sslbench", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for_lock(cache: Path, first: subprocess.Popen) -> Path:
    deadline = time.time() + 300
    while True:
        locks = list(cache.rglob("train.lock"))
        if locks:
            return locks[0]
        assert first.poll() is None, f"the first run ended before taking its lock: {first.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.05)


def test_a_second_process_waits_for_the_first_and_reuses_its_checkpoint(tmp_path):
    first = _start(TRAIN + ["--out", "a", "--cache-dir", "cache"], tmp_path)
    lock = _wait_for_lock(tmp_path / "cache", first)
    owner = json.loads(lock.read_text())
    assert owner["pid"] == first.pid
    second = _start(TRAIN + ["--out", "b", "--cache-dir", "cache"], tmp_path)
    out_a, err_a = first.communicate(timeout=600)
    out_b, err_b = second.communicate(timeout=600)
    assert first.returncode == 0, err_a
    assert second.returncode == 0, err_b
    assert "trained: regression seed 0" in err_a
    assert f"being trained by pid {first.pid}" in err_b
    assert "trained: none" in err_b and "reused checkpoints: regression seed 0" in err_b
    assert len(list((tmp_path / "cache").rglob("final.pt"))) == 1 and not lock.exists()
    (record_a,) = (tmp_path / "a").rglob("*__seed0.json")
    (record_b,) = (tmp_path / "b").rglob("*__seed0.json")
    a, b = json.loads(record_a.read_text()), json.loads(record_b.read_text())
    assert a["train"]["checkpoint"] == b["train"]["checkpoint"] and a["metrics"] == b["metrics"]


def test_no_wait_moves_on_and_says_so(tmp_path):
    first = _start(TRAIN + ["--out", "a", "--cache-dir", "cache"], tmp_path)
    _wait_for_lock(tmp_path / "cache", first)
    second = _start(["run", "--pretext", "random,regression", *TRAIN[3:], "--out", "b", "--cache-dir", "cache",
                     "--no-wait"], tmp_path)
    out_b, err_b = second.communicate(timeout=600)
    first.communicate(timeout=600)
    assert second.returncode == 0, err_b
    assert "moving on: regression seed 0" in err_b and "left for a later run: regression seed 0" in err_b
    records = [json.loads(p.read_text()) for p in (tmp_path / "b").rglob("*__seed0.json")]
    assert [r["variant"] for r in records] == ["random"]


def test_a_dead_owner_does_not_block(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path = tmp_path / "train.lock"
    import socket

    lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": 0}))
    lock = CheckpointLock(lock_path)
    assert lock.acquire(wait=False)
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    other = CheckpointLock(lock_path)
    assert not other.acquire(wait=False)
    lock.release()
    assert not lock_path.exists()


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 512 KiB tmpfs (mounting needs root, which CI has)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the disk-full tests: {result.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_cache_without_room_for_the_checkpoint_fails_before_training(tmp_path, tiny_filesystem):
    result = subprocess.run([sys.executable, "-m", "sslbench", *TRAIN, "--set", "encoder.width_mult=1",
                             "--out", str(tmp_path / "runs"), "--cache-dir", str(tiny_filesystem)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "needs about" in result.stderr and "MB are free" in result.stderr and str(tiny_filesystem) in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tiny_filesystem.rglob("*.pt"))


def test_a_decoded_cache_without_room_stops_the_run_before_decoding_and_names_the_way_out(tmp_path, shared_data,
                                                                                          tiny_filesystem):
    """CamVid's decoded cache (about 10 MB at 72x96) on a 512 KiB tmpfs: before, the build's memmap writes hit the
    full file system and the process died of SIGBUS (exit 135, no message). Now the run stops with exit 1 before
    decoding, naming the size, the free space and --decoded-cache off, and leaves neither a record nor a half-built
    cache behind."""
    result = subprocess.run([sys.executable, "-m", "sslbench", "run", "--pretext", "random", "--protocol",
                             "finetune_seg", "--dataset", "camvid", "--data-root", str(shared_data / "camvid"),
                             "--image-size", "72,96", "--out", str(tmp_path / "runs"), "--cache-dir",
                             str(tiny_filesystem), "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    assert "decoded-image cache of 'camvid' needs about" in result.stderr and "--decoded-cache off" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "runs").rglob("*__seed*.json"))  # the manifest says what failed; no record
    assert not list((tiny_filesystem / "decoded").iterdir())


def test_reserving_a_cache_shard_on_a_full_disk_is_enospc_not_sigbus(tiny_filesystem):
    """The shard files are reserved with posix_fallocate, so running out of space is an OSError to handle, not a
    SIGBUS in the middle of writing a memmap."""
    from sslbench.datasets.decoded_cache import _reserve

    shard = tiny_filesystem / "image-00000.npy"
    with open(shard, "wb") as handle:
        handle.truncate(2**20)  # sparse: 1 MiB on a 512 KiB file system
    with pytest.raises(OSError) as info:
        _reserve(shard)
    assert info.value.errno == errno.ENOSPC


def test_a_full_disk_is_named_with_its_free_space_and_keeps_the_old_file(tiny_filesystem):
    kept = tiny_filesystem / "final.json"
    atomic_write_bytes(kept, b'{"old": true}')
    with pytest.raises(OSError) as info:
        atomic_write_bytes(kept, b"x" * 2**20)
    assert info.value.errno == errno.ENOSPC
    message = str(_disk_full(info.value, kept))
    assert message.startswith(f"disk full at {kept}, free ") and " MB" in message
    assert kept.read_bytes() == b'{"old": true}'
    assert [p.name for p in tiny_filesystem.iterdir()] == ["final.json"]


def test_an_unwritable_out_fails_before_any_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = subprocess.run([sys.executable, "-m", "sslbench", *TRAIN, "--out", str(blocker / "runs"),
                             "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert f"--out {blocker / 'runs'}" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "cache").rglob("*.pt")), "it trained before finding out"


def _folder_with_bad_files(shared_data: Path, root: Path) -> list[str]:
    """An image folder of real CIFAR-10 JPEGs (train/val, two classes) with broken files in train/cat."""
    import shutil

    for split, offset in (("train", 0), ("val", 300)):
        for cls in ("cat", "ship"):
            (root / split / cls).mkdir(parents=True)
            for path in sorted((shared_data / "cifar10" / "train" / cls).iterdir())[offset:offset + 40]:
                shutil.copy(path, root / split / cls / path.name)
    bad = root / "train" / "cat"
    (bad / "zz_empty.jpg").write_bytes(b"")
    (bad / "zz_text.jpg").write_text("not a photograph\n")
    good = next(bad.iterdir()).read_bytes()
    (bad / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    return ["zz_empty.jpg", "zz_text.jpg", "zz_truncated.jpg"]


def test_bad_training_images_are_skipped_listed_and_counted(tmp_path, shared_data):
    names = _folder_with_bad_files(shared_data, tmp_path / "folder")
    args = ["run", "--pretext", "regression", "--protocol", "linear", "--dataset", "imagefolder",
            "--data-root", str(tmp_path / "folder"), "--image-size", "32", "--steps", "3",
            "--set", "linear.epochs=1", "--set", "encoder.width_mult=0.25", "--device", "cpu", "--quiet",
            "--out", "runs", "--cache-dir", "cache"]
    result = subprocess.run([sys.executable, "-m", "sslbench", *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    listing = (tmp_path / "runs" / "imagefolder" / "vgg_small" / "bad_images.txt").read_text()
    for name in names:
        assert listing.count(name) == 1  # the pretext and probe splits share these files: listed once
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*__seed0.json")]
    assert record["status"] == "ok"
    counts = record["data"]["probe"]["bad_images"]
    assert (counts["empty"], counts["not_image"], counts["truncated"]) == (1, 1, 1)
    assert set(counts) <= {"empty", "not_image", "truncated", "grayscale"}  # CIFAR-10 holds a few gray photographs

    eval_bad = tmp_path / "folder" / "val" / "ship" / "zz_broken.jpg"
    eval_bad.write_bytes(b"\xff\xd8 broken")
    failed = subprocess.run([sys.executable, "-m", "sslbench", *args, "--cache-dir", "cache2"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert failed.returncode == 2 and str(eval_bad) in failed.stderr and "Traceback" not in failed.stderr
    assert not list((tmp_path / "cache2").rglob("*.pt")), "it trained before checking the evaluation split"


def test_sigterm_ends_the_run_with_its_manifest_and_log_kept(tmp_path):
    import signal

    run = _start(TRAIN + ["--steps", "400", "--out", "runs", "--cache-dir", "cache"], tmp_path)
    _wait_for_lock(tmp_path / "cache", run)
    run.send_signal(signal.SIGTERM)
    run.communicate(timeout=600)
    assert run.returncode == 128 + signal.SIGTERM
    manifest = json.loads((tmp_path / "runs" / "manifest.json").read_text())
    assert manifest["error"] == f"SystemExit: {128 + signal.SIGTERM}" and manifest["wall_s"] > 0
    assert "sslbench run:" in (tmp_path / "runs" / "run.log").read_text()
    assert not list((tmp_path / "cache").rglob("train.lock")), "the lock of a terminated run is released"

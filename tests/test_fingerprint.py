"""Data fingerprints hash file contents, not modification times: a byte-identical copy of real CIFAR-10 JPEGs keeps
its fingerprint and checkpoint hash, a rewrite that keeps the size and restores the mtime changes it, and the memo
(keyed by inode, size, mtime and ctime) spares rereading unchanged files without ever hiding such a rewrite."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from sslbench.datasets import create_dataset
from sslbench.datasets.fingerprint import MEMO_FORMAT, data_fingerprint, settle_ns
from sslbench.experiment import DatasetSpec, Experiment, VariantSpec
from sslbench.plan import resolve_plan

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Paths opened while an audit is on; the hook stays installed for the process (hooks cannot be removed), so it
# records only between _audit_opens' enter and exit.
_OPENED: list[list[str]] = []


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _OPENED and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED[-1].append(os.fsdecode(args[0]))


sys.addaudithook(_record_open)


class _audit_opens:
    """Collects the files under ``root`` that are opened inside the ``with`` block."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.abspath(root)
        self.paths: list[str] = []

    def __enter__(self) -> "_audit_opens":
        _OPENED.append(self.paths)
        return self

    def __exit__(self, *exc: object) -> None:
        _OPENED.remove(self.paths)
        self.paths[:] = [p for p in self.paths if os.path.abspath(p).startswith(self.root + os.sep)]


def _cifar_copy(src: Path, dst: Path, train_per_class: int = 20, test_per_class: int = 2) -> Path:
    """A CIFAR-10 JPEG tree of real images (200 train, 20 test) copied without their timestamps."""
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for cls in CLASSES:
            (dst / split / cls).mkdir(parents=True)
            for path in sorted((src / split / cls).glob("*.jpg"))[:count]:
                shutil.copyfile(path, dst / split / cls / path.name)
    return dst


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _settle(root: Path) -> None:
    """Wait until every file under ``root`` changed long enough ago for its digest to be memoised."""
    ready = max(p.stat().st_ctime_ns + settle_ns(p.stat().st_ctime_ns) for p in _files(root))
    while time.time_ns() <= ready:
        time.sleep((ready - time.time_ns()) / 1e9 + 0.005)


def _fingerprint(root: Path, memo: Path | None = None, dataset: str = "cifar10") -> str:
    split = create_dataset(dataset, root=root, split="train")
    return data_fingerprint(split) if memo is None else data_fingerprint(split, memo)


@pytest.fixture
def cifar(shared_data: Path, tmp_path: Path) -> Path:
    return _cifar_copy(shared_data / "cifar10", tmp_path / "cifar")


@pytest.mark.parametrize("memoised", [False, True], ids=["no-memo", "memo"])
def test_a_rewrite_with_the_same_size_and_mtime_changes_the_fingerprint(shared_data, tmp_path, memoised):
    """An uncompressed PNG rewritten with other real pixels has the same byte size; its old mtime is put back (what
    ``cp -p`` or ``tar x`` do). The mtime-based fingerprint kept its value; the content must not."""
    photos = sorted((shared_data / "cifar10" / "train" / "cat").glob("*.jpg"))[:4]
    root = tmp_path / "folder"
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
    for i, photo in enumerate(photos[:3]):
        Image.open(photo).convert("RGB").save(root / "train" / ("cat" if i else "dog") / f"{i}.png",
                                              compress_level=0)
    victim = root / "train" / "cat" / "1.png"
    memo = tmp_path / "memo" if memoised else None
    _settle(root)
    before = _fingerprint(root, memo, "imagefolder")
    old = victim.stat()
    Image.open(photos[3]).convert("RGB").save(victim, compress_level=0)
    os.utime(victim, ns=(old.st_atime_ns, old.st_mtime_ns))
    new = victim.stat()
    assert (new.st_size, new.st_mtime_ns, new.st_ino) == (old.st_size, old.st_mtime_ns, old.st_ino)
    assert Image.open(victim).tobytes() != Image.open(photos[1]).convert("RGB").tobytes()
    with _audit_opens(root) as opened:
        after = _fingerprint(root, memo, "imagefolder")
    assert after != before
    if memoised:  # the memo hit the two unchanged files and missed the rewritten one
        assert opened.paths == [str(victim)]


def test_a_byte_identical_copy_has_the_same_fingerprint_and_checkpoint_hash(shared_data, tmp_path):
    """Two copies of the same 200 real JPEGs, at different places and with different mtimes (a copy to another
    machine), plan the same checkpoint and records; one changed byte plans another."""
    first = _cifar_copy(shared_data / "cifar10", tmp_path / "a" / "cifar10")
    second = _cifar_copy(shared_data / "cifar10", tmp_path / "b" / "data")
    for i, path in enumerate(_files(second)):
        os.utime(path, ns=(10**18 + i, 10**18 + i))
    assert {p.stat().st_mtime_ns for p in _files(first)}.isdisjoint(p.stat().st_mtime_ns for p in _files(second))
    _settle(first)  # files changed moments ago are not memoised: wait until both copies may be
    _settle(second)

    def plan(root: Path):
        exp = Experiment(variants=[VariantSpec("regression", "regression")],
                         datasets=[DatasetSpec("cifar10", data_root=str(root), image_size=32)])
        return resolve_plan(exp, tmp_path / "cache")

    plan_a, plan_b = plan(first), plan(second)
    assert plan_a.datasets[0].fingerprints == plan_b.datasets[0].fingerprints
    assert len(plan_a.datasets[0].pretext_data) == 200 and len(plan_a.datasets[0].eval_data) == 20
    assert plan_a.units[0].checkpoint_hash == plan_b.units[0].checkpoint_hash
    assert plan_a.units[0].evaluations[0].hash == plan_b.units[0].evaluations[0].hash
    memos = list((tmp_path / "cache" / "fingerprints").glob("*.json"))
    assert len(memos) == 2  # one per data root

    victim = _files(second / "train")[7]
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # inside the JPEG's entropy-coded data, before the end marker
    victim.write_bytes(bytes(data))
    changed = plan(second)
    assert changed.datasets[0].fingerprints["eval"] == plan_a.datasets[0].fingerprints["eval"]
    assert changed.datasets[0].fingerprints["pretext"] != plan_a.datasets[0].fingerprints["pretext"]
    assert changed.units[0].checkpoint_hash != plan_a.units[0].checkpoint_hash


def test_touch_keeps_the_fingerprint_and_a_rename_changes_it(cifar, tmp_path):
    memo = tmp_path / "memo"
    _settle(cifar)
    reference = _fingerprint(cifar)
    assert _fingerprint(cifar, memo) == reference
    for path in _files(cifar)[::3]:
        os.utime(path, ns=(123_456_789_000, 123_456_789_000))
    assert _fingerprint(cifar, memo) == reference == _fingerprint(cifar)

    victim = cifar / "train" / "dog" / "0003.jpg"
    renamed = victim.with_name("0003b.jpg")
    victim.rename(renamed)
    assert _fingerprint(cifar, memo) != reference
    renamed.rename(victim)
    assert _fingerprint(cifar, memo) == reference


def test_the_memo_spares_reading_unchanged_files(cifar, tmp_path):
    memo = tmp_path / "memo"
    train = [str(p) for p in _files(cifar / "train")]
    _settle(cifar)
    with _audit_opens(cifar) as cold:
        first = _fingerprint(cifar, memo)
    assert sorted(cold.paths) == train  # every training file read once
    with _audit_opens(cifar) as warm:
        second = _fingerprint(cifar, memo)
    assert warm.paths == [] and second == first
    with _audit_opens(cifar) as unmemoised:
        assert _fingerprint(cifar) == first
    assert sorted(unmemoised.paths) == train


def test_files_changed_just_before_hashing_are_not_memoised(cifar, tmp_path):
    """Within a clock tick a second write could leave the ctime unchanged, so a fresh file is hashed again."""
    memo = tmp_path / "memo"
    _settle(cifar)
    _fingerprint(cifar, memo)
    fresh = cifar / "train" / "cat" / "0000.jpg"
    fresh.write_bytes(fresh.read_bytes())
    with _audit_opens(cifar) as opened:
        _fingerprint(cifar, memo)
    assert opened.paths == [str(fresh)]
    if time.time_ns() < fresh.stat().st_ctime_ns + settle_ns(fresh.stat().st_ctime_ns):
        with _audit_opens(cifar) as again:
            _fingerprint(cifar, memo)
        assert again.paths == [str(fresh)]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "one-bad-entry", "other-format"])
def test_an_unusable_memo_is_ignored_whole_and_rewritten(cifar, tmp_path, damage):
    import json

    memo = tmp_path / "memo"
    _settle(cifar)
    reference = _fingerprint(cifar, memo)
    (memo_file,) = memo.glob("*.json")
    text = memo_file.read_text()
    data = json.loads(text)
    assert data["format"] == MEMO_FORMAT and len(data["files"]) == 200
    if damage == "garbage":
        memo_file.write_bytes(b"\x00\xffnot json")
    elif damage == "truncated":
        memo_file.write_text(text[: len(text) // 2])
    elif damage == "one-bad-entry":
        name = next(iter(data["files"]))
        data["files"][name][4] = "short"
        memo_file.write_text(json.dumps(data))
    else:
        data["format"] = MEMO_FORMAT + 1
        memo_file.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="memo .* is unusable"), _audit_opens(cifar) as opened:
        assert _fingerprint(cifar, memo) == reference
    assert len(opened.paths) == 200  # nothing of the damaged memo was trusted
    rewritten = json.loads(memo_file.read_text())
    assert rewritten["format"] == MEMO_FORMAT and len(rewritten["files"]) == 200
    with _audit_opens(cifar) as warm:
        assert _fingerprint(cifar, memo) == reference
    assert warm.paths == []


def test_a_file_gone_between_listing_and_hashing_counts_as_missing(cifar, tmp_path):
    dataset = create_dataset("cifar10", root=cifar, split="train")
    reference = data_fingerprint(dataset, tmp_path / "memo")
    gone = Path(dataset.samples[5][0])
    content = gone.read_bytes()
    gone.unlink()
    missing = data_fingerprint(dataset, tmp_path / "memo")
    assert missing != reference
    gone.write_bytes(content)
    assert data_fingerprint(dataset, tmp_path / "memo") == reference


def test_joined_splits_use_the_memo(cifar, tmp_path):
    from sslbench.datasets.joined import JoinedSplits

    memo = tmp_path / "memo"
    _settle(cifar)
    joined = JoinedSplits([create_dataset("cifar10", root=cifar, split=s) for s in ("train", "test")])
    first = data_fingerprint(joined, memo)
    assert first == data_fingerprint(joined)
    with _audit_opens(cifar) as warm:
        assert data_fingerprint(joined, memo) == first
    assert warm.paths == []

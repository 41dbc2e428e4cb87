"""The identity of the data behind a dataset split, so that changed content invalidates what was trained on it and a
byte-identical copy of the data does not.

Adapters with a stable identity of their own (the generated ``synthetic`` set, whose images follow from its options;
joined splits, made of their parts' fingerprints) define ``fingerprint()``. For the others the identity hashes the
split's description (location-free: paths under the data root are written relative to it) and, in order, every
file's path relative to the root, its size and a BLAKE2b digest of its bytes. The files are the ``samples`` or
``paths`` of file-backed adapters or, for adapters that read a few large files (pickled CIFAR, STL-10's binaries),
every file under the root. Modification times are not part of it: a copy to another machine keeps its fingerprint,
and a rewrite that keeps the size and restores the old mtime (``cp -p``, ``tar x``, ``rsync -t``) changes it.

**The memo.** Hashing reads every byte (0.73 s for CIFAR-10's 50,000 training JPEGs, page cache warm), so content
digests are kept in ``<memo_dir>/<hash of the absolute root>.json`` (the run plan passes
``<cache_dir>/fingerprints``), keyed by (absolute path, inode, size, mtime_ns, ctime_ns); a rerun stats the files and
reads none whose key matches. The ctime cannot be set by users and moves on every write, rename or ``utime``, so a
rewrite with a preserved mtime misses the memo and is hashed again. A file changed less than
:func:`settle_ns` before it was hashed is not memoised (a later write within the same clock tick could leave its
ctime unchanged); it is hashed again next time. A memo file that cannot be read or is malformed is ignored whole
(with a warning) and rewritten; it is written atomically and merged with what another process wrote meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

__all__ = ["ContentMemo", "content_digest", "data_fingerprint", "file_content_digest", "settle_ns"]

#: The memo file's layout; a file of another format is ignored and rewritten.
MEMO_FORMAT = 1

#: How long after its last change a file's digest may be memoised, on file systems with fine timestamps: well above
#: the kernel's coarse clock tick (at most 10 ms), within which two writes may get the same ctime.
SETTLE_NS = 100_000_000
#: The same on file systems that store whole seconds (ext3, HFS+, some network file systems) or FAT's 2 s.
COARSE_SETTLE_NS = 2_000_000_000


def settle_ns(ctime_ns: int) -> int:
    """How long after a change at ``ctime_ns`` the file must stay unchanged before its digest is memoised: longer on
    file systems whose timestamps look coarse (a whole number of milliseconds)."""
    return COARSE_SETTLE_NS if ctime_ns % 1_000_000 == 0 else SETTLE_NS


def content_digest(handle: Any) -> str:
    """BLAKE2b (128 bits) of everything ``handle`` (a binary file) holds from its position on."""
    return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


class ContentMemo:
    """Content digests of the files under one data root, kept in ``<memo_dir>/<hash of the absolute root>.json``.

    :meth:`digest` answers from the memo when a file's key matches, else hashes the file; :meth:`save` writes what
    was learnt. Without a ``memo_dir`` nothing is kept and every file is hashed."""

    def __init__(self, memo_dir: str | os.PathLike[str] | None, root: Path | None) -> None:
        location = os.path.abspath(root) if root is not None else ""
        name = hashlib.sha256(location.encode()).hexdigest()[:16]
        self.path = Path(memo_dir) / f"{name}.json" if memo_dir is not None else None
        self.root = location
        self.entries: dict[str, list[Any]] = {}
        self.learnt: dict[str, list[Any]] = {}
        self.rewrite = False
        if self.path is not None:
            self.entries = self._load(warn=True)

    def _load(self, warn: bool) -> dict[str, list[Any]]:
        """The memo's entries; {} when there is no memo file or it is unreadable or malformed (then, with ``warn``,
        a warning, and the file is rewritten by :meth:`save`)."""
        assert self.path is not None
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            return self._discard(f"{type(exc).__name__}: {exc}", warn)
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("format") != MEMO_FORMAT or not isinstance(files, dict):
            return self._discard("not a memo of this format", warn)
        for name, entry in files.items():
            if not (isinstance(entry, list) and len(entry) == 5 and all(type(v) is int for v in entry[:4])
                    and isinstance(entry[4], str) and len(entry[4]) == 32):
                return self._discard(f"malformed entry for {name}", warn)
        return files

    def _discard(self, reason: str, warn: bool) -> dict[str, list[Any]]:
        if warn:
            warnings.warn(f"data fingerprint memo {self.path} is unusable ({reason}); ignoring it and writing a new "
                          "one (contents are hashed again)", stacklevel=4)
            self.rewrite = True
        return {}

    def digest(self, path: str, name: str, started_ns: int) -> tuple[int, str] | None:
        """The size and content digest of ``path`` (absolute: ``name``), from the memo when its key matches; None
        when it cannot be read. A digest is memoised only if the file did not change while it was read and had
        settled before ``started_ns``."""
        try:
            stat = os.stat(path)
        except OSError:
            return None
        key = _stat_key(stat)
        entry = self.entries.get(name)
        if entry is not None and entry[:4] == key:
            return stat.st_size, entry[4]
        try:
            with open(path, "rb") as handle:
                before = _stat_key(os.fstat(handle.fileno()))
                digest = content_digest(handle)
                after = _stat_key(os.fstat(handle.fileno()))
        except OSError:
            return None
        if self.path is not None and before == after and before[3] < started_ns - settle_ns(before[3]):
            self.learnt[name] = [*before, digest]
        return before[1], digest

    def save(self) -> None:
        """Write the memo (atomically, merged with the file as it is now) when something was learnt or it was
        unusable."""
        if self.path is None or not (self.learnt or self.rewrite):
            return
        from sslbench.checkpoints import atomic_write_bytes

        files = {**self._load(warn=False), **self.learnt}
        data = {"format": MEMO_FORMAT, "root": self.root, "files": files}
        try:
            atomic_write_bytes(self.path, json.dumps(data, separators=(",", ":")).encode())
        except OSError as exc:
            warnings.warn(f"cannot write the data fingerprint memo {self.path} ({exc}); fingerprints stay right but "
                          "the next run hashes the files again", stacklevel=3)
        self.learnt, self.rewrite = {}, False


def file_content_digest(paths: Iterable[str | os.PathLike[str]], root: Path | None = None,
                        memo_dir: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 over (path relative to ``root``, size, content digest) of every file, in the given order; a file that
    cannot be read counts as ``missing``. Content digests are memoised under ``memo_dir`` (see the module
    docstring)."""
    memo = ContentMemo(memo_dir, root)
    started_ns = time.time_ns()
    # String operations, not pathlib: pathlib took most of the time of a fingerprint answered by the memo.
    prefix = os.path.join(os.path.normpath(root), "") if root is not None else None
    absolute_prefix = os.path.join(os.path.abspath(root), "") if root is not None else None
    digest = hashlib.sha256()
    for path in paths:
        path = os.path.normpath(path)
        if prefix is not None and path.startswith(prefix):
            name, absolute = path[len(prefix):], absolute_prefix + path[len(prefix):]
        else:
            name, absolute = path, os.path.abspath(path)
        read = memo.digest(path, absolute, started_ns)
        facts = "missing" if read is None else f"{read[0]}:{read[1]}"
        digest.update(f"{name}\0{facts}\n".encode())
    memo.save()
    return digest.hexdigest()[:16]


def _item_paths(dataset: Any) -> list[str] | None:
    for attribute in ("samples", "paths"):
        items = getattr(dataset, attribute, None)
        if items:
            first = items[0]
            if isinstance(first, (tuple, list)):
                return [str(p) for item in items for p in item if isinstance(p, (str, os.PathLike))]
            if isinstance(first, (str, os.PathLike)):
                return [str(p) for p in items]
    return None


def _portable(description: dict[str, Any], root: Path | None) -> dict[str, Any]:
    """``description`` with the root, and every path under it, written relative to the root, so the fingerprint does
    not depend on where the data lies."""
    if root is None:
        return description
    portable = {}
    for key, value in description.items():
        if isinstance(value, str) and value and Path(value).is_relative_to(root):
            value = Path(value).relative_to(root).as_posix()
        portable[key] = value
    return portable


def data_fingerprint(dataset: Any, memo_dir: str | os.PathLike[str] | None = None) -> str:
    """The identity of ``dataset``'s data: its own ``fingerprint()`` if it has one (given ``memo_dir`` when it takes
    one), else its description and its files' contents, their digests memoised under ``memo_dir``."""
    own = getattr(dataset, "fingerprint", None)
    if callable(own):
        return str(own(memo_dir=memo_dir) if memo_dir is not None and _takes_memo_dir(own) else own())
    root = getattr(dataset, "root", None)
    root = Path(root) if root else None
    paths = _item_paths(dataset)
    if paths is None and root is not None:
        paths = sorted(str(p) for p in root.rglob("*") if p.is_file())
    description = json.dumps(_portable(dataset.describe(), root), sort_keys=True, default=str)
    if paths is None:
        return hashlib.sha256(description.encode()).hexdigest()[:16]
    return hashlib.sha256((description + file_content_digest(paths, root, memo_dir)).encode()).hexdigest()[:16]


def _takes_memo_dir(method: Any) -> bool:
    import inspect

    try:
        return "memo_dir" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False

"""A cheap identity of the data behind a dataset split, so a changed file under a root invalidates what was trained on it.

Adapters with a stable identity of their own (the generated ``synthetic`` set, whose images follow from its options)
define ``fingerprint()``; for the others the identity is the list of the split's files with their sizes and
modification times (``samples`` or ``paths`` of file-backed adapters), or, for adapters that read a few large files
(pickled CIFAR, STL-10's binaries), every file under the root. Reading stats only, it costs a fraction of a second for
50,000 files and never decodes an image.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["data_fingerprint", "file_stats_digest"]


def file_stats_digest(paths: Iterable[str | os.PathLike[str]], root: Path | None = None) -> str:
    """SHA-256 over (path relative to ``root``, size, mtime in ns) of every file, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        try:
            stat = path.stat()
            facts = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            facts = "missing"
        name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
        digest.update(f"{name}\0{facts}\n".encode())
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


def data_fingerprint(dataset: Any) -> str:
    """The identity of ``dataset``'s data: its own ``fingerprint()`` if it has one, else file statistics."""
    own = getattr(dataset, "fingerprint", None)
    if callable(own):
        return str(own())
    root = getattr(dataset, "root", None)
    root = Path(root) if root else None
    paths = _item_paths(dataset)
    if paths is None and root is not None:
        paths = sorted(str(p) for p in root.rglob("*") if p.is_file())
    description = json.dumps(dataset.describe(), sort_keys=True, default=str)
    if paths is None:
        return hashlib.sha256(description.encode()).hexdigest()[:16]
    return hashlib.sha256((description + file_stats_digest(paths, root)).encode()).hexdigest()[:16]

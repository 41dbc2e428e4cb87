"""Run records: one JSON file per (pretext, protocol, dataset, encoder, seed), written atomically.

Schema (``sslbench.run/1``)::

    {schema, pretext, protocol, dataset, encoder, seed, status: "ok" | "failed" | "skipped", reason,
     config: {pretext run config, protocol options, eval budget}, config_hash, pretext_hash,
     metrics: nested dict (``layer/stage1/top1`` is metrics["layer"]["stage1"]["top1"]),
     train: {steps, epochs, images_per_s, wall_s, first_losses, last_losses},
     timings: {eval_s, ...}, counts: {train_images, eval_images},
     data: {train: describe(), test: describe()}, env: {python, torch, torchvision, timm, numpy, numba, sslbench,
     device, device_name, precision, world_size, git_commit, command}, created}

A rerun skips a (pretext, protocol, dataset, encoder, seed) whose record exists with status ``ok`` and the same
config hash, unless forced.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from sslbench.checkpoints import atomic_write_bytes
from sslbench.errors import UsageError

__all__ = ["SCHEMA", "record_path", "write_record", "read_record", "load_records", "nest", "flatten",
           "environment", "git_commit"]

SCHEMA = "sslbench.run/1"


def record_path(out: Path, *, dataset: str, encoder: str, pretext: str, protocol: str, seed: int) -> Path:
    """Where the record of one (dataset, encoder, pretext, protocol, seed) lives under ``out``."""
    safe_encoder = encoder.replace("/", "-")
    return Path(out) / dataset / safe_encoder / f"{pretext}__{protocol}__seed{seed}.json"


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"layer/conv1/top1": x}`` to ``{"layer": {"conv1": {"top1": x}}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of :func:`nest`."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` atomically (temporary file, fsync, rename)."""
    record = {"schema": SCHEMA, **record}
    atomic_write_bytes(Path(path), (json.dumps(record, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None if it is missing or not a valid record."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == SCHEMA else None


def load_records(root: Path | Iterable[Path]) -> list[dict[str, Any]]:
    """Every valid record under ``root`` (a folder searched recursively, or a list of files), in path order."""
    paths: list[Path]
    if isinstance(root, (str, Path)):
        root = Path(root)
        if not root.exists():
            raise UsageError(f"--runs {root}: no such folder; point it at the --out folder of `sslbench run`")
        paths = sorted(root.rglob("*.json")) if root.is_dir() else [root]
    else:
        paths = sorted(Path(p) for p in root)
    records = []
    for path in paths:
        record = read_record(path)
        if record is not None:
            record["_path"] = str(path)
            records.append(record)
    return records


def git_commit() -> str | None:
    """The harness's git commit (``+dirty`` when the tree has changes), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(runtime_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, platform, device and git commit: what produced a record."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: _version(name) for name in ("torch", "torchvision", "timm", "numpy", "numba", "sslbench")},
        **(runtime_info or {}),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

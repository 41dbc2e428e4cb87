"""Content-addressed pretext checkpoints, written atomically.

A trained pretext lives at ``<cache>/<pretext>/<config_hash>/final.pt`` beside the ``config.json`` that produced it;
while training, ``last.pt`` holds the latest resumable state (weights, optimisers, step, RNG). Every write goes to a
temporary file in the same folder that is then renamed over the target, so a run killed at any moment leaves either
the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointStore", "atomic_write_bytes", "atomic_torch_save"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CheckpointStore:
    """The folder of one pretext configuration's checkpoints."""

    def __init__(self, cache_dir: str | Path, pretext: str, key: str) -> None:
        self.dir = Path(cache_dir).expanduser() / "checkpoints" / pretext / key
        self.key = key

    @property
    def final(self) -> Path:
        return self.dir / "final.pt"

    @property
    def partial(self) -> Path:
        return self.dir / "last.pt"

    def has_final(self) -> bool:
        return self.final.is_file()

    def save_config(self, config: dict[str, Any]) -> None:
        atomic_write_bytes(self.dir / "config.json", json.dumps(config, indent=2, sort_keys=True).encode())

    def save(self, state: dict[str, Any], final: bool) -> Path:
        target = self.final if final else self.partial
        atomic_torch_save(state, target)
        if final:
            self.partial.unlink(missing_ok=True)
        return target

    def load(self, final: bool, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        path = self.final if final else self.partial
        return torch.load(path, map_location=map_location, weights_only=False)

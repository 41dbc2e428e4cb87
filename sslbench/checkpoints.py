"""Content-addressed pretext checkpoints, written atomically and read without running pickled code.

A trained pretext lives at ``<cache>/<pretext>/<config_hash>/final.pt`` beside the ``config.json`` that produced it;
while training, ``last.pt`` holds the latest resumable state (weights, optimisers, step, RNG). Every write goes to a
temporary file in the same folder that is then renamed over the target, so a run killed at any moment leaves either
the old file or the new one, never a torn one; :func:`remove_orphaned_temporaries` clears the temporaries such a kill
leaves behind.

Every cached file is read with ``torch.load(weights_only=True)`` through :func:`load_cache_file`: a file planted in
the cache that pickles anything but tensors and plain containers is refused before any of it runs, and a truncated or
corrupt file is reported as a :class:`~sslbench.errors.CacheError` naming it, never as a traceback.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from sslbench.errors import CacheError

__all__ = [
    "CheckpointStore",
    "atomic_write_bytes",
    "atomic_torch_save",
    "load_cache_file",
    "load_failure_reason",
    "remove_orphaned_temporaries",
]

#: How old a temporary must be before :func:`remove_orphaned_temporaries` removes it when its writer cannot be checked
#: (written on another host, or named before temporaries carried their writer).
UNCHECKABLE_MAX_AGE_S = 3600.0

# ".<target>.<pid>@<host>.<mkstemp's random part>.tmp"; the older form had no "<pid>@<host>." part.
_TEMP_WITH_WRITER = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]*)\.[A-Za-z0-9_]+\.tmp$")
_TEMP_LEGACY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32]


def _temporary(path: Path) -> str:
    """A new temporary file beside ``path`` whose name records its writer (pid and host), so that a later run can
    tell a killed writer's leftover from a live writer's file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_host_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as handle:
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
    tmp = _temporary(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _is_orphan(path: Path, now: float) -> bool:
    match = _TEMP_WITH_WRITER.match(path.name)
    if match is not None and match["host"] == _host_tag():
        return not _pid_alive(int(match["pid"]))
    if match is None and _TEMP_LEGACY.match(path.name) is None:
        return False
    try:
        return now - path.stat().st_mtime > UNCHECKABLE_MAX_AGE_S
    except FileNotFoundError:
        return False


def remove_orphaned_temporaries(root: str | Path) -> list[Path]:
    """Remove the temporaries of atomic writes killed before their rename, anywhere under ``root``; return them.

    A temporary names its writer's pid and host (``.final.pt.<pid>@<host>.<random>.tmp``). One written on this host
    is removed exactly when that process no longer exists, so a concurrently running writer's file is never touched
    (a dead writer whose pid was reused is kept until that pid ends: the safe side). One whose writer cannot be checked
    (another host sharing the folder, or the pid-less names of older versions) is removed once it is older than
    :data:`UNCHECKABLE_MAX_AGE_S`; a live writer keeps touching its file. Files not named like a temporary of
    :func:`atomic_write_bytes`/:func:`atomic_torch_save` are never removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    now = time.time()
    removed: list[Path] = []
    for path in sorted(root.rglob(".*.tmp")):
        if path.is_file() and not path.is_symlink() and _is_orphan(path, now):
            try:
                path.unlink()
            except FileNotFoundError:  # its writer renamed it or another run removed it meanwhile
                continue
            removed.append(path)
    return removed


def load_failure_reason(exc: BaseException) -> str:
    """A one-line account of why ``torch.load(weights_only=True)`` refused a file (torch's messages run to a page and
    suggest ``weights_only=False``, which is exactly what must not be done with a file of unknown origin)."""
    text = str(exc)
    if isinstance(exc, EOFError) or "central directory" in text or "unexpected EOF" in text:
        return f"the file is empty, truncated or not a torch file ({type(exc).__name__})"
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = " ".join(text.split(marker, 1)[1].split())
        detail = detail.split(". Please use", 1)[0].split(" Check the documentation", 1)[0].rstrip(".")
        return f"it pickles something other than tensors and plain containers ({detail[:200]})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def load_cache_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` of a cache entry restricted to tensors and plain containers (``weights_only=True``).

    Raises :class:`~sslbench.errors.CacheError` naming ``path`` for a file that is missing, truncated, corrupt or that
    pickles any other object; nothing in such a file is executed.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # A planted or garbage file makes torch warn about its pickle protocol before refusing it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise CacheError(path, "the file does not exist") from exc
    except Exception as exc:  # torch raises many types for a bad file; every one means the same to the user
        raise CacheError(path, load_failure_reason(exc)) from exc


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
        """The saved state (tensors and plain containers only); :class:`~sslbench.errors.CacheError` for a file
        that cannot be loaded safely, or that holds no state dict."""
        path = self.final if final else self.partial
        state = load_cache_file(path, map_location=map_location)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise CacheError(path, "it holds no pretext checkpoint (no 'state_dict' entry)")
        return state

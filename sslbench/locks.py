"""One process per checkpoint: an exclusive lock file beside the checkpoint while it trains.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on NFS v3+, unlike ``flock``,
which is advisory or missing on many cluster file systems). It holds the owner's host, pid and start time, and a
background thread refreshes its modification time every ``heartbeat_s`` seconds. Another process that finds it waits
until it disappears; a lock is stale, and taken over, when its owner's pid is dead on this host or when its heartbeat
is older than ``stale_s`` (an owner on another host that died without cleaning up).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

__all__ = ["CheckpointLock", "LockInfo"]

LockInfo = dict


class CheckpointLock:
    """An exclusive, heart-beaten lock file at ``path``."""

    def __init__(self, path: Path, *, heartbeat_s: float = 30.0, stale_s: float = 600.0) -> None:
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner(self) -> LockInfo | None:
        """Who holds the lock (host, pid, started), or None when nobody does or the file is unreadable."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        info = self.owner()
        if info and info.get("host") == socket.gethostname():
            try:
                os.kill(int(info["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError, KeyError):
                pass
            else:
                return False
        return age > self.stale_s

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}, handle)
        return True

    def acquire(self, *, wait: bool = True, poll_s: float = 1.0,
                on_wait: Callable[[LockInfo | None], None] | None = None) -> bool:
        """Take the lock. With ``wait``, block until the owner releases it (or dies); without, return False at once
        when another live process holds it. ``on_wait`` is called once, with the owner, before waiting."""
        told = False
        while True:
            if self._try_create():
                self._start_heartbeat()
                return True
            if self._stale():
                self.path.unlink(missing_ok=True)
                continue
            if not wait:
                return False
            if not told and on_wait is not None:
                on_wait(self.owner())
                told = True
            time.sleep(poll_s)

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._thread = threading.Thread(target=beat, name=f"lock {self.path.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file (only if this process owns it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        info = self.owner()
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "CheckpointLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

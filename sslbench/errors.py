"""The harness's exceptions. The CLI maps :class:`UsageError` to exit code 2 and every other
:class:`SslbenchError` to exit code 1; both print their message without a traceback."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable


class SslbenchError(Exception):
    """Base of every error the harness reports to a user."""


class UsageError(SslbenchError):
    """The user asked for something that cannot be done as asked (bad option, unknown name, missing data)."""


class UnknownPluginError(UsageError, KeyError):
    """A plugin name that no registry knows; the message lists the valid names and the closest one."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        close = difflib.get_close_matches(name, self.valid, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(self.valid) or '(none)'}")

    def __str__(self) -> str:
        return str(self.args[0])


class PluginLoadError(SslbenchError):
    """A plugin was found but could not be imported or did not register itself."""

    def __init__(self, kind: str, name: str, module: str, origin: str, cause: BaseException) -> None:
        self.kind, self.name, self.module, self.origin = kind, name, module, origin
        super().__init__(
            f"{kind} {name!r} from {origin} failed to load (module {module}): {type(cause).__name__}: {cause}"
        )


class DataError(UsageError):
    """A dataset root is missing, malformed or holds an unreadable file."""


class NonFiniteLossError(SslbenchError):
    """A training loss became NaN or infinite; the last good checkpoint is kept."""


class IncompatibleError(UsageError):
    """A protocol needs something (labels, masks, a colorizer) that the dataset or pretext does not provide."""


class CacheError(SslbenchError):
    """A cached file (checkpoint, features, a trained judge) cannot be loaded safely: it is truncated, corrupt, or
    pickles something other than tensors and plain containers. Nothing from it was executed; the message names the
    file, and deleting it makes the next run recompute it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(
            f"cannot load {self.path}: {reason}. sslbench loads only tensors and plain containers and ran nothing "
            f"from it. Delete {self.path} (a cache entry) and rerun to recompute it"
        )


class DiskFullError(SslbenchError):
    """A folder the run writes to has no room left; the message names it and the free space."""


class AmbiguousPluginError(UsageError):
    """A bare plugin name that several third-party plugins (and no built-in) take; the message lists the qualified
    ``DIST:NAME`` of each, which resolve."""

    def __init__(self, kind: str, name: str, qualified: Iterable[str]) -> None:
        self.kind, self.name, self.qualified = kind, name, sorted(qualified)
        super().__init__(f"{kind} {name!r} is ambiguous: several plugins take that name; use one of "
                         f"{', '.join(self.qualified)}")

"""Plain-dataclass configuration, option parsing and the canonical content hash that names checkpoints.

A plugin declares its options as a dataclass ``Config`` nested in its class. :func:`resolve_options` builds it from
user strings or values, rejecting unknown keys; :func:`config_hash` is the SHA-256 of the canonical JSON of the
resolved config, defaults included, so the same config never trains twice and a changed one never reuses a stale
checkpoint.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sslbench.errors import UsageError

__all__ = [
    "EmptyConfig",
    "TrainBudget",
    "resolve_options",
    "parse_value",
    "canonical_json",
    "config_hash",
    "to_dict",
]

#: Bumped when a change to the harness makes old checkpoints incomparable.
HARNESS_SCHEMA = 2


@dataclass
class EmptyConfig:
    """Options of a plugin that has none."""


@dataclass
class TrainBudget:
    """How long a pretext trains: ``steps`` if set, else ``epochs`` over the training split."""

    epochs: float = 5.0
    steps: int | None = None
    batch_size: int = 64


def to_dict(obj: Any) -> Any:
    """Dataclasses (nested) to plain dicts; other values unchanged."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, tuples as lists."""
    return json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, length: int = 16) -> str:
    """SHA-256 of :func:`canonical_json`, truncated to ``length`` hex digits."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def parse_value(text: str, like: Any = None) -> Any:
    """Parse a command-line value, guided by the type of the default it replaces."""
    if not isinstance(text, str):
        # Values from an experiment file arrive typed: an integer for a float option is the same value, and must
        # hash like the float a command-line string gives.
        if isinstance(like, float) and isinstance(text, int) and not isinstance(text, bool):
            return float(text)
        if isinstance(like, tuple) and isinstance(text, list):
            return tuple(text)
        return text
    if isinstance(like, bool):
        low = text.lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    if isinstance(like, str):
        return text
    if isinstance(like, tuple):
        return tuple(parse_value(part, like[0] if like else None) for part in text.split(",") if part)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def resolve_options(config_cls: type, options: dict[str, Any], owner: str) -> Any:
    """Build ``config_cls`` from ``options`` (strings are parsed against the field defaults).

    Raises :class:`UsageError` naming ``owner`` and listing the valid options on an unknown key or a bad value.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    defaults = config_cls()
    values: dict[str, Any] = {}
    for key, raw in options.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "(none)"
            raise UsageError(f"{owner} has no option {key!r}; valid options: {valid}")
        try:
            values[key] = parse_value(raw, getattr(defaults, key))
        except ValueError as exc:
            raise UsageError(f"{owner} option {key}={raw!r}: {exc}") from exc
    return config_cls(**values)

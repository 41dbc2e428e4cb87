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
import re
from dataclasses import dataclass
from typing import Any

from sslbench.errors import UsageError

__all__ = [
    "EmptyConfig",
    "TrainBudget",
    "resolve_options",
    "parse_value",
    "parse_option",
    "unknown_option",
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
    """How long a pretext trains: ``steps`` if set, else ``epochs`` over the training split.

    A step is one optimiser step over ``accumulate`` batches of ``batch_size`` (gradient accumulation, to reach a
    paper's batch size on a small device): the effective batch is ``batch_size × accumulate`` images, with
    ``batch_size`` counted as the loader counts it (under ``torchrun``, over all processes)."""

    epochs: float = 5.0
    steps: int | None = None
    batch_size: int = 64
    accumulate: int = 1
    #: On-device random crop + flip of every training batch (:class:`sslbench.datasets.augment.DeviceAugment`).
    augment: bool = False


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


def _annotation_types(annotation: Any) -> tuple[type, ...] | None:
    """The types a simple annotation such as ``"int | None"`` or ``"tuple[int, ...]"`` admits; None for one this
    check does not understand (it then checks nothing). Plugins write annotations as strings
    (``from __future__ import annotations``); a real type is read by its name."""
    if isinstance(annotation, type):
        annotation = annotation.__name__
    if not isinstance(annotation, str) or not annotation.strip():
        return None
    names = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None), "Path": str,
             "tuple": tuple, "list": list, "dict": dict}
    optional = re.fullmatch(r"\s*(?:typing\.)?Optional\[(.*)\]\s*", annotation)
    if optional:
        annotation = f"{optional.group(1)} | None"
    types = []
    for part in annotation.split("|"):
        base = part.strip().split("[", 1)[0].rsplit(".", 1)[-1]
        if base not in names:
            return None
        types.append(names[base])
    return tuple(types)


def _type_name(types: tuple[type, ...]) -> str:
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "none",
             tuple: "a comma-separated list", list: "a list", dict: "a table"}
    return " or ".join(words[t] for t in types)


def parse_option(raw: Any, default: Any, annotation: Any = None) -> Any:
    """One option's value from a command-line string or an experiment file's value: parsed as the default's type
    (:func:`parse_value`), or, where the default is None (``int | None = None``) or unknown (``dataclasses.MISSING``),
    as the annotation says; then checked against the annotation. Raises ValueError saying what was expected.

    Only values of the wrong type are refused; a value of the right type parses as it always did, so hashes of
    existing configs stay the same."""
    types = _annotation_types(annotation)
    like = None if default is dataclasses.MISSING else default
    if like is None and types and isinstance(raw, str):
        given = [t for t in types if t is not type(None)]
        if type(None) in types and raw.strip().lower() in {"none", "null"}:
            return None
        if len(given) == 1 and given[0] in (bool, int, float, str):
            like = {bool: False, int: 0, str: ""}.get(given[0])
            if given[0] is float:
                value = parse_value(raw)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"expected {_type_name(types)}, got {raw!r}")
                return value
    try:
        value = parse_value(raw, like)
    except ValueError:
        if types:
            raise ValueError(f"expected {_type_name(types)}, got {raw!r}") from None
        raise
    if types and not _admits(types, value):
        raise ValueError(f"expected {_type_name(types)}, got {raw!r}")
    return value


def _admits(types: tuple[type, ...], value: Any) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def unknown_option(owner: str, key: str, valid: list[str] | tuple[str, ...], show: str | None = None) -> UsageError:
    """The error for an option ``owner`` does not have: the closest valid one, every valid one, and where to read
    what each means (``sslbench show NAME``)."""
    from sslbench.registry import closest

    near = closest(key, valid)
    hint = f" Did you mean {near!r}?" if near else ""
    where = f" Types, defaults and help: sslbench show {show}" if show else ""
    return UsageError(f"{owner} has no option {key!r}; valid options: {', '.join(sorted(valid)) or '(none)'}."
                      f"{hint}{where}")


def resolve_options(config_cls: type, options: dict[str, Any], owner: str, show: str | None = None) -> Any:
    """Build ``config_cls`` from ``options`` (strings are parsed against the field defaults and annotations).

    Raises :class:`UsageError` naming ``owner`` on an unknown key (with the closest valid one and the list), a value
    of the wrong type, or a value the config itself refuses: a ``ValueError``/``TypeError`` from its ``__post_init__``
    or its ``validate()`` method. ``show`` names the plugin for ``sslbench show`` in the message.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    defaults = config_cls()
    values: dict[str, Any] = {}
    for key, raw in options.items():
        if key not in fields:
            raise unknown_option(owner, key, list(fields), show)
        try:
            values[key] = parse_option(raw, getattr(defaults, key), fields[key].type)
        except ValueError as exc:
            raise UsageError(f"{owner} option {key}={raw!r}: {exc}") from exc
    try:
        config = config_cls(**values)
        validate = getattr(config, "validate", None)
        if callable(validate):
            validate()
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "its defaults"
        raise UsageError(f"{owner} with {given}: {exc}") from exc
    return config

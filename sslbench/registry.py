"""Typed plugin registries for pretexts, protocols, encoders and datasets, in the style of timm.

A plugin is one file with one decorated class or factory::

    @register_pretext("quantized")
    class QuantizedColorization(Pretext): ...

Built-in plugins live in the packages ``sslbench.pretexts``, ``sslbench.protocols``, ``sslbench.encoders`` and
``sslbench.datasets``; third parties publish entry points in the groups ``sslbench.pretexts``, ``sslbench.protocols``,
``sslbench.encoders`` and ``sslbench.datasets``.

Discovery never imports a plugin: built-ins are found by reading their source files for ``register_*`` decorators
(so ``sslbench list`` answers without importing torch), entry points by reading distribution metadata. A plugin's
module is imported the first time it is created. A plugin that fails to import raises :class:`PluginLoadError`
naming its module and origin; it never silently disappears.

A name ending in ``/*`` registers a *family*: ``create_encoder("timm/resnet18")`` calls the ``timm/*`` factory with
``variant="resnet18"``.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import importlib
import importlib.util
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, TypeVar

from sslbench.errors import PluginLoadError, UnknownPluginError

T = TypeVar("T")

__all__ = [
    "PluginEntry",
    "Registry",
    "PRETEXTS",
    "PROTOCOLS",
    "ENCODERS",
    "DATASETS",
    "REGISTRIES",
    "register_pretext",
    "register_protocol",
    "register_encoder",
    "register_dataset",
    "get_pretext_class",
    "get_protocol_class",
    "get_dataset_class",
    "list_pretexts",
    "list_protocols",
    "list_encoders",
    "list_datasets",
    "natural_key",
]


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``resnet2`` before ``resnet10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


@dataclass
class PluginEntry:
    """What the registry knows of one plugin, before or after it is imported."""

    name: str
    kind: str
    module: str
    origin: str
    summary: str = ""
    obj: Any = None
    entry_point: Any = field(default=None, repr=False)

    @property
    def is_family(self) -> bool:
        return self.name.endswith("/*")


class Registry(Generic[T]):
    """One registry per plugin kind.

    Args:
        kind: singular noun used in messages ("pretext").
        package: the package whose modules hold the built-in plugins.
        group: the entry-point group for third-party plugins.
        decorator: the decorator's name, looked for in built-in source files.
        base: ``"module:Class"`` that registered classes must subclass (resolved lazily, so this module never
            imports torch); factories (functions) are not checked.
    """

    def __init__(self, kind: str, package: str, group: str, decorator: str, base: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.group = group
        self.decorator = decorator
        self.base = base
        self._entries: dict[str, PluginEntry] = {}
        self._discovered = False
        #: Built-in files that could not be read (e.g. a syntax error): reported, never fatal to the others.
        self.unreadable: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator that registers a class or factory under ``name`` (default: its ``__name__``)."""

        def decorator(obj: T) -> T:
            self.add(name or getattr(obj, "__name__"), obj)
            return obj

        return decorator

    def add(self, name: str, obj: Any, origin: str | None = None) -> None:
        """Register ``obj`` under ``name``; an error if another object already holds the name."""
        self._check_base(name, obj)
        module = getattr(obj, "__module__", "?")
        existing = self._entries.get(name)
        if existing is not None and existing.obj is not None and existing.obj is not obj:
            raise ValueError(
                f"duplicate {self.kind} name {name!r}: already registered by {existing.module} ({existing.origin}), "
                f"registered again by {module}"
            )
        if existing is not None:
            existing.obj = obj
            return
        self._entries[name] = PluginEntry(
            name=name, kind=self.kind, module=module, origin=origin or f"module {module}", summary=_summary(obj), obj=obj
        )

    def _check_base(self, name: str, obj: Any) -> None:
        if self.base is None or not isinstance(obj, type):
            return
        module_name, _, class_name = self.base.partition(":")
        base = getattr(importlib.import_module(module_name), class_name)
        if not issubclass(obj, base):
            raise TypeError(f"{self.kind} {name!r} ({obj.__module__}.{obj.__qualname__}) must subclass {self.base}")

    # -- discovery ----------------------------------------------------------------------------------------------
    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        found, self.unreadable = _scan_builtin_package(self.package, self.decorator)
        for name, module, summary in found:
            self._entries.setdefault(
                name, PluginEntry(name=name, kind=self.kind, module=module, origin="built-in", summary=summary)
            )
        for ep in _entry_points(self.group):
            if ep.name in self._entries:
                continue
            dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
            self._entries[ep.name] = PluginEntry(
                name=ep.name,
                kind=self.kind,
                module=ep.value.partition(":")[0],
                origin=f"entry point ({dist})",
                entry_point=ep,
            )

    def entries(self, pattern: str | Iterable[str] = "*") -> list[PluginEntry]:
        """Known plugins whose names match any of the wildcard ``pattern``\\ s, naturally sorted."""
        self._discover()
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        found = [e for e in self._entries.values() if any(fnmatch.fnmatchcase(e.name, p) for p in patterns)]
        return sorted(found, key=lambda e: natural_key(e.name))

    def names(self, pattern: str | Iterable[str] = "*") -> list[str]:
        return [e.name for e in self.entries(pattern)]

    # -- lookup -------------------------------------------------------------------------------------------------
    def resolve(self, name: str) -> tuple[PluginEntry, str | None]:
        """The entry for ``name`` and, for a family member such as ``timm/resnet18``, its variant."""
        self._discover()
        entry = self._entries.get(name)
        variant = None
        if entry is None and "/" in name:
            prefix, _, variant = name.partition("/")
            entry = self._entries.get(f"{prefix}/*")
        if entry is None:
            error = UnknownPluginError(self.kind, name, self.names())
            if self.unreadable:
                broken = "; ".join(f"{module}: {why}" for module, why in self.unreadable.items())
                error.args = (f"{error.args[0]}. Note: some {self.kind} files could not be read ({broken})",)
            raise error
        return entry, variant

    def get(self, name: str) -> Any:
        """The registered class or factory, importing its module on first use."""
        entry, _ = self.resolve(name)
        return self._load(entry)

    def _load(self, entry: PluginEntry) -> Any:
        if entry.obj is not None:
            return entry.obj
        try:
            if entry.entry_point is not None:
                loaded = entry.entry_point.load()
                if entry.obj is None:
                    self.add(entry.name, loaded, origin=entry.origin)
                    entry = self._entries[entry.name]
            else:
                importlib.import_module(entry.module)
        except Exception as exc:  # a broken plugin must fail loudly with its origin
            raise PluginLoadError(self.kind, entry.name, entry.module, entry.origin, exc) from exc
        if entry.obj is None:
            raise PluginLoadError(
                self.kind,
                entry.name,
                entry.module,
                entry.origin,
                RuntimeError(f"importing {entry.module} did not register {self.kind} {entry.name!r}"),
            )
        return entry.obj

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the plugin: call its class or factory with ``kwargs`` (plus ``variant`` for a family member)."""
        entry, variant = self.resolve(name)
        obj = self._load(entry)
        if variant is not None:
            kwargs["variant"] = variant
        return obj(**kwargs)

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except UnknownPluginError:
            return False
        return True


def _summary(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _entry_points(group: str) -> list[Any]:
    return list(entry_points(group=group))


def _package_dirs(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _scan_builtin_package(package: str, decorator: str) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """``(name, module, summary)`` for every ``@decorator(...)`` in the package's modules, without importing them,
    and the modules that could not be parsed (with why), so one broken file does not hide the others."""
    found: list[tuple[str, str, str]] = []
    unreadable: dict[str, str] = {}
    for directory in _package_dirs(package):
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            module = f"{package}.{path.stem}"
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            except (SyntaxError, UnicodeDecodeError, OSError) as exc:
                unreadable[module] = f"{type(exc).__name__}: {exc}"
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    continue
                for deco in node.decorator_list:
                    name = _registered_name(deco, decorator, node.name)
                    if name is not None:
                        doc = ast.get_docstring(node) or ""
                        found.append((name, module, doc.strip().splitlines()[0] if doc.strip() else ""))
    return found, unreadable


def _registered_name(deco: ast.expr, decorator: str, default: str) -> str | None:
    target = deco.func if isinstance(deco, ast.Call) else deco
    ident = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    if ident != decorator:
        return None
    if isinstance(deco, ast.Call):
        for arg in deco.args[:1]:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                return arg.value
        for kw in deco.keywords:
            if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                return str(kw.value.value)
    return default


PRETEXTS: Registry[Any] = Registry("pretext", "sslbench.pretexts", "sslbench.pretexts", "register_pretext",
                                   base="sslbench.pretext:Pretext")
PROTOCOLS: Registry[Any] = Registry("protocol", "sslbench.protocols", "sslbench.protocols", "register_protocol",
                                    base="sslbench.protocol:Protocol")
ENCODERS: Registry[Any] = Registry("encoder", "sslbench.encoders", "sslbench.encoders", "register_encoder")
DATASETS: Registry[Any] = Registry("dataset", "sslbench.datasets", "sslbench.datasets", "register_dataset",
                                   base="sslbench.datasets.base:ImageDataset")
REGISTRIES: dict[str, Registry[Any]] = {
    "pretexts": PRETEXTS,
    "protocols": PROTOCOLS,
    "encoders": ENCODERS,
    "datasets": DATASETS,
}


def register_pretext(name: str | None = None) -> Callable[[T], T]:
    """Register a :class:`sslbench.pretext.Pretext` subclass."""
    return PRETEXTS.register(name)


def register_protocol(name: str | None = None) -> Callable[[T], T]:
    """Register a :class:`sslbench.protocol.Protocol` subclass."""
    return PROTOCOLS.register(name)


def register_encoder(name: str | None = None) -> Callable[[T], T]:
    """Register an encoder factory ``(*, in_chans, image_size, **options) -> Encoder``."""
    return ENCODERS.register(name)


def register_dataset(name: str | None = None) -> Callable[[T], T]:
    """Register an :class:`sslbench.datasets.base.ImageDataset` subclass."""
    return DATASETS.register(name)


def get_pretext_class(name: str) -> Any:
    return PRETEXTS.get(name)


def get_protocol_class(name: str) -> Any:
    return PROTOCOLS.get(name)


def get_dataset_class(name: str) -> Any:
    return DATASETS.get(name)


def list_pretexts(pattern: str | Iterable[str] = "*") -> list[str]:
    return PRETEXTS.names(pattern)


def list_protocols(pattern: str | Iterable[str] = "*") -> list[str]:
    return PROTOCOLS.names(pattern)


def list_encoders(pattern: str | Iterable[str] = "*") -> list[str]:
    return ENCODERS.names(pattern)


def list_datasets(pattern: str | Iterable[str] = "*") -> list[str]:
    return DATASETS.names(pattern)


def closest(name: str, valid: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return matches[0] if matches else None

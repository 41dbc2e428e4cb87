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

Every plugin is also reachable by its qualified name ``DIST:NAME``, the distribution that provides it and its name:
``sslbench:quantized`` for the built-in, ``my-dist:quantized`` for an entry point of distribution ``my-dist`` (the
distribution part is compared in its normalised form, so ``My_Dist:quantized`` works too). A bare name means the
built-in of that name, or else the one entry point that has it; a third-party plugin that takes a built-in's name (or
two that take the same name) is a *clash*, reported by :meth:`Registry.clashes` and by ``sslbench list``, and is
reached by its qualified name. :meth:`Registry.provenance` says where a plugin comes from and in which versions, for
records and checkpoint hashes.

A plugin may also live in a plain file, loaded with ``--plugin FILE`` or ``SSLBENCH_PLUGINS`` (see
:mod:`sslbench.plugin_files`): its registrations are marked with the file's path and SHA-256 (origin ``file PATH``),
and both enter its provenance, so editing the file gives new checkpoint and record hashes.
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

from sslbench.errors import AmbiguousPluginError, PluginLoadError, UnknownPluginError

T = TypeVar("T")

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "PLUGIN_FILE_MODULES",
    "PluginClash",
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


#: The distribution of the built-in plugins: ``sslbench:NAME`` is the qualified name of built-in ``NAME``.
BUILTIN_DISTRIBUTION = "sslbench"


#: Modules imported from plugin files by :mod:`sslbench.plugin_files`: module name -> (absolute path, SHA-256 of the
#: file). A plugin registered from one of them is marked with its file, for ``sslbench list``, records and hashes.
PLUGIN_FILE_MODULES: dict[str, tuple[str, str]] = {}


def canonical_distribution(name: str) -> str:
    """A distribution name in its normalised form (PEP 503): ``My_Dist`` -> ``my-dist``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split_qualified(name: str) -> tuple[str | None, str]:
    """``("my-dist", "quantized")`` for ``my-dist:quantized``; ``(None, name)`` for a bare name. A colon after a
    ``/`` belongs to a family member (``timm/hf-hub:org/model``), not to a distribution."""
    prefix, colon, rest = name.partition(":")
    if colon and prefix and rest and "/" not in prefix:
        return canonical_distribution(prefix), rest
    return None, name


@dataclass
class PluginEntry:
    """What the registry knows of one plugin, before or after it is imported."""

    name: str
    kind: str
    module: str
    origin: str
    doc: str | None = None
    obj: Any = None
    entry_point: Any = field(default=None, repr=False)
    #: The distribution that provides the plugin (``sslbench`` for built-ins); None for one registered at run time
    #: by a module that neither discovery path knows (a script, a test).
    distribution: str | None = None
    #: That distribution's version.
    version: str | None = None
    #: For a plugin loaded from a plain file (``--plugin FILE``): the file's absolute path and its SHA-256.
    file: str | None = None
    sha256: str | None = None

    @property
    def is_family(self) -> bool:
        return self.name.endswith("/*")

    @property
    def qualified_name(self) -> str:
        """``DIST:NAME``; the bare name for a plugin registered at run time (it has no distribution)."""
        if self.distribution is None:
            return self.name
        return f"{canonical_distribution(self.distribution)}:{self.name}"

    @property
    def summary(self) -> str:
        """The first line of the plugin's docstring, read from its source without importing it where possible."""
        if self.doc is None:
            if self.obj is not None:
                self.doc = _summary(self.obj)
            elif self.entry_point is not None:
                self.doc = _entry_point_summary(self.entry_point)
            else:
                self.doc = ""
        return self.doc

    def describe(self) -> str:
        """``my-dist 1.2 (entry point my_mod:Cls)``: where the plugin comes from, for messages."""
        if self.entry_point is not None:
            where = f"entry point {self.entry_point.value}"
        elif self.origin == "built-in":
            where = f"built-in, {self.module}"
        else:
            where = self.origin
        dist = " ".join(part for part in (self.distribution, self.version) if part)
        return f"{dist} ({where})" if dist else where


@dataclass(frozen=True)
class PluginClash:
    """Several plugins of one kind that take the same bare name.

    ``holder`` is the one the bare name means (the built-in), or None when the name is ambiguous (several entry
    points and no built-in); every other one is reached by its qualified name only. Two plugins of one distribution
    with the same name (a duplicated entry point or decorator) share their qualified name too: the first one wins.
    """

    kind: str
    name: str
    holder: PluginEntry | None
    others: tuple[PluginEntry, ...]

    @property
    def message(self) -> str:
        defined = "; ".join(e.describe() for e in ((self.holder,) if self.holder else ()) + self.others)
        if self.holder is None:
            use = ", ".join(repr(e.qualified_name) for e in self.others)
            return f"{self.kind} {self.name!r} is defined by several plugins ({defined}): the bare name is " \
                   f"ambiguous, use {use}"
        reachable = [e for e in self.others if e.qualified_name != self.holder.qualified_name]
        hidden = [e for e in self.others if e.qualified_name == self.holder.qualified_name]
        parts = [f"{self.kind} {self.name!r} is defined by several plugins ({defined}): {self.name!r} means "
                 f"{self.holder.qualified_name}"]
        if reachable:
            parts.append(f"use {', '.join(repr(e.qualified_name) for e in reachable)} for the other"
                         f"{'s' if len(reachable) > 1 else ''}")
        if hidden:
            parts.append(f"the second definition in {', '.join(e.module for e in hidden)} is unreachable")
        return "; ".join(parts)


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
        #: What each bare name means: the built-in, or else the only entry point with that name.
        self._entries: dict[str, PluginEntry] = {}
        #: Every reachable plugin by qualified name (plugins registered at run time have none).
        self._qualified: dict[str, PluginEntry] = {}
        #: Every plugin in discovery order, duplicates included.
        self._all: list[PluginEntry] = []
        #: Bare names that several entry points and no built-in take.
        self._ambiguous: dict[str, list[PluginEntry]] = {}
        self._clashes: list[PluginClash] = []
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
        """Bind ``obj`` to the discovered plugin ``name`` of its module, or register it anew; an error if another
        object already holds the name.

        A module that registers a name binds the discovered plugin of that name *from that module* (a built-in file,
        or an entry point's package), so a third-party module registering a built-in's name never takes the
        built-in's place.
        """
        self._check_base(name, obj)
        self._discover()
        module = getattr(obj, "__module__", "?")
        owner = _owner(name, module, self._all)
        if owner is not None:
            if owner.obj is not None and owner.obj is not obj:
                raise ValueError(f"duplicate {self.kind} name {name!r}: {owner.module} registers it twice")
            owner.obj = obj
            return
        existing = self._entries.get(name) or next(iter(self._ambiguous.get(name, [])), None)
        if existing is not None and existing.obj is not obj:
            raise ValueError(
                f"duplicate {self.kind} name {name!r}: already registered by {existing.module} ({existing.origin}), "
                f"registered again by {module}"
            )
        if existing is not None:
            return
        path, sha256 = PLUGIN_FILE_MODULES.get(module, (None, None))
        default_origin = f"file {path}" if path is not None else f"module {module}"
        entry = PluginEntry(name=name, kind=self.kind, module=module, origin=origin or default_origin, obj=obj,
                            file=path, sha256=sha256)
        self._all.append(entry)
        self._entries[name] = entry

    def forget_module(self, module: str) -> list[str]:
        """Drop the plugins registered at run time by ``module`` (a plugin file whose import failed half-way), so a
        fixed file can be loaded again; returns their names. Discovered plugins are never dropped."""
        gone = [e for e in self._all if e.module == module and e.entry_point is None and e.origin != "built-in"]
        self._all = [e for e in self._all if e not in gone]
        for entry in gone:
            if self._entries.get(entry.name) is entry:
                del self._entries[entry.name]
        return [e.name for e in gone]

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
        from sslbench import __version__

        found, self.unreadable = _scan_builtin_package(self.package, self.decorator)
        discovered = [
            PluginEntry(name=name, kind=self.kind, module=module, origin="built-in", doc=summary,
                        distribution=BUILTIN_DISTRIBUTION, version=__version__)
            for name, module, summary in found
        ]
        for ep in _entry_points(self.group):
            dist = getattr(ep, "dist", None)
            dist_name = getattr(dist, "name", None) or "unknown-distribution"
            discovered.append(PluginEntry(
                name=ep.name, kind=self.kind, module=ep.value.partition(":")[0].strip(),
                origin=f"entry point ({dist_name})", entry_point=ep, distribution=dist_name,
                version=getattr(dist, "version", None),
            ))
        self._all = discovered  # add() discovers before it registers, so nothing precedes this
        by_name: dict[str, list[PluginEntry]] = {}
        for entry in discovered:
            self._qualified.setdefault(entry.qualified_name, entry)
            by_name.setdefault(entry.name, []).append(entry)
        for name, group in by_name.items():
            builtins = [e for e in group if e.origin == "built-in"]
            if builtins or len(group) == 1:
                self._entries[name] = builtins[0] if builtins else group[0]
            else:
                self._ambiguous[name] = group
            if len(group) > 1:
                holder = self._entries.get(name)
                self._clashes.append(PluginClash(self.kind, name, holder, tuple(e for e in group if e is not holder)))

    def clashes(self) -> list[PluginClash]:
        """Every name that several plugins take, with what the bare name means and how to reach the others."""
        self._discover()
        return list(self._clashes)

    def _reachable(self) -> list[PluginEntry]:
        self._discover()
        seen: set[int] = set()
        out = []
        for entry in [*self._qualified.values(), *self._entries.values()]:
            if id(entry) not in seen:
                seen.add(id(entry))
                out.append(entry)
        return out

    def reference(self, entry: PluginEntry) -> str:
        """The shortest name that resolves to ``entry``: its bare name if that means it, else its qualified name."""
        self._discover()
        return entry.name if self._entries.get(entry.name) is entry else entry.qualified_name

    def entries(self, pattern: str | Iterable[str] = "*") -> list[PluginEntry]:
        """Every reachable plugin whose bare or qualified name matches any of the ``pattern``\\ s, naturally sorted
        (built-ins first among plugins of one name). A pattern with a wildcard (``*``, ``?``, ``[``) is matched as a
        glob (``timm*``), any other as a substring (``rot`` finds ``rotation``)."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        found = [e for e in self._reachable()
                 if any(_matches(n, p) for p in patterns for n in (e.name, e.qualified_name))]
        return sorted(found, key=lambda e: (natural_key(e.name), e.origin != "built-in", e.qualified_name))

    def names(self, pattern: str | Iterable[str] = "*") -> list[str]:
        """The names that resolve to each matching plugin (see :meth:`reference`)."""
        return [self.reference(e) for e in self.entries(pattern)]

    # -- lookup -------------------------------------------------------------------------------------------------
    def resolve(self, name: str) -> tuple[PluginEntry, str | None]:
        """The entry for ``name`` (bare or ``DIST:NAME``) and, for a family member such as ``timm/resnet18``, its
        variant."""
        self._discover()
        dist, bare = split_qualified(name)
        table = self._entries if dist is None else self._qualified
        key = bare if dist is None else f"{dist}:{bare}"
        entry = table.get(key)
        variant = None
        if entry is None and "/" in bare:
            prefix, _, variant = bare.partition("/")
            entry = table.get(f"{prefix}/*" if dist is None else f"{dist}:{prefix}/*")
        if entry is None and dist is None and bare in self._ambiguous:
            raise AmbiguousPluginError(self.kind, bare, [e.qualified_name for e in self._ambiguous[bare]])
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
                self._check_base(entry.name, loaded)
                entry.obj = loaded
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

    def provenance(self, name: str) -> dict[str, Any]:
        """Where plugin ``name`` comes from, for records and checkpoint hashes (imports it, to read its version).

        ``name`` and ``qualified_name`` (``DIST:NAME``; a family member keeps its variant, ``sslbench:timm/resnet18``),
        ``origin`` (``built-in``, ``entry point (DIST)`` or ``module M``), ``distribution`` and ``version`` (the
        distribution's), ``plugin_version`` (the plugin's own ``version`` attribute as a string, None without one) and
        ``module``. A third-party plugin's records and checkpoints thus change when its distribution's version does.
        A plugin loaded from a file adds ``file`` (its absolute path) and ``sha256`` (of its content), so they change
        when the file does; other plugins have neither key, which keeps their hashes as they were.
        """
        entry, variant = self.resolve(name)
        obj = self._load(entry)
        bare = entry.name if variant is None else f"{entry.name[:-2]}/{variant}"
        qualified = bare if entry.distribution is None else f"{canonical_distribution(entry.distribution)}:{bare}"
        own = getattr(obj, "version", None)
        provenance = {
            "name": bare,
            "qualified_name": qualified,
            "origin": entry.origin,
            "distribution": entry.distribution,
            "version": entry.version,
            "plugin_version": str(own) if isinstance(own, (str, int, float)) else None,
            "module": getattr(obj, "__module__", None) or entry.module,
        }
        if entry.file is not None:
            provenance.update(file=entry.file, sha256=entry.sha256)
        return provenance

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except UnknownPluginError:
            return False
        except AmbiguousPluginError:
            return True
        return True


def _matches(name: str, pattern: str) -> bool:
    if any(char in pattern for char in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def _owner(name: str, module: str, entries: list[PluginEntry]) -> PluginEntry | None:
    """The discovered plugin ``name`` that a registration from ``module`` belongs to: the one declared in that
    module, else an entry point whose module is in the same top-level package."""
    candidates = [e for e in entries if e.name == name]
    exact = next((e for e in candidates if e.module == module), None)
    if exact is not None:
        return exact
    top = module.partition(".")[0]
    return next((e for e in candidates if e.entry_point is not None and e.module.partition(".")[0] == top), None)


def _summary(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _entry_point_summary(ep: Any) -> str:
    """First docstring line of an entry point's target, read from its module's source: ``find_spec`` locates the file
    (importing the parent packages only, never the module itself) and ``ast`` finds the class or function."""
    module, _, attr = ep.value.partition(":")
    attr = attr.split("[", 1)[0].strip()
    try:
        spec = importlib.util.find_spec(module.strip())
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        if origin is None or origin.suffix != ".py":
            return ""
        node: ast.AST = ast.parse(origin.read_text(encoding="utf-8"), filename=str(origin))
    except Exception:  # a summary is a courtesy: a plugin whose source cannot be read still lists
        return ""
    for part in attr.split(".") if attr else []:
        body = getattr(node, "body", [])
        node = next((n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name == part), None)
        if node is None:
            return ""
    doc = ast.get_docstring(node) or ""  # type: ignore[arg-type]
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

"""What each plugin's options are, and checking a run's options against them before any work starts.

A plugin's options are the fields of its ``Config`` dataclass (pretexts, protocols) or its keyword arguments
(dataset adapters, encoder factories). :func:`describe` gives each option's name, type, default and help:

- the help of a ``Config`` field is its Sphinx ``#:`` comment (the lines right above the field, or on its line), else
  a string right below it, else ``field(metadata={"help": ...})``;
- the help of a keyword argument is its entry in the ``Args:`` section of the docstring.

Built-in and entry-point plugins are read from their source with ``ast``, never imported, so ``sslbench list
--options``, ``sslbench show`` and :func:`check_experiment` answer without importing torch. A plugin whose source
cannot be followed (a ``Config`` built at run time, a base class from another library) is imported and read with
``dataclasses``/``inspect`` instead; one registered at run time is read that way directly.

:func:`check_experiment` is what ``sslbench run`` does right after parsing: every plugin name, option key (with the
closest valid key), option value and type, the dataset splits asked for and what each protocol and pretext needs from
the dataset. It checks what the source says and leaves the rest (a ``Config.__post_init__``, a data root) to
:func:`sslbench.plan.resolve_plan`, which checks them with the plugins imported and before any dataset is opened.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import re
import textwrap
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from sslbench.config import parse_option, unknown_option
from sslbench.errors import IncompatibleError, UsageError
from sslbench.registry import REGISTRIES, PluginEntry

__all__ = ["OptionInfo", "PluginOptions", "describe", "describe_object", "check_options", "check_experiment",
           "check_requirements", "check_split", "format_options", "DATASET_COMMON", "ENCODER_COMMON", "KIND_OF"]

#: Keyword arguments every dataset adapter takes that are not options: the plan sets them.
DATASET_COMMON = ("root", "split", "image_size", "subset")
#: Keyword arguments every encoder factory takes that are not options.
ENCODER_COMMON = ("in_chans", "image_size", "variant")
#: Registry key of each singular kind, as messages and records name them.
KIND_OF = {"pretext": "pretexts", "protocol": "protocols", "encoder": "encoders", "dataset": "datasets"}
#: A default that is not a literal in the source (``float(AB_SCALE)``): shown as its source text, checked by type.
MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class OptionInfo:
    """One option: ``type`` is the annotation as written (``"int | None"``; empty when there is none), ``default``
    the default value (:data:`MISSING` when the source does not give it as a literal, then ``default_text`` has the
    expression)."""

    name: str
    type: str
    default: Any
    help: str = ""
    default_text: str = ""

    def shown_default(self) -> str:
        return self.default_text if self.default is MISSING else repr(self.default)


@dataclass
class PluginOptions:
    """A plugin's options; ``extra``: it also takes keyword arguments beyond these (``**kwargs``), passed on
    unchecked (``timm/*`` passes them to timm)."""

    kind: str
    name: str
    options: list[OptionInfo]
    extra: bool = False
    summary: str = ""
    origin: str = ""
    #: Class attributes read with the options: ``requires`` (pretexts, protocols), ``provides``, ``splits``,
    #: ``eval_split``... (datasets); absent where the source does not say.
    attributes: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> OptionInfo | None:
        return next((o for o in self.options if o.name == name), None)


class _Unreadable(Exception):
    """The source does not say (a dynamic ``Config``, a base class out of reach): read the imported plugin."""


#: The plugin contracts: reading a class's attributes stops at them (their own bases, ``torch.nn.Module`` and
#: ``torch.utils.data.Dataset``, define no options).
_CONTRACTS = {("sslbench.pretext", "Pretext"), ("sslbench.protocol", "Protocol"),
              ("sslbench.datasets.base", "ImageDataset")}
#: Top-level packages whose source is read: sslbench and the packages of entry-point plugins. Finding a module's
#: file imports its parent packages, so imports into other libraries (torch) are never followed.
_READABLE = {"sslbench"}


# -- reading source -----------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _module_source(module: str) -> tuple[ast.Module, tuple[str, ...]]:
    """The parsed source of ``module`` and its lines, found with ``find_spec`` (which imports the parent packages
    only, never the module)."""
    if module.partition(".")[0] not in _READABLE:
        raise _Unreadable(f"{module}: outside the plugins' packages")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise _Unreadable(f"{module}: {exc}") from exc
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    if origin is None or origin.suffix != ".py":
        raise _Unreadable(f"{module} has no Python source")
    text = origin.read_text(encoding="utf-8")
    return ast.parse(text, filename=str(origin)), tuple(text.splitlines())


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts[: len(parts) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _lookup(module: str, name: str, depth: int = 0) -> tuple[str, ast.AST]:
    """The top-level definition ``name`` means in ``module`` (a class, a function or an assigned value), following
    ``from X import name``."""
    if depth > 8:
        raise _Unreadable(f"{name}: imports too deep")
    tree, _ = _module_source(module)
    found: tuple[str, ast.AST] | None = None
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            found = (module, node)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            found = (module, node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name \
                and node.value is not None:
            found = (module, node.value)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    is_package = Path(_module_file(module)).name == "__init__.py"
                    found = _lookup(_absolute(module, node, is_package), alias.name, depth + 1)
    if found is None:
        raise _Unreadable(f"{module} defines no {name}")
    return found


def _module_file(module: str) -> str:
    spec = importlib.util.find_spec(module)
    return spec.origin if spec is not None and spec.origin else ""


def _class_attr(module: str, cls: ast.ClassDef, attr: str, depth: int = 0) -> tuple[str, ast.expr] | None:
    """The expression class ``cls`` (or the nearest base that sets it) assigns to ``attr``; None when neither it nor
    its bases set it. Raises :class:`_Unreadable` on a base it cannot follow."""
    if depth > 8:
        raise _Unreadable(f"{cls.name}: bases too deep")
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in node.targets):
            return module, node.value
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == attr \
                and node.value is not None:
            return module, node.value
    for base_module, base in _bases(module, cls):
        found = _class_attr(base_module, base, attr, depth + 1)
        if found is not None:
            return found
    return None


def _bases(module: str, cls: ast.ClassDef) -> list[tuple[str, ast.ClassDef]]:
    """The classes ``cls`` derives from, in order; ``Generic[...]``/``object`` are skipped. A base given as
    ``module.Name`` (``nn.Module``) cannot be followed: :class:`_Unreadable`."""
    if (module, cls.name) in _CONTRACTS:
        return []
    out = []
    for base in cls.bases:
        target = base.value if isinstance(base, ast.Subscript) else base
        if isinstance(target, ast.Name) and target.id in ("object", "Generic"):
            continue
        if not isinstance(target, ast.Name):
            raise _Unreadable(f"{cls.name}: base {ast.unparse(base)}")
        base_module, node = _lookup(module, target.id)
        if not isinstance(node, ast.ClassDef):
            raise _Unreadable(f"{cls.name}: base {target.id} is not a class in the source")
        out.append((base_module, node))
    return out


def _value(node: ast.expr) -> Any:
    """A literal, or ``frozenset({...})``/``set()``/``tuple(...)`` of one; :class:`_Unreadable` otherwise."""
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        pass
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("frozenset", "set",
                                                                                            "tuple", "list") \
            and not node.keywords and len(node.args) <= 1:
        kind = {"frozenset": frozenset, "set": set, "tuple": tuple, "list": list}[node.func.id]
        return kind(_value(node.args[0])) if node.args else kind()
    raise _Unreadable(ast.unparse(node))


def _comment_help(lines: tuple[str, ...], node: ast.AST) -> str:
    """The ``#:`` comment of the statement ``node``: on the lines right above it, or at the end of its line."""
    help_lines = []
    row = node.lineno - 2
    while row >= 0 and lines[row].strip().startswith("#:"):
        help_lines.insert(0, lines[row].strip()[2:].strip())
        row -= 1
    if not help_lines:
        _, hash_, after = lines[node.lineno - 1].partition("#:")
        if hash_:
            help_lines.append(after.strip())
    return " ".join(help_lines)


def _field_default(value: ast.expr | None) -> tuple[Any, str, str]:
    """``(default, its source text, help from metadata)`` of a dataclass field's right-hand side."""
    if value is None:
        return MISSING, "(required)", ""
    if isinstance(value, ast.Call) and isinstance(value.func, (ast.Name, ast.Attribute)) \
            and (value.func.id if isinstance(value.func, ast.Name) else value.func.attr) == "field":
        keywords = {k.arg: k.value for k in value.keywords}
        help_text = ""
        metadata = keywords.get("metadata")
        if metadata is not None:
            try:
                help_text = str(ast.literal_eval(metadata).get("help", ""))
            except (ValueError, SyntaxError, AttributeError):
                pass
        if "default" in keywords:
            default, text, _ = _field_default(keywords["default"])
            return default, text, help_text
        factory = keywords.get("default_factory")
        if isinstance(factory, ast.Name) and factory.id in ("list", "dict", "tuple", "set"):
            empty = {"list": [], "dict": {}, "tuple": (), "set": set()}[factory.id]
            return empty, repr(empty), help_text
        if isinstance(factory, ast.Lambda):
            try:
                default = ast.literal_eval(factory.body)
                return default, repr(default), help_text
            except (ValueError, SyntaxError):
                pass
        return MISSING, f"{ast.unparse(factory)}()" if factory is not None else "(required)", help_text
    try:
        default = ast.literal_eval(value)
        return default, repr(default), ""
    except (ValueError, SyntaxError, TypeError):
        return MISSING, ast.unparse(value), ""


def _dataclass_options(module: str, cls: ast.ClassDef, depth: int = 0) -> list[OptionInfo]:
    """The fields of dataclass ``cls`` from its source, its bases' first (as ``dataclasses.fields`` orders them)."""
    if depth > 8:
        raise _Unreadable(f"{cls.name}: bases too deep")
    if not any(ast.unparse(d.func if isinstance(d, ast.Call) else d).rsplit(".", 1)[-1] == "dataclass"
               for d in cls.decorator_list):
        raise _Unreadable(f"{cls.name} is not declared as a dataclass")
    options: dict[str, OptionInfo] = {}
    for base_module, base in _bases(module, cls):
        options.update({o.name: o for o in _dataclass_options(base_module, base, depth + 1)})
    _, lines = _module_source(module)
    body = cls.body
    for index, node in enumerate(body):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        annotation = ast.unparse(node.annotation)
        if annotation.startswith(("ClassVar", "typing.ClassVar", "InitVar")):
            continue
        default, text, help_text = _field_default(node.value)
        comment = _comment_help(lines, node)
        after = body[index + 1] if index + 1 < len(body) else None
        if not comment and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                and isinstance(after.value.value, str):
            comment = " ".join(after.value.value.split())
        options[node.target.id] = OptionInfo(node.target.id, annotation, default, comment or help_text, text)
    return list(options.values())


_ARG_LINE = re.compile(r"^(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def docstring_args(doc: str | None) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: argument name -> its text on one line."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, str] = {}
    inside, indent, current = False, None, None
    for line in lines:
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            inside, indent, current = True, None, None
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if width == 0:
            break
        if indent is None:
            indent = width
        match = _ARG_LINE.match(line.strip())
        if width == indent and match:
            current = match.group(1).lstrip("*")
            out[current] = match.group(2).strip()
        elif current is not None and width > indent:
            out[current] = f"{out[current]} {line.strip()}".strip()
    return out


def _signature_options(function: ast.FunctionDef, exclude: tuple[str, ...]) -> tuple[list[OptionInfo], bool]:
    """The keyword parameters with defaults of ``function`` (less ``exclude``, ``self``), and whether it takes
    ``**kwargs``."""
    args = function.args
    helps = docstring_args(ast.get_docstring(function))
    positional = args.posonlyargs + args.args
    pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    options = []
    for arg, default_node in pairs:
        if arg.arg in exclude or arg.arg == "self":
            continue
        default, text, _ = _field_default(default_node)
        annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
        options.append(OptionInfo(arg.arg, annotation, default, helps.get(arg.arg, ""), text))
    return options, args.kwarg is not None


def _target(entry: PluginEntry, decorator: str) -> tuple[str, ast.ClassDef | ast.FunctionDef]:
    """The registered class or factory of ``entry`` in its source."""
    if entry.entry_point is not None:
        module, _, attr = entry.entry_point.value.partition(":")
        attr = attr.split("[", 1)[0].strip()
        if not attr or "." in attr:
            raise _Unreadable(entry.entry_point.value)
        _READABLE.add(module.strip().partition(".")[0])
        found_module, node = _lookup(module.strip(), attr)
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            raise _Unreadable(entry.entry_point.value)
        return found_module, node
    if entry.origin != "built-in":
        raise _Unreadable(entry.origin)
    tree, _ = _module_source(entry.module)
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            for deco in node.decorator_list:
                call = deco if isinstance(deco, ast.Call) else None
                func = call.func if call else deco
                ident = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                named = call.args[0].value if call and call.args and isinstance(call.args[0], ast.Constant) \
                    else node.name
                if ident == decorator and named == entry.name:
                    return entry.module, node
    raise _Unreadable(f"{entry.module} registers no {entry.name}")


_ATTRIBUTES = {
    "pretext": ("requires",),
    "protocol": ("requires",),
    "dataset": ("provides", "splits", "eval_split", "pretext_split", "probe_split", "env_var"),
    "encoder": (),
}


def _describe_source(kind: str, entry: PluginEntry, decorator: str) -> PluginOptions:
    module, node = _target(entry, decorator)
    attributes: dict[str, Any] = {}
    extra = False
    if isinstance(node, ast.FunctionDef):
        options, extra = _signature_options(node, ENCODER_COMMON if kind == "encoder" else DATASET_COMMON)
    else:
        for attr in _ATTRIBUTES[kind]:
            try:
                found = _class_attr(module, node, attr)
                if found is not None:
                    attributes[attr] = _value(found[1])
            except _Unreadable:
                pass
        config = _class_attr(module, node, "Config")
        if config is not None and isinstance(config[1], ast.Name):
            config_module, config_node = _lookup(config[0], config[1].id)
            if not isinstance(config_node, ast.ClassDef):
                raise _Unreadable(f"{entry.name}: Config")
            options = _dataclass_options(config_module, config_node)
        elif config is not None:
            raise _Unreadable(f"{entry.name}: Config = {ast.unparse(config[1])}")
        elif kind == "dataset":
            init = _init_of(module, node)
            options, extra = _signature_options(init, DATASET_COMMON)
        else:
            raise _Unreadable(f"{entry.name}: no Config")
    return PluginOptions(kind, entry.name, options, extra, entry.summary, entry.describe(), attributes)


def _init_of(module: str, cls: ast.ClassDef, depth: int = 0) -> ast.FunctionDef:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return node
    bases = _bases(module, cls)
    if not bases or depth > 8:
        raise _Unreadable(f"{cls.name}: no __init__")
    return _init_of(bases[0][0], bases[0][1], depth + 1)


# -- reading an imported plugin -----------------------------------------------------------------------------------------
def _class_help(cls: type) -> dict[str, str]:
    """``#:`` help of every field of dataclass ``cls`` and its bases, from their source where it can be read."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source_lines, _ = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        lines = tuple(textwrap.dedent("".join(source_lines)).splitlines())
        tree = ast.parse("\n".join(lines))
        node = tree.body[0]
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                text = _comment_help(lines, stmt)
                if text:
                    helps[stmt.target.id] = text
    return helps


def _type_text(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if annotation is Any:
        return ""
    return getattr(annotation, "__name__", None) or str(annotation)


def describe_object(kind: str, name: str, obj: Any) -> PluginOptions:
    """The options of an imported plugin ``obj`` (a class with ``Config``, or a dataset class / encoder factory
    taking keyword options)."""
    config = getattr(obj, "Config", None)
    attributes = {attr: getattr(obj, attr) for attr in _ATTRIBUTES[kind] if hasattr(obj, attr)}
    doc = (getattr(obj, "__doc__", None) or "").strip()
    summary = doc.splitlines()[0] if doc else ""
    if isinstance(config, type) and dataclasses.is_dataclass(config):
        helps = _class_help(config)
        options = []
        for f in dataclasses.fields(config):
            metadata_help = str(f.metadata.get("help", "")) if f.metadata else ""
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                default = MISSING
            options.append(OptionInfo(f.name, _type_text(f.type), default, helps.get(f.name) or metadata_help,
                                      "(required)" if default is MISSING else repr(default)))
        return PluginOptions(kind, name, options, False, summary, "", attributes)
    function = obj.__init__ if isinstance(obj, type) else obj
    exclude = ENCODER_COMMON if kind == "encoder" else DATASET_COMMON
    helps = docstring_args(getattr(function, "__doc__", None))
    options, extra = [], False
    for param in inspect.signature(function).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = True
        if param.name in exclude or param.name == "self" or param.default is inspect.Parameter.empty:
            continue
        options.append(OptionInfo(param.name, _type_text(param.annotation) if param.annotation is not
                                  inspect.Parameter.empty else "", param.default, helps.get(param.name, ""),
                                  repr(param.default)))
    return PluginOptions(kind, name, options, extra, summary, "", attributes)


def describe(kind: str, name: str, load: bool = True) -> PluginOptions | None:
    """The options of plugin ``name`` of ``kind`` (``"pretext"``...), read from source without importing it where
    possible; otherwise imported (or None when ``load`` is false). Unknown names raise the registry's usage error."""
    registry = REGISTRIES[KIND_OF[kind]]
    entry, _ = registry.resolve(name)
    if entry.obj is None:
        try:
            return _describe_source(kind, entry, registry.decorator)
        except (_Unreadable, SyntaxError, OSError, UnicodeDecodeError):
            if not load:
                return None
    described = describe_object(kind, entry.name, registry.get(name))
    described.origin = entry.describe()
    described.summary = described.summary or entry.summary
    return described


# -- checking -----------------------------------------------------------------------------------------------------------
def check_options(plugin: PluginOptions, options: dict[str, Any], owner: str) -> None:
    """Every key of ``options`` is an option of ``plugin`` and every value has its type; raises :class:`UsageError`
    naming ``owner``, the closest valid key and the valid ones."""
    for key, raw in options.items():
        info = plugin.get(key)
        if info is None:
            if plugin.extra:
                continue
            raise unknown_option(owner, key, [o.name for o in plugin.options], plugin.name)
        try:
            parse_option(raw, info.default, info.type)
        except ValueError as exc:
            raise UsageError(f"{owner} option {key}={raw!r}: {exc}") from exc


def check_requirements(protocols: Iterable[tuple[str, Iterable[str]]],
                       pretexts: Iterable[tuple[str, str, Iterable[str]]],
                       dataset: str, provides: Iterable[str], abilities: Iterable[str]) -> None:
    """Each protocol's and pretext's needs (``requires``) against what ``dataset`` provides; ``abilities`` are the
    needs a pretext meets (``colorize``). Raises :class:`IncompatibleError` naming the first unmet one."""
    provided = set(provides)
    for name, requires in protocols:
        missing = set(requires) - set(abilities) - provided
        if missing:
            raise IncompatibleError(
                f"protocol {name!r} needs {', '.join(sorted(missing))}, which dataset {dataset!r} does not provide "
                f"(it provides: {', '.join(sorted(provided)) or 'images only'}); pick another dataset")
    for variant, pretext, requires in pretexts:
        missing = set(requires) - provided
        if missing:
            raise IncompatibleError(f"pretext {pretext!r} (variant {variant!r}) trains on "
                                    f"{', '.join(sorted(missing))}, which dataset {dataset!r} does not provide")


def check_split(dataset: str, split: str, splits: Iterable[str]) -> None:
    """``split`` (``"train"``, or parts joined with ``+``) names only splits of ``dataset`` (``splits``)."""
    splits = tuple(splits)
    parts = [part.strip() for part in split.split("+") if part.strip()]
    if not parts or any(part not in splits for part in parts):
        raise UsageError(f"dataset {dataset!r} has no split {split!r}; its splits are {', '.join(splits)} "
                         "(join several with '+', e.g. train+unlabeled)")


def _abilities() -> frozenset[str] | None:
    try:
        return frozenset(_value(_lookup("sslbench.protocol", "PRETEXT_ABILITIES")[1]))  # type: ignore[arg-type]
    except (_Unreadable, SyntaxError, OSError):
        return None


def check_experiment(exp: Any) -> None:
    """What can be checked of ``exp`` (an :class:`~sslbench.experiment.Experiment`) from the plugins' source, without
    importing them: names, option keys and values, dataset splits, protocol and pretext needs. Raises
    :class:`UsageError`; what the source does not say is left to the plan."""
    pretexts = []
    for spec in exp.variants:
        plugin = describe("pretext", spec.pretext, load=False)
        if plugin is not None:
            check_options(plugin, spec.options, f"pretext {spec.pretext!r} (variant {spec.name!r})")
        pretexts.append((spec, plugin))
    protocols = []
    for name, options in exp.protocols.items():
        plugin = describe("protocol", name, load=False)
        if plugin is not None:
            check_options(plugin, options, f"protocol {name!r}")
        protocols.append((name, plugin))
    for name, options in exp.encoders.items():
        plugin = describe("encoder", name, load=False)
        if plugin is not None:
            check_options(plugin, options, f"encoder {name!r}")
    abilities = _abilities()
    for spec in exp.datasets:
        plugin = describe("dataset", spec.name, load=False)
        if plugin is None:
            continue
        check_options(plugin, spec.options, f"dataset {spec.name!r}")
        splits = plugin.attributes.get("splits")
        if isinstance(splits, tuple):
            for split in (spec.pretext_split, spec.probe_split, spec.eval_split):
                if split is not None:
                    check_split(spec.name, split, splits)
        provides = plugin.attributes.get("provides")
        known = all(p is not None and "requires" in p.attributes for _, p in [*protocols, *pretexts])
        if abilities is None or provides is None or not known:
            continue
        check_requirements([(name, p.attributes["requires"]) for name, p in protocols],  # type: ignore[union-attr]
                           [(s.name, s.pretext, p.attributes["requires"]) for s, p in pretexts],  # type: ignore
                           spec.name, provides, abilities)


# -- showing ------------------------------------------------------------------------------------------------------------
def format_options(plugin: PluginOptions, indent: str = "    ") -> list[str]:
    """One line per option, ``name: type = default  help``, aligned; a note where more keywords pass through."""
    if not plugin.options:
        lines = [f"{indent}(no options)"]
    else:
        heads = [f"{o.name}: {o.type} = {o.shown_default()}" if o.type else f"{o.name} = {o.shown_default()}"
                 for o in plugin.options]
        width = min(max(len(h) for h in heads), 48)
        lines = [f"{indent}{head:<{width}}  {o.help}".rstrip() for head, o in zip(heads, plugin.options)]
    if plugin.extra:
        lines.append(f"{indent}(other keyword options are passed on unchecked)")
    return lines

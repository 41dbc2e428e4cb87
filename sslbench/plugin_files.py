"""Plugin files: try a plugin without packaging it, as lm-evaluation-harness's ``--include_path`` does.

``sslbench --plugin path/to/my_pretext.py`` (repeatable, on every command) and ``SSLBENCH_PLUGINS`` (files separated
by ``os.pathsep``) import each file under a module name of its own, so its ``@register_pretext`` / ``@register_protocol``
/ ``@register_encoder`` / ``@register_dataset`` decorators register as a built-in's would. The registry marks those
plugins with the file's absolute path and the SHA-256 of the bytes that were executed; both go into the plugin's
provenance (:meth:`sslbench.registry.Registry.provenance`), hence into every record and every checkpoint hash, so an
edited file trains a new checkpoint just as a new version of a distribution does.

Jobs that ``sslbench run`` re-launches (``--jobs``, submitit, torchrun) get every loaded file as ``--plugin
ABSOLUTE_PATH`` (:func:`sslbench.launch.job_argv`), so they load the same files wherever they start.

A file that is missing, is not Python, does not parse, raises on import or registers nothing is a usage error (exit
2) naming the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from sslbench.errors import UsageError
from sslbench.registry import PLUGIN_FILE_MODULES, REGISTRIES

__all__ = ["ENV_VAR", "PluginFile", "plugin_paths", "load_plugin_file", "load_plugins", "loaded_plugin_files",
           "unload_plugin_file"]

#: Environment variable naming plugin files to load, separated by ``os.pathsep``.
ENV_VAR = "SSLBENCH_PLUGINS"
#: Prefix of the module names plugin files are imported under (never a name a package could take by accident).
MODULE_PREFIX = "_sslbench_plugin_file_"


@dataclass(frozen=True)
class PluginFile:
    """A loaded plugin file: where it is, the SHA-256 of its content, its module and what it registered."""

    path: Path
    sha256: str
    module: str
    registered: tuple[str, ...]


#: Files loaded in this process, by resolved path: a file named twice (flag and environment) is imported once.
_LOADED: dict[Path, PluginFile] = {}


def plugin_paths(environ: Mapping[str, str] | None = None) -> list[str]:
    """The plugin files ``$SSLBENCH_PLUGINS`` names, in order (empty parts are ignored)."""
    env = os.environ if environ is None else environ
    return [part for part in env.get(ENV_VAR, "").split(os.pathsep) if part.strip()]


def _module_name(path: Path) -> str:
    """A stable module name for ``path``: the same in every process (jobs resolve the same plan), unique per path."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"{MODULE_PREFIX}{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"


def _where(exc: BaseException, path: Path) -> str:
    """`` (line N)``: the deepest line of ``path`` in ``exc``'s traceback, if any."""
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == str(path)]
    return f" (line {lines[-1]})" if lines else ""


def _registered_by(module: str) -> list[str]:
    return [f"{registry.kind} {entry.name!r}" for registry in REGISTRIES.values()
            for entry in registry.entries() if entry.module == module]


def load_plugin_file(path: str | os.PathLike[str], source: str = "--plugin") -> PluginFile:
    """Import the plugin file ``path`` so its decorators register; ``source`` names where it was given, for errors.

    The bytes that are hashed are the bytes that are executed. Loading a file again in the same process returns the
    first load (the code that runs is the code whose hash is recorded; :func:`unload_plugin_file` forgets it)."""
    resolved = Path(path).expanduser().resolve()
    if resolved in _LOADED:
        return _LOADED[resolved]
    where = f"plugin file {os.fspath(path)} ({source})"
    if not resolved.is_file():
        raise UsageError(f"{where}: no such file; give the path of a Python file that registers plugins")
    if resolved.suffix != ".py":
        raise UsageError(f"{where}: not a .py file; a plugin file is Python source that registers plugins")
    try:
        data = resolved.read_bytes()
    except OSError as exc:
        raise UsageError(f"{where}: cannot read it ({exc.strerror or exc})") from exc
    module = _module_name(resolved)
    sha256 = hashlib.sha256(data).hexdigest()
    spec = importlib.util.spec_from_file_location(module, resolved)
    if spec is None:
        raise UsageError(f"{where}: Python cannot import it as a module")
    namespace = importlib.util.module_from_spec(spec)
    PLUGIN_FILE_MODULES[module] = (str(resolved), sha256)
    # In sys.modules while it runs: dataclasses and pickling look classes up through their module.
    sys.modules[module] = namespace
    try:
        exec(compile(data, str(resolved), "exec"), namespace.__dict__)
    except BaseException as exc:
        _forget(module)
        if isinstance(exc, SyntaxError):
            raise UsageError(f"{where}: syntax error at line {exc.lineno}: {exc.msg}; fix the file") from exc
        if not isinstance(exc, Exception):
            raise
        raise UsageError(f"{where}: importing it raised {type(exc).__name__}{_where(exc, resolved)}: {exc}") from exc
    registered = _registered_by(module)
    if not registered:
        _forget(module)
        raise UsageError(f"{where}: it registers no plugin; decorate a class with @register_pretext(\"name\") (or "
                         "@register_protocol, @register_encoder, @register_dataset from sslbench.registry)")
    loaded = PluginFile(resolved, sha256, module, tuple(registered))
    _LOADED[resolved] = loaded
    return loaded


def unload_plugin_file(path: str | os.PathLike[str]) -> bool:
    """Forget a loaded plugin file and what it registered, so an edited copy can be loaded again in this process (a
    notebook, a test); False if it was not loaded."""
    loaded = _LOADED.pop(Path(path).expanduser().resolve(), None)
    if loaded is not None:
        _forget(loaded.module)
    return loaded is not None


def _forget(module: str) -> None:
    """Undo a load: whatever the file registered (before it failed, if it did), its module and its file mark."""
    for registry in REGISTRIES.values():
        registry.forget_module(module)
    sys.modules.pop(module, None)
    PLUGIN_FILE_MODULES.pop(module, None)


def load_plugins(given: Iterable[str | os.PathLike[str]] = (), environ: Mapping[str, str] | None = None
                 ) -> list[PluginFile]:
    """Load every plugin file of ``$SSLBENCH_PLUGINS`` and ``given`` (the ``--plugin`` arguments)."""
    sources = [(path, f"${ENV_VAR}") for path in plugin_paths(environ)]
    sources += [(os.fspath(path), "--plugin") for path in given]
    return [load_plugin_file(path, source) for path, source in sources]


def loaded_plugin_files() -> list[PluginFile]:
    """Every plugin file loaded in this process, in load order."""
    return list(_LOADED.values())


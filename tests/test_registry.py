"""The plugin registries: discovery without import, lazy loading, errors that help."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from sslbench.errors import PluginLoadError, UnknownPluginError
from sslbench.registry import DATASETS, ENCODERS, PRETEXTS, PROTOCOLS, Registry, natural_key


def _write_package(root: Path, name: str, files: dict[str, str]) -> None:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for filename, source in files.items():
        (pkg / filename).write_text(textwrap.dedent(source))


@pytest.fixture
def thing_registry(tmp_path, monkeypatch):
    """A registry over a real package written to disk, with a decorator that feeds it."""
    _write_package(tmp_path, "demo_things", {
        "alpha.py": """
            from demo_things_registry import register_thing

            @register_thing("alpha")
            class Alpha:
                '''First demo thing.'''
        """,
        "beta.py": """
            from demo_things_registry import register_thing

            @register_thing("beta2")
            def beta2():
                '''Second demo thing.'''
                return "beta2 built"

            @register_thing("beta10")
            def beta10():
                return "beta10 built"
        """,
        "family.py": """
            from demo_things_registry import register_thing

            @register_thing("fam/*")
            def fam(variant):
                return f"fam {variant}"
        """,
        "broken.py": """
            from demo_things_registry import register_thing
            import a_module_that_does_not_exist

            @register_thing("broken")
            class Broken:
                pass
        """,
        "syntax_error.py": """
            def oops(:
        """,
        "ghost.py": """
            from demo_things_registry import register_thing

            if False:
                @register_thing("ghost")
                class Ghost:
                    pass
        """,
    })
    registry = Registry("thing", "demo_things", "sslbench.test_things", "register_thing")
    (tmp_path / "demo_things_registry.py").write_text("REG = None\ndef register_thing(name=None):\n"
                                                      "    return REG.register(name)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import demo_things_registry

    demo_things_registry.REG = registry
    yield registry
    for mod in [m for m in sys.modules if m.startswith("demo_things")]:
        del sys.modules[mod]


def test_discovery_reads_source_without_importing(thing_registry):
    names = thing_registry.names()
    assert names == ["alpha", "beta2", "beta10", "broken", "fam/*", "ghost"]
    assert "demo_things.alpha" not in sys.modules
    assert thing_registry.entries("alpha")[0].summary == "First demo thing."


def test_unreadable_file_does_not_hide_the_others(thing_registry):
    assert thing_registry.create("beta2") == "beta2 built"
    assert "demo_things.syntax_error" in thing_registry.unreadable
    with pytest.raises(UnknownPluginError, match="could not be read.*demo_things.syntax_error.*SyntaxError"):
        thing_registry.get("gamma")


def test_wildcard_filter_and_natural_sort(thing_registry):
    assert thing_registry.names("beta*") == ["beta2", "beta10"]
    assert sorted(["resnet10", "resnet2", "resnet101"], key=natural_key) == ["resnet2", "resnet10", "resnet101"]


def test_create_imports_lazily_and_builds(thing_registry):
    assert thing_registry.create("beta10") == "beta10 built"
    assert "demo_things.beta" in sys.modules
    assert thing_registry.create("fam/resnet18") == "fam resnet18"


def test_unknown_name_suggests_closest(thing_registry):
    with pytest.raises(UnknownPluginError) as info:
        thing_registry.get("alpah")
    message = str(info.value)
    assert "Did you mean 'alpha'?" in message and "beta10" in message


def test_broken_plugin_fails_loudly_with_origin(thing_registry):
    with pytest.raises(PluginLoadError) as info:
        thing_registry.get("broken")
    assert "demo_things.broken" in str(info.value) and "a_module_that_does_not_exist" in str(info.value)


def test_module_that_does_not_register_is_an_error(thing_registry):
    with pytest.raises(PluginLoadError, match="did not register thing 'ghost'"):
        thing_registry.get("ghost")


def test_duplicate_name_is_an_error(thing_registry):
    thing_registry.get("alpha")
    with pytest.raises(ValueError, match="duplicate thing name 'alpha'"):
        thing_registry.add("alpha", object)


def test_base_class_is_checked():
    with pytest.raises(TypeError, match="must subclass sslbench.pretext:Pretext"):
        PRETEXTS.add("not_a_pretext", type("NotAPretext", (), {}))


def test_builtin_plugins_are_listed():
    assert {"random", "supervised", "regression"} <= set(PRETEXTS.names())
    assert "linear" in PROTOCOLS.names()
    assert {"synthetic", "cifar10", "imagefolder", "camvid"} <= set(DATASETS.names())
    assert {"vgg_small", "alexnet_bn", "vgg16_bn", "unet", "timm/*"} <= set(ENCODERS.names())


def test_every_builtin_imports_and_registers():
    for registry in (PRETEXTS, PROTOCOLS, DATASETS, ENCODERS):
        for entry in registry.entries():
            if entry.origin == "built-in":
                assert registry.get(entry.name) is not None

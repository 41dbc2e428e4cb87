"""The plugin registries: discovery without import, lazy loading, errors that help."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from sslbench.errors import PluginLoadError, UnknownPluginError, UsageError
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


# -- plugin identity: qualified names, clashes, provenance ------------------------------------------------------------
def _write_dist(site: Path, dist: str, version: str, group: str, entry_points: dict[str, str],
                modules: dict[str, str]) -> None:
    """A real installed distribution in ``site``: its modules and a dist-info with METADATA and entry_points.txt."""
    for filename, source in modules.items():
        (site / filename).write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")


@pytest.fixture
def clashing_dists(thing_registry, tmp_path):
    """Two third-party distributions: dist-a takes the built-in name ``alpha`` and, like dist-b, the name ``gamma``;
    dist-a's ``alpha`` registers itself with the same decorator the built-ins use."""
    _write_dist(tmp_path, "dist-a", "1.4.2", "sslbench.test_things",
                {"alpha": "dist_a_things:Alpha", "gamma": "dist_a_things:gamma"},
                {"dist_a_things.py": """
                    from demo_things_registry import register_thing

                    @register_thing("alpha")
                    class Alpha:
                        '''Dist A's alpha, which takes a built-in's name.'''
                        version = "7"

                    def gamma():
                        '''Dist A's gamma.'''
                        return "gamma from a"
                """})
    _write_dist(tmp_path, "Dist_B", "0.9", "sslbench.test_things", {"gamma": "dist_b_things:gamma"},
                {"dist_b_things.py": """
                    def gamma():
                        '''Dist B's gamma.'''
                        return "gamma from b"
                """})
    yield thing_registry
    for mod in ("dist_a_things", "dist_b_things"):
        sys.modules.pop(mod, None)


def test_clashes_are_recorded_and_every_plugin_has_a_qualified_name(clashing_dists):
    registry = clashing_dists
    clashes = {c.name: c for c in registry.clashes()}
    assert set(clashes) == {"alpha", "gamma"}
    assert clashes["alpha"].holder.qualified_name == "sslbench:alpha"
    assert [e.qualified_name for e in clashes["alpha"].others] == ["dist-a:alpha"]
    assert "'alpha' means sslbench:alpha" in clashes["alpha"].message and "'dist-a:alpha'" in clashes["alpha"].message
    assert clashes["gamma"].holder is None and "ambiguous" in clashes["gamma"].message
    assert registry.names("alpha") == ["alpha", "dist-a:alpha"]
    assert registry.names("gamma") == ["dist-a:gamma", "dist-b:gamma"]
    assert "dist_a_things" not in sys.modules and "dist_b_things" not in sys.modules


def test_bare_name_means_the_builtin_and_qualified_names_reach_the_others(clashing_dists):
    registry = clashing_dists
    builtin = registry.get("alpha")
    assert builtin.__module__ == "demo_things.alpha"
    assert registry.get("sslbench:alpha") is builtin
    third_party = registry.get("dist-a:alpha")
    assert third_party.__module__ == "dist_a_things" and third_party is not builtin
    assert registry.get("alpha") is builtin
    assert registry.create("Dist_B:gamma") == "gamma from b" and registry.create("dist-a:gamma") == "gamma from a"
    with pytest.raises(UsageError, match="'gamma' is ambiguous.*dist-a:gamma, dist-b:gamma"):
        registry.get("gamma")
    with pytest.raises(UnknownPluginError):
        registry.get("dist-b:alpha")


def test_plugin_registering_a_builtin_name_does_not_take_its_place(clashing_dists):
    """dist-a's module registers ``alpha`` with the built-ins' decorator when loaded first: that binds dist-a's entry,
    and the built-in still loads and answers to the bare name."""
    registry = clashing_dists
    third_party = registry.get("dist-a:alpha")
    assert registry.get("alpha").__module__ == "demo_things.alpha"
    assert registry.get("dist-a:alpha") is third_party


def test_entry_point_summary_is_read_without_importing(clashing_dists):
    summaries = {clashing_dists.reference(e): e.summary for e in clashing_dists.entries(["alpha", "gamma"])}
    assert summaries == {"alpha": "First demo thing.", "dist-a:alpha": "Dist A's alpha, which takes a built-in's name.",
                         "dist-a:gamma": "Dist A's gamma.", "dist-b:gamma": "Dist B's gamma."}
    assert "dist_a_things" not in sys.modules and "dist_b_things" not in sys.modules


def test_provenance_names_distribution_and_versions(clashing_dists):
    from sslbench import __version__

    assert clashing_dists.provenance("dist-a:alpha") == {
        "name": "alpha", "qualified_name": "dist-a:alpha", "origin": "entry point (dist-a)", "distribution": "dist-a",
        "version": "1.4.2", "plugin_version": "7", "module": "dist_a_things"}
    builtin = clashing_dists.provenance("alpha")
    assert builtin == {"name": "alpha", "qualified_name": "sslbench:alpha", "origin": "built-in",
                       "distribution": "sslbench", "version": __version__, "plugin_version": None,
                       "module": "demo_things.alpha"}
    assert clashing_dists.provenance("dist-b:gamma")["distribution"] == "Dist_B"


def test_qualified_family_members_and_colons_inside_a_family_name():
    entry, variant = ENCODERS.resolve("sslbench:timm/resnet18")
    assert entry.name == "timm/*" and variant == "resnet18"
    assert ENCODERS.provenance("timm/resnet18")["qualified_name"] == "sslbench:timm/resnet18"
    entry, variant = ENCODERS.resolve("timm/hf-hub:org/model")
    assert entry.name == "timm/*" and variant == "hf-hub:org/model"
    assert PRETEXTS.resolve("sslbench:quantized")[0] is PRETEXTS.resolve("quantized")[0]

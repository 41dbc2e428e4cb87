"""Plugin options: read from source (no import) exactly as the imported plugins define them, with help for every
built-in field; values checked against their types; a Config's own errors are usage errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from sslbench.config import config_hash, parse_option, resolve_options
from sslbench.errors import UsageError
from sslbench.options import KIND_OF, MISSING, describe, describe_object
from sslbench.registry import REGISTRIES


def _builtins(kind: str) -> list[str]:
    registry = REGISTRIES[KIND_OF[kind]]
    return [registry.reference(e) for e in registry.entries() if e.origin == "built-in"]


@pytest.mark.parametrize("kind", ["pretext", "protocol", "dataset", "encoder"])
def test_source_reading_agrees_with_the_imported_plugins(kind):
    """The ast reading (what list, show and the early checks use) against dataclasses/inspect on the real objects."""
    for name in _builtins(kind):
        static = describe(kind, name, load=False)
        assert static is not None, f"{kind} {name}: its source could not be read"
        imported = describe_object(kind, name, REGISTRIES[KIND_OF[kind]].get(name))
        assert [o.name for o in static.options] == [o.name for o in imported.options], name
        assert static.extra == imported.extra, name
        for mine, real in zip(static.options, imported.options):
            if mine.default is not MISSING:
                assert mine.default == real.default and type(mine.default) is type(real.default), (name, mine.name)
            if kind in ("pretext", "protocol"):
                assert mine.help == real.help, (name, mine.name)
        for attr, value in static.attributes.items():
            assert getattr(REGISTRIES[KIND_OF[kind]].get(name), attr) == value, (name, attr)


@pytest.mark.parametrize("kind", ["pretext", "protocol"])
def test_every_builtin_config_field_has_help(kind):
    missing = [f"{name}.{o.name}" for name in _builtins(kind) for o in describe(kind, name).options if not o.help]
    assert not missing, f"fields without a #: comment: {', '.join(missing)}"


def test_list_show_and_checks_do_not_import_torch():
    code = ("import sys\nfrom sslbench.cli import main\n"
            "assert main(['list', '--options']) == 0\n"
            "assert main(['show', 'quantized']) == 0 and main(['show', 'cifar10']) == 0\n"
            "from sslbench.experiment import Experiment, VariantSpec\n"
            "from sslbench.options import check_experiment\n"
            "check_experiment(Experiment(variants=[VariantSpec('q', 'quantized', {'rebalance': 'false'})]))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "rebalance: bool = True" in result.stdout and "Zhang's \"class\" variant" in result.stdout
    assert "provides: label" in result.stdout and "data root variable: SSLBENCH_CIFAR10" in result.stdout


def test_option_values_are_checked_against_their_types():
    assert parse_option("true", None, "bool | None") is True
    assert parse_option("none", None, "int | None") is None
    assert parse_option("7", None, "int | None") == 7
    assert parse_option("2.5", MISSING, "float") == 2.5
    for raw, default, annotation in (("abc", None, "int | None"), ("maybe", True, "bool"), ("x", 1.0, "float"),
                                     ("maybe", None, "bool | None")):
        with pytest.raises(ValueError, match="expected"):
            parse_option(raw, default, annotation)


def test_values_that_fit_parse_as_before_so_hashes_stay():
    """A value of the right type resolves to what it resolved to before types were checked: same config hash."""

    @dataclass
    class Options:
        lr: float = 1e-3
        size: int | None = None
        steps: float | None = None
        name: str = "a"

    before = {"lr": 0.5, "size": 3, "steps": 1, "name": "b"}  # what parse_value gave for these strings
    resolved = resolve_options(Options, {"lr": "0.5", "size": "3", "steps": "1", "name": "b"}, "test")
    assert config_hash(resolved) == config_hash(before)


def test_config_errors_and_metadata_help_from_a_plugin_defined_here():
    @dataclass
    class Checked:
        #: How far.
        reach: int = 3
        mode: str = field(default="fast", metadata={"help": "fast or slow"})

        def __post_init__(self) -> None:
            if self.mode not in ("fast", "slow"):
                raise ValueError(f"mode={self.mode!r}: choose fast or slow")

        def validate(self) -> None:
            if self.reach < 0:
                raise TypeError("reach must be 0 or more")

    class Plugin:
        """A test plugin."""

        Config = Checked

    described = describe_object("pretext", "demo", Plugin)
    assert [(o.name, o.type, o.default, o.help) for o in described.options] == [
        ("reach", "int", 3, "How far."), ("mode", "str", "fast", "fast or slow")]
    with pytest.raises(UsageError, match="mode='medium': choose fast or slow"):
        resolve_options(Checked, {"mode": "medium"}, "pretext 'demo'")
    with pytest.raises(UsageError, match="reach must be 0 or more"):
        resolve_options(Checked, {"reach": "-1"}, "pretext 'demo'")
    with pytest.raises(UsageError, match="has no option 'rech'.*Did you mean 'reach'"):
        resolve_options(Checked, {"rech": "1"}, "pretext 'demo'", "demo")
    assert dataclasses.asdict(resolve_options(Checked, {"mode": "slow"}, "x")) == {"reach": 3, "mode": "slow"}


def test_filter_is_a_substring_unless_it_has_wildcards():
    pretexts = REGISTRIES["pretexts"]
    assert "quantized" in pretexts.names("quant") and "regression" not in pretexts.names("quant")
    assert set(pretexts.names("r*")) == {n for n in pretexts.names() if n.startswith("r")}
    assert pretexts.names("x?z") == []

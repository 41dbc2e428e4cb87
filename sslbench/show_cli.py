"""``sslbench show NAME``: one plugin's summary, origin, options (type, default, help) and what it needs or provides,
read from its source without importing torch where possible (see :mod:`sslbench.options`)."""

from __future__ import annotations

import argparse
from typing import Any

from sslbench.errors import UsageError

__all__ = ["add_parser", "main", "show"]

#: The attributes ``show`` prints, in order, with their labels.
ATTRIBUTE_LABELS = (("requires", "needs"), ("provides", "provides"), ("splits", "splits"),
                    ("pretext_split", "pretext split"), ("probe_split", "probe split"), ("eval_split", "eval split"),
                    ("env_var", "data root variable"))


def add_parser(sub: Any) -> None:
    show = sub.add_parser("show", help="a plugin's options: type, default and help",
                          description="Show a plugin: what it is, where it comes from, each option that --set "
                                      "OWNER.KEY=VALUE (or its table in an experiment file) takes, with its type, "
                                      "default and help, and what it needs or provides.")
    show.add_argument("name", help="a pretext, protocol, encoder or dataset name (timm/<model> for timm encoders)")
    show.add_argument("--kind", choices=["pretext", "protocol", "encoder", "dataset"], default=None,
                      help="only this kind (when one name is taken by several kinds)")


def show(name: str, kind: str | None = None) -> list[str]:
    """The lines ``sslbench show`` prints for ``name`` (every kind that has it, or only ``kind``)."""
    from sslbench.options import KIND_OF, describe, format_options
    from sslbench.registry import REGISTRIES, closest

    kinds = [kind] if kind else list(KIND_OF)
    lines: list[str] = []
    for singular in kinds:
        if name not in REGISTRIES[KIND_OF[singular]]:
            continue
        plugin = describe(singular, name)
        assert plugin is not None  # describe imports the plugin when its source does not say
        lines.append(f"{singular} {name}: {plugin.summary}".rstrip(": "))
        lines.append(f"  from: {plugin.origin}")
        for attr, label in ATTRIBUTE_LABELS:
            value = plugin.attributes.get(attr)
            if value is not None and attr in plugin.attributes:
                shown = ", ".join(sorted(value)) if isinstance(value, (set, frozenset)) else \
                    ", ".join(value) if isinstance(value, tuple) else str(value)
                lines.append(f"  {label}: {shown or '(nothing)'}")
        owner = "encoder" if singular == "encoder" else name
        lines.append(f"  options (--set {owner}.KEY=VALUE):")
        lines.extend(format_options(plugin))
    if not lines:
        every = sorted({n for singular in kinds for n in REGISTRIES[KIND_OF[singular]].names()})
        near = closest(name, every)
        hint = f" Did you mean {near!r}?" if near else ""
        raise UsageError(f"no {kind or 'plugin'} is named {name!r}.{hint} See sslbench list")
    return lines


def main(args: argparse.Namespace) -> int:
    print("\n".join(show(args.name, args.kind)))
    return 0

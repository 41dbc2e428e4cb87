"""The caption and the notes under a table: what a cell holds, units, emphasis, statuses, conventions.

Variants say how they differ from their pretext's defaults (``quantized-norebal: quantized with
rebalance=false``), taken from the records' ``variant_options``.
"""

from __future__ import annotations

import json
from typing import Any

from sslbench.registry import natural_key
from sslbench.tables.layout import variant_order
from sslbench.tables.leaves import DB_LEAVES, LOWER_IS_BETTER, PERCENT_LEAVES
from sslbench.tables.model import Table
from sslbench.tables.runs import Run

__all__ = ["SYNTHETIC_NOTE", "table_notes", "caption"]

SYNTHETIC_NOTE = "dataset `synthetic`: sslbench's procedurally generated default, not real photographs."


def _option_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sorted(options.items()))


def _variant_notes(runs: list[Run]) -> list[str]:
    described: dict[str, set[str]] = {}
    pretexts = {run.variant: run.pretext for run in runs}
    for run in runs:
        if run.options or run.variant != run.pretext:
            text = (f"{run.pretext} with {_option_text(run.options)}" if run.options
                    else f"{run.pretext} with its default options")
            described.setdefault(run.variant, set()).add(text)
    return [f"{variant}: {' | '.join(sorted(texts))}"
            for variant, texts in sorted(described.items(), key=lambda kv: variant_order(kv[0], pretexts[kv[0]]))]


def table_notes(table: Table, runs: list[Run]) -> list[str]:
    """The notes of ``table`` made from ``runs`` (those of published rows come with the rows)."""
    if table.uniform_n == 1:
        cells = "one seed each" + ("" if table.ci else ", no spread")
    else:
        cells = "mean over seeds" if table.ci else "mean ± std over seeds"
    if table.ci:
        cells += (" [95 % bootstrap interval over test images, 1000 resamples; for several seeds the interval of "
                  "their mean, the same images drawn for every seed]")
    if table.uniform_n is None:
        cells += "; (n=k): the seeds of the cell; (k/m; j failed): k of m seeds gave a number"
    elif table.uniform_n > 1:
        cells += f"; every cell: {table.uniform_n} seeds"
    notes = [f"Cells: {cells}."]
    leaves = {c.leaf for c in table.columns}
    units = []
    percent = sorted(leaves & PERCENT_LEAVES, key=natural_key)
    if percent:
        units.append(f"{', '.join(percent)} in %")
    if leaves & DB_LEAVES:
        units.append(f"{', '.join(sorted(leaves & DB_LEAVES))} in dB")
    if units:
        notes.append("Units: " + "; ".join(units) + ".")
    if table.ranks:
        lower = sorted(leaves & LOWER_IS_BETTER)
        lower_note = f"; lower is better for {', '.join(lower)}" if lower else ""
        notes.append("Bold: best, underlined: second best per column among the pretexts (scratch baselines and "
                     f"the supervised bound are not ranked){lower_note}.")
    if any(s.no_ci for s in table.cells.values()):
        notes.append("†: no per-image values recorded for this cell; no interval.")
    statuses = {s.status for s in table.cells.values()}
    if "n/a" in statuses:
        notes.append("n/a: the protocol does not apply to the pretext (skipped).")
    if "mixed configs" in statuses:
        notes.append("mixed configs: the seeds of this cell ran different configurations and are not averaged.")
    notes += [f"Variant {text}." for text in _variant_notes(runs)]
    conventions = sorted({(r.protocol, m.split("/", 1)[1], str(v)) for r in runs if r.status == "ok"
                          for m, v in r.metrics.items() if m.startswith("convention/") and isinstance(v, str)})
    if conventions:
        notes.append("Metric conventions: " + "; ".join(f"{p} {k} = {v}" for p, k, v in conventions) + ".")
    if table.synthetic:
        notes.append(SYNTHETIC_NOTE)
    return notes


def caption(table: Table) -> str:
    """``sslbench comparison (dataset: …; encoder: …).``: the attributes every row shares."""
    parts = [f"{k}: {v}" for k, v in table.constants.items()]
    return "sslbench comparison" + (f" ({'; '.join(parts)})" if parts else "") + "."

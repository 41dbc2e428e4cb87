"""Records to a :class:`~sslbench.tables.model.Table`: runs grouped by seed, cells, intervals, ranks, published
rows and notes, in that order."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sslbench.errors import UsageError
from sslbench.tables.intervals import add_intervals
from sslbench.tables.layout import fill_rows, make_columns, row_attributes, select_metrics
from sslbench.tables.leaves import is_metric_value
from sslbench.tables.model import Row, Table
from sslbench.tables.notes import table_notes
from sslbench.tables.published_rows import add_published_rows
from sslbench.tables.rank import rank
from sslbench.tables.runs import group_runs, to_run

__all__ = ["LAYOUTS", "build_table"]

LAYOUTS = ("columns", "rows")


def build_table(records: Iterable[dict[str, Any]], metrics: Sequence[str] | None = None, *, layout: str = "columns",
                ci: bool = False, references: Sequence[str] = (), digits: int = 1) -> Table:
    """Aggregate ``records`` (as :func:`sslbench.records.load_records` returns them) into a :class:`Table`.

    ``metrics`` keeps only the protocols and metrics named (a protocol's name keeps its columns; a metric name
    matches a metric equal to it, ending in ``/name`` or starting with ``name/``; one that matches nothing is a
    :class:`UsageError`). ``layout="rows"`` turns the colorization
    protocols' ``reference/<row>/<metric>`` values into rows; ``ci`` adds 95 % bootstrap intervals over test images
    (:mod:`sslbench.bootstrap`) from the records' per-image files; ``references`` adds published rows
    (:mod:`sslbench.published`)."""
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    runs = [to_run(r) for r in records]
    protocols = {r.protocol for r in runs}
    named = [m for m in (metrics or []) if m in protocols]
    if named:  # a protocol's name selects that protocol's columns; the other names filter its metrics
        runs = [r for r in runs if r.protocol in named]
        metrics = [m for m in metrics or [] if m not in named] or None
    warnings: list[str] = []
    groups, mixed = group_runs(runs, warnings)
    available = {m for r in runs if r.status == "ok" for m, v in r.metrics.items() if is_metric_value(v)}
    selected = select_metrics(available, metrics)
    columns = make_columns(runs, selected, bool(metrics), layout)
    rows: list[Row] = []
    cells, observations = fill_rows(rows, columns, groups, mixed, selected, layout, warnings)
    constants, attributes = row_attributes(rows, groups)
    table = Table(rows=rows, columns=columns, cells=cells, ranks={}, attributes=attributes, constants=constants,
                  notes=[], warnings=warnings, digits=digits, ci=ci, synthetic=any(r.synthetic for r in runs))
    if ci:
        add_intervals(table, observations)
    numeric = [s for s in cells.values() if s.n and s.status == "ok"]
    counts = {s.n for s in numeric}
    table.uniform_n = counts.pop() if len(counts) == 1 and all(s.n == s.seeds for s in numeric) else None
    rank(table)
    add_published_rows(table, references)
    table.notes[:0] = table_notes(table, runs)
    return table

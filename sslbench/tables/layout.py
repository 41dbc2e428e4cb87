"""The rows and columns of a table, and the cells they cross.

Rows: reference rows of the colorization protocols first with ``layout="rows"`` (ground truth, gray: Zhang et al.
2016, Table 1), then the variants (scratch baselines first: variants of ``random`` and ``untrained``;
variants of ``supervised`` last; the rest in natural order), then any
published rows (:mod:`sslbench.published`, in their own block below a rule, italic).

Columns: one per (protocol, metric), protocols in natural order. Columns that hold one value for every row
(dataset, encoder, training budget) move into the caption.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sslbench.errors import UsageError
from sslbench.registry import natural_key
from sslbench.tables.cells import Obs, reference_cell, variant_cell
from sslbench.tables.leaves import shown_by_default
from sslbench.tables.model import REFERENCE_ROWS, Column, Row, Stat
from sslbench.tables.runs import GroupKey, Run

__all__ = ["BOUNDS", "variant_order", "select_metrics", "make_columns", "fill_rows", "row_attributes"]

#: Pretexts whose variants bound a comparison (scratch baselines below, the supervised bound above): their rows are
#: listed first / last and never ranked, whatever the variant is called.
BOUNDS = {"random": 0, "untrained": 0, "supervised": 2}


def variant_order(name: str, pretext: str) -> tuple[int, list[Any]]:
    """Scratch baselines first, the supervised bound last, the rest in natural order of the variant's name."""
    return (BOUNDS.get(pretext, 1), natural_key(name))


def _metric_order(metric: str) -> tuple[int, list[Any]]:
    root = metric.split("/", 1)[0]
    return ({"layer": 0, "best": 1, "reference": 3}.get(root, 2), natural_key(metric))


def select_metrics(available: Iterable[str], wanted: Sequence[str] | None) -> list[str]:
    """The metrics of ``available`` that ``wanted`` names (all shown by default when it names none); a name that
    matches nothing is a :class:`UsageError`."""
    available = sorted(set(available), key=natural_key)
    if not wanted:
        return [m for m in available if shown_by_default(m)]

    def matches(metric: str, name: str) -> bool:
        return metric == name or metric.endswith("/" + name) or metric.startswith(name + "/")

    unmatched = [name for name in wanted if not any(matches(m, name) for m in available)]
    if unmatched:
        raise UsageError(f"--metrics {', '.join(unmatched)}: no record has such a metric; available: "
                         f"{', '.join(available) or '(none)'}")
    return [m for m in available if any(matches(m, name) for name in wanted)]


def make_columns(runs: list[Run], selected: list[str], filtered: bool, layout: str) -> list[Column]:
    """One column per (protocol, selected metric), protocols in natural order; with ``layout="rows"`` the
    reference metrics fold into the metric they are a reference for; a protocol with only failed or skipped
    records gets one status column unless metrics were filtered."""
    by_protocol: dict[str, set[str]] = {}
    for run in runs:
        if not filtered:
            by_protocol.setdefault(run.protocol, set())
        if run.status == "ok":
            for m in selected:
                if m in run.metrics:
                    by_protocol.setdefault(run.protocol, set()).add(_reference_parts(m, layout)[1] or m)
    return [Column(protocol, m) for protocol in sorted(by_protocol, key=natural_key)
            for m in (sorted(by_protocol[protocol], key=_metric_order) or [""])]


def _reference_parts(metric: str, layout: str) -> tuple[str, str]:
    """``("gray", "auc")`` for ``reference/gray/auc`` in the rows layout; ``("", "")`` otherwise."""
    parts = metric.split("/", 2)
    if layout == "rows" and parts[0] == "reference" and len(parts) == 3:
        return parts[1], parts[2]
    return "", ""


def _reference_order(name: str) -> tuple[int, list[Any]]:
    order = list(REFERENCE_ROWS)
    return (order.index(name) if name in order else len(order), natural_key(name))


def fill_rows(rows: list[Row], columns: list[Column], groups: dict[GroupKey, list[Run]], mixed: set[GroupKey],
              selected: list[str], layout: str, warnings: list[str]
              ) -> tuple[dict[tuple[Row, Column], Stat], dict[tuple[Row, Column], list[Obs]]]:
    """Append the rows of every (dataset, encoder) block to ``rows`` and compute their cells."""
    cells: dict[tuple[Row, Column], Stat] = {}
    observations: dict[tuple[Row, Column], list[Obs]] = {}
    references = sorted({_reference_parts(m, layout)[0] for m in selected} - {""}, key=_reference_order)
    for dataset, encoder in sorted({(d, e) for d, e, _, _ in groups}):
        for name in references:
            row = Row("reference", dataset, encoder, name)
            for column in columns:
                metric = f"reference/{name}/{column.metric}"
                if metric not in selected:
                    continue
                pool = [r for key, rs in groups.items() if key not in mixed
                        and (key[0], key[1], key[3]) == (dataset, encoder, column.protocol) for r in rs]
                stat, obs = reference_cell(pool, metric, warnings, f"{dataset}/{encoder} {column.protocol}")
                if stat is not None:
                    cells[(row, column)], observations[(row, column)] = stat, obs
            if any(key[0] == row for key in cells):
                rows.append(row)
        pretexts = {v: rs[0].pretext for (d, e, v, _), rs in groups.items() if (d, e) == (dataset, encoder) and rs}
        for variant in sorted(pretexts, key=lambda v: variant_order(v, pretexts[v])):
            row = Row("variant", dataset, encoder, variant, BOUNDS.get(pretexts[variant], 1))
            rows.append(row)
            for column in columns:
                key = (dataset, encoder, variant, column.protocol)
                if key in mixed:
                    cells[(row, column)] = Stat(status="mixed configs")
                elif key in groups:
                    stat, obs = variant_cell(groups[key], column.metric)
                    if stat is not None:
                        cells[(row, column)], observations[(row, column)] = stat, obs
    return cells, observations


def row_attributes(rows: list[Row], groups: dict[GroupKey, list[Run]]
                   ) -> tuple[dict[str, str], dict[str, dict[Row, str]]]:
    """Dataset, encoder and budget of every row: those with one value over the variant rows (constants, for the
    caption) and those that vary (index columns)."""
    budgets: dict[tuple[str, str, str], set[str]] = {}
    for (d, e, v, _), runs in groups.items():
        budgets.setdefault((d, e, v), set()).update(r.budget for r in runs if r.budget)
    values = {
        "dataset": {row: row.dataset for row in rows},
        "encoder": {row: row.encoder for row in rows},
        "budget": {row: "; ".join(sorted(budgets.get((row.dataset, row.encoder, row.name), set())))
                   if row.kind == "variant" else "" for row in rows},
    }
    constants, attributes = {}, {}
    for name, by_row in values.items():
        distinct = {text for row, text in by_row.items() if row.kind == "variant"}
        if len(distinct) > 1:
            attributes[name] = by_row
        elif distinct and next(iter(distinct)):
            constants[name] = distinct.pop()
    return constants, attributes

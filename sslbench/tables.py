"""Comparison tables from run records: pure functions from records to Markdown, LaTeX or CSV.

:func:`records_frame` flattens records into one tidy row per (dataset, encoder, pretext, protocol, seed, metric);
:func:`summary_frame` aggregates seeds (mean, std, n); :func:`make_table` renders the wide comparison (one row per
pretext, one column per protocol metric, ``mean ± std`` over seeds). Failed or skipped cells show their status.
Results on generated data are marked as synthetic.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

from sslbench.records import flatten
from sslbench.registry import natural_key

__all__ = ["records_frame", "summary_frame", "comparison_frame", "make_table", "FORMATS", "SYNTHETIC_NOTE"]

FORMATS = ("md", "latex", "csv")
#: Bookkeeping kept in records but left out of tables unless asked for with ``metrics``: feature sizes,
#: training-loop statistics, judge provenance.
HIDDEN_LEAVES = frozenset({"dims"})
HIDDEN_ROOTS = frozenset({"train", "judge"})


def _shown_by_default(metric: str) -> bool:
    parts = metric.split("/")
    return parts[-1] not in HIDDEN_LEAVES and parts[0] not in HIDDEN_ROOTS
KEYS = ["dataset", "encoder", "pretext", "protocol"]


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per numeric metric of each record (failed/skipped records give one row with metric ``status``)."""
    rows = []
    for rec in records:
        base = {k: rec.get(k) for k in KEYS} | {"seed": rec.get("seed"), "status": rec.get("status", "ok"),
                                                 "synthetic": bool(rec.get("data", {}).get("test", {}).get("synthetic"))}
        if base["status"] != "ok":
            rows.append(base | {"metric": "status", "value": math.nan})
            continue
        for metric, value in flatten(rec.get("metrics", {})).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append(base | {"metric": metric, "value": float(value)})
    return pd.DataFrame(rows, columns=KEYS + ["seed", "status", "synthetic", "metric", "value"])


def summary_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Mean, std and count over seeds for every (dataset, encoder, pretext, protocol, metric)."""
    frame = records_frame(records)
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=KEYS + ["metric", "mean", "std", "n"])
    grouped = ok.groupby(KEYS + ["metric"], sort=False)["value"]
    summary = grouped.agg(mean="mean", std="std", n="count").reset_index()
    summary["std"] = summary["std"].fillna(0.0)
    return summary


def _pretext_order(name: str) -> tuple[int, list[Any]]:
    """The lower bound first, the upper bound last, the rest in natural order."""
    return ({"random": 0, "supervised": 2}.get(name, 1), natural_key(name))


def _cell(mean: float, std: float, n: int, digits: int) -> str:
    text = f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if n > 1 else text


def comparison_frame(records: list[dict[str, Any]], metrics: list[str] | None = None, digits: int = 2
                     ) -> tuple[pd.DataFrame, bool]:
    """The wide comparison: one row per (dataset, encoder, pretext), one text column per protocol metric; and
    whether any record comes from synthetic data."""
    frame = records_frame(records)
    summary = summary_frame(records)
    def wanted(metric: str) -> bool:
        if metrics:
            return any(metric == x or metric.endswith("/" + x) or metric.startswith(x + "/") for x in metrics)
        return _shown_by_default(metric)

    summary = summary[summary["metric"].map(wanted).astype(bool)]
    summary = summary.assign(column=summary["protocol"] + " " + summary["metric"],
                             text=[_cell(m, s, n, digits) for m, s, n in
                                   zip(summary["mean"], summary["std"], summary["n"])])
    columns = list(dict.fromkeys(sorted(summary["column"], key=natural_key)))
    index_keys = ["dataset", "encoder", "pretext"]
    rows = frame[index_keys].drop_duplicates()
    rows = rows.iloc[sorted(range(len(rows)), key=lambda i: (rows.iloc[i]["dataset"], rows.iloc[i]["encoder"],
                                                               _pretext_order(rows.iloc[i]["pretext"])))]
    table = rows.reset_index(drop=True).copy()
    lookup = {(r.dataset, r.encoder, r.pretext, r.column): r.text for r in summary.itertuples()}
    statuses = {(r.dataset, r.encoder, r.pretext, r.protocol): r.status
                for r in frame[frame["status"] != "ok"].itertuples()}
    def status_text(key: tuple[str, str, str, str]) -> str:
        status = statuses.get(key, "")
        return "n/a" if status == "skipped" else status

    for column in columns:
        protocol = column.split(" ", 1)[0]
        table[column] = [lookup.get((d, e, p, column), status_text((d, e, p, protocol)))
                         for d, e, p in zip(table["dataset"], table["encoder"], table["pretext"])]
    for key in statuses:
        d, e, p, protocol = key
        if not any(c.split(" ", 1)[0] == protocol for c in columns):
            rows_of = (table["dataset"] == d) & (table["encoder"] == e) & (table["pretext"] == p)
            table.loc[rows_of, protocol] = status_text(key)
    return table.fillna(""), bool(frame["synthetic"].any())


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" if i < 3 else "---:" for i in range(len(table.columns))) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                       ("±", r"$\pm$")):
        text = text.replace(char, repl)
    return text


def _latex(table: pd.DataFrame) -> str:
    spec = "lll" + "r" * (len(table.columns) - 3)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_latex_escape(str(c)) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(str(v)) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


SYNTHETIC_NOTE = "dataset `synthetic`: sslbench's procedurally generated default, not real photographs."


def make_table(records: Iterable[dict[str, Any]], fmt: str = "md", metrics: list[str] | None = None,
               digits: int = 2) -> str:
    """Render the comparison of ``records`` as ``md``, ``latex`` or ``csv`` (tidy: one row per cell)."""
    records = list(records)
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return summary_frame(records).to_csv(index=False)
    if not records:
        return "(no records)"
    table, synthetic = comparison_frame(records, metrics, digits)
    if fmt == "latex":
        text = _latex(table)
        return text + ("\n% " + SYNTHETIC_NOTE if synthetic else "")
    text = _markdown(table)
    return text + ("\n\n" + SYNTHETIC_NOTE if synthetic else "")

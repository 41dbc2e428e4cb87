"""Comparison tables from run records: Markdown, LaTeX, CSV and the terminal.

:func:`build_table` aggregates records into a :class:`Table` (rows: variants, columns: protocol metrics, cells:
:class:`Stat` over seeds); :func:`render` writes it in a format; :func:`make_table` does both.

What a table refuses to hide:

- A cell says how many seeds it averages. When every cell has the same number, the notes say it once; otherwise
  each cell carries ``(n=k)``, and a cell where some seeds failed or reported no number shows e.g.
  ``61.2 ± 0.4 (2/3; 1 failed)``. A null metric (a NaN or infinity in the run) is not a number: it is counted
  as missing, never averaged.
- Seeds of one (dataset, encoder, variant, protocol) that ran different configurations are never averaged: the
  cell reads ``mixed configs`` and a warning names the files and the options that differ. Configurations are
  compared without their seeds (a record's ``config_hash`` covers its seed, so it differs between the seeds of
  any experiment).
- Two records of the same seed count once (the first in path order), with a warning.
- Variants say how they differ from their pretext's defaults (``quantized-norebal: quantized with
  rebalance=false``), taken from the records' ``variant_options``.

Rows: reference rows of the colorization protocols first with ``layout="rows"`` (ground truth, gray: Zhang et al.
2016, Table 1), then the variants (scratch baselines first: variants of ``random`` and ``untrained``;
variants of ``supervised`` last; the rest in natural order), then any
published rows (:mod:`sslbench.published`, in their own block below a rule, italic). Best and second best per
column (bold, underlined) are ranked among the pretexts only: the scratch and supervised rows are bounds, and
published rows come from other data. Every metric is higher-is-better unless its name ends in one of
:data:`LOWER_IS_BETTER`.

Columns that hold one value for every row (dataset, encoder, training budget) move into the caption.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from sslbench.errors import UsageError
from sslbench.records import flatten
from sslbench.registry import natural_key

__all__ = ["FORMATS", "LAYOUTS", "LOWER_IS_BETTER", "SYNTHETIC_NOTE", "LATEX_PACKAGES", "Stat", "Row", "Column",
           "Table", "build_table", "render", "make_table", "comparison_frame", "cell_text", "print_rich",
           "latex_escape"]

FORMATS = ("md", "latex", "csv")
LAYOUTS = ("columns", "rows")
#: Bookkeeping kept in records but left out of tables unless asked for with ``metrics``: feature sizes,
#: training-loop statistics, judge provenance.
HIDDEN_LEAVES = frozenset({"dims", "val_top1"})
HIDDEN_ROOTS = frozenset({"train", "judge"})
#: Metric leaves where a lower number is better (none yet; errors or distances would go here).
LOWER_IS_BETTER: frozenset[str] = frozenset()
#: Pretexts whose variants bound a comparison (scratch baselines below, the supervised bound above): their rows are
#: listed first / last and never ranked, whatever the variant is called.
BOUNDS = {"random": 0, "untrained": 0, "supervised": 2}
#: Metric leaves in percent and in decibels; SSIM and colourfulness are plain numbers.
PERCENT_LEAVES = frozenset({"top1", "val_top1", "map", "miou", "auc", "auc_rebal", "exact_match", "pixel_acc", "ap",
                            "iou"})
DB_LEAVES = frozenset({"psnr"})
#: Leaves shown with at least three decimals (values in [0, 1]).
FINE_LEAVES = frozenset({"ssim"})
#: The reference rows colorization protocols report under ``reference/<row>/<metric>``, in Zhang's order.
REFERENCE_ROWS = {"ground_truth": "ground truth", "gray": "gray"}
#: What ``\usepackage`` the LaTeX needs (named in its leading comment).
LATEX_PACKAGES = ("booktabs",)
SYNTHETIC_NOTE = "dataset `synthetic`: sslbench's procedurally generated default, not real photographs."


def _shown_by_default(metric: str) -> bool:
    parts = metric.split("/")
    return parts[-1] not in HIDDEN_LEAVES and parts[0] not in HIDDEN_ROOTS


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_metric_value(value: Any) -> bool:
    """A number, or null (a metric that was not finite): what a table column holds. Text such as
    ``best/layer`` is not."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


# ---------------------------------------------------------------------------------------------------------------
# The table model


@dataclass
class Stat:
    """One cell: mean and std over the seeds that gave a number, how many did (``n``) out of how many ran
    (``seeds``, skipped ones excluded), how many failed and how many reported no number (``missing``), the status
    when there is no number to show, and the bootstrap interval when asked for."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    seeds: int = 0
    failed: int = 0
    missing: int = 0
    status: str = "ok"
    ci: tuple[float, float] | None = None
    #: Whether intervals were asked for and this cell could not get one.
    no_ci: bool = False
    source: str = ""


@dataclass(frozen=True)
class Row:
    """A row: ``kind`` is ``reference`` (gray, ground truth), ``variant`` or ``published``."""

    kind: str
    dataset: str
    encoder: str
    name: str
    #: For variant rows: 0 a scratch baseline, 2 the supervised bound, 1 a pretext (ranked).
    bound: int = 1

    @property
    def label(self) -> str:
        if self.kind == "reference":
            return f"{REFERENCE_ROWS.get(self.name, self.name)} (reference)"
        if self.kind == "published":
            return f"published: {self.name} ({self.encoder})"
        return self.name


@dataclass(frozen=True)
class Column:
    """A column: a protocol's metric (``metric`` empty for a protocol with only failed or skipped records)."""

    protocol: str
    metric: str

    @property
    def leaf(self) -> str:
        return self.metric.rsplit("/", 1)[-1]


@dataclass
class Table:
    """The aggregated comparison, ready to render."""

    rows: list[Row]
    columns: list[Column]
    cells: dict[tuple[Row, Column], Stat]
    #: 1 (best) or 2 (second best) for ranked cells.
    ranks: dict[tuple[Row, Column], int]
    #: Row attributes that vary (become index columns), by row.
    attributes: dict[str, dict[Row, str]]
    #: Attributes with one value for every row (go to the caption), in order.
    constants: dict[str, str]
    notes: list[str]
    warnings: list[str]
    digits: int = 1
    ci: bool = False
    #: The number of seeds of every numeric cell, when it is the same everywhere.
    uniform_n: int | None = None
    synthetic: bool = False

    def labels(self) -> dict[Column, tuple[str, str]]:
        """Short (group, sub) header of every column: the protocol, and the metric without ``layer/`` and without
        the leaf every column of the protocol shares (named in the group instead)."""
        out: dict[Column, tuple[str, str]] = {}
        for protocol in dict.fromkeys(c.protocol for c in self.columns):
            cols = [c for c in self.columns if c.protocol == protocol]
            parts = {c: [p for p in c.metric.split("/") if p] for c in cols}
            for c, p in parts.items():
                if p[:1] == ["layer"] and len(p) > 1:
                    parts[c] = p[1:]
                elif p[:1] == ["reference"] and len(p) > 2:
                    parts[c] = p[1:]
            leaves = {p[-1] for p in parts.values() if p}
            common = len(leaves) == 1 and len(cols) > 1 and all(len(p) > 1 for p in parts.values())
            group = f"{protocol} ({leaves.pop()})" if common else protocol
            for c, p in parts.items():
                out[c] = (group, " ".join(p[:-1] if common else p))
        return out

    def flat_labels(self) -> dict[Column, str]:
        return {c: f"{g} / {s}" if s else g for c, (g, s) in self.labels().items()}


# ---------------------------------------------------------------------------------------------------------------
# Records -> runs


@dataclass
class _Run:
    record: dict[str, Any]
    dataset: str
    encoder: str
    variant: str
    pretext: str
    options: dict[str, Any]
    protocol: str
    seed: Any
    status: str
    metrics: dict[str, Any]
    path: str | None
    fingerprint: str | None
    budget: str
    synthetic: bool

    @property
    def where(self) -> str:
        return self.path or f"{self.dataset}/{self.encoder}/{self.variant}__{self.protocol}__seed{self.seed}"


def _without_seeds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_seeds(v) for k, v in value.items() if k != "seed"}
    if isinstance(value, list):
        return [_without_seeds(v) for v in value]
    return value


def _fingerprint(config: Any) -> str | None:
    """A hash of the record's config without its seeds (None when the record has no config)."""
    if not isinstance(config, dict):
        return None
    text = json.dumps(_without_seeds(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _find(value: Any, key: str) -> Any:
    """The first value stored under ``key`` anywhere in nested dicts (breadth first)."""
    queue = [value]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            if key in node:
                return node[key]
            queue.extend(v for v in node.values() if isinstance(v, dict))
    return None


def _budget(record: dict[str, Any]) -> str:
    """The pretext's training budget and the image counts, e.g. ``5 epochs, batch 64; 2000 train, 500 eval
    images``."""
    parts = []
    budget = _find(record.get("config"), "budget")
    if isinstance(budget, dict):
        if budget.get("steps"):
            parts.append(f"{budget['steps']} step" + ("s" if budget["steps"] != 1 else ""))
        elif _is_number(budget.get("epochs")):
            parts.append(f"{budget['epochs']:g} epoch" + ("s" if budget["epochs"] != 1 else ""))
        if budget.get("batch_size"):
            parts.append(f"batch {budget['batch_size']}")
    text = ", ".join(parts)
    counts = record.get("counts")
    if isinstance(counts, dict):
        images = [f"{v} {k.removesuffix('_images').replace('_', ' ')}" for k, v in counts.items() if _is_number(v)]
        if images:
            text += ("; " if text else "") + ", ".join(images) + " images"
    return text


def _run(record: dict[str, Any]) -> _Run:
    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    pretext = str(record.get("pretext"))
    options = record.get("variant_options")
    return _Run(
        record=record, dataset=str(record.get("dataset")), encoder=str(record.get("encoder")),
        variant=str(record.get("variant") or pretext), pretext=pretext,
        options=options if isinstance(options, dict) else {}, protocol=str(record.get("protocol")),
        seed=record.get("seed"), status=str(record.get("status", "ok")),
        metrics=flatten(record.get("metrics") or {}) if isinstance(record.get("metrics") or {}, dict) else {},
        path=record.get("_path"), fingerprint=_fingerprint(record.get("config")), budget=_budget(record),
        synthetic=any(isinstance(d, dict) and bool(d.get("synthetic")) for d in data.values()),
    )


def _config_difference(a: dict[str, Any], b: dict[str, Any], limit: int = 4) -> str:
    fa, fb = flatten(_without_seeds(a)), flatten(_without_seeds(b))
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>"))
    shown = [f"{k.replace('/', '.')} ({json.dumps(fa.get(k), default=str)} vs {json.dumps(fb.get(k), default=str)})"
             for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


GroupKey = tuple[str, str, str, str]


def _groups(runs: list[_Run], warnings: list[str]) -> tuple[dict[GroupKey, list[_Run]], set[GroupKey]]:
    """Runs by (dataset, encoder, variant, protocol), one per seed; and the groups whose seeds mix configs."""
    grouped: dict[GroupKey, list[_Run]] = {}
    for run in runs:
        grouped.setdefault((run.dataset, run.encoder, run.variant, run.protocol), []).append(run)
    mixed: set[GroupKey] = set()
    out: dict[GroupKey, list[_Run]] = {}
    for key, members in grouped.items():
        by_config: dict[str, list[_Run]] = {}
        for run in members:
            if run.fingerprint is not None:
                by_config.setdefault(run.fingerprint, []).append(run)
        if len(by_config) > 1:
            mixed.add(key)
            first, second = (runs_[0] for runs_ in list(by_config.values())[:2])
            files = "; ".join(f"config {fp}: " + ", ".join(r.where for r in rs) for fp, rs in by_config.items())
            warnings.append(f"{key[0]}/{key[1]} {key[2]} × {key[3]}: its seeds ran different configs, not averaged "
                            f"(cell shows 'mixed configs'). {files}. They differ in "
                            f"{_config_difference(first.record['config'], second.record['config'])}")
        seen: dict[Any, _Run] = {}
        for run in members:
            if run.seed in seen:
                warnings.append(f"{key[0]}/{key[1]} {key[2]} × {key[3]} seed {run.seed} has two records: "
                                f"{seen[run.seed].where} (used) and {run.where} (ignored)")
                continue
            seen[run.seed] = run
        out[key] = list(seen.values())
    return out, mixed


# ---------------------------------------------------------------------------------------------------------------
# Cells


@dataclass
class _Obs:
    """One seed's number for a cell, and where it comes from (for intervals)."""

    run: _Run
    metric: str
    value: float


def _stat_of(observations: list[_Obs], seeds: int, failed: int) -> Stat:
    n = len(observations)
    if n == 0:
        return Stat(n=0, seeds=seeds, failed=failed, missing=seeds - failed,
                    status="failed" if failed and failed == seeds else "ok")
    values = [o.value for o in observations]
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Stat(mean=mean, std=std, n=n, seeds=seeds, failed=failed, missing=seeds - failed - n)


def _variant_cell(runs: list[_Run], metric: str) -> tuple[Stat | None, list[_Obs]]:
    """The cell of one group for ``metric`` (None: no seed reports it and none failed)."""
    considered = [r for r in runs if r.status != "skipped"]
    if not considered:
        return Stat(status="n/a"), []
    ok = [r for r in considered if r.status == "ok"]
    failed = len(considered) - len(ok)
    if metric and ok and not any(metric in r.metrics for r in ok):
        return None, []
    observations = [_Obs(r, metric, float(r.metrics[metric])) for r in ok if _is_number(r.metrics.get(metric))]
    return _stat_of(observations, len(considered), failed), observations


def _reference_cell(runs: list[_Run], metric: str, warnings: list[str], where: str
                    ) -> tuple[Stat | None, list[_Obs]]:
    """A reference row's cell: per seed, the value every variant's record agrees on (gray and ground-truth rows
    do not depend on the pretext); seeds whose records disagree make the cell ``differs by variant``."""
    by_seed: dict[Any, list[_Obs]] = {}
    for run in runs:
        if run.status == "ok" and _is_number(run.metrics.get(metric)):
            by_seed.setdefault(run.seed, []).append(_Obs(run, metric, float(run.metrics[metric])))
    if not by_seed:
        return None, []
    observations = []
    for seed, obs in sorted(by_seed.items(), key=lambda kv: str(kv[0])):
        if any(not math.isclose(o.value, obs[0].value, rel_tol=1e-9, abs_tol=1e-9) for o in obs):
            warnings.append(f"{where} {metric} seed {seed}: the variants' records disagree "
                            f"({', '.join(f'{o.run.where}: {o.value:g}' for o in obs)}); not shown")
            return Stat(status="differs by variant"), []
        observations.append(obs[0])
    return _stat_of(observations, len(observations), 0), observations


# ---------------------------------------------------------------------------------------------------------------
# Intervals


class _PerImageCache:
    def __init__(self, warnings: list[str]) -> None:
        self.warnings = warnings
        self.loaded: dict[str, dict[str, Any]] = {}

    def get(self, run: _Run) -> dict[str, Any]:
        from sslbench.records import RecordError, read_per_image

        if run.path is None:
            return {}
        if run.path not in self.loaded:
            try:
                self.loaded[run.path] = read_per_image(run.path)
            except RecordError as exc:
                self.warnings.append(f"{exc}; no intervals from it")
                self.loaded[run.path] = {}
        return self.loaded[run.path]


def _interval(observations: list[_Obs], cache: _PerImageCache, warnings: list[str]) -> tuple[float, float] | None:
    """The bootstrap interval of the cell's mean over seeds, or None when a seed has no per-image values for the
    metric or they do not reproduce the recorded number."""
    from sslbench.bootstrap import bootstrap_interval, metric_value

    items = []
    for obs in observations:
        item = cache.get(obs.run).get(obs.metric)
        if item is None:
            return None
        recomputed = metric_value(item)
        if not math.isclose(recomputed, obs.value, rel_tol=1e-4, abs_tol=1e-6):
            warnings.append(f"{obs.run.where}: per-image values give {obs.metric} = {recomputed:.6g}, the record "
                            f"says {obs.value:.6g}; no interval")
            return None
        items.append(item)
    try:
        interval = bootstrap_interval(items)
    except ValueError as exc:
        warnings.append(f"{observations[0].run.dataset}/{observations[0].run.encoder} {observations[0].run.variant}"
                        f" × {observations[0].run.protocol} {observations[0].metric}: {exc}; no interval")
        return None
    return (interval.low, interval.high) if math.isfinite(interval.low) else None


# ---------------------------------------------------------------------------------------------------------------
# Building the table


def _variant_order(name: str, pretext: str) -> tuple[int, list[Any]]:
    """Scratch baselines first, the supervised bound last, the rest in natural order of the variant's name."""
    return (BOUNDS.get(pretext, 1), natural_key(name))


def _metric_order(metric: str) -> tuple[int, list[Any]]:
    root = metric.split("/", 1)[0]
    return ({"layer": 0, "best": 1, "reference": 3}.get(root, 2), natural_key(metric))


def _select_metrics(available: Iterable[str], wanted: Sequence[str] | None) -> list[str]:
    available = sorted(set(available), key=natural_key)
    if not wanted:
        return [m for m in available if _shown_by_default(m)]

    def matches(metric: str, name: str) -> bool:
        return metric == name or metric.endswith("/" + name) or metric.startswith(name + "/")

    unmatched = [name for name in wanted if not any(matches(m, name) for m in available)]
    if unmatched:
        raise UsageError(f"--metrics {', '.join(unmatched)}: no record has such a metric; available: "
                         f"{', '.join(available) or '(none)'}")
    return [m for m in available if any(matches(m, name) for name in wanted)]


def _option_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sorted(options.items()))


def _variant_notes(runs: list[_Run]) -> list[str]:
    described: dict[str, set[str]] = {}
    pretexts = {run.variant: run.pretext for run in runs}
    for run in runs:
        if run.options or run.variant != run.pretext:
            text = (f"{run.pretext} with {_option_text(run.options)}" if run.options
                    else f"{run.pretext} with its default options")
            described.setdefault(run.variant, set()).add(text)
    return [f"{variant}: {' | '.join(sorted(texts))}"
            for variant, texts in sorted(described.items(), key=lambda kv: _variant_order(kv[0], pretexts[kv[0]]))]


def _rank(table: Table) -> None:
    """Best (1) and second best (2) per column among the ranked variants of each (dataset, encoder), on the
    values as shown (rounded); nothing when there are fewer than two, or they all tie."""
    for column in table.columns:
        blocks: dict[tuple[str, str], list[tuple[float, Row]]] = {}
        for row in table.rows:
            stat = table.cells.get((row, column))
            if (row.kind != "variant" or row.bound != 1 or stat is None or stat.mean is None
                    or stat.status != "ok"):
                continue
            value = round(stat.mean, _digits(column.leaf, table.digits))
            blocks.setdefault((row.dataset, row.encoder), []).append(
                (-value if column.leaf in LOWER_IS_BETTER else value, row))
        for candidates in blocks.values():
            levels = sorted({v for v, _ in candidates}, reverse=True)
            if len(candidates) < 2 or len(levels) < 2:
                continue
            for value, row in candidates:
                if value == levels[0]:
                    table.ranks[(row, column)] = 1
                elif len(candidates) >= 3 and len(levels) > 1 and value == levels[1]:
                    table.ranks[(row, column)] = 2


def _published_rows(table: Table, keys: Sequence[str]) -> None:
    from sslbench.published import get_reference

    for key in keys:
        try:
            ref = get_reference(key)
        except ValueError as exc:
            raise UsageError(f"--reference: {exc}") from None
        placed = {pc.name: Column(pc.protocol, pc.metric) for pc in ref.columns
                  if pc.protocol and Column(pc.protocol, pc.metric) in table.columns}
        mapping = "; ".join(f"{pc.name} = {pc.protocol} {pc.metric}" for pc in ref.columns if pc.protocol)
        explained = "; ".join(f"{pc.name} = {pc.protocol} {pc.metric}" + (f": {pc.note}" if pc.note else "")
                              for pc in ref.columns if pc.protocol)
        unmapped = "; ".join(f"{pc.name}: {pc.note}" for pc in ref.columns if not pc.protocol)
        head = f"published {key}: {ref.source}; {ref.setting}."
        if not placed:
            table.notes.append(f"{head} None of its columns corresponds to a column of this table ({mapping}); "
                               "no published row shown.")
            continue
        for prow in ref.rows:
            values = {name: v for name, v in prow.values.items() if name in placed}
            if not values:
                continue
            row = Row("published", "published", key, prow.method)
            table.rows.append(row)
            for name, by_row in table.attributes.items():
                by_row[row] = row.dataset if name == "dataset" else ""
            for name, value in values.items():
                table.cells[(row, placed[name])] = Stat(mean=value, n=1, seeds=1, status="published",
                                                        source=ref.source)
        text = f"{head} Columns: {explained}."
        if unmapped:
            text += f" Not shown (no corresponding sslbench metric): {unmapped}."
        text += "".join(f" {c}" for c in ref.caveats)
        table.notes.append(text)


def _columns(runs: list[_Run], selected: list[str], filtered: bool, layout: str) -> list[Column]:
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


def _fill(rows: list[Row], columns: list[Column], groups: dict[GroupKey, list[_Run]], mixed: set[GroupKey],
          selected: list[str], layout: str, warnings: list[str]
          ) -> tuple[dict[tuple[Row, Column], Stat], dict[tuple[Row, Column], list[_Obs]]]:
    """Append the rows of every (dataset, encoder) block to ``rows`` and compute their cells."""
    cells: dict[tuple[Row, Column], Stat] = {}
    observations: dict[tuple[Row, Column], list[_Obs]] = {}
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
                stat, obs = _reference_cell(pool, metric, warnings, f"{dataset}/{encoder} {column.protocol}")
                if stat is not None:
                    cells[(row, column)], observations[(row, column)] = stat, obs
            if any(key[0] == row for key in cells):
                rows.append(row)
        pretexts = {v: rs[0].pretext for (d, e, v, _), rs in groups.items() if (d, e) == (dataset, encoder) and rs}
        for variant in sorted(pretexts, key=lambda v: _variant_order(v, pretexts[v])):
            row = Row("variant", dataset, encoder, variant, BOUNDS.get(pretexts[variant], 1))
            rows.append(row)
            for column in columns:
                key = (dataset, encoder, variant, column.protocol)
                if key in mixed:
                    cells[(row, column)] = Stat(status="mixed configs")
                elif key in groups:
                    stat, obs = _variant_cell(groups[key], column.metric)
                    if stat is not None:
                        cells[(row, column)], observations[(row, column)] = stat, obs
    return cells, observations


def _row_attributes(rows: list[Row], groups: dict[GroupKey, list[_Run]]
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


def _add_intervals(table: Table, observations: dict[tuple[Row, Column], list[_Obs]]) -> None:
    """Bootstrap intervals for every numeric cell whose seeds all have per-image values; in a column where some
    cell has one, the cells that could not get one are marked."""
    cache = _PerImageCache(table.warnings)
    for key, obs in observations.items():
        if table.cells[key].n:
            table.cells[key].ci = _interval(obs, cache, table.warnings)
    for column in table.columns:
        stats = [table.cells[(row, column)] for row in table.rows if (row, column) in table.cells]
        if any(s.ci for s in stats):
            for s in stats:
                s.no_ci = s.n > 0 and s.ci is None


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
    runs = [_run(r) for r in records]
    protocols = {r.protocol for r in runs}
    named = [m for m in (metrics or []) if m in protocols]
    if named:  # a protocol's name selects that protocol's columns; the other names filter its metrics
        runs = [r for r in runs if r.protocol in named]
        metrics = [m for m in metrics or [] if m not in named] or None
    warnings: list[str] = []
    groups, mixed = _groups(runs, warnings)
    available = {m for r in runs if r.status == "ok" for m, v in r.metrics.items() if _is_metric_value(v)}
    selected = _select_metrics(available, metrics)
    columns = _columns(runs, selected, bool(metrics), layout)
    rows: list[Row] = []
    cells, observations = _fill(rows, columns, groups, mixed, selected, layout, warnings)
    constants, attributes = _row_attributes(rows, groups)
    table = Table(rows=rows, columns=columns, cells=cells, ranks={}, attributes=attributes, constants=constants,
                  notes=[], warnings=warnings, digits=digits, ci=ci, synthetic=any(r.synthetic for r in runs))
    if ci:
        _add_intervals(table, observations)
    numeric = [s for s in cells.values() if s.n and s.status == "ok"]
    counts = {s.n for s in numeric}
    table.uniform_n = counts.pop() if len(counts) == 1 and all(s.n == s.seeds for s in numeric) else None
    _rank(table)
    _published_rows(table, references)
    table.notes[:0] = _notes(table, runs)
    return table


def _notes(table: Table, runs: list[_Run]) -> list[str]:
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


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _digits(leaf: str, digits: int) -> int:
    return max(digits, 3) if leaf in FINE_LEAVES else digits


def cell_text(table: Table, row: Row, column: Column) -> str:
    """The text of one cell, without emphasis."""
    stat = table.cells.get((row, column))
    if stat is None:
        return ""
    if stat.status not in ("ok", "published"):
        if stat.status == "failed" and stat.seeds > 1:
            return f"failed ({stat.failed}/{stat.seeds})"
        return stat.status
    d = _digits(column.leaf, table.digits)
    if stat.status == "published":
        return f"{stat.mean:.{max(d, _decimals(stat.mean))}f}"
    if stat.n == 0:
        text = "—"
    elif stat.ci is not None:
        text = f"{stat.mean:.{d}f} [{stat.ci[0]:.{d}f}, {stat.ci[1]:.{d}f}]"
    else:
        text = f"{stat.mean:.{d}f}" + (f" ± {stat.std:.{d}f}" if stat.n > 1 else "") + ("†" if stat.no_ci else "")
    if stat.n < stat.seeds:
        parts = [f"{stat.failed} failed"] if stat.failed else []
        parts += [f"{stat.missing} null"] if stat.missing else []
        text += f" ({stat.n}/{stat.seeds}; {', '.join(parts)})"
    elif table.uniform_n is None:
        text += f" (n={stat.n})"
    return text


def _decimals(value: float) -> int:
    """Decimals a published number was printed with (47.18 -> 2)."""
    text = f"{value:.6f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def _caption(table: Table) -> str:
    parts = [f"{k}: {v}" for k, v in table.constants.items()]
    return "sslbench comparison" + (f" ({'; '.join(parts)})" if parts else "") + "."


def _index(table: Table) -> list[tuple[str, dict[Row, str]]]:
    return [*table.attributes.items(), ("variant", {row: row.label for row in table.rows})]


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def _markdown(table: Table) -> str:
    index = _index(table)
    labels = table.flat_labels()
    header = [name for name, _ in index] + [labels[c] for c in table.columns]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join(["---"] * len(index) + ["---:"] * len(table.columns)) + "|"]
    for row in table.rows:
        names = [_md_escape(by_row[row]) for _, by_row in index]
        if row.kind == "published":
            names = [f"*{n}*" if n else n for n in names]
        cells = []
        for column in table.columns:
            text = _md_escape(cell_text(table, row, column))
            rank = table.ranks.get((row, column))
            if text and row.kind == "published":
                text = f"*{text}*"
            elif rank == 1:
                text = f"**{text}**"
            elif rank == 2:
                text = f"<u>{text}</u>"
            cells.append(text)
        lines.append("| " + " | ".join(names + cells) + " |")
    lines += ["", _caption(table), ""]
    lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines)


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
#: Unicode the tables print, as LaTeX that compiles with any input encoding.
_LATEX_UNICODE = {"±": r"$\pm$", "†": r"$^\dagger$", "—": "---", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``\\ & % $ # _ { } ~ ^``)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def _latex_unicode(text: str) -> str:
    for char, repl in _LATEX_UNICODE.items():
        text = text.replace(char, repl)
    return text


def _latex(table: Table, label: str = "tab:sslbench") -> str:
    import pandas as pd

    index = _index(table)
    labels = table.labels()
    two_levels = any(sub for _, sub in labels.values())
    col_index = (pd.MultiIndex.from_tuples([labels[c] for c in table.columns]) if two_levels
                 else pd.Index([labels[c][0] for c in table.columns]))
    row_index = pd.MultiIndex.from_tuples([tuple(by_row[row] for _, by_row in index) for row in table.rows],
                                          names=[name for name, _ in index])
    body = [[cell_text(table, row, c) for c in table.columns] for row in table.rows]
    frame = pd.DataFrame(body, index=row_index, columns=col_index)
    styles = pd.DataFrame([[("itshape: ;" if row.kind == "published" and body[i][j] else
                             {1: "bfseries: ;", 2: "underline: --rwrap;"}.get(table.ranks.get((row, c)), ""))
                            for j, c in enumerate(table.columns)] for i, row in enumerate(table.rows)],
                          index=row_index, columns=col_index)
    published = [row.kind == "published" for row in table.rows]
    styler = (frame.style.format(escape="latex").format_index(escape="latex", axis=0)
              .format_index(escape="latex", axis=1).apply(lambda _: styles, axis=None))
    for level in range(len(index)):
        styler = styler.apply_index(lambda s: ["itshape: ;" if p else "" for p in published], axis=0, level=level)
    text = styler.to_latex(environment="table", hrules=True, caption=latex_escape(_caption(table)), label=label,
                           position_float="centering", column_format="l" * len(index) + "r" * len(table.columns),
                           multicol_align="c", multirow_align="naive", siunitx=False)
    lines = text.splitlines()
    top = lines.index(r"\toprule")
    if two_levels:
        rules, start = [], len(index) + 1
        groups = [g for g, _ in (labels[c] for c in table.columns)]
        for group in dict.fromkeys(groups):
            width = groups.count(group)
            if width > 1:
                rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        if rules:
            lines.insert(top + 2, " ".join(rules))
    mid = lines.index(r"\midrule", top)
    rule_at = {i for i, row in enumerate(table.rows)
               if i and (row.kind != table.rows[i - 1].kind or (row.dataset, row.encoder)
                         != (table.rows[i - 1].dataset, table.rows[i - 1].encoder))}
    for i in sorted(rule_at, reverse=True):
        lines.insert(mid + 1 + i, r"\midrule")
    end = lines.index(r"\end{tabular}")
    notes = [latex_escape(note) for note in table.notes]
    lines[end + 1:end + 1] = [r"\par\smallskip", r"{\footnotesize\raggedright"] + [n + r"\par" for n in notes] + ["}"]
    packages = " ".join(r"\usepackage{" + p + "}" for p in LATEX_PACKAGES)
    head = [f"% sslbench table: needs {packages} in the preamble"]
    return "\n".join(head + [_latex_unicode(line) for line in lines])


def _csv(table: Table) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "encoder", "variant", "protocol", "metric", "mean", "std", "n", "seeds", "failed",
                     "null", "status", "ci_low", "ci_high", "row", "source"])

    def number(x: float | None) -> str:
        return "" if x is None else format(float(x), ".12g")

    for row in table.rows:
        for column in table.columns:
            stat = table.cells.get((row, column))
            if stat is None:
                continue
            metric = f"reference/{row.name}/{column.metric}" if row.kind == "reference" else column.metric
            name = row.name if row.kind != "reference" else REFERENCE_ROWS.get(row.name, row.name)
            writer.writerow([row.dataset, row.encoder, name, column.protocol, metric, number(stat.mean),
                             number(stat.std if stat.n > 1 else None), stat.n, stat.seeds, stat.failed, stat.missing,
                             stat.status, number(stat.ci[0] if stat.ci else None),
                             number(stat.ci[1] if stat.ci else None), row.kind, stat.source])
    return buffer.getvalue()


def render(table: Table, fmt: str = "md") -> str:
    """``table`` as Markdown, LaTeX (a ``table`` float through pandas' Styler, booktabs) or tidy CSV."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return _csv(table)
    if not table.rows:
        return "(no records)"
    return _latex(table) if fmt == "latex" else _markdown(table)


def make_table(records: Iterable[dict[str, Any]], fmt: str = "md", metrics: Sequence[str] | None = None,
               digits: int = 1, *, layout: str = "columns", ci: bool = False, references: Sequence[str] = ()) -> str:
    """Render the comparison of ``records`` as ``md``, ``latex`` or ``csv`` (see :func:`build_table`)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return render(build_table(records, metrics, layout=layout, ci=ci, references=references, digits=digits), fmt)


def comparison_frame(records: Iterable[dict[str, Any]], metrics: Sequence[str] | None = None, digits: int = 1
                     ) -> tuple[Any, bool]:
    """The comparison as a pandas DataFrame of texts (dataset, encoder, variant, then one column per protocol
    metric, constant columns kept) and whether any record comes from synthetic data: for other renderers (HTML)."""
    import pandas as pd

    table = build_table(records, metrics, digits=digits)
    labels = table.flat_labels()
    body = [[row.dataset, row.encoder, row.label] + [cell_text(table, row, c) for c in table.columns]
            for row in table.rows]
    frame = pd.DataFrame(body, columns=["dataset", "encoder", "variant"] + [labels[c] for c in table.columns])
    return frame, table.synthetic


def print_rich(table: Table, console: Any, fallback: Callable[[str], None] = print) -> None:
    """The table as a rich table on ``console`` when it fits the terminal's width; as Markdown (never truncated)
    when it does not."""
    from rich.measure import Measurement
    from rich.table import Table as RichTable
    from rich.text import Text

    index = _index(table)
    labels = table.flat_labels()
    rich = RichTable(title=_caption(table), show_lines=False)
    for name, _ in index:
        rich.add_column(name, justify="left", no_wrap=True)
    for column in table.columns:
        rich.add_column(labels[column], justify="right", no_wrap=True)
    for i, row in enumerate(table.rows):
        names = [by_row[row] for _, by_row in index]
        cells = []
        for column in table.columns:
            style = {1: "bold", 2: "underline"}.get(table.ranks.get((row, column)), "")
            cells.append((cell_text(table, row, column), "italic" if row.kind == "published" else style))
        end_section = i + 1 < len(table.rows) and table.rows[i + 1].kind != row.kind
        rich.add_row(*[Text(n, style="italic" if row.kind == "published" else "") for n in names],
                     *[Text(t, style=s) for t, s in cells], end_section=end_section)
    natural = Measurement.get(console, console.options.update_width(10 ** 6), rich).maximum
    if natural > console.width:
        fallback(_markdown(table))
        return
    console.print(rich)
    for note in table.notes:
        console.print(note, markup=False, highlight=False, soft_wrap=True)

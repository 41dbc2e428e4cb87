"""Bootstrap intervals of the cells (:mod:`sslbench.bootstrap`), from the per-image values the records point to."""

from __future__ import annotations

import math
from typing import Any

from sslbench.tables.cells import Obs
from sslbench.tables.model import Column, Row, Table
from sslbench.tables.runs import Run

__all__ = ["add_intervals"]


class _PerImageCache:
    def __init__(self, warnings: list[str]) -> None:
        self.warnings = warnings
        self.loaded: dict[str, dict[str, Any]] = {}

    def get(self, run: Run) -> dict[str, Any]:
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


def _interval(observations: list[Obs], cache: _PerImageCache, warnings: list[str]) -> tuple[float, float] | None:
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


def add_intervals(table: Table, observations: dict[tuple[Row, Column], list[Obs]]) -> None:
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

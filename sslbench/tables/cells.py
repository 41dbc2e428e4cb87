"""One group's runs to one cell (:class:`~sslbench.tables.model.Stat`): mean ± std over seeds.

- A cell says how many seeds it averages. When every cell has the same number, the notes say it once; otherwise
  each cell carries ``(n=k)``, and a cell where some seeds failed or reported no number shows e.g.
  ``61.2 ± 0.4 (2/3; 1 failed)``. A null metric (a NaN or infinity in the run) is not a number: it is counted
  as missing, never averaged.
- A reference row's cell (gray, ground truth) holds, per seed, the value every variant's record agrees on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sslbench.tables.leaves import is_number
from sslbench.tables.model import Stat
from sslbench.tables.runs import Run

__all__ = ["Obs", "variant_cell", "reference_cell"]


@dataclass
class Obs:
    """One seed's number for a cell, and where it comes from (for intervals)."""

    run: Run
    metric: str
    value: float


def _stat_of(observations: list[Obs], seeds: int, failed: int) -> Stat:
    n = len(observations)
    if n == 0:
        return Stat(n=0, seeds=seeds, failed=failed, missing=seeds - failed,
                    status="failed" if failed and failed == seeds else "ok")
    values = [o.value for o in observations]
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Stat(mean=mean, std=std, n=n, seeds=seeds, failed=failed, missing=seeds - failed - n)


def variant_cell(runs: list[Run], metric: str) -> tuple[Stat | None, list[Obs]]:
    """The cell of one group for ``metric`` (None: no seed reports it and none failed)."""
    considered = [r for r in runs if r.status != "skipped"]
    if not considered:
        return Stat(status="n/a"), []
    ok = [r for r in considered if r.status == "ok"]
    failed = len(considered) - len(ok)
    if metric and ok and not any(metric in r.metrics for r in ok):
        return None, []
    observations = [Obs(r, metric, float(r.metrics[metric])) for r in ok if is_number(r.metrics.get(metric))]
    return _stat_of(observations, len(considered), failed), observations


def reference_cell(runs: list[Run], metric: str, warnings: list[str], where: str) -> tuple[Stat | None, list[Obs]]:
    """A reference row's cell: per seed, the value every variant's record agrees on (gray and ground-truth rows
    do not depend on the pretext); seeds whose records disagree make the cell ``differs by variant``."""
    by_seed: dict[Any, list[Obs]] = {}
    for run in runs:
        if run.status == "ok" and is_number(run.metrics.get(metric)):
            by_seed.setdefault(run.seed, []).append(Obs(run, metric, float(run.metrics[metric])))
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

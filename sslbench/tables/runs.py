"""Records to runs, and runs to groups: one group per (dataset, encoder, variant, protocol), one run per seed.

What grouping refuses to hide:

- Seeds of one (dataset, encoder, variant, protocol) that ran different configurations are never averaged: the
  cell reads ``mixed configs`` and a warning names the files and the options that differ. Configurations are
  compared without their seeds (a record's ``config_hash`` covers its seed, so it differs between the seeds of
  any experiment).
- Two records of the same seed count once (the first in path order), with a warning.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sslbench.records import flatten
from sslbench.tables.leaves import is_number

__all__ = ["Run", "GroupKey", "to_run", "group_runs"]


@dataclass
class Run:
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
        elif is_number(budget.get("epochs")):
            parts.append(f"{budget['epochs']:g} epoch" + ("s" if budget["epochs"] != 1 else ""))
        if budget.get("batch_size"):
            parts.append(f"batch {budget['batch_size']}")
    text = ", ".join(parts)
    counts = record.get("counts")
    if isinstance(counts, dict):
        images = [f"{v} {k.removesuffix('_images').replace('_', ' ')}" for k, v in counts.items() if is_number(v)]
        if images:
            text += ("; " if text else "") + ", ".join(images) + " images"
    return text


def to_run(record: dict[str, Any]) -> Run:
    """The fields of ``record`` a table reads (metrics flattened, config fingerprinted without seeds)."""
    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    pretext = str(record.get("pretext"))
    options = record.get("variant_options")
    return Run(
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


def group_runs(runs: list[Run], warnings: list[str]) -> tuple[dict[GroupKey, list[Run]], set[GroupKey]]:
    """Runs by (dataset, encoder, variant, protocol), one per seed; and the groups whose seeds mix configs."""
    grouped: dict[GroupKey, list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.dataset, run.encoder, run.variant, run.protocol), []).append(run)
    mixed: set[GroupKey] = set()
    out: dict[GroupKey, list[Run]] = {}
    for key, members in grouped.items():
        by_config: dict[str, list[Run]] = {}
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
        seen: dict[Any, Run] = {}
        for run in members:
            if run.seed in seen:
                warnings.append(f"{key[0]}/{key[1]} {key[2]} × {key[3]} seed {run.seed} has two records: "
                                f"{seen[run.seed].where} (used) and {run.where} (ignored)")
                continue
            seen[run.seed] = run
        out[key] = list(seen.values())
    return out, mixed

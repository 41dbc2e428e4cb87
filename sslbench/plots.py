"""Figures from run records: per-layer probe curves and training-loss curves, saved as PNG and PDF.

:func:`layer_series` and :func:`loss_series` turn records into :class:`Series` (one per variant and configuration:
mean over seeds and a band); :func:`layer_figure` and :func:`loss_figure` draw them on a matplotlib ``Figure`` built
without pyplot (no global figure state, the Agg canvas); :func:`save_figure` writes PNG and PDF.

Only ``ok`` records are plotted. Seeds are averaged only within one configuration: records of one variant whose
configs differ by more than their seeds are different configs and get separate lines, labelled with a short hash
of the seed-free config. A seed recorded twice for one configuration (e.g. two ``--runs`` folders with the same
runs) counts once, its first record in path order.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from sslbench.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Series", "read_runs", "variant_of", "config_key", "training_history", "layer_series", "loss_series",
           "loss_name", "INTERVALS", "BAND_NAMES", "layer_figure", "loss_figure", "save_figure", "figure_png",
           "write_tensorboard_scalars", "write_tensorboard_images", "NoDataError"]

#: Bands of the per-layer curves: ``auto`` (bootstrap where per-image values allow it, else std) or ``std``.
INTERVALS = ("auto", "std")
BAND_NAMES = {"std": "± std over seeds", "bootstrap95": "95% bootstrap interval over test images"}


class NoDataError(UsageError):
    """The records hold nothing that a requested figure can show."""


@dataclass
class Series:
    """One plotted line: the mean over seeds of one (dataset, encoder, protocol, variant, configuration) and its band.

    ``x`` holds tap names (layer curves) or training steps (loss curves); ``mean``, ``low`` and ``high`` are aligned
    with it (NaN where no seed has a value). ``band`` says what ``low``/``high`` are: ``"std"`` (mean ± sample std
    over seeds, collapsed onto the mean for a single seed) or ``"bootstrap95"`` (the 95% bootstrap interval over
    test images of the seed mean, :mod:`sslbench.bootstrap`).
    """

    dataset: str
    encoder: str
    protocol: str | None
    variant: str
    config: str
    label: str
    x: list[Any]
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: list[int] = field(default_factory=list)
    band: str = "std"

    @property
    def panel(self) -> tuple[str, str, str | None]:
        return self.dataset, self.encoder, self.protocol


def read_runs(runs: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every record under ``runs`` and the problems met reading them (unreadable files, unknown schemas).

    Accepts each form :func:`sslbench.records.load_records` has had: a plain list, a list carrying ``problems``, or
    a ``(records, problems)`` pair.
    """
    from sslbench.records import load_records

    result = load_records(Path(runs))
    if isinstance(result, tuple):
        records, problems = result
    else:
        records, problems = result, getattr(result, "problems", [])
    return list(records), [str(problem) for problem in problems]


def variant_of(record: dict[str, Any]) -> str:
    """The record's variant (row name); ``sslbench.run/1`` records have none and are named by their pretext."""
    return str(record.get("variant") or record.get("pretext") or "?")


def _without_seeds(value: Any, in_options: bool = False) -> Any:
    if isinstance(value, dict):
        return {k: _without_seeds(v, in_options or str(k).endswith("_options")) for k, v in value.items()
                if k != "seed" or in_options}
    if isinstance(value, list):
        return [_without_seeds(v, in_options) for v in value]
    return value


def config_key(config: Any) -> str:
    """A short hash of ``config`` without its run seeds: equal for the seeds of one configuration.

    Every ``seed`` entry is dropped except inside plugin options (``dataset_options.seed`` picks the generated data,
    which is part of the configuration). A record's own ``config_hash`` includes the run seed, so it cannot say which
    records may be averaged.
    """
    text = json.dumps(_without_seeds(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _pretext_config(record: dict[str, Any]) -> Any:
    """The part of a record's config that decides its pretext training (shared by all protocols of one run)."""
    config = record.get("config") or {}
    for key in ("pretext_run", "pretext"):
        if isinstance(config.get(key), dict):
            return config[key]
    return {k: v for k, v in config.items() if not k.startswith(("protocol", "eval"))}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _value(values: Any, metric: str) -> float:
    number = _number(values.get(metric)) if isinstance(values, dict) else None
    return np.nan if number is None else number


def _ok(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (r for r in records if r.get("status", "ok") == "ok")


def _labels(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], str]:
    """Line labels: the variant, plus the config hash where one variant has several configs in a panel."""
    configs: dict[tuple[Any, ...], set[str]] = {}
    for key in keys:
        configs.setdefault(key[:-1], set()).add(key[-1])
    return {key: key[-2] if len(configs[key[:-1]]) == 1 else f"{key[-2]} [{key[-1]}]" for key in keys}


def _aggregate(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over axis 0, ignoring NaN; std is 0 where fewer than two seeds have a value."""
    present = np.isfinite(values)
    count = present.sum(axis=0)
    filled = np.where(present, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, filled.sum(axis=0) / np.maximum(count, 1), np.nan)
        squares = np.where(present, (values - mean) ** 2, 0.0).sum(axis=0)
        std = np.where(count > 1, np.sqrt(squares / np.maximum(count - 1, 1)), 0.0)
    return mean, std


def _first_per_seed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[Any, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: str(r.get("_path", ""))):
        seen.setdefault(record.get("seed"), record)
    return [seen[s] for s in sorted(seen, key=lambda s: (s is None, s if isinstance(s, int) else 0, str(s)))]


def _bootstrap_band(members: list[dict[str, Any]], taps: list[str], metric: str
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """The 95% bootstrap interval over test images of the seed mean at every tap (:mod:`sslbench.bootstrap`, from
    the per-image values saved beside the records), or None unless every seed has per-image values for every tap
    that reproduce its recorded number."""
    try:
        from sslbench.bootstrap import bootstrap_interval, metric_value
        from sslbench.records import read_per_image
    except ImportError:
        return None
    per_seed = []
    for record in members:
        if not record.get("_path"):
            return None
        try:
            per_seed.append(read_per_image(Path(record["_path"])))
        except (OSError, ValueError):
            return None
    low, high = [], []
    for tap in taps:
        items = [values.get(f"layer/{tap}/{metric}") for values in per_seed]
        if any(item is None for item in items):
            return None
        recorded = [_value(record["metrics"]["layer"].get(tap), metric) for record in members]
        if not all(math.isclose(metric_value(item), value, rel_tol=1e-4, abs_tol=1e-6)
                   for item, value in zip(items, recorded)):
            return None
        try:
            interval = bootstrap_interval(items)
        except ValueError:
            return None
        if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
            return None
        low.append(interval.low)
        high.append(interval.high)
    return np.array(low), np.array(high)


def layer_series(records: Iterable[dict[str, Any]], metric: str = "top1", interval: str = "auto") -> list[Series]:
    """Per-layer probe curves: for every ok record whose metrics hold ``layer/<tap>/<metric>``, one series per
    (dataset, encoder, protocol, variant, configuration) over the taps in encoder order (the order the protocol
    reported them in), with the mean over seeds. The band is the 95% bootstrap interval over test images of that
    mean where every seed saved per-image values (``interval="auto"``), else mean ± sample std over seeds."""
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r}: choose one of {', '.join(INTERVALS)}")
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    taps: dict[tuple[Any, ...], list[str]] = {}
    for record in _ok(records):
        layers = (record.get("metrics") or {}).get("layer")
        if not isinstance(layers, dict):
            continue
        reported = [tap for tap, values in layers.items() if not math.isnan(_value(values, metric))]
        if not reported:
            continue
        panel = (record.get("dataset"), record.get("encoder"), record.get("protocol"))
        order = taps.setdefault(panel, [])
        order.extend(tap for tap in reported if tap not in order)
        key = (*panel, variant_of(record), config_key(record.get("config")))
        groups.setdefault(key, []).append(record)
    labels = _labels(list(groups))
    series = []
    for key, members in groups.items():
        members = _first_per_seed(members)
        x = taps[key[:3]]
        values = np.array([[_value(r["metrics"]["layer"].get(tap), metric) for tap in x] for r in members],
                          dtype=float)
        mean, std = _aggregate(values)
        band = _bootstrap_band(members, x, metric) if interval == "auto" else None
        low, high, kind = (*band, "bootstrap95") if band is not None else (mean - std, mean + std, "std")
        series.append(Series(*key, label=labels[key], x=list(x), mean=mean, low=low, high=high,
                             seeds=[r.get("seed") for r in members], band=kind))
    return series


def training_history(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's logged training points ``[{"step": s, "loss": v, ...}]`` in step order; empty for an untrained
    pretext. ``sslbench.run/1`` records kept only their first and last logged points, so they give those two."""
    train = record.get("train") or {}
    history = train.get("history")
    if not isinstance(history, list) or not history:
        history = [train.get("first_losses"), train.get("last_losses")]
    points: dict[int, dict[str, Any]] = {}
    for point in history:
        if isinstance(point, dict) and _number(point.get("step")) is not None:
            points.setdefault(int(point["step"]), point)
    return [points[s] for s in sorted(points)]


def loss_name(history: list[dict[str, Any]], key: str = "loss") -> str | None:
    """The logged name plotted as the training loss: ``key`` if logged, else the first logged ``loss*`` name (a GAN
    logs ``loss_G`` and ``loss_D``, and its generator's comes first); None if there is none."""
    names = [name for point in history for name, value in point.items() if _number(value) is not None]
    if key in names:
        return key
    return next((name for name in names if name.startswith("loss")), None)


def _loss_groups(records: Iterable[dict[str, Any]], key: str
                 ) -> tuple[dict[tuple[Any, ...], list[dict[str, Any]]], dict[tuple[Any, ...], str]]:
    """Records with a logged loss grouped by (dataset, encoder, None, variant, pretext config), one per seed (one
    training run serves every protocol of its seed), and the groups' line labels."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for record in _ok(records):
        if loss_name(training_history(record), key) is None:
            continue
        group = (record.get("dataset"), record.get("encoder"), None, variant_of(record),
                 config_key(_pretext_config(record)))
        groups.setdefault(group, []).append(record)
    return {group: _first_per_seed(members) for group, members in groups.items()}, _labels(list(groups))


def loss_series(records: Iterable[dict[str, Any]], key: str = "loss") -> list[Series]:
    """Training-loss curves: one series per (dataset, encoder, variant, pretext configuration) over the steps that
    every seed logged, with mean ± std over seeds of ``key`` (or of the name :func:`loss_name` picks, named in the
    label)."""
    groups, labels = _loss_groups(records, key)
    series = []
    for group, members in groups.items():
        histories = [training_history(r) for r in members]
        name = loss_name(histories[0], key)
        curves = [{int(p["step"]): _number(p.get(name)) for p in history} for history in histories]
        curves = [{s: v for s, v in curve.items() if v is not None} for curve in curves]
        steps = sorted(set.intersection(*(set(curve) for curve in curves)))
        if not steps:
            continue
        values = np.array([[curve[s] for s in steps] for curve in curves], dtype=float)
        mean, std = _aggregate(values)
        label = labels[group] if name == key else f"{labels[group]} ({name})"
        series.append(Series(*group, label=label, x=steps, mean=mean, low=mean - std, high=mean + std,
                             seeds=[r.get("seed") for r in members]))
    return series


def _panels(series: list[Series]) -> dict[tuple[Any, ...], list[Series]]:
    panels: dict[tuple[Any, ...], list[Series]] = {}
    for s in series:
        panels.setdefault(s.panel, []).append(s)
    return panels


def _new_figure(count: int, width: float = 6.4, height: float = 4.2) -> tuple[Figure, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(count, 2)
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


def _title(panel: tuple[Any, ...]) -> str:
    return " · ".join(str(part) for part in panel if part is not None)


def _draw(ax: Any, series: list[Series], positions: bool, band_in_label: bool = False) -> None:
    for s in series:
        x = np.arange(len(s.x)) if positions else np.asarray(s.x, dtype=float)
        seeds = len(s.seeds)
        note = f", {BAND_NAMES[s.band]}" if band_in_label else ""
        (line,) = ax.plot(x, s.mean, marker="o", markersize=3, label=f"{s.label} (n={seeds}{note})")
        line.set_gid(s.label)
        if seeds > 1 or s.band != "std":
            ax.fill_between(x, s.low, s.high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def layer_figure(series: list[Series], metric: str = "top1") -> Figure:
    """One panel per (dataset, encoder, protocol): top-1 of each tap, one line per variant, band over seeds."""
    if not series:
        raise NoDataError(f"no ok record has per-layer metrics layer/<tap>/{metric} (the linear and knn protocols "
                          "report them); nothing to plot")
    panels = _panels(series)
    bands = {s.band for s in series}
    figure, axes = _new_figure(len(panels))
    for ax, (panel, members) in zip(axes, panels.items()):
        _draw(ax, members, positions=True, band_in_label=len(bands) > 1)
        taps = members[0].x
        ax.set_xticks(range(len(taps)), taps)
        ax.set_xlabel("layer (encoder order)")
        ax.set_ylabel(f"{metric} (%)" if metric.startswith("top") else metric)
        ax.set_title(_title(panel))
    band = BAND_NAMES[bands.pop()] if len(bands) == 1 else "as each line says"
    figure.suptitle(f"Per-layer {metric}: mean over seeds; band: {band}", fontsize="medium")
    return figure


def loss_figure(series: list[Series], key: str = "loss") -> Figure:
    """One panel per (dataset, encoder): the training ``key`` per logged step, one line per variant."""
    if not series:
        raise NoDataError(f"no ok record of a trained pretext has train.history with {key!r} (untrained pretexts "
                          "such as random log no loss); nothing to plot")
    panels = _panels(series)
    figure, axes = _new_figure(len(panels))
    for ax, (panel, members) in zip(axes, panels.items()):
        _draw(ax, members, positions=False)
        positive = all(np.nanmin(s.low) > 0 for s in members)
        if positive:
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"training {key}" + (" (log scale)" if positive else ""))
        ax.set_title(_title(panel))
    figure.suptitle(f"Training {key}: mean over seeds at the steps all seeds logged, band ± std", fontsize="medium")
    return figure


def save_figure(figure: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``figure`` as ``<out_dir>/<stem>.png`` (150 dpi) and ``.pdf``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    figure.savefig(paths[0], dpi=150)
    figure.savefig(paths[1])
    return paths


def figure_png(figure: Figure, dpi: int = 110) -> bytes:
    """The PNG bytes of ``figure``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _summary_writer() -> Any:
    """torch's SummaryWriter class, or None when the optional ``tensorboard`` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def _run_dir(log_dir: Path, *parts: Any) -> str:
    return str(Path(log_dir).joinpath(*(str(p).replace("/", "-") for p in parts)))


def write_tensorboard_scalars(records: Iterable[dict[str, Any]], log_dir: Path) -> list[str] | None:
    """Write every numeric ``train.history`` entry of the ok records as TensorBoard scalars ``train/<name>``, one run
    per ``<dataset>/<encoder>/<variant>/seed<seed>`` (the line label, so a config hash is appended where one variant
    has several configs). Returns the run folders, or None when ``tensorboard`` is not installed."""
    writer_class = _summary_writer()
    if writer_class is None:
        return None
    groups, labels = _loss_groups(records, "loss")
    runs = []
    for group, members in groups.items():
        dataset, encoder = group[:2]
        for record in members:
            run_dir = _run_dir(log_dir, dataset, encoder, labels[group], f"seed{record.get('seed')}")
            with writer_class(run_dir) as writer:
                for point in training_history(record):
                    for name, value in point.items():
                        if name != "step" and _number(value) is not None:
                            writer.add_scalar(f"train/{name}", float(value), int(point["step"]))
            runs.append(run_dir)
    return runs


def write_tensorboard_images(images: list[Path], log_dir: Path, tag: str = "colorization") -> bool:
    """Add each PNG in ``images`` to TensorBoard under ``<tag>/<file stem>``; False when ``tensorboard`` is not
    installed."""
    writer_class = _summary_writer()
    if writer_class is None:
        return False
    from PIL import Image

    with writer_class(str(log_dir)) as writer:
        for path in images:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.add_image(f"{tag}/{Path(path).stem}", pixels, dataformats="HWC")
    return True

"""What the user asked for, before anything is resolved: an :class:`Experiment` from a TOML file or from CLI flags.

An experiment file (read with the standard library's ``tomllib``) names the datasets, encoders, seeds, protocols and
pretext **variants**; every table is optional except ``[variants]`` and ``[protocols]``::

    name = "quantized-ablation"          # the experiment's name, recorded with every result
    seeds = [0, 1, 2]

    [budget]                             # pretext training and evaluation budget
    epochs = 2                           # or steps = N
    batch_size = 64
    eval_epochs = 10                     # epochs of every protocol that trains (probes, fine-tuning)

    [datasets.cifar10]                   # one table per dataset; data_root is relative to this file
    subset = 3000                        # images of the pretext split (and of the probe split unless probe_subset)
    eval_subset = 1000                   # images of the evaluation split
    # image_size = 32, pretext_split = "train", probe_split = "train", eval_split = "test", adapter options...

    [encoders.vgg_small]                 # encoder options
    width_mult = 0.5

    [protocols.linear]                   # protocol options; the order of the tables is the order of evaluation
    [protocols.colorization]

    [variants.quantized]                 # a variant named after its pretext, with the pretext's defaults
    [variants.quantized-norebal]         # a named variant: a base pretext plus options
    pretext = "quantized"
    rebalance = false
    [variants.supervised]
    seeds = [0]                          # per-variant seeds override the experiment's

Harness settings (``device``, ``precision``, ``channels_last``, ``compile``, ``workers``, ``out``, ``cache_dir``, ``checkpoint_every``,
``allow_eval_on_train``, ``decoded_cache``) may stand at the top level; ``out`` and ``cache_dir`` are relative to the file. Command-line
flags build the same structure (``--pretext quantized,regression`` are variants named after their pretexts), and
``--set OWNER.KEY=VALUE`` overrides an option of every variant of a pretext, of one variant, of a protocol, a dataset
or the encoder. Nothing here checks plugin names or option values: :mod:`sslbench.plan` resolves and validates.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslbench.errors import UsageError

__all__ = ["Experiment", "DatasetSpec", "VariantSpec", "Budget", "load_experiment", "apply_settings",
           "VARIANT_NAME"]

#: A variant name is a file-name-safe token (it names record files); ``__`` separates fields in those names.
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
DATASET_KEYS = {"data_root", "image_size", "subset", "probe_subset", "eval_subset", "pretext_split", "probe_split", "eval_split"}
TOP_KEYS = {"name", "seeds", "device", "precision", "channels_last", "compile", "workers", "out", "cache_dir", "checkpoint_every",
            "allow_eval_on_train", "decoded_cache", "budget", "datasets", "encoders", "protocols", "variants"}
BUDGET_KEYS = {"epochs", "steps", "batch_size", "accumulate", "augment", "eval_epochs", "eval_batch_size"}


@dataclass
class Budget:
    """How long pretexts and protocols train: ``steps`` if set, else ``epochs`` over the pretext split."""

    epochs: float = 5.0
    steps: int | None = None
    batch_size: int = 64
    #: Batches per optimiser step of pretext training (gradient accumulation): the effective batch is
    #: batch_size × accumulate. In the checkpoint hash only when not 1, so existing checkpoints keep their names.
    accumulate: int = 1
    #: Random crop (from a reflect-padded image) and horizontal flip of every pretext training batch, on the device
    #: (:mod:`sslbench.datasets.augment`). In the checkpoint hash only when on.
    augment: bool = False
    eval_epochs: float | None = None
    eval_batch_size: int = 128


@dataclass
class DatasetSpec:
    """One dataset as asked for: its registered name, where its files are, sizes, splits and adapter options."""

    name: str
    data_root: str | None = None
    image_size: int | tuple[int, int] | None = None
    subset: int | None = None
    #: Images of the probe split; default: ``subset``.
    probe_subset: int | None = None
    eval_subset: int | None = None
    pretext_split: str | None = None
    probe_split: str | None = None
    eval_split: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantSpec:
    """A row of the results: a name, the pretext plugin it runs and the options that make it this variant."""

    name: str
    pretext: str
    options: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None


@dataclass
class Experiment:
    """Everything ``sslbench run`` was asked to do, unresolved."""

    name: str = "default"
    variants: list[VariantSpec] = field(default_factory=lambda: [
        VariantSpec(name, name) for name in ("random", "supervised", "regression")])
    protocols: dict[str, dict[str, Any]] = field(default_factory=lambda: {"linear": {}})
    datasets: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec("synthetic")])
    encoders: dict[str, dict[str, Any]] = field(default_factory=lambda: {"vgg_small": {}})
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: Budget = field(default_factory=Budget)
    device: str = "auto"
    precision: str = "fp32"
    #: GPU settings that change speed, not what is computed: not part of any hash, recorded in every record's env.
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    #: Read file-backed splits from decoded uint8 memmaps (``sslbench.datasets.decoded_cache``); same data, no hash.
    decoded_cache: bool = True
    out: Path = Path("results/runs")
    cache_dir: Path | None = None
    checkpoint_every: int = 200
    allow_eval_on_train: bool = False
    #: Where it came from: the experiment file's path, or "command line".
    source: str = "command line"


def _table(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a table, got {type(value).__name__}")
    return value


def _seeds(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in value):
        raise UsageError(f"{where} must be a non-empty list of integers, e.g. [0, 1, 2]")
    return list(value)


def _image_size(value: Any, where: str) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return (value[0], value[1])
    raise UsageError(f"{where} must be a positive integer or [height, width]")


def _number(value: Any, key: str, where: str) -> float | int | bool:
    """A budget value with the type the command line gives it (epochs are floats, counts are integers, ``augment``
    is true or false)."""
    if key == "augment":
        if not isinstance(value, bool):
            raise UsageError(f"{where} augment must be true or false, got {value!r}")
        return value
    integer = key in ("steps", "batch_size", "accumulate", "eval_batch_size")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) \
            or value <= 0:
        raise UsageError(f"{where} {key} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value if integer else float(value)


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment file; every problem is a :class:`UsageError` naming the file and the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path}: not valid TOML: {exc}") from exc
    where = f"{path}"
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; the top level takes "
                         f"{', '.join(sorted(TOP_KEYS))}")
    base = path.resolve().parent
    exp = Experiment(name=str(raw.get("name", path.stem)), source=str(path))
    if "seeds" in raw:
        exp.seeds = _seeds(raw["seeds"], f"{where}: seeds")
    for key in ("device", "precision"):
        if key in raw:
            setattr(exp, key, str(raw[key]))
    for key in ("workers", "checkpoint_every"):
        if key in raw:
            if not isinstance(raw[key], int) or raw[key] < (0 if key == "workers" else 1):
                raise UsageError(f"{where}: {key} must be a {'non-negative' if key == 'workers' else 'positive'} "
                                 "integer")
            setattr(exp, key, raw[key])
    for key in ("allow_eval_on_train", "channels_last", "compile", "decoded_cache"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise UsageError(f"{where}: {key} must be true or false")
            setattr(exp, key, raw[key])
    exp.out = base / str(raw.get("out", "runs"))
    if "cache_dir" in raw:
        exp.cache_dir = base / str(raw["cache_dir"])

    budget = _table(raw.get("budget"), f"{where}: [budget]")
    unknown = set(budget) - BUDGET_KEYS
    if unknown:
        raise UsageError(f"{where}: [budget] has no key(s) {', '.join(sorted(unknown))}; it takes "
                         f"{', '.join(sorted(BUDGET_KEYS))}")
    exp.budget = Budget(**{k: _number(budget[k], k, f"{where}: [budget]") for k in BUDGET_KEYS if k in budget})

    datasets = _table(raw.get("datasets"), f"{where}: [datasets]")
    if datasets:
        exp.datasets = []
        for name, table in datasets.items():
            table = dict(_table(table, f"{where}: [datasets.{name}]"))
            spec = DatasetSpec(name=name)
            for key in DATASET_KEYS & set(table):
                setattr(spec, key, table.pop(key))
            spec.image_size = _image_size(spec.image_size, f"{where}: [datasets.{name}] image_size")
            if spec.data_root is not None:
                spec.data_root = str(base / str(spec.data_root))
            spec.options = table
            exp.datasets.append(spec)
    encoders = _table(raw.get("encoders"), f"{where}: [encoders]")
    if encoders:
        exp.encoders = {name: dict(_table(t, f"{where}: [encoders.{name}]")) for name, t in encoders.items()}
    protocols = _table(raw.get("protocols"), f"{where}: [protocols]")
    if not protocols:
        raise UsageError(f"{where}: no [protocols.NAME] table; name at least one protocol, e.g. [protocols.linear]")
    exp.protocols = {name: dict(_table(t, f"{where}: [protocols.{name}]")) for name, t in protocols.items()}
    variants = _table(raw.get("variants"), f"{where}: [variants]")
    if not variants:
        raise UsageError(f"{where}: no [variants.NAME] table; name at least one, e.g. [variants.quantized]")
    exp.variants = []
    for name, table in variants.items():
        table = dict(_table(table, f"{where}: [variants.{name}]"))
        pretext = str(table.pop("pretext", name))
        seeds = _seeds(table.pop("seeds"), f"{where}: [variants.{name}] seeds") if "seeds" in table else None
        exp.variants.append(VariantSpec(name=name, pretext=pretext, options=table, seeds=seeds))
    return exp


def apply_settings(exp: Experiment, settings: list[tuple[str, str, str]]) -> None:
    """Apply ``--set OWNER.KEY=VALUE`` overrides in place.

    OWNER is a variant name (that variant only), a pretext name (every variant of that pretext), a protocol, a
    dataset, ``encoder`` (every encoder) or an encoder name. Values stay strings; the plan parses them against the
    option's type. ``split`` is not an option: splits are chosen with ``--pretext-split``/``--probe-split``/
    ``--eval-split`` (or the experiment file), so a test split cannot slip into training through ``--set``.
    """
    for owner, key, value in settings:
        if key == "split":
            raise UsageError(f"--set {owner}.split: the split is not a dataset option; choose splits with "
                             "--pretext-split, --probe-split and --eval-split (or pretext_split/probe_split/"
                             "eval_split in the experiment file)")
        hit = False
        for variant in exp.variants:
            if owner in (variant.name, variant.pretext):
                variant.options[key] = value
                hit = True
        if owner in exp.protocols:
            exp.protocols[owner][key] = value
            hit = True
        for dataset in exp.datasets:
            if owner == dataset.name:
                if key in DATASET_KEYS:
                    raise UsageError(f"--set {owner}.{key}: use the --{key.replace('_', '-')} flag (or {key} in "
                                     "the experiment file's dataset table)")
                dataset.options[key] = value
                hit = True
        for name, options in exp.encoders.items():
            if owner in ("encoder", name):
                options[key] = value
                hit = True
        if not hit:
            from sslbench.registry import closest

            known = sorted({v.name for v in exp.variants} | {v.pretext for v in exp.variants} | set(exp.protocols)
                           | {d.name for d in exp.datasets} | {"encoder"} | set(exp.encoders))
            near = closest(owner, known)
            hint = f" Did you mean {near!r}?" if near else ""
            raise UsageError(f"--set {owner}.{key}={value}: {owner!r} is none of this run's variants, pretexts, "
                             f"protocols, datasets or encoders ({', '.join(known)}).{hint}")

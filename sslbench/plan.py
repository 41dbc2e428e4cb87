"""The resolved run plan: the single source of truth for one ``sslbench run``.

:func:`resolve_plan` turns an :class:`~sslbench.experiment.Experiment` into a :class:`RunPlan` before any work starts:
every plugin's resolved ``Config`` with its defaults (dataset adapters and encoder factories included, so an unknown
option is a usage error, never a ``TypeError`` deep in a run), the image size, the seeds and three explicit splits per
dataset (``pretext_split``, ``probe_split``, ``eval_split``), each with its data fingerprint. Each :class:`Unit` (one
pretext training: dataset × encoder × variant × seed) carries the hash that names its checkpoint, and each
:class:`Evaluation` the hash and path of its record. The runner, ``--dry-run`` and records all read these objects;
nothing downstream re-derives a size, a seed, a split or a hash.

What the hashes cover:

- **checkpoint**: the resolved pretext config (less its ``inference_options``, which only decoding reads), the encoder
  and dataset configs, the image size, the pretext split, its size and
  data fingerprint, the seed, the training budget, the precision, and the pretext plugin's identity (its ``version``
  attribute, its distribution and that distribution's version). Not the variant's name: two variants with the same
  resolved options share a checkpoint.
- **record**: the checkpoint's config plus the pretext's inference options, the protocol's resolved options and identity, the probe and evaluation
  splits with their fingerprints and sizes, the evaluation batch size and whether evaluating on a training split was
  allowed.

A plan whose evaluation split is also one of its training splits (pretext or probe) is refused unless
``allow_eval_on_train`` is set, and then it is recorded.

Order: every problem that needs no data is found before any dataset is opened (names, every plugin's options with
its ``Config.__post_init__``, splits, what protocols and pretexts need from each dataset's declared ``provides``);
then the datasets are opened (each adapter checks its data root first) and only then fingerprinted.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from sslbench.config import HARNESS_SCHEMA, config_hash, parse_value, resolve_options, to_dict
from sslbench.errors import SslbenchError, UsageError
from sslbench.experiment import VARIANT_NAME, DatasetSpec, Experiment
from sslbench.options import DATASET_COMMON, ENCODER_COMMON, check_requirements, check_split
from sslbench.records import record_path
from sslbench.registry import DATASETS, ENCODERS, PRETEXTS, PROTOCOLS

__all__ = ["RunPlan", "Unit", "Evaluation", "VariantPlan", "DatasetPlan", "EncoderPlan", "ProtocolPlan",
           "resolve_plan", "signature_config"]

# -- option classes for plugins that declare options as keyword arguments ---------------------------------------------
@cache
def signature_config(obj: Any, exclude: tuple[str, ...]) -> tuple[type, bool]:
    """A dataclass of ``obj``'s keyword parameters with defaults (less ``exclude``), and whether it takes ``**kwargs``.

    Dataset adapters and encoder factories declare their options as keyword arguments; this gives them the same
    ``Config`` dataclass the other plugins declare explicitly, so options resolve, validate and hash alike.
    """
    explicit = getattr(obj, "Config", None)
    if isinstance(explicit, type) and dataclasses.is_dataclass(explicit):
        return explicit, False
    fields = []
    extra = False
    for param in inspect.signature(obj).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = True
        if param.name in exclude or param.default is inspect.Parameter.empty:
            continue
        default = param.default
        factory = (lambda d=default: d) if isinstance(default, (list, dict, set)) else None
        # The annotation as written (a string under ``from __future__ import annotations``) lets values be checked
        # against it; it never enters a hash.
        annotation = param.annotation if isinstance(param.annotation, (str, type)) else Any
        fields.append((param.name, annotation, field(default_factory=factory) if factory else field(default=default)))
    name = f"{getattr(obj, '__name__', 'Plugin')}Options"
    return dataclasses.make_dataclass(name, fields), extra


def _resolve_signature_options(obj: Any, exclude: tuple[str, ...], options: dict[str, Any], owner: str,
                               show: str) -> dict[str, Any]:
    config_cls, extra = signature_config(obj, exclude)
    names = {f.name for f in dataclasses.fields(config_cls)}
    known = {k: v for k, v in options.items() if k in names or not extra}
    resolved = to_dict(resolve_options(config_cls, known, owner, show))
    resolved.update({k: parse_value(v) for k, v in options.items() if k not in names and extra})
    return resolved


# -- the plan ---------------------------------------------------------------------------------------------------------
@dataclass
class VariantPlan:
    """One row of the results: a name, its pretext plugin and that plugin's resolved config."""

    name: str
    pretext: str
    pretext_cls: Any
    config: Any
    options: dict[str, Any]
    differs: dict[str, Any]
    seeds: tuple[int, ...]
    provenance: dict[str, Any]

    @property
    def inference_options(self) -> dict[str, Any]:
        """The options used only at inference (decoding): in records, not in the checkpoint hash."""
        names = getattr(self.pretext_cls, "inference_options", ())
        return {k: v for k, v in self.options.items() if k in names}


@dataclass
class EncoderPlan:
    name: str
    options: dict[str, Any]
    provenance: dict[str, Any]


@dataclass
class ProtocolPlan:
    name: str
    cls: Any
    config: Any
    options: dict[str, Any]
    provenance: dict[str, Any]


@dataclass
class DatasetPlan:
    """One dataset with its resolved options and its three splits, opened once."""

    name: str
    cls: Any
    data_root: str | None
    options: dict[str, Any]
    image_size: Any
    subset: int | None
    probe_subset: int | None
    eval_subset: int | None
    pretext_split: str
    probe_split: str
    eval_split: str
    eval_on_train: bool
    splits: dict[str, Any] = field(default_factory=dict, repr=False)
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def pretext_data(self) -> Any:
        return self.splits["pretext"]

    @property
    def probe_data(self) -> Any:
        return self.splits["probe"]

    @property
    def eval_data(self) -> Any:
        return self.splits["eval"]

    def describe(self) -> dict[str, Any]:
        """What records say of this dataset: splits, sizes, fingerprints, options."""
        return {"dataset": self.name, "data_root": self.data_root, "dataset_options": self.options,
                "image_size": self.image_size, "subset": self.subset, "probe_subset": self.probe_subset,
                "eval_subset": self.eval_subset,
                "pretext_split": self.pretext_split, "probe_split": self.probe_split, "eval_split": self.eval_split,
                "eval_on_train": self.eval_on_train, "fingerprints": dict(self.fingerprints)}


@dataclass
class Evaluation:
    """One protocol on one trained unit: the record it writes and the hash that says whether it is current."""

    protocol: ProtocolPlan
    path: Path
    config: dict[str, Any]
    hash: str


@dataclass
class Unit:
    """One pretext training (dataset × encoder × variant × seed) and the evaluations of its checkpoint."""

    dataset: DatasetPlan
    encoder: EncoderPlan
    variant: VariantPlan
    seed: int
    run_config: dict[str, Any]
    checkpoint_hash: str
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.variant.name} seed {self.seed} ({self.dataset.name}, {self.encoder.name})"

    @property
    def train_split_data(self) -> Any:
        """What the pretext trains on: the pretext split, or the labelled probe split for a pretext that needs
        labels (``supervised``)."""
        return self.dataset.probe_data if self.variant.pretext_cls.requires else self.dataset.pretext_data


@dataclass
class RunPlan:
    """Everything a run will do, resolved. Built by :func:`resolve_plan`; read by everything after it."""

    experiment: Experiment
    variants: list[VariantPlan]
    datasets: list[DatasetPlan]
    encoders: list[EncoderPlan]
    protocols: list[ProtocolPlan]
    units: list[Unit]
    out: Path
    cache_dir: Path

    def describe(self) -> dict[str, Any]:
        """The plan as plain data (printed by ``--dry-run``, stored in the manifest)."""
        exp = self.experiment
        return {
            "experiment": exp.name, "source": exp.source, "seeds": exp.seeds,
            "budget": to_dict(exp.budget), "device": exp.device, "precision": exp.precision,
            "out": str(self.out), "cache_dir": str(self.cache_dir), "allow_eval_on_train": exp.allow_eval_on_train,
            "variants": [{"name": v.name, "pretext": v.pretext, "differs": v.differs, "options": v.options,
                          "seeds": list(v.seeds)} for v in self.variants],
            "datasets": [d.describe() for d in self.datasets],
            "encoders": [{"name": e.name, "options": e.options} for e in self.encoders],
            "protocols": [{"name": p.name, "options": p.options} for p in self.protocols],
            "units": [{"dataset": u.dataset.name, "encoder": u.encoder.name, "variant": u.variant.name,
                       "seed": u.seed, "checkpoint_hash": u.checkpoint_hash,
                       "records": [str(e.path) for e in u.evaluations]} for u in self.units],
        }


def _provenance(registry: Any, name: str) -> dict[str, Any]:
    """Where a plugin comes from (name, distribution and versions); part of every hash that uses it."""
    provenance = getattr(registry, "provenance", None)
    if callable(provenance):
        return dict(provenance(name))
    entry, _ = registry.resolve(name)
    obj = registry.get(name)
    return {"name": name, "origin": entry.origin, "module": entry.module,
            "plugin_version": getattr(obj, "version", None)}


def _variants(exp: Experiment) -> list[VariantPlan]:
    seen: set[str] = set()
    plans = []
    for spec in exp.variants:
        if not VARIANT_NAME.match(spec.name) or "__" in spec.name:
            raise UsageError(f"variant name {spec.name!r}: use letters, digits, '.', '_', '+' and '-' (no '__'), "
                             "starting with a letter or digit")
        if spec.name in seen:
            raise UsageError(f"variant {spec.name!r} is named twice")
        seen.add(spec.name)
        cls = PRETEXTS.get(spec.pretext)
        config = resolve_options(cls.Config, spec.options, f"pretext {spec.pretext!r} (variant {spec.name!r})",
                                 spec.pretext)
        options = to_dict(config)
        defaults = to_dict(cls.Config())
        differs = {k: v for k, v in options.items() if defaults.get(k) != v}
        provenance = _provenance(PRETEXTS, spec.pretext)
        used = cls.pretexts_used(config)
        if used:  # only then, so every other pretext's hashes stay as they were
            provenance["uses"] = {name: _provenance(PRETEXTS, name) for name in used}
        plans.append(VariantPlan(spec.name, spec.pretext, cls, config, options, differs,
                                 tuple(spec.seeds or exp.seeds), provenance))
    return plans


def _protocols(exp: Experiment) -> list[ProtocolPlan]:
    plans = []
    for name, options in exp.protocols.items():
        cls = PROTOCOLS.get(name)
        options = dict(options)
        names = {f.name for f in dataclasses.fields(cls.Config)}
        if exp.budget.eval_epochs is not None and "epochs" in names and "epochs" not in options:
            options["epochs"] = exp.budget.eval_epochs
        config = resolve_options(cls.Config, options, f"protocol {name!r}", name)
        _check_protocol_config(name, cls, config)
        plans.append(ProtocolPlan(name, cls, config, to_dict(config), _provenance(PROTOCOLS, name)))
    return plans


def _check_protocol_config(name: str, cls: Any, config: Any) -> None:
    """A protocol's own ``check_config()`` (options that only fail together, or against a list the protocol keeps),
    run now rather than when it evaluates; its ValueError is a usage error."""
    if not callable(getattr(cls, "check_config", None)):
        return
    try:
        cls(config).check_config()
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:
        raise UsageError(f"protocol {name!r}: {exc}") from exc


def _encoders(exp: Experiment) -> list[EncoderPlan]:
    plans = []
    for name, options in exp.encoders.items():
        factory = ENCODERS.get(name)
        resolved = _resolve_signature_options(factory, ENCODER_COMMON, options, f"encoder {name!r}", name)
        plans.append(EncoderPlan(name, resolved, _provenance(ENCODERS, name)))
    return plans


def _open_split(spec: DatasetSpec, split: str, subset: int | None, options: dict[str, Any]) -> Any:
    from sslbench.datasets import create_dataset
    from sslbench.datasets.joined import JoinedSplits, split_parts

    opened = [create_dataset(spec.name, root=spec.data_root, split=part, image_size=spec.image_size,
                             subset=subset, **options) for part in split_parts(split)]
    return opened[0] if len(opened) == 1 else JoinedSplits(opened)


def _datasets(exp: Experiment) -> list[DatasetPlan]:
    """Every dataset's adapter, options and splits, checked; nothing is opened yet."""
    plans = []
    for spec in exp.datasets:
        cls = DATASETS.get(spec.name)
        options = _resolve_signature_options(cls, DATASET_COMMON, spec.options, f"dataset {spec.name!r}", spec.name)
        pretext_split = spec.pretext_split or getattr(cls, "pretext_split", "train")
        probe_split = spec.probe_split or getattr(cls, "probe_split", "train")
        eval_split = spec.eval_split or cls.eval_split
        for split in (pretext_split, probe_split, eval_split):
            check_split(spec.name, split, cls.splits)
        trained_on = set(pretext_split.split("+")) | set(probe_split.split("+"))
        overlap = trained_on & set(eval_split.split("+"))
        if overlap and not exp.allow_eval_on_train:
            raise UsageError(
                f"dataset {spec.name!r}: the evaluation split {eval_split!r} is also a training split (pretext "
                f"{pretext_split!r}, probe {probe_split!r}); results would measure memorisation. Choose another "
                "--eval-split, or pass --allow-eval-on-train to do it anyway (it is recorded)")
        plans.append(DatasetPlan(spec.name, cls, spec.data_root, options, None, spec.subset, spec.probe_subset,
                                 spec.eval_subset, pretext_split, probe_split, eval_split, bool(overlap)))
    return plans


def _open_datasets(exp: Experiment, plans: list[DatasetPlan], memo_dir: Path | None = None) -> None:
    """Open every split (each adapter checks its data root before it reads anything), then fingerprint them (file
    contents, their digests memoised under ``memo_dir``)."""
    from sslbench.datasets.fingerprint import data_fingerprint

    for spec, plan in zip(exp.datasets, plans):
        bad_image_option = "on_bad_image" in plan.options and "on_bad_image" not in spec.options
        probe_subset = spec.probe_subset if spec.probe_subset is not None else spec.subset
        for role, split, subset in (("pretext", plan.pretext_split, spec.subset),
                                    ("probe", plan.probe_split, probe_subset),
                                    ("eval", plan.eval_split, spec.eval_subset)):
            split_options = dict(plan.options)
            if bad_image_option:
                # A broken file is skipped (listed and counted) in the training splits; in the evaluation split
                # dropping it would change the benchmark, so it stops the run.
                split_options["on_bad_image"] = "error" if role == "eval" else "skip"
            plan.splits[role] = _open_split(spec, split, subset, split_options)
        plan.image_size = plan.pretext_data.image_size
    for plan in plans:
        for role in ("pretext", "probe", "eval"):
            plan.fingerprints[role] = data_fingerprint(plan.splits[role], memo_dir)


def _use_decoded_cache(datasets: list[DatasetPlan], root: Path) -> None:
    """Read each file-backed split through its decoded-image cache under ``root`` (built on first read; the items
    are the same, so no hash changes)."""
    from sslbench.datasets.decoded_cache import use_decoded_cache

    for plan in datasets:
        for role, split in plan.splits.items():
            plan.splits[role] = use_decoded_cache(split, root, fingerprint=plan.fingerprints[role])


def _check_compatible(variants: list[VariantPlan], protocols: list[ProtocolPlan], dataset: str,
                      provides: Any) -> None:
    from sslbench.protocol import PRETEXT_ABILITIES

    check_requirements([(p.name, p.cls.requires) for p in protocols],
                       [(v.name, v.pretext, v.pretext_cls.requires) for v in variants],
                       dataset, provides or (), PRETEXT_ABILITIES)


def _run_config(exp: Experiment, dataset: DatasetPlan, encoder: EncoderPlan, variant: VariantPlan, seed: int
                ) -> dict[str, Any]:
    """What determines a trained checkpoint (written beside it as ``config.json``)."""
    train_data = dataset.probe_data if variant.pretext_cls.requires else dataset.pretext_data
    role = "probe" if variant.pretext_cls.requires else "pretext"
    image_size = dataset.image_size
    inference = set(getattr(variant.pretext_cls, "inference_options", ()))
    return {
        "pretext": variant.pretext, "plugin": variant.provenance,
        "pretext_options": {k: v for k, v in variant.options.items() if k not in inference},
        "encoder": encoder.name, "encoder_options": encoder.options, "encoder_plugin": encoder.provenance,
        "image_size": list(image_size) if isinstance(image_size, tuple) else image_size,
        "dataset": dataset.name, "dataset_options": dataset.options, "subset": dataset.subset,
        "pretext_split": dataset.probe_split if role == "probe" else dataset.pretext_split,
        "data_fingerprint": dataset.fingerprints[role], "train_images": len(train_data),
        "num_classes": dataset.probe_data.num_classes, "class_names": list(dataset.probe_data.class_names),
        "seed": seed, "budget": {"epochs": exp.budget.epochs, "steps": exp.budget.steps,
                                 "batch_size": exp.budget.batch_size,
                                 # only when used, so the checkpoints of every earlier run keep their hashes
                                 **({"accumulate": exp.budget.accumulate} if exp.budget.accumulate != 1 else {}),
                                 **({"augment": True} if exp.budget.augment else {})},
        "precision": exp.precision, "harness_schema": HARNESS_SCHEMA,
    }


def build_pretext(variant: VariantPlan, encoder: EncoderPlan, run_config: dict[str, Any]) -> Any:
    """A fresh pretext of ``variant`` on ``encoder`` for the data ``run_config`` describes.

    A :class:`UsageError` the plugin raises stays one, and so does a ``ValueError``: the way pretexts and encoder
    factories refuse an option value or a combination (cGAN image sides not a multiple of its stride, an unknown
    ``unet`` norm), which the user fixes by changing an option (exit 2, before any work). Any other exception is a bug
    and becomes an :class:`SslbenchError` naming the plugin's origin (exit 1)."""
    from sslbench.pretext import DataInfo, EncoderSpec

    size = run_config["image_size"]
    image_size = tuple(size) if isinstance(size, list) else size
    spec = EncoderSpec(encoder.name, encoder.options, image_size if isinstance(image_size, int) else max(image_size))
    info = DataInfo(run_config["dataset"], image_size, run_config["num_classes"], tuple(run_config["class_names"]))
    try:
        return variant.pretext_cls(variant.config, spec, info)
    except SslbenchError:
        raise
    except ValueError as exc:
        raise UsageError(f"pretext {variant.pretext!r} (variant {variant.name!r}) on encoder {encoder.name!r}: "
                         f"{exc}") from exc
    except Exception as exc:
        raise SslbenchError(
            f"cannot build pretext {variant.pretext!r} (variant {variant.name!r}) on encoder {encoder.name!r} with "
            f"options {variant.options}: {type(exc).__name__}: {exc} (plugin from "
            f"{variant.provenance.get('origin', '?')})") from exc


def resolve_plan(exp: Experiment, cache_dir: Path) -> RunPlan:
    """Resolve and validate everything ``exp`` asks for; raise :class:`UsageError` before any work on a problem."""
    if not exp.variants or not exp.protocols:
        raise UsageError("a run needs at least one pretext variant and one protocol")
    if not exp.datasets or not exp.encoders:
        raise UsageError("a run needs at least one dataset and one encoder")
    variants = _variants(exp)
    protocols = _protocols(exp)
    encoders = _encoders(exp)
    datasets = _datasets(exp)
    for dataset in datasets:
        _check_compatible(variants, protocols, dataset.name, getattr(dataset.cls, "provides", ()))
    _open_datasets(exp, datasets, Path(cache_dir) / "fingerprints")
    if exp.decoded_cache:
        _use_decoded_cache(datasets, Path(cache_dir) / "decoded")
    for dataset in datasets:
        # Joined splits keep only the keys every part carries (STL-10's unlabeled images have no label).
        _check_compatible(variants, protocols, dataset.name, getattr(dataset.probe_data, "provides", ()))
    out = Path(exp.out)
    units = []
    # Seeds outermost: every variant has its first seed recorded before any has its last.
    all_seeds = list(dict.fromkeys(seed for variant in variants for seed in variant.seeds))
    for dataset in datasets:
        for encoder in encoders:
            for seed in all_seeds:
                for variant in [v for v in variants if seed in v.seeds]:
                    run_config = _run_config(exp, dataset, encoder, variant, seed)
                    if seed == variant.seeds[0]:
                        # Build once before any work, so a bad combination fails now, not hours into the run.
                        build_pretext(variant, encoder, run_config)
                    unit = Unit(dataset, encoder, variant, seed, run_config, config_hash(run_config))
                    for protocol in protocols:
                        record_config = {
                            "pretext_run": run_config, "inference_options": variant.inference_options,
                            "protocol": protocol.name,
                            "protocol_options": protocol.options, "protocol_plugin": protocol.provenance,
                            "probe": {"split": dataset.probe_split, "fingerprint": dataset.fingerprints["probe"],
                                      "images": len(dataset.probe_data)},
                            "eval": {"split": dataset.eval_split, "fingerprint": dataset.fingerprints["eval"],
                                     "images": len(dataset.eval_data), "batch_size": exp.budget.eval_batch_size,
                                     "eval_subset": dataset.eval_subset},
                            "allow_eval_on_train": dataset.eval_on_train,
                        }
                        path = record_path(out, dataset=dataset.name, encoder=encoder.name, variant=variant.name,
                                           protocol=protocol.name, seed=seed)
                        unit.evaluations.append(Evaluation(protocol, path, record_config, config_hash(record_config)))
                    units.append(unit)
    return RunPlan(exp, variants, datasets, encoders, protocols, units, out, Path(cache_dir))

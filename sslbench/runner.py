"""``sslbench run``: resolve the config, train (or reuse) each pretext once, evaluate every protocol, write records.

For each seed and pretext, the resolved :class:`~sslbench.config.PretextRunConfig` is hashed; the checkpoint cached
under that hash is reused by every protocol and by later runs. Each (pretext, protocol, dataset, encoder, seed) gets
one record; a record that exists with status ``ok`` and the same config hash is not redone (``force`` redoes it). A
failing protocol writes a ``failed`` record and the run goes on; a protocol that needs an ability the pretext lacks
(``colorize``) writes a ``skipped`` one. Everything the user asked for is validated before any training starts.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sslbench.config import PretextRunConfig, TrainBudget, config_hash, parse_value, resolve_options, to_dict
from sslbench.errors import IncompatibleError, SslbenchError, UsageError
from sslbench.registry import DATASETS, ENCODERS, PRETEXTS, PROTOCOLS

__all__ = ["RunRequest", "RunOutcome", "run", "default_cache_dir"]


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("SSLBENCH_CACHE", Path.home() / ".cache" / "sslbench"))


@dataclass
class RunRequest:
    """Everything ``sslbench run`` was asked to do."""

    pretexts: list[str] = field(default_factory=lambda: ["random", "supervised", "regression"])
    protocols: list[str] = field(default_factory=lambda: ["linear"])
    dataset: str = "synthetic"
    data_root: str | None = None
    encoder: str = "vgg_small"
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"
    precision: str = "fp32"
    out: Path = Path("results/runs")
    cache_dir: Path = field(default_factory=default_cache_dir)
    force: bool = False
    budget: TrainBudget = field(default_factory=TrainBudget)
    eval_epochs: float | None = None
    eval_batch_size: int = 128
    image_size: int | tuple[int, int] | None = None
    subset: int | None = None
    eval_subset: int | None = None
    workers: int = 0
    #: Training steps between resumable checkpoints (not part of any hash: it does not change results).
    checkpoint_every: int = 200
    #: Plugin options by plugin name (a pretext, protocol or dataset name, or ``encoder``).
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunOutcome:
    records: list[dict[str, Any]] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    done: int = 0
    cached: int = 0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") == "failed"]


def _validate(req: RunRequest) -> None:
    if not req.pretexts or not req.protocols:
        raise UsageError("--pretext and --protocol each need at least one name")
    for name in req.pretexts:
        PRETEXTS.resolve(name)
    for name in req.protocols:
        PROTOCOLS.resolve(name)
    DATASETS.resolve(req.dataset)
    ENCODERS.resolve(req.encoder)
    known = set(req.pretexts) | set(req.protocols) | {req.dataset, "encoder"}
    for owner in req.options:
        if owner not in known:
            raise UsageError(f"--set {owner}.KEY=VALUE: {owner!r} is none of this run's plugins "
                             f"({', '.join(sorted(known))})")


def _dataset_kwargs(req: RunRequest, split: str, subset: int | None) -> dict[str, Any]:
    options = {k: parse_value(v) for k, v in req.options.get(req.dataset, {}).items()}
    return {"root": req.data_root, "split": split, "image_size": req.image_size, "subset": subset, **options}


def _protocol_options(req: RunRequest, cls: type, name: str) -> Any:
    options = dict(req.options.get(name, {}))
    names = {f.name for f in dataclasses.fields(cls.Config)}
    if req.eval_epochs is not None and "epochs" in names and "epochs" not in options:
        options["epochs"] = req.eval_epochs
    return resolve_options(cls.Config, options, f"protocol {name!r}")


def run(req: RunRequest, progress: Any = None, on_record: Callable[[dict[str, Any]], None] | None = None
        ) -> RunOutcome:
    """Do every missing (pretext, protocol, seed) of ``req``; return the records of all of them."""
    from sslbench.checkpoints import CheckpointStore
    from sslbench.datasets import create_dataset
    from sslbench.pretext import DataInfo, EncoderSpec
    from sslbench.progress import Progress
    from sslbench.protocol import PRETEXT_ABILITIES, EvalData
    from sslbench.records import environment, read_record, record_path, write_record
    from sslbench.runtime import Runtime, seed_everything
    from sslbench.trainer import load_trained, train_pretext

    _validate(req)
    progress = progress or Progress.disabled()
    runtime = Runtime(req.device, req.precision, req.workers)
    dataset_cls = DATASETS.get(req.dataset)
    train_set = create_dataset(req.dataset, **_dataset_kwargs(req, "train", req.subset))
    test_set = create_dataset(req.dataset, **_dataset_kwargs(req, dataset_cls.eval_split, req.eval_subset))
    provides = set(getattr(train_set, "provides", set()))

    protocol_classes = {name: PROTOCOLS.get(name) for name in req.protocols}
    for name, cls in protocol_classes.items():
        missing = set(cls.requires) - PRETEXT_ABILITIES - provides
        if missing:
            raise IncompatibleError(
                f"protocol {name!r} needs {', '.join(sorted(missing))}, which dataset {req.dataset!r} does not "
                f"provide (it provides: {', '.join(sorted(provides)) or 'images only'}); pick another dataset"
            )
    protocol_configs = {name: _protocol_options(req, cls, name) for name, cls in protocol_classes.items()}
    pretext_classes = {name: PRETEXTS.get(name) for name in req.pretexts}
    for name, cls in pretext_classes.items():
        missing = set(cls.requires) - provides
        if missing:
            raise IncompatibleError(f"pretext {name!r} trains on {', '.join(sorted(missing))}, which dataset "
                                    f"{req.dataset!r} does not provide")
    pretext_configs = {name: resolve_options(cls.Config, req.options.get(name, {}), f"pretext {name!r}")
                       for name, cls in pretext_classes.items()}

    image_size = train_set.image_size
    encoder_options = {k: parse_value(v) for k, v in req.options.get("encoder", {}).items()}
    encoder_spec = EncoderSpec(req.encoder, encoder_options,
                               image_size if isinstance(image_size, int) else max(image_size))
    data_info = DataInfo(req.dataset, image_size, train_set.num_classes, tuple(train_set.class_names))
    dataset_options = {"image_size": image_size, "subset": req.subset,
                       **req.options.get(req.dataset, {})}
    env = environment(runtime.describe())
    write_record = _writer(runtime, write_record)
    data_desc = {"train": train_set.describe(), "test": test_set.describe()}
    outcome = RunOutcome()

    for seed in req.seeds:
        for pname, pcls in pretext_classes.items():
            run_config = PretextRunConfig(
                pretext=pname, pretext_options=to_dict(pretext_configs[pname]), encoder=req.encoder,
                encoder_options=encoder_options, dataset=req.dataset, dataset_options=dataset_options, seed=seed,
                budget=req.budget, precision=req.precision,
            )
            pretext_hash = config_hash(run_config)
            pending = []
            for qname in req.protocols:
                record_config = {"pretext_run": to_dict(run_config), "protocol": qname,
                                 "protocol_options": to_dict(protocol_configs[qname]),
                                 "eval": {"batch_size": req.eval_batch_size, "eval_subset": req.eval_subset,
                                          "eval_split": dataset_cls.eval_split}}
                path = record_path(req.out, dataset=req.dataset, encoder=req.encoder, pretext=pname,
                                   protocol=qname, seed=seed)
                rhash = config_hash(record_config)
                existing = read_record(path)
                if (existing and not req.force and existing.get("status") in ("ok", "skipped")
                        and existing.get("config_hash") == rhash):
                    outcome.records.append(existing)
                    outcome.cached += 1
                    continue
                pending.append((qname, path, rhash, record_config))
            if not pending:
                continue

            seed_everything(seed)
            try:
                pretext = pcls(pretext_configs[pname], encoder_spec, data_info)
            except (ValueError, TypeError) as exc:
                raise UsageError(f"cannot build pretext {pname!r} on encoder {req.encoder!r} with these options: "
                                 f"{exc}") from exc
            label = f"{pname} seed {seed}"
            train_info: dict[str, Any] = {"trained": False}
            store = CheckpointStore(req.cache_dir, pname, pretext_hash)
            try:
                if pcls.trainable:
                    if req.force and store.dir.exists():
                        shutil.rmtree(store.dir)
                    if store.has_final():
                        summary = load_trained(pretext, store, runtime)
                        outcome.reused.append(label)
                    else:
                        store.save_config(to_dict(run_config))
                        summary = train_pretext(pretext, train_set, runtime, req.budget, store, seed, progress,
                                                description=f"train {label}",
                                                checkpoint_every=req.checkpoint_every)
                        outcome.trained.append(label)
                    train_info = {"trained": True, "checkpoint": str(store.final), "steps": summary.steps,
                                  "epochs": summary.epochs, "wall_s": summary.wall_s,
                                  "images_per_s": summary.images_per_s, "first_losses": summary.first_losses,
                                  "last_losses": summary.last_losses}
                else:
                    pretext.to(runtime.device)
            except SslbenchError as exc:
                if not isinstance(exc, UsageError) and req.protocols:
                    for qname, path, rhash, record_config in pending:
                        _finish(outcome, on_record, write_record, path, _record(
                            pname, qname, req, seed, record_config, rhash, pretext_hash, "failed", env, data_desc,
                            reason=f"pretext training failed: {exc}"))
                    continue
                raise

            for qname, path, rhash, record_config in pending:
                qcls = protocol_classes[qname]
                base = (pname, qname, req, seed, record_config, rhash, pretext_hash)
                if "colorize" in qcls.requires and not pretext.can_colorize:
                    _finish(outcome, on_record, write_record, path, _record(
                        *base, "skipped", env, data_desc, reason=f"pretext {pname!r} does not colorize"))
                    continue
                seed_everything(seed)
                protocol = qcls(protocol_configs[qname])
                data = EvalData(train=train_set, test=test_set, batch_size=req.eval_batch_size, seed=seed,
                                cache_dir=str(Path(req.cache_dir) / "features" / pretext_hash))
                pretext.eval()
                start = time.perf_counter()
                try:
                    metrics = protocol.evaluate(pretext, data, runtime, progress)
                except (SslbenchError, RuntimeError, ValueError) as exc:
                    _finish(outcome, on_record, write_record, path, _record(
                        *base, "failed", env, data_desc, reason=f"{type(exc).__name__}: {exc}",
                        traceback=traceback.format_exc()))
                    continue
                record = _record(*base, "ok", env, data_desc, metrics=metrics, train=train_info,
                                 timings={"eval_s": time.perf_counter() - start})
                _finish(outcome, on_record, write_record, path, record)
    return outcome


def _writer(runtime: Any, write: Callable[..., None]) -> Callable[..., None]:
    """Only the main process writes records."""
    return write if runtime.is_main else (lambda path, record: None)


def _finish(outcome: RunOutcome, on_record: Callable[[dict[str, Any]], None] | None, write: Callable[..., None],
            path: Path, record: dict[str, Any]) -> None:
    write(path, record)
    outcome.records.append(record)
    outcome.done += 1
    if on_record is not None:
        on_record(record)


def _record(pretext: str, protocol: str, req: RunRequest, seed: int, config: dict[str, Any], rhash: str,
            pretext_hash: str, status: str, env: dict[str, Any], data: dict[str, Any], *,
            metrics: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
            timings: dict[str, Any] | None = None, reason: str | None = None,
            traceback: str | None = None) -> dict[str, Any]:
    from sslbench.records import SCHEMA, nest

    record = {
        "schema": SCHEMA, "pretext": pretext, "protocol": protocol, "dataset": req.dataset, "encoder": req.encoder,
        "seed": seed, "status": status, "reason": reason, "config": config, "config_hash": rhash,
        "pretext_hash": pretext_hash, "metrics": nest(metrics or {}), "train": train or {},
        "timings": timings or {},
        "counts": {"train_images": data["train"]["size"], "eval_images": data["test"]["size"]},
        "data": data, "env": env,
    }
    if traceback:
        record["traceback"] = traceback
    return record

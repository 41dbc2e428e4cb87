"""``sslbench run``: carry out a resolved :class:`~sslbench.plan.RunPlan`.

For each :class:`~sslbench.plan.Unit` (dataset × encoder × variant × seed) the checkpoint named by the unit's hash is
reused, or trained under a lock so two processes never train the same one; then every protocol whose record is
missing, failed or stale is evaluated and its record written the moment it finishes. A failing protocol writes a
``failed`` record and the run goes on; a protocol that needs an ability the pretext lacks (``colorize``) writes a
``skipped`` one. ``force`` clears the unit's checkpoint and feature cache and redoes everything.
"""

from __future__ import annotations

import errno
import math
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sslbench.config import TrainBudget, config_hash
from sslbench.errors import DiskFullError, SslbenchError, UsageError
from sslbench.plan import Evaluation, RunPlan, Unit, build_pretext

__all__ = ["RunOutcome", "run", "collect", "default_cache_dir", "unit_status", "checkpoint_store", "features_dir"]

RecordHook = Callable[[dict[str, Any]], None]


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("SSLBENCH_CACHE", Path.home() / ".cache" / "sslbench"))


@dataclass
class RunOutcome:
    records: list[dict[str, Any]] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    #: Units another process was training when ``wait`` was off: left for a later run.
    deferred: list[str] = field(default_factory=list)
    #: Records a job should have written and did not (see :func:`collect`).
    missing: list[str] = field(default_factory=list)
    done: int = 0
    cached: int = 0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") == "failed"]


def checkpoint_store(plan: RunPlan, unit: Unit) -> Any:
    from sslbench.checkpoints import CheckpointStore

    return CheckpointStore(plan.cache_dir, unit.variant.pretext.replace(":", "-"), unit.checkpoint_hash)


def features_dir(plan: RunPlan, unit: Unit) -> Path:
    """The unit's feature cache: one folder per (checkpoint, probe data, evaluation data)."""
    key = config_hash({"checkpoint": unit.checkpoint_hash, "probe": unit.dataset.fingerprints["probe"],
                       "eval": unit.dataset.fingerprints["eval"], "probe_images": len(unit.dataset.probe_data),
                       "eval_images": len(unit.dataset.eval_data)})
    return plan.cache_dir / "features" / key


def _current(evaluation: Evaluation) -> dict[str, Any] | None:
    from sslbench.records import read_record

    existing = read_record(evaluation.path)
    if existing and existing.get("status") in ("ok", "skipped") and existing.get("config_hash") == evaluation.hash:
        return existing
    return None


def unit_status(plan: RunPlan, unit: Unit, force: bool) -> tuple[str, list[Evaluation]]:
    """What a run would do with ``unit``: ``train``, ``reuse`` or ``none`` (untrainable) for the checkpoint, and
    the evaluations still to do (all of them with ``force``)."""
    pending = list(unit.evaluations) if force else [e for e in unit.evaluations if _current(e) is None]
    if not unit.variant.pretext_cls.trainable:
        return "none", pending
    return ("reuse" if not force and checkpoint_store(plan, unit).has_final() else "train"), pending


def _budget(plan: RunPlan) -> TrainBudget:
    b = plan.experiment.budget
    return TrainBudget(epochs=b.epochs, steps=b.steps, batch_size=b.batch_size, accumulate=b.accumulate,
                       augment=b.augment)


def _free_bytes(path: Path) -> int:
    """Free space on the file system that holds ``path`` (or, if it does not exist yet, its nearest ancestor)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _disk_full(exc: OSError, where: Path) -> DiskFullError:
    path = Path(exc.filename) if exc.filename else where
    free_mb = _free_bytes(path) / 2**20
    return DiskFullError(f"disk full at {path}, free {free_mb:.0f} MB; finished checkpoints and records are kept. "
                         "Free some space (or point --cache-dir/--out elsewhere) and rerun to continue.")


def _check_room(where: Path, needed_bytes: int, what: str) -> None:
    free = _free_bytes(where)
    if free < needed_bytes:
        raise DiskFullError(f"{what} at {where} needs about {needed_bytes / 2**20:.0f} MB but only "
                            f"{free / 2**20:.0f} MB are free; free some space or choose another folder")


def preflight(plan: RunPlan) -> None:
    """Fail in the first second, not after hours: ``--out`` and the cache must be writable folders."""
    from sslbench.checkpoints import atomic_write_bytes

    for folder, flag in ((plan.out, "--out"), (plan.cache_dir, "--cache-dir")):
        probe = folder / ".sslbench-write-probe"
        try:
            atomic_write_bytes(probe, b"")
            probe.unlink()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _disk_full(exc, folder) from exc
            raise UsageError(f"{flag} {folder}: cannot write there ({exc.strerror or exc}); choose a writable "
                             "folder") from exc


def _checkpoint_bytes(pretext: Any) -> int:
    """A resumable checkpoint holds the weights and about two optimiser moments per parameter; the final and the
    last one can coexist for a moment."""
    params = sum(p.numel() * p.element_size() for p in pretext.parameters())
    buffers = sum(b.numel() * b.element_size() for b in pretext.buffers())
    return 2 * (3 * params + buffers) + 2**20


def run(plan: RunPlan, *, force: bool = False, wait: bool = True, progress: Any = None,
        on_record: RecordHook | None = None, say: Callable[[str], None] | None = None) -> RunOutcome:
    """Do every missing evaluation of ``plan``; return the records of all of them (reused ones included)."""
    from sslbench.progress import Progress
    from sslbench.records import environment
    from sslbench.runtime import Runtime

    progress = progress or Progress.disabled()
    say = say or (lambda message: None)
    exp = plan.experiment
    runtime = Runtime(exp.device, exp.precision, exp.workers, channels_last=exp.channels_last, compile=exp.compile)
    env = environment(runtime.describe())
    outcome = RunOutcome()
    if runtime.is_main:
        preflight(plan)
        _remove_orphans(plan)
    if any(unit_status(plan, unit, force)[1] for unit in plan.units):
        _check_eval_splits(plan)
    for unit in plan.units:
        _run_unit(plan, unit, runtime, env, outcome, force=force, wait=wait, progress=progress,
                  on_record=on_record, say=say)
    runtime.close()
    return outcome


def collect(plan: RunPlan) -> RunOutcome:
    """The outcome of ``plan`` as its records on disk say (after jobs that ran its units elsewhere): every current
    or failed record; an evaluation without one is listed in ``missing``."""
    from sslbench.records import read_record

    outcome = RunOutcome()
    for unit in plan.units:
        for evaluation in unit.evaluations:
            record = read_record(evaluation.path)
            if record is not None and record.get("config_hash") == evaluation.hash:
                outcome.records.append(record)
                outcome.done += 1
            else:
                outcome.missing.append(str(evaluation.path))
    return outcome


def _check_eval_splits(plan: RunPlan) -> None:
    """Read every evaluation image before any training, so a broken file stops the run now, naming every bad file,
    instead of after hours of training. A split read through its decoded-image cache is checked by building the
    cache (the build raises the same error), so its images are decoded once, and not at all once the cache exists."""
    workers = max(plan.experiment.workers, 0)
    for dataset in plan.datasets:
        for part in getattr(dataset.eval_data, "parts", [dataset.eval_data]):
            if not (getattr(part, "handles_bad_images", False) and part.on_bad_image == "error"):
                continue
            materialize = getattr(part, "materialize", None)
            if callable(materialize):
                materialize(workers)
            elif callable(getattr(part, "scan", None)):
                part.scan(workers=workers)


def _remove_orphans(plan: RunPlan) -> None:
    from sslbench import checkpoints

    remove = getattr(checkpoints, "remove_orphaned_temporaries", None)
    if remove is not None:
        for folder in (plan.cache_dir, plan.out):
            if folder.is_dir():
                remove(folder)


#: Seconds between two looks at a lock another job holds, for the ranks of a torchrun job waiting together.
LOCK_POLL_S = 2.0


def _take_lock(lock: Any, runtime: Any, *, wait: bool, on_wait: Callable[[Any], None]) -> bool:
    """Take a unit's checkpoint lock: ``lock`` on the main process, None on the other ranks of a torchrun job.

    One process waits in :meth:`CheckpointLock.acquire`. The ranks of a torchrun job instead meet at a short
    collective every :data:`LOCK_POLL_S` seconds, taking rank 0's answer each time: one barrier held for the whole
    wait (hours, while another job trains the checkpoint) would time out (30 minutes for gloo, 10 for NCCL), and
    with ``--no-wait`` every rank moves on together."""
    if not runtime.distributed:
        return lock.acquire(wait=wait, on_wait=on_wait)
    told = False
    while True:
        acquired = bool(runtime.agree(lock.acquire(wait=False) if lock is not None else None))
        if acquired or not wait:
            return acquired
        if lock is not None and not told:
            on_wait(lock.owner())
            told = True
        time.sleep(LOCK_POLL_S)


def _run_unit(plan: RunPlan, unit: Unit, runtime: Any, env: dict[str, Any], outcome: RunOutcome, *, force: bool,
              wait: bool, progress: Any, on_record: RecordHook | None, say: Callable[[str], None]) -> None:
    from sslbench.locks import CheckpointLock
    from sslbench.protocol import shared_features
    from sslbench.runtime import seed_everything
    from sslbench.trainer import load_trained, train_pretext

    pending = list(unit.evaluations) if force else []
    for evaluation in unit.evaluations:
        if force:
            continue
        existing = runtime.agree(_current(evaluation))  # every rank must evaluate the same protocols
        if existing is not None:
            outcome.records.append(existing)
            outcome.cached += 1
        else:
            pending.append(evaluation)
    if not pending:
        return
    store = checkpoint_store(plan, unit)
    if force and runtime.is_main:
        shutil.rmtree(store.dir, ignore_errors=True)
        shutil.rmtree(features_dir(plan, unit), ignore_errors=True)

    seed_everything(unit.seed)
    pretext = build_pretext(unit.variant, unit.encoder, unit.run_config)
    train_info: dict[str, Any] = {"trained": False}
    writer = _Writer(plan, unit, runtime, env, outcome, on_record)
    try:
        if unit.variant.pretext_cls.trainable:
            summary = None
            if runtime.agree(store.has_final()):  # rank 0's view, so no rank trains while another reuses
                summary = load_trained(pretext, store, runtime)
                outcome.reused.append(unit.label)
            else:
                # Under torchrun the main process holds the lock for all ranks, and every rank takes its decision.
                lock = CheckpointLock(store.dir / "train.lock") if runtime.is_main else None
                owner_note = lambda info: say(  # noqa: E731 - a one-line callback
                    f"waiting for {unit.label}: its checkpoint is being trained by pid {(info or {}).get('pid')} "
                    f"on {(info or {}).get('host')}; it will be reused when done")
                acquired = _take_lock(lock, runtime, wait=wait, on_wait=owner_note)
                if not acquired:
                    say(f"moving on: {unit.label} is being trained by another process (--no-wait); rerun later "
                        "to evaluate it")
                    outcome.deferred.append(unit.label)
                    return
                try:
                    if runtime.agree(store.has_final()):
                        summary = load_trained(pretext, store, runtime)
                        outcome.reused.append(unit.label)
                    else:
                        _check_room(store.dir, _checkpoint_bytes(pretext), "a checkpoint")
                        store.save_config(unit.run_config)
                        summary = train_pretext(pretext, unit.train_split_data, runtime, _budget(plan), store,
                                                unit.seed, progress, description=f"train {unit.label}",
                                                checkpoint_every=plan.experiment.checkpoint_every)
                        outcome.trained.append(unit.label)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise _disk_full(exc, store.dir) from exc
                    raise
                finally:
                    if lock is not None:
                        lock.release()
            train_info = {"trained": True, "checkpoint": str(store.final.resolve()), **summary.as_record()}
        else:
            pretext.to(runtime.device)
    except DiskFullError:
        raise
    except SslbenchError as exc:
        if isinstance(exc, UsageError):
            raise
        for evaluation in pending:
            writer.write(evaluation, "failed", reason=f"pretext training failed: {exc}")
        return

    # One pass of the encoder per split serves every per-layer probe of this checkpoint.
    features = shared_features([(e.protocol.cls, e.protocol.config) for e in pending], features_dir(plan, unit))
    for evaluation in pending:
        protocol_plan = evaluation.protocol
        if "colorize" in protocol_plan.cls.requires and not pretext.can_colorize:
            writer.write(evaluation, "skipped", reason=f"pretext {unit.variant.pretext!r} does not colorize")
            continue
        seed_everything(unit.seed)
        protocol = protocol_plan.cls(protocol_plan.config)
        data = _eval_data(plan, unit, features)
        pretext.eval()
        start = time.perf_counter()
        try:
            metrics = protocol.evaluate(pretext, data, runtime, progress)
        except (UsageError, DiskFullError):
            raise  # not this protocol's failure: every later one would meet it too
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _disk_full(exc, plan.cache_dir) from exc
            raise
        except (SslbenchError, RuntimeError, ValueError) as exc:
            writer.write(evaluation, "failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            continue
        writer.write(evaluation, "ok", metrics=metrics, train=train_info,
                     timings={"eval_s": time.perf_counter() - start}, per_image=protocol.per_image)


def _eval_data(plan: RunPlan, unit: Unit, features: Any = None) -> Any:
    from sslbench.protocol import EvalData

    return EvalData(train=unit.dataset.probe_data, test=unit.dataset.eval_data,
                    batch_size=plan.experiment.budget.eval_batch_size, seed=unit.seed,
                    cache_dir=str(features_dir(plan, unit)), features=features)


def non_finite_metrics(metrics: dict[str, Any]) -> list[str]:
    """Names of metrics that are NaN or infinite."""
    return [k for k, v in metrics.items()
            if isinstance(v, float) and not math.isfinite(v)]


class _Writer:
    """Builds and writes the records of one unit (main process only), and reports them."""

    def __init__(self, plan: RunPlan, unit: Unit, runtime: Any, env: dict[str, Any], outcome: RunOutcome,
                 on_record: RecordHook | None) -> None:
        self.plan, self.unit, self.runtime, self.env = plan, unit, runtime, env
        self.outcome, self.on_record = outcome, on_record

    def write(self, evaluation: Evaluation, status: str, *, metrics: dict[str, Any] | None = None,
              train: dict[str, Any] | None = None, timings: dict[str, Any] | None = None, reason: str | None = None,
              traceback: str | None = None, per_image: dict[str, Any] | None = None) -> None:
        from sslbench.records import SCHEMA, nest, write_per_image, write_record

        metrics = dict(metrics or {})
        bad = non_finite_metrics(metrics)
        if bad and status == "ok":
            status, reason = "failed", f"metric(s) not finite: {', '.join(bad)}"
        for key in bad:
            metrics[key] = None
        unit, plan = self.unit, self.plan
        data = {"pretext": unit.train_split_data.describe(), "probe": unit.dataset.probe_data.describe(),
                "eval": unit.dataset.eval_data.describe()}
        record = {
            "schema": SCHEMA, "experiment": plan.experiment.name, "variant": unit.variant.name,
            "pretext": unit.variant.pretext, "variant_options": unit.variant.differs,
            "protocol": evaluation.protocol.name, "dataset": unit.dataset.name, "encoder": unit.encoder.name,
            "seed": unit.seed, "status": status, "reason": reason, "config": evaluation.config,
            "config_hash": evaluation.hash, "pretext_hash": unit.checkpoint_hash, "metrics": nest(metrics),
            "train": train or {}, "timings": timings or {},
            "counts": {"train_images": len(unit.train_split_data), "probe_images": len(unit.dataset.probe_data),
                       "eval_images": len(unit.dataset.eval_data)},
            "data": data, "plan": {**unit.dataset.describe(), "seed": unit.seed},
            "plugins": {"pretext": unit.variant.provenance, "protocol": evaluation.protocol.provenance,
                        "encoder": unit.encoder.provenance},
            "env": self.env,
        }
        if traceback:
            record["traceback"] = traceback
        if self.runtime.is_main:
            try:
                write_record(evaluation.path, record)
                if per_image:
                    write_per_image(evaluation.path, per_image)
                _write_bad_images(evaluation.path.parent, unit)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise _disk_full(exc, evaluation.path) from exc
                raise
        self.outcome.records.append(record)
        self.outcome.done += 1
        if self.on_record is not None:
            self.on_record(record)


def _write_bad_images(folder: Path, unit: Unit) -> None:
    """List the files the unit's splits skipped (path and reason) once, in ``bad_images.txt`` beside the records."""
    try:
        from sslbench.datasets.bad_images import write_bad_images_file
    except ImportError:
        return
    bad: dict[str, Any] = {}  # splits can share files (a probe subset of the pretext split): each is listed once
    for split in (unit.dataset.pretext_data, unit.dataset.probe_data, unit.dataset.eval_data):
        for part in getattr(split, "parts", [split]):
            for item in getattr(part, "bad_images", []):
                bad.setdefault(str(item.path), item)
    if bad:
        write_bad_images_file(folder / "bad_images.txt", list(bad.values()))

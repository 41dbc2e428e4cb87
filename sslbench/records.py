"""Run records: one JSON file per (dataset, encoder, variant, protocol, seed), written atomically as strict JSON.

Schema (``sslbench.run/2``)::

    {schema, experiment, variant, pretext, variant_options (options that differ from the pretext's defaults),
     protocol, dataset, encoder, seed, status: "ok" | "failed" | "skipped", reason,
     config: {pretext_run (what the checkpoint hash covers), protocol, protocol_options, protocol_plugin, probe,
              eval, allow_eval_on_train}, config_hash, pretext_hash,
     metrics: nested dict (``layer/stage1/top1`` is metrics["layer"]["stage1"]["top1"]; null where not finite),
     train: {trained, checkpoint, steps, epochs, images, wall_s, images_per_s, sessions, resumes, history, ...},
     timings: {eval_s}, counts: {train_images, probe_images, eval_images},
     data: {pretext, probe, eval: describe()}, plan: {dataset, data_root, dataset_options, image_size, subset,
     eval_subset, pretext_split, probe_split, eval_split, eval_on_train, fingerprints, seed},
     plugins: {pretext, protocol, encoder: provenance}, env: {python, torch, torchvision, timm, numpy, numba,
     sslbench, device, device_name, precision, world_size, git_commit, command, created}}

A protocol's per-image values (for bootstrap intervals) sit beside its record as ``<stem>.per_image.npz``. A rerun
skips a record that exists with status ``ok`` (or ``skipped``) and the same config hash, unless forced.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from sslbench.checkpoints import atomic_write_bytes
from sslbench.errors import UsageError

__all__ = ["SCHEMA", "READABLE_SCHEMAS", "record_path", "write_record", "write_per_image", "per_image_path",
           "strict_json", "read_record", "parse_record", "load_records", "read_per_image",
           "RecordProblem", "RecordError", "LoadedRecords", "nest", "flatten",
           "environment", "git_commit"]

SCHEMA = "sslbench.run/2"
#: Schemas this version reads: run/1 records (before variants) read as variant = pretext.
READABLE_SCHEMAS = ("sslbench.run/1", SCHEMA)


def record_path(out: Path, *, dataset: str, encoder: str, variant: str, protocol: str, seed: int) -> Path:
    """Where the record of one (dataset, encoder, variant, protocol, seed) lives under ``out``."""
    safe_encoder = encoder.replace("/", "-")
    return Path(out) / dataset / safe_encoder / f"{variant}__{protocol}__seed{seed}.json"


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"layer/conv1/top1": x}`` to ``{"layer": {"conv1": {"top1": x}}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of :func:`nest`."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, so it serialises as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` atomically (temporary file, fsync, rename) as strict JSON: NaN and infinities become null
    (the runner marks such a record failed)."""
    record = strict_json({"schema": SCHEMA, **record})
    text = json.dumps(record, indent=2, sort_keys=False, default=str, allow_nan=False)
    atomic_write_bytes(Path(path), (text + "\n").encode())


def per_image_path(record_path: Path) -> Path:
    """The per-image sidecar of a record: ``<record stem>.per_image.npz`` beside it."""
    record_path = Path(record_path)
    return record_path.with_name(record_path.stem + ".per_image.npz")


def write_per_image(record_path: Path, per_image: dict[str, Any]) -> Path:
    """Save a protocol's per-image values (metric -> :class:`~sslbench.protocol.PerImage`) beside its record, keyed
    ``"<metric>|<kind>|<array>"``, atomically."""
    import io

    import numpy as np

    arrays = {f"{metric}|{item.kind}|{name}": np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
              for metric, item in per_image.items() for name, value in item.arrays.items()}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = per_image_path(record_path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


#: JSON files that may sit among records and are not records (``sslbench run`` leaves a manifest in its --out).
NOT_RECORDS = frozenset({"manifest.json"})


@dataclass(frozen=True)
class RecordProblem:
    """A file that looked like a run record but could not be read as one, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class LoadedRecords(list):
    """The records :func:`load_records` read (a list), with the files it could not read in ``problems``."""

    def __init__(self, records: Iterable[dict[str, Any]] = (), problems: Iterable[RecordProblem] = ()) -> None:
        super().__init__(records)
        self.problems: list[RecordProblem] = list(problems)


class RecordError(ValueError):
    """A file that is not a readable run record; ``reason`` says why."""

    def __init__(self, path: Path, reason: str, schema: Any = None) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.schema = Path(path), reason, schema

    @property
    def other_document(self) -> bool:
        """Whether the file declares another sslbench schema (a manifest, ...): not a run record at all."""
        return (isinstance(self.schema, str) and self.schema.startswith("sslbench.")
                and not self.schema.startswith("sslbench.run/"))


def parse_record(path: Path) -> dict[str, Any]:
    """The record at ``path``; raises :class:`RecordError` saying why it is not a readable run record (missing,
    invalid or truncated JSON, not an object, no or an unknown schema). A run/1 record gains ``variant`` (its
    pretext) and empty ``variant_options``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecordError(path, f"cannot read: {exc.strerror or exc}") from exc
    if not text.strip():
        raise RecordError(path, "empty file (a run killed while writing it?)")
    try:
        record = json.loads(text)
    except ValueError as exc:
        truncated = not text.rstrip().endswith(("}", "]"))
        what = "truncated JSON (a run killed while writing it?)" if truncated else "invalid JSON"
        raise RecordError(path, f"{what} ({exc})") from exc
    if not isinstance(record, dict):
        raise RecordError(path, f"not a run record: the JSON is a {type(record).__name__}, not an object")
    schema = record.get("schema")
    if schema not in READABLE_SCHEMAS:
        found = "no schema key" if schema is None else f"schema {schema!r}"
        raise RecordError(path, f"not a readable run record: {found} (this version reads "
                                f"{', '.join(READABLE_SCHEMAS)})", schema)
    if schema == "sslbench.run/1":
        record = {"variant": record.get("pretext"), "variant_options": {}, **record}
    return record


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None if it is missing or not a readable record (see :func:`parse_record` for
    why)."""
    try:
        return parse_record(path)
    except RecordError:
        return None


def load_records(root: Path | Iterable[Path]) -> LoadedRecords:
    """Every readable record under ``root`` (a folder searched recursively, or a list of files), in path order.

    Nothing is dropped silently: each ``*.json`` file that is not a readable record is listed in the result's
    ``problems`` with the reason (invalid or truncated JSON, not an object, wrong schema); files that declare
    another sslbench schema (``manifest.json``) are not records and are passed over."""
    paths: list[Path]
    if isinstance(root, (str, Path)):
        root = Path(root)
        if not root.exists():
            raise UsageError(f"--runs {root}: no such folder; point it at the --out folder of `sslbench run`")
        paths = sorted(root.rglob("*.json")) if root.is_dir() else [root]
    else:
        paths = sorted(Path(p) for p in root)
    loaded = LoadedRecords()
    for path in paths:
        if path.name in NOT_RECORDS:
            continue
        try:
            record = parse_record(path)
        except RecordError as exc:
            if not exc.other_document:
                loaded.problems.append(RecordProblem(path, exc.reason))
            continue
        record["_path"] = str(path)
        loaded.append(record)
    return loaded


def read_per_image(record_path: Path) -> dict[str, Any]:
    """The per-image values saved beside a record (metric -> :class:`~sslbench.protocol.PerImage`); empty when the
    record has none. Raises :class:`RecordError` when the sidecar exists but cannot be read or holds a malformed
    key (expected ``"<metric>|<kind>|<array>"``)."""
    import zipfile

    import numpy as np

    from sslbench.protocol import PerImage

    sidecar = per_image_path(record_path)
    if not sidecar.exists():
        return {}
    try:
        with np.load(sidecar, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise RecordError(sidecar, f"unreadable per-image file ({type(exc).__name__}: {exc})") from exc
    grouped: dict[str, tuple[str, dict[str, Any]]] = {}
    for key, value in stored.items():
        parts = key.rsplit("|", 2)
        if len(parts) != 3 or not all(parts):
            raise RecordError(sidecar, f"key {key!r} is not '<metric>|<kind>|<array>'")
        metric, kind, name = parts
        known_kind, arrays = grouped.setdefault(metric, (kind, {}))
        if known_kind != kind:
            raise RecordError(sidecar, f"metric {metric!r} is stored as both {known_kind!r} and {kind!r}")
        arrays[name] = value
    out = {}
    for metric, (kind, arrays) in grouped.items():
        try:
            out[metric] = PerImage(kind, arrays)
        except ValueError as exc:
            raise RecordError(sidecar, f"metric {metric!r}: {exc}") from exc
    return out


def git_commit() -> str | None:
    """The harness's git commit (``+dirty`` when the tree has changes), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(runtime_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, platform, device and git commit: what produced a record."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: _version(name) for name in ("torch", "torchvision", "timm", "numpy", "numba", "sslbench")},
        **(runtime_info or {}),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

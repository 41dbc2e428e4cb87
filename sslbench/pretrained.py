"""Trained pretexts back from disk: a checkpoint folder (``final.pt`` beside ``config.json``) or a run folder.

The runner writes ``<cache>/checkpoints/<pretext>/<hash>/final.pt`` beside ``config.json``, the resolved pretext-run
config; :func:`load_pretext` rebuilds the pretext from that config and loads its weights, so a colorizer can be used
outside the run that trained it. :func:`checkpoints_from_runs` finds those checkpoints through the run records of a
``sslbench run --out`` folder.

Configs written before ``image_size``, ``num_classes`` and ``class_names`` moved to the top level (harness schema 1)
hold the image size in ``dataset_options``; both are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sslbench.checkpoints import load_failure_reason
from sslbench.errors import SslbenchError, UsageError
from sslbench.pretext import DataInfo, EncoderSpec, Pretext

__all__ = ["CHECKPOINT_FILE", "checkpoint_file", "read_checkpoint_config", "load_pretext", "checkpoints_from_runs"]

CHECKPOINT_FILE = "final.pt"
CONFIG_FILE = "config.json"


def checkpoint_file(checkpoint: Path) -> Path:
    """``final.pt`` of a checkpoint folder, or ``checkpoint`` itself when it is a file."""
    checkpoint = Path(checkpoint).expanduser()
    if checkpoint.is_dir():
        checkpoint = checkpoint / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise UsageError(f"checkpoint {checkpoint}: no such file; give a checkpoint folder holding {CHECKPOINT_FILE} "
                         f"and {CONFIG_FILE} (under <cache>/checkpoints/<pretext>/<hash>/) or its {CHECKPOINT_FILE}")
    return checkpoint


def read_checkpoint_config(checkpoint: Path) -> dict[str, Any]:
    """The resolved pretext-run config beside a checkpoint (its folder or its ``final.pt``)."""
    path = checkpoint_file(checkpoint).parent / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"checkpoint config {path}: no such file; the checkpoint folder must hold the "
                         f"{CONFIG_FILE} the run wrote beside {CHECKPOINT_FILE}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"checkpoint config {path}: cannot read it as JSON ({exc})") from exc
    missing = [key for key in ("pretext", "pretext_options", "encoder", "encoder_options", "dataset")
               if key not in cfg] if isinstance(cfg, dict) else ["(not a JSON object)"]
    if missing:
        raise UsageError(f"checkpoint config {path}: missing {', '.join(missing)}; is it a config.json written by "
                         "`sslbench run`?")
    return cfg


def _image_size(cfg: dict[str, Any], path: Path) -> int | tuple[int, int]:
    size = cfg.get("image_size", (cfg.get("dataset_options") or {}).get("image_size"))
    if isinstance(size, int) and size > 0:
        return size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    raise UsageError(f"checkpoint config {path}: no usable image_size ({size!r}); expected S or [H, W]")


def _options(config_cls: type, options: dict[str, Any], owner: str) -> Any:
    """Resolved options from JSON, where tuples were written as lists."""
    from sslbench.config import resolve_options

    defaults = config_cls()
    values = {key: tuple(value) if isinstance(value, list) and isinstance(getattr(defaults, key, None), tuple)
              else value for key, value in options.items()}
    return resolve_options(config_cls, values, owner)


def load_pretext(checkpoint: Path, device: str = "cpu") -> Pretext:
    """The trained pretext of a checkpoint folder (or its ``final.pt``), in eval mode on ``device``.

    Weights are read with ``torch.load(weights_only=True)``: a checkpoint is data, never code.
    """
    from sslbench.registry import PRETEXTS
    from sslbench.runtime import resolve_device

    path = checkpoint_file(checkpoint)
    cfg = read_checkpoint_config(path)
    config_path = path.parent / CONFIG_FILE
    cls = PRETEXTS.get(cfg["pretext"])
    image_size = _image_size(cfg, config_path)
    options = _options(cls.Config, cfg.get("pretext_options") or {}, f"pretext {cfg['pretext']!r} in {config_path}")
    encoder = EncoderSpec(cfg["encoder"], dict(cfg.get("encoder_options") or {}),
                          max(image_size) if isinstance(image_size, tuple) else image_size)
    data = DataInfo(cfg["dataset"], image_size, int(cfg.get("num_classes", 0) or 0),
                    tuple(cfg.get("class_names") or ()))
    try:
        pretext = cls(options, encoder, data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"checkpoint config {config_path}: cannot rebuild pretext {cfg['pretext']!r}: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; each means the same here
        raise UsageError(f"checkpoint {path}: cannot load it: {load_failure_reason(exc)}; nothing from it was run"
                         ) from exc
    if not isinstance(state, dict) or "state_dict" not in state:
        raise UsageError(f"checkpoint {path}: not an sslbench checkpoint (no 'state_dict'); give the final.pt a run "
                         "wrote")
    try:
        pretext.load_state_dict(state["state_dict"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise SslbenchError(f"checkpoint {path}: its weights do not fit the pretext that {config_path} describes "
                            f"({first})") from exc
    pretext.to(resolve_device(device))
    pretext.eval()
    return pretext


def _checkpoint_path(record: dict[str, Any], runs_dir: Path) -> Path | None:
    text = (record.get("train") or {}).get("checkpoint")
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_absolute() and not path.exists() and (runs_dir / path).exists():
        path = runs_dir / path
    return path


def checkpoints_from_runs(runs_dir: Path) -> dict[str, Path]:
    """Variant name -> ``final.pt`` of the ``ok`` records under a ``sslbench run --out`` folder.

    With several seeds the lowest seed's checkpoint is taken (seed 0 when it was run); a variant recorded under
    several datasets or encoders takes the first record in path order at that seed. Records without a checkpoint
    (``random``, which is never trained) are left out. Old ``sslbench.run/1`` records name the variant ``pretext``.
    """
    from sslbench.records import load_records

    runs_dir = Path(runs_dir).expanduser()
    chosen: dict[str, tuple[int, Path]] = {}
    for record in load_records(runs_dir):
        if record.get("status") != "ok":
            continue
        path = _checkpoint_path(record, runs_dir)
        if path is None:
            continue
        variant = str(record.get("variant") or record.get("pretext"))
        seed = int(record.get("seed", 0))
        if variant not in chosen or seed < chosen[variant][0]:
            chosen[variant] = (seed, path)
    return {variant: path for variant, (_, path) in chosen.items()}

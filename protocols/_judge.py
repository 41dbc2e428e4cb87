"""Shared machinery of the ``colorization`` and ``semantic`` protocols (not a plugin).

* **The judge** of Zhang et al. (2016)'s semantic-interpretability test: a fixed classifier that labels images. It is
  either trained here, on the dataset's TRAIN colour images (RGB input) with labels, and cached; or built from a
  user's local weights file (``judge_weights``; nothing is ever downloaded). :class:`JudgeConfig` holds its options,
  :func:`get_judge` returns it, :class:`Judge` wraps the network with its preprocessing (resize to
  ``judge_input_size``, ImageNet mean/std normalisation) and the map from the judge's classes to the dataset's.
* **Caches shared across pretexts**: the judge and the colorization protocol's ab prior depend on the training data,
  not on the pretext, so they live beside the runner's per-checkpoint folders: the runner passes
  ``EvalData.cache_dir = <cache>/features/<pretext hash>``, and :func:`shared_cache_root` returns ``<cache>`` for that
  layout (the cache folder itself for any other layout, so nothing is written outside what the caller gave; an
  explicit folder overrides both; no cache folder at all means an in-process memory cache).
* Evaluation helpers: the fixed image subset (:func:`eval_subset`), an unsharded loader (:func:`eval_loader`: every
  process of a ``torchrun`` job evaluates the same whole split, so the metrics need no reduction) and the grayscale
  reference (:func:`gray_rgb`: L kept, ab = 0, back to sRGB).

Judge architectures (``judge_model``): ``timm/<name>`` (``timm.create_model(name, pretrained=False)``),
``torchvision/<name>`` (``torchvision.models.get_model(name, weights=None)``), or any registered sslbench encoder
(``vgg_small`` by default) built with three input channels, followed by global average pooling and a linear layer.
The state dict saved in the cache is the bare network's, so a judge trained here loads again through
``judge_weights`` with the same ``judge_model``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from sslbench.checkpoints import atomic_torch_save, load_cache_file, load_failure_reason
from sslbench.colour import lab_to_rgb, rgb_to_lab
from sslbench.config import canonical_json
from sslbench.datasets.base import subset_indices
from sslbench.errors import DataError, UsageError
from sslbench.fit import fit
from sslbench.pretext import images_to_rgb
from sslbench.progress import Progress
from sslbench.protocol import EvalData
from sslbench.runtime import Runtime

__all__ = ["JudgeConfig", "Judge", "EncoderClassifier", "build_judge_network", "parse_class_map", "get_judge",
           "judge_cache_key", "train_judge", "shared_cache_root", "dataset_fingerprint", "eval_subset",
           "eval_loader", "gray_rgb", "IMAGENET_MEAN", "IMAGENET_STD"]

#: Bumped when a change here makes cached judges incomparable.
JUDGE_FORMAT = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATIONS = ("imagenet", "none")
#: Judges kept in memory when no cache folder is given, by cache key (CPU state dicts).
_MEMORY: dict[str, dict[str, torch.Tensor]] = {}


@dataclass
class JudgeConfig:
    """Options of the judge classifier (the ``semantic`` protocol's config extends this)."""

    #: ``vgg_small`` (or any registered sslbench encoder), ``timm/<name>`` or ``torchvision/<name>``.
    judge_model: str = "vgg_small"
    #: A local state-dict file; empty: train the judge here on the training split (and cache it).
    judge_weights: str = ""
    #: Output classes of a loaded judge; 0: the dataset's, or read from the weights' last linear layer.
    judge_num_classes: int = 0
    #: Dataset class -> judge classes: ``"404,817|818,..."`` (one entry per dataset class, ``|`` separating
    #: alternatives whose best logit counts) or a ``.json`` file holding that list; empty: the same classes.
    judge_class_map: str = ""
    #: Side the images are resized to before the judge (0: the dataset's size).
    judge_input_size: int = 0
    #: ``imagenet`` (mean/std) or ``none``.
    judge_normalize: str = "imagenet"
    #: Width multiplier of an sslbench-encoder judge (ignored for timm/torchvision models).
    judge_width_mult: float = 1.0
    #: Training of a harness-trained judge: epochs over the training split, Adam, cosine schedule.
    judge_epochs: float = 10.0
    #: Adam learning rate of a harness-trained judge.
    judge_lr: float = 1e-3
    #: Adam weight decay of a harness-trained judge.
    judge_weight_decay: float = 5e-4
    #: Batch size of a harness-trained judge.
    judge_batch_size: int = 128
    #: Random horizontal flips and translations by up to 1/8 of the side (the usual CIFAR augmentation).
    judge_augment: bool = True
    #: Seed of the judge's initialisation and data order; -1: the run's seed.
    judge_seed: int = -1
    #: Folder for judges shared across pretexts; empty: see :func:`shared_cache_root`.
    judge_cache: str = ""


# -- caches and evaluation helpers -------------------------------------------------------------------------------
def shared_cache_root(cache_dir: str | None, override: str = "") -> Path | None:
    """Where caches shared by every pretext go: ``override`` if given; ``<cache>`` when ``cache_dir`` is the
    runner's ``<cache>/features/<pretext hash>``; ``cache_dir`` itself otherwise; None without any folder."""
    if override:
        return Path(override).expanduser()
    if not cache_dir:
        return None
    path = Path(cache_dir)
    return path.parent.parent if path.parent.name == "features" else path


def dataset_fingerprint(dataset: Dataset, probes: int = 32) -> dict[str, Any]:
    """What identifies a dataset's content cheaply: its description (without the root path), its size and a SHA-256
    of the pixels and labels of ``probes`` evenly spaced items."""
    describe = getattr(dataset, "describe", None)
    info = dict(describe()) if callable(describe) else {"type": type(dataset).__name__}
    info.pop("root", None)
    size = len(dataset)  # type: ignore[arg-type]
    digest = hashlib.sha256()
    for index in sorted({round(i * (size - 1) / max(1, probes - 1)) for i in range(probes)} if size else set()):
        item = dataset[index]
        digest.update(item["image"].contiguous().numpy().tobytes())
        digest.update(repr(item.get("label")).encode())
    info.update(size=size, content=digest.hexdigest()[:16], class_names=list(getattr(dataset, "class_names", ())))
    return info


def eval_subset(dataset: Dataset, max_images: int) -> Dataset:
    """At most ``max_images`` items (0: all), chosen with a fixed seed so every pretext and seed sees the same ones
    (the choice is spread over the split: class-sorted folders do not give one class)."""
    size = len(dataset)  # type: ignore[arg-type]
    if max_images <= 0 or max_images >= size:
        return dataset
    return Subset(dataset, subset_indices(size, max_images, 0))


def eval_loader(dataset: Dataset, batch_size: int, runtime: Runtime) -> DataLoader:
    """An ordered, unsharded loader (each process evaluates the whole split)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=runtime.workers,
                      pin_memory=runtime.device.type == "cuda")


def gray_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """The grayscale version of float sRGB images: their L with ab = 0, back to sRGB in [0, 1]."""
    lab = rgb_to_lab(rgb.float())
    return lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1))


# -- networks --------------------------------------------------------------------------------------------------------
class EncoderClassifier(nn.Module):
    """An sslbench encoder's deepest tap, globally average-pooled, then a linear layer."""

    def __init__(self, encoder: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x)[-1].mean(dim=(2, 3)))


def build_judge_network(name: str, num_classes: int, image_size: int, width_mult: float = 1.0) -> nn.Module:
    """A freshly initialised classifier ``name`` (see the module docstring) with ``num_classes`` outputs."""
    if name.startswith("timm/"):
        import timm

        try:
            return timm.create_model(name[5:], pretrained=False, num_classes=num_classes)
        except RuntimeError as exc:
            raise UsageError(f"judge_model={name!r}: timm cannot build it: {exc}") from exc
    if name.startswith("torchvision/"):
        import torchvision

        try:
            return torchvision.models.get_model(name[12:], weights=None, num_classes=num_classes)
        except ValueError as exc:
            raise UsageError(f"judge_model={name!r}: torchvision cannot build it: {exc}") from exc
    from sslbench.encoders import create_encoder

    encoder = create_encoder(name, in_chans=3, image_size=image_size, width_mult=width_mult)
    return EncoderClassifier(encoder, encoder.out_channels, num_classes)


def parse_class_map(text: str, num_dataset_classes: int, judge_classes: int) -> list[list[int]] | None:
    """``judge_class_map`` as one list of judge classes per dataset class (None: identity; checked)."""
    if not text:
        if judge_classes != num_dataset_classes:
            raise UsageError(f"the judge has {judge_classes} classes and the dataset {num_dataset_classes}: set "
                             "semantic.judge_class_map to say which judge classes stand for each dataset class")
        return None
    if text.endswith(".json"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise DataError(f"semantic.judge_class_map: {path} does not exist (expected a JSON list with one judge "
                            "class index, or list of indices, per dataset class)")
        entries = [e if isinstance(e, list) else [e] for e in json.loads(path.read_text())]
    else:
        entries = [[int(v) for v in part.split("|") if v.strip()] for part in text.split(",")]
    if len(entries) != num_dataset_classes or any(not e for e in entries):
        raise UsageError(f"semantic.judge_class_map has {len(entries)} entries; the dataset has "
                         f"{num_dataset_classes} classes and each needs at least one judge class")
    flat = [int(v) for e in entries for v in e]
    if min(flat) < 0 or max(flat) >= judge_classes:
        raise UsageError(f"semantic.judge_class_map names class {max(flat)} or {min(flat)}; the judge has "
                         f"classes 0..{judge_classes - 1}")
    return [[int(v) for v in e] for e in entries]


class Judge(nn.Module):
    """A classifier with its preprocessing: float sRGB in [0, 1] (N, 3, H, W) -> scores per dataset class."""

    def __init__(self, network: nn.Module, input_size: int = 0, normalize: str = "imagenet",
                 class_map: list[list[int]] | None = None) -> None:
        super().__init__()
        if normalize not in NORMALISATIONS:
            raise UsageError(f"semantic.judge_normalize={normalize!r}: choose one of {', '.join(NORMALISATIONS)}")
        self.network = network
        self.input_size = input_size
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.class_map = class_map
        if class_map is not None:
            width = max(len(e) for e in class_map)
            index = torch.tensor([e + [e[0]] * (width - len(e)) for e in class_map], dtype=torch.long)
            self.register_buffer("map_index", index, persistent=False)

    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """Resize to ``input_size`` (bilinear, antialiased) and normalise."""
        x = rgb.float()
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        if self.normalize == "imagenet":
            x = (x - self.mean) / self.std
        return x

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        logits = self.network(self.preprocess(rgb))
        if self.class_map is None:
            return logits
        n, classes, width = logits.shape[0], *self.map_index.shape
        picked = logits.gather(1, self.map_index.view(1, -1).expand(n, -1))
        return picked.view(n, classes, width).amax(dim=2)


# -- training and caching --------------------------------------------------------------------------------------------
def _resolved_seed(cfg: JudgeConfig, seed: int) -> int:
    return seed if cfg.judge_seed < 0 else cfg.judge_seed


def judge_cache_key(cfg: JudgeConfig, train: Dataset, seed: int, precision: str) -> tuple[str, dict[str, Any]]:
    """The hash naming a harness-trained judge, and what it hashes: the training data's fingerprint, every option
    that changes the trained weights, the seed and the training precision."""
    fields = {
        "format": JUDGE_FORMAT, "dataset": dataset_fingerprint(train), "model": cfg.judge_model,
        "width_mult": cfg.judge_width_mult, "epochs": cfg.judge_epochs, "lr": cfg.judge_lr,
        "weight_decay": cfg.judge_weight_decay, "batch_size": cfg.judge_batch_size,
        "input_size": cfg.judge_input_size, "normalize": cfg.judge_normalize, "augment": cfg.judge_augment,
        "seed": _resolved_seed(cfg, seed), "precision": precision,
    }
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()[:16], fields


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and integer translations (reflect padding by 1/8 of the side), batched."""
    n, c, h, w = x.shape
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    pad = max(1, min(h, w) // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols]


def train_judge(judge: Judge, train: Dataset, cfg: JudgeConfig, runtime: Runtime, seed: int,
                progress: Progress) -> dict[str, Any]:
    """Train ``judge`` on the labelled colour images of ``train`` (Adam, cosine schedule) with the one training loop,
    :func:`sslbench.fit.fit`, through the Runtime; returns a summary (steps, first and last loss, seconds).

    Raises :class:`UsageError` when no batch of 2 images can be formed (batch norm needs 2) and
    :class:`NonFiniteLossError` naming the step when the loss, or the trained weights, are not finite."""
    size = len(train)  # type: ignore[arg-type]
    if size < 2 or cfg.judge_batch_size < 2:
        raise UsageError(f"semantic judge training: {size} training image(s) in batches of {cfg.judge_batch_size}; "
                         "the judge's batch norm needs batches of at least 2 (use a larger --subset or "
                         "semantic.judge_batch_size)")
    hint = f"lower semantic.judge_lr (now {cfg.judge_lr:g})"
    per_epoch = max(1, -(-size // cfg.judge_batch_size))
    total = max(1, round(cfg.judge_epochs * per_epoch))
    model = runtime.wrap(judge)
    opt = torch.optim.Adam(judge.parameters(), lr=cfg.judge_lr, weight_decay=cfg.judge_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    generator = torch.Generator().manual_seed(seed)

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rgb = images_to_rgb(batch["image"])
        if cfg.judge_augment:
            rgb = _augment(rgb, generator)
        with runtime.autocast():
            return F.cross_entropy(model(rgb).float(), batch["label"])

    judge.train()
    with torch.enable_grad():
        state = fit(step, lambda epoch: runtime.loader(train, cfg.judge_batch_size, shuffle=True, seed=seed,
                                                       epoch=epoch),
                    total=total, runtime=runtime, progress=progress, description="train judge", optimizer=opt,
                    modules=[model], min_batch=2, where="semantic judge training", hint=hint, weights=judge,
                    on_step_end=lambda _: sched.step())
    judge.eval()
    return {"steps": state.step, "epochs": state.step / per_epoch, "train_images": size,
            "first_loss": state.first["loss"], "last_loss": state.last["loss"], "wall_s": state.wall_s}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: a bare one, or a checkpoint holding it under ``state_dict``/``model``.

    Read with ``weights_only=True``, so a file that pickles anything but tensors and plain containers is refused
    before any of it runs. The file is the user's, not a cache entry: the error says how to re-save it."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise DataError(f"semantic.judge_weights: cannot read {path}: {load_failure_reason(exc)}; sslbench loads "
                        "only tensors and plain containers and ran nothing from it. Save the model's weights with "
                        "torch.save(model.state_dict(), path)") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise DataError(f"semantic.judge_weights: {path} holds no state dict of tensors")
    return obj


def _classes_in(state: dict[str, torch.Tensor]) -> int:
    """Output classes of a classifier's state dict: rows of its last 2-D weight (the final linear layer)."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not weights:
        raise UsageError("semantic.judge_weights: cannot tell the number of classes from the state dict; set "
                         "semantic.judge_num_classes")
    return int(weights[-1].shape[0])


def _load_into(network: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UsageError(f"semantic: the weights in {origin} do not fit the judge model: {exc}") from exc


def get_judge(cfg: JudgeConfig, data: EvalData, runtime: Runtime, progress: Progress) -> tuple[Judge, dict[str, Any]]:
    """The judge for ``data``: loaded from ``judge_weights``, or from the cache, or trained now and cached.

    Returns the judge (eval mode, on the runtime's device) and what to record about it (``source``: ``weights``,
    ``cache``, ``memory`` or ``trained``; ``hash`` for a harness-trained judge; the training summary when trained).
    """
    num_dataset_classes = data.train.num_classes
    image_size = data.train.image_size if isinstance(data.train.image_size, int) else max(data.train.image_size)
    size = cfg.judge_input_size or image_size
    if cfg.judge_weights:
        path = Path(cfg.judge_weights).expanduser()
        if not path.is_file():
            raise DataError(f"semantic.judge_weights: {path} does not exist; give a local state-dict file of a "
                            f"{cfg.judge_model!r} model (sslbench never downloads weights)")
        state = _read_state_dict(path)
        classes = cfg.judge_num_classes or (num_dataset_classes if not cfg.judge_class_map else _classes_in(state))
        network = build_judge_network(cfg.judge_model, classes, size, cfg.judge_width_mult)
        _load_into(network, state, str(path))
        class_map = parse_class_map(cfg.judge_class_map, num_dataset_classes, classes)
        judge = Judge(network, cfg.judge_input_size, cfg.judge_normalize, class_map)
        return judge.to(runtime.device).eval(), {"source": "weights", "weights": str(path)}

    if cfg.judge_class_map or cfg.judge_num_classes not in (0, num_dataset_classes):
        raise UsageError("semantic: judge_class_map and judge_num_classes apply to a judge loaded from "
                         "judge_weights; a judge trained here has the dataset's classes")
    seed = _resolved_seed(cfg, data.seed)
    key, fields = judge_cache_key(cfg, data.train, data.seed, runtime.precision)
    root = shared_cache_root(data.cache_dir, cfg.judge_cache)
    file = root / "judges" / key / "judge.pt" if root is not None else None
    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        network = build_judge_network(cfg.judge_model, num_dataset_classes, size, cfg.judge_width_mult)
        judge = Judge(network, cfg.judge_input_size, cfg.judge_normalize).to(runtime.device)
        if file is not None and file.is_file():
            saved = load_cache_file(file)
            _load_into(network, saved["state_dict"], str(file))
            return judge.eval(), {"source": "cache", "hash": key}
        if key in _MEMORY:
            _load_into(network, _MEMORY[key], "the in-memory judge cache")
            return judge.eval(), {"source": "memory", "hash": key}
        summary = train_judge(judge, data.train, cfg, runtime, seed, progress)
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    if file is None:
        _MEMORY[key] = state
    elif runtime.is_main:
        atomic_torch_save({"state_dict": state, "key": json.loads(canonical_json(fields)), "train": summary}, file)
        file.with_suffix(".json").write_text(json.dumps({"key": fields, "train": summary}, indent=2, default=str))
    runtime.barrier()
    return judge.eval(), {"source": "trained", "hash": key, **{f"train_{k}": v for k, v in summary.items()}}


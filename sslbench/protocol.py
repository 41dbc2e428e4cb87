"""The protocol contract: how a protocol plugin evaluates a trained pretext.

A protocol declares what it needs (dataset keys such as ``label``/``labels``/``mask``, and pretext abilities such
as ``colorize``) and implements :meth:`Protocol.evaluate`, which returns a flat dict of metrics (per-layer metrics as
``layer/<tap>/<metric>``) and never prints. It reaches the pretext only through the :class:`~sslbench.pretext.Pretext`
interface (``representation()``, ``colorize()``, ``segmentation_model()``) and trains only through the
:class:`~sslbench.runtime.Runtime`.

A classifier on frozen features, one per tapped layer (``linear``, ``knn``), subclasses :class:`PerLayerProbe` and
implements only :meth:`PerLayerProbe.score`; the base gets the features from the unit's shared
:class:`~sslbench.features.FeatureStore` (one pass of the encoder for all such protocols), holds out the seeded
validation part of the training split (:func:`validation_split`), names the metrics ``layer/<tap>/<metric>`` and
picks ``best/*`` on the validation part (:func:`choose_best`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from sslbench.config import EmptyConfig
from sslbench.datasets.base import ImageDataset
from sslbench.errors import NonFiniteLossError, UsageError
from sslbench.features import REDUCTIONS, FeatureStore, Reduction
from sslbench.pretext import Pretext
from sslbench.progress import Progress
from sslbench.runtime import Runtime

__all__ = ["EvalData", "Protocol", "PerImage", "PER_IMAGE_KINDS", "PRETEXT_ABILITIES", "PerLayerProbe",
           "PerLayerConfig", "TapContext", "shared_features", "validation_split", "correct_values", "check_finite",
           "choose_best"]

#: How a metric is recomputed from per-image values (see :class:`PerImage`).
PER_IMAGE_KINDS = {"mean": ("values",), "ratio": ("num", "den"), "confusion": ("confusion",),
                   "ap": ("scores", "targets", "difficult")}

#: Requirements a protocol may place on the pretext rather than on the dataset.
PRETEXT_ABILITIES = frozenset({"colorize"})


@dataclass
class EvalData:
    """The splits a protocol trains and evaluates on, and how to batch them."""

    train: ImageDataset
    test: ImageDataset
    batch_size: int = 64
    seed: int = 0
    epochs: float | None = None
    cache_dir: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: Features shared by the protocols of one checkpoint (the runner's); None: each protocol extracts its own.
    features: FeatureStore | None = None


@dataclass
class PerImage:
    """Per-test-image values from which a metric is recomputed on any resample of the test images (for bootstrap
    intervals over test images). ``kind`` says how, and which ``arrays`` (first axis: the test image) it holds:

    - ``mean``: ``values`` (N,); the metric is their mean (top-1 as 100·correct, per-image PSNR, ...);
    - ``ratio``: ``num``, ``den`` (N,); the metric is sum(num) / sum(den);
    - ``confusion``: ``confusion`` (N, C, C); the metric is 100·mIoU of the summed matrix;
    - ``ap``: ``scores``, ``targets``, ``difficult`` (N, C); the metric is 100·VOC mAP.
    """

    kind: str
    arrays: dict[str, Any]

    def __post_init__(self) -> None:
        expected = PER_IMAGE_KINDS.get(self.kind)
        if expected is None:
            raise ValueError(f"per-image kind {self.kind!r}: choose one of {', '.join(PER_IMAGE_KINDS)}")
        if set(self.arrays) != set(expected):
            raise ValueError(f"per-image kind {self.kind!r} holds arrays {expected}, got {tuple(self.arrays)}")


class Protocol:
    """Base class of every protocol plugin.

    ``per_image`` is filled by protocols whose metrics can be bootstrapped over test images (metric name ->
    :class:`PerImage`); the runner saves it beside the record.
    """

    #: Dataset keys (``label``, ``labels``, ``mask``) and pretext abilities (``colorize``) the protocol needs.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: The option dataclass; its resolved value is recorded with every result.
    Config: ClassVar[type] = EmptyConfig
    #: The metric shown in compact tables.
    headline: ClassVar[str] = ""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.per_image: dict[str, PerImage] = {}

    def evaluate(self, pretext: Pretext, data: EvalData, runtime: Runtime, progress: Progress) -> dict[str, float]:
        """Evaluate ``pretext`` and return flat metrics."""
        raise NotImplementedError


#: Added to the run's seed for the validation split, so it is not the same stream as the probe's batch order.
VALIDATION_SEED_OFFSET = 7919


def validation_split(size: int, fraction: float, seed: int, option: str = "linear.val_fraction"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit, validation)``: sorted, disjoint index tensors covering ``range(size)``; validation holds
    ``round(fraction · size)`` of them, at least 1 and at most ``size - 1``, drawn with a generator seeded by
    ``seed`` (so every tap and every pretext of a seed uses the same split)."""
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"{option}={fraction}: give a fraction strictly between 0 and 1 (0.1 holds out 10% of the "
                         "training split to choose the best layer on)")
    if size < 2:
        raise UsageError(f"{option}: the training split has {size} image(s); holding out a validation part needs "
                         "at least 2 (use a larger --subset)")
    held_out = min(size - 1, max(1, round(fraction * size)))
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET))
    return order[held_out:].sort().values, order[:held_out].sort().values


def correct_values(scores: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Per-sample top-1 as 100·correct (float64, on the CPU): the mean is the top-1 in %. Ties go to the lowest
    class (``argmax``), as :func:`sslbench.metrics.top1_accuracy`."""
    return 100.0 * (scores.argmax(dim=1) == targets.to(scores.device)).cpu().numpy().astype(np.float64)


def check_finite(what: str, module: nn.Module | None = None, outputs: torch.Tensor | None = None,
                 hint: str = "") -> None:
    """Raise :class:`NonFiniteLossError` when a parameter or buffer of ``module``, or ``outputs``, is NaN/infinite."""
    bad = [] if module is None else [name for name, value in module.state_dict().items()
                                     if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if outputs is not None and not bool(torch.isfinite(outputs).all()):
        bad.append("its outputs")
    if bad:
        raise NonFiniteLossError(f"{what}: {', '.join(bad)} not finite{'; ' + hint if hint else ''}")


def choose_best(metrics: dict[str, Any], taps: list[str], per_image: dict[str, PerImage]) -> None:
    """Add ``best/layer``, ``best/top1``, ``best/val_top1`` (and ``best/top1``'s per-image values): the tap with the
    highest ``layer/<tap>/val_top1``, the earlier tap on ties."""
    best = max(taps, key=lambda tap: metrics[f"layer/{tap}/val_top1"])
    metrics["best/top1"] = metrics[f"layer/{best}/top1"]
    metrics["best/val_top1"] = metrics[f"layer/{best}/val_top1"]
    metrics["best/layer"] = best
    per_image["best/top1"] = per_image[f"layer/{best}/top1"]


@dataclass
class PerLayerConfig:
    """The options every :class:`PerLayerProbe` reads; a probe's own ``Config`` adds its options to these (by
    subclassing, or by declaring the same fields)."""

    #: ``global`` (one value per channel), ``avg`` or ``bilinear`` (a grid of about ``target_dims`` values).
    reduction: str = "global"
    #: Feature size aimed at by ``avg`` / ``bilinear``.
    target_dims: int = 9000
    #: Also store the extracted features in the checkpoint's cache folder, so reruns skip the encoder.
    cache_features: bool = False
    #: Fraction of the training split held out (seeded by the run's seed) to choose the best layer on.
    val_fraction: float = 0.1


@dataclass(frozen=True)
class TapContext:
    """What :meth:`PerLayerProbe.score` may need besides the features: the tap scored (for messages), the run's
    seed (for anything random), the runtime (device, autocast, ``optimise`` for a trained probe) and the progress
    display (for a trained probe's steps)."""

    tap: str
    seed: int
    runtime: Runtime
    progress: Progress


class PerLayerProbe(Protocol):
    """Base of the protocols that fit a classifier on frozen features of every tapped layer.

    A subclass implements :meth:`score`. The base, in :meth:`evaluate`, gets each split's reduced features (every
    tap, float32, on the device) from the unit's shared :class:`~sslbench.features.FeatureStore`, holds out the
    seeded ``val_fraction`` of the training split, and per tap calls :meth:`score` and reports
    ``layer/<tap>/top1`` (evaluation split), ``layer/<tap>/val_top1`` (held-out part) and ``layer/<tap>/dims``;
    then ``best/layer``, ``best/top1`` and ``best/val_top1`` (the tap with the best ``val_top1``, the earlier on
    ties), ``train/val_images`` and, unless ``refit_for_test``, ``train/probe_images``. Per-image correctness on the
    evaluation split is kept for bootstrap intervals.
    """

    requires = frozenset({"label"})
    Config = PerLayerConfig
    headline = "best/top1"
    #: The protocol's name in messages about its options (``linear.val_fraction``); default: the class name.
    option_prefix: ClassVar[str] = ""
    #: False: one :meth:`score` call fitted on the training split less the held-out part scores both the held-out
    #: part and the evaluation split (a trained probe). True: the evaluation split is scored by a second call fitted
    #: on the whole training split (a method with nothing to fit, such as kNN: the held-out images become neighbours
    #: only after the layer is chosen, which leaks nothing about the evaluation split).
    refit_for_test: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if dataclasses.is_dataclass(cls.Config):
            missing = {f.name for f in dataclasses.fields(PerLayerConfig)} - {f.name for f in
                                                                               dataclasses.fields(cls.Config)}
            if missing:
                raise TypeError(f"{cls.__module__}.{cls.__qualname__}: its Config lacks {', '.join(sorted(missing))}; "
                                "subclass sslbench.protocol.PerLayerConfig")

    def score(self, train_x: torch.Tensor, train_y: torch.Tensor, queries: Sequence[torch.Tensor],
              num_classes: int, context: TapContext) -> list[torch.Tensor]:
        """Fit on ``train_x`` (N, D) with labels ``train_y`` (N,) and return, for each of ``queries`` (M_i, D),
        class scores (M_i, ``num_classes``): the predicted class of a row is its highest score."""
        raise NotImplementedError(f"{type(self).__name__} must implement score")

    @classmethod
    def feature_request(cls, config: Any) -> Reduction:
        """The reduction this protocol's features use (the runner plans the shared extraction with it)."""
        return Reduction(config.reduction, config.target_dims)

    def _prefix(self) -> str:
        return self.option_prefix or type(self).__name__

    def check_config(self) -> None:
        """Refuse options that cannot work, before any feature is extracted (subclasses add their own checks); the
        plan calls it too, so a bad option is a usage error before any work."""
        # The fraction alone, checked by the code that will use it (two images can always be split).
        validation_split(2, self.config.val_fraction, 0, option=f"{self._prefix()}.val_fraction")
        if self.config.reduction not in REDUCTIONS:
            raise ValueError(f"{self._prefix()}.reduction={self.config.reduction!r}: choose one of "
                             f"{', '.join(REDUCTIONS)}")

    def evaluate(self, pretext: Pretext, data: EvalData, runtime: Runtime, progress: Progress) -> dict[str, Any]:
        self.check_config()
        cfg, name = self.config, self._prefix()
        request = self.feature_request(cfg)
        representation = pretext.representation().to(runtime.device).eval()
        store = data.features if data.features is not None else FeatureStore(data.cache_dir, planned=[request])
        common = dict(reduction=request, batch_size=data.batch_size, progress=progress, persist=cfg.cache_features)
        train_x, train_y = store.get(representation, data.train, runtime, split="train", **common)
        test_x, test_y = store.get(representation, data.test, runtime, split="test", **common)
        if train_y is None or test_y is None:
            raise ValueError(f"{name} needs a 'label' for every image of both splits")
        fit, val = (part.to(train_y.device) for part in
                    validation_split(len(train_y), cfg.val_fraction, data.seed, option=f"{name}.val_fraction"))
        metrics: dict[str, Any] = {} if self.refit_for_test else {"train/probe_images": len(fit)}
        metrics["train/val_images"] = len(val)
        taps = [tap.name for tap in representation.taps]
        classes = data.train.num_classes
        for tap in taps:  # a trained probe shows its own steps
            features, context = train_x[tap], TapContext(tap, data.seed, runtime, progress)
            if self.refit_for_test:
                (val_scores,) = self.score(features[fit], train_y[fit], [features[val]], classes, context)
                (test_scores,) = self.score(features, train_y, [test_x[tap]], classes, context)
            else:
                val_scores, test_scores = self.score(features[fit], train_y[fit], [features[val], test_x[tap]],
                                                     classes, context)
            test_values = correct_values(test_scores, test_y)
            metrics[f"layer/{tap}/top1"] = float(test_values.mean())
            metrics[f"layer/{tap}/val_top1"] = float(correct_values(val_scores, train_y[val]).mean())
            metrics[f"layer/{tap}/dims"] = int(features.shape[1])
            self.per_image[f"layer/{tap}/top1"] = PerImage("mean", {"values": test_values})
        choose_best(metrics, taps, self.per_image)
        return metrics


def shared_features(protocols: Iterable[tuple[type, Any]], cache_dir: str | Path | None) -> FeatureStore:
    """One :class:`~sslbench.features.FeatureStore` for the protocols (class, resolved config) of one checkpoint,
    planned with the reductions of the per-layer probes among them, spilling under ``cache_dir``."""
    planned = [cls.feature_request(config) for cls, config in protocols
               if isinstance(cls, type) and issubclass(cls, PerLayerProbe)]
    return FeatureStore(cache_dir, planned=planned)

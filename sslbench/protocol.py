"""The protocol contract: how a protocol plugin evaluates a trained pretext.

A protocol declares what it needs (dataset keys such as ``label``/``labels``/``mask``, and pretext abilities such
as ``colorize``) and implements :meth:`Protocol.evaluate`, which returns a flat dict of metrics (per-layer metrics as
``layer/<tap>/<metric>``) and never prints. It reaches the pretext only through the :class:`~sslbench.pretext.Pretext`
interface (``representation()``, ``colorize()``, ``segmentation_model()``) and trains only through the
:class:`~sslbench.runtime.Runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from sslbench.config import EmptyConfig
from sslbench.datasets.base import ImageDataset
from sslbench.pretext import Pretext
from sslbench.progress import Progress
from sslbench.runtime import Runtime

__all__ = ["EvalData", "Protocol", "PerImage", "PER_IMAGE_KINDS", "PRETEXT_ABILITIES"]

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

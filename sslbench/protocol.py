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

__all__ = ["EvalData", "Protocol", "PRETEXT_ABILITIES"]

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


class Protocol:
    """Base class of every protocol plugin."""

    #: Dataset keys (``label``, ``labels``, ``mask``) and pretext abilities (``colorize``) the protocol needs.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: The option dataclass; its resolved value is recorded with every result.
    Config: ClassVar[type] = EmptyConfig
    #: The metric shown in compact tables.
    headline: ClassVar[str] = ""

    def __init__(self, config: Any) -> None:
        self.config = config

    def evaluate(self, pretext: Pretext, data: EvalData, runtime: Runtime, progress: Progress) -> dict[str, float]:
        """Evaluate ``pretext`` and return flat metrics."""
        raise NotImplementedError

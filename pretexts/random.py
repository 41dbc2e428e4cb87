"""``random``: the untrained encoder, the lower bound of every comparison.

The encoder keeps its seeded initialisation; nothing is trained, so no checkpoint is written.
"""

from __future__ import annotations

from sslbench.pretext import DataInfo, EncoderSpec, Pretext
from sslbench.registry import register_pretext


@register_pretext("random")
class RandomInit(Pretext):
    """Untrained encoder with its seeded initialisation (lower bound)."""

    trainable = False

    def __init__(self, config: object, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        self.encoder = encoder.build(in_chans=1)

"""``untrained``: another pretext's whole network at its seeded initialisation, never trained.

``random`` is the lower bound for protocols that put their own head on the encoder. Protocols that fine-tune a
pretext's *whole* network need a different scratch baseline: ``finetune_seg`` on a ``cgan`` checkpoint fine-tunes
the pix2pix U-Net generator (encoder, decoder and skip connections, as Treneska et al. 2022 transfer it), while on
``random`` it trains the protocol's decoder on a bare encoder, so the two rows differ in architecture as well as in
pretraining. ``untrained`` with ``like = "cgan"`` builds the cGAN pretext as ``cgan`` would with its default options (same
encoder and data, and at the same seed the very same initial weights), keeps those weights and hands protocols that network: its representation, its segmentation
model and, for ``finetune_cls``, its encoder. The difference between the two rows is then the pretraining alone.

Nothing is trained (no checkpoint is written), so the row costs only its protocols. Colorization protocols are
skipped: an untrained generator's colours mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from torch import nn

from sslbench.pretext import DataInfo, EncoderSpec, Pretext, Representation
from sslbench.registry import get_pretext_class, register_pretext


@dataclass
class UntrainedConfig:
    #: The registered pretext whose network is built and left at its initialisation (``cgan``: its U-Net
    #: generator).
    like: str = "cgan"


@register_pretext("untrained")
class Untrained(Pretext):
    """Another pretext's network at its seeded initialisation (the scratch baseline of whole-network transfer)."""

    Config = UntrainedConfig
    trainable = False

    def __init__(self, config: UntrainedConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        if config.like == "untrained":
            raise ValueError("untrained.like='untrained': name the pretext whose network to build (e.g. cgan)")
        cls = get_pretext_class(config.like)
        if not cls.trainable:
            raise ValueError(f"untrained.like={config.like!r} is untrained already; use it directly")
        self.network = cls(cls.Config(), encoder, data)

    @classmethod
    def pretexts_used(cls, config: UntrainedConfig) -> tuple[str, ...]:
        return (config.like,)

    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        return self.network.encoder

    def representation(self) -> Representation:
        return self.network.representation()

    def segmentation_model(self, num_classes: int) -> nn.Module | None:
        return self.network.segmentation_model(num_classes)

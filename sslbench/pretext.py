"""The pretext contract: what a pretext plugin implements and what protocols get from it.

A pretext is an ``nn.Module`` built from its ``Config`` dataclass, an :class:`EncoderSpec` and a :class:`DataInfo`.
It owns its encoder, heads, decoders, discriminators and optimisers; :meth:`Pretext.training_step` does one step on
a batch through the :class:`~sslbench.runtime.Runtime` (so precision and DDP live in one place) and returns the
losses to log. Protocols see it only through :meth:`Pretext.representation` (RGB in, tapped maps out),
:meth:`Pretext.colorize` and :meth:`Pretext.segmentation_model`.

Data-dependent state (an ab prior computed in :meth:`Pretext.prepare`) must round-trip through ``state_dict``: keep it
in buffers of fixed shape or in ``get_extra_state``/``set_extra_state``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from sslbench.colour import lab_to_rgb, normalize_l, rgb_to_lab
from sslbench.colour.gamut import fit_to_gamut
from sslbench.config import EmptyConfig
from sslbench.encoders.base import Encoder, Tap
from sslbench.runtime import Runtime

__all__ = ["DataInfo", "EncoderSpec", "Pretext", "Representation", "EncoderRepresentation", "LRepresentation",
           "images_to_rgb", "merge_l_ab"]


@dataclass(frozen=True)
class DataInfo:
    """What a pretext may know about its training data before seeing it."""

    dataset: str
    image_size: int | tuple[int, int]
    num_classes: int = 0
    class_names: tuple[str, ...] = ()


@dataclass
class EncoderSpec:
    """A registered encoder name and its options; :meth:`build` makes a fresh instance."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 32

    def build(self, *, in_chans: int = 1, **overrides: Any) -> Encoder:
        from sslbench.encoders import create_encoder

        return create_encoder(self.name, in_chans=in_chans, image_size=self.image_size,
                              **{**self.options, **overrides})


def images_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) images to float RGB in [0, 1] (float input is returned as float32 unchanged)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


class Representation(nn.Module):
    """What protocols probe and fine-tune: float RGB in [0, 1] (N, 3, H, W) -> list of tapped maps.

    The pretext decides what its encoder sees (L only for most; Lab for split-brain).
    """

    taps: tuple[Tap, ...] = ()

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class EncoderRepresentation(Representation):
    """The encoder on ``prepare(rgb)`` (what its pretext fed it in training), with the encoder's own taps."""

    def __init__(self, encoder: Encoder, prepare: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.encoder = encoder
        self.prepare = prepare
        self.taps = tuple(encoder.taps)

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(self.prepare(rgb))


def normalized_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """The normalised L channel (N, 1, H, W) of RGB in [0, 1]: what the colour pretexts' encoders see."""
    return normalize_l(rgb_to_lab(rgb)[:, :1])


class LRepresentation(EncoderRepresentation):
    """The common case: the encoder sees the normalised L channel of the image."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__(encoder, normalized_lightness)


class Pretext(nn.Module):
    """Base class of every pretext plugin.

    Subclasses set ``self.encoder`` in ``__init__`` and implement :meth:`compute_loss` (single-loss pretexts) or
    override :meth:`training_step` (several optimisers, e.g. a GAN).
    """

    #: Dataset keys the pretext trains on: ``{"label"}`` for the supervised upper bound, empty otherwise.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: False for pretexts that skip training (the random lower bound).
    trainable: ClassVar[bool] = True
    #: The option dataclass; its resolved value is part of the checkpoint hash.
    Config: ClassVar[type] = EmptyConfig
    #: Options read only when the trained pretext is used (decoding), never in training: they are left out of the
    #: checkpoint hash, so variants that differ only in them share one trained checkpoint, and go into the records.
    inference_options: ClassVar[frozenset[str]] = frozenset()

    encoder: Encoder

    def __init__(self, config: Any, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__()
        self.config = config
        self.data_info = data

    @classmethod
    def pretexts_used(cls, config: Any) -> tuple[str, ...]:
        """Other registered pretexts whose code this one runs with ``config`` (``untrained`` builds its ``like``'s
        network). Their identities join this pretext's provenance, hence its hashes: a new version of one makes
        this pretext's checkpoints and records stale too. Default: none."""
        return ()

    # -- training ------------------------------------------------------------------------------------------------
    def prepare(self, batches: Iterable[dict[str, torch.Tensor]], runtime: Runtime) -> None:
        """Data-dependent initialisation before the first step (e.g. an ab prior); default: nothing."""

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers by name; default Adam on all parameters."""
        return {"opt": torch.optim.Adam(self.parameters(), lr=getattr(self.config, "lr", 1e-3))}

    def setup(self, runtime: Runtime) -> None:
        """Move to the device and create the optimisers (called by the trainer)."""
        self.to(runtime.device)
        self.optimizers = self.configure_optimizers()
        # Kept outside nn.Module's registry: the (possibly DDP-wrapped) pretext must not be its own submodule.
        self.__dict__["train_model"] = runtime.wrap(self)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise on ``batch`` and the terms to log (single-optimiser pretexts)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss or training_step")

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.compute_loss(batch)

    def training_step(self, batch: dict[str, torch.Tensor], runtime: Runtime) -> dict[str, float]:
        """One optimisation step; returns the losses to log."""
        (opt,) = self.optimizers.values()
        with runtime.autocast():
            loss, logs = self.train_model(batch)
        runtime.backward(loss, name=f"{type(self).__name__} loss")
        runtime.step(opt)
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in logs.items()}}

    # -- what protocols use ----------------------------------------------------------------------------------------
    def representation(self) -> Representation:
        """The trained encoder as protocols see it (shares weights with the pretext)."""
        return LRepresentation(self.encoder)

    @property
    def can_colorize(self) -> bool:
        return type(self).colorize is not Pretext.colorize

    def colorize(self, rgb: torch.Tensor) -> torch.Tensor:
        """Recolour float RGB (N, 3, H, W) in [0, 1], keeping its L; pretexts that predict colour override this."""
        raise NotImplementedError(f"{type(self).__name__} does not colorize")

    def segmentation_model(self, num_classes: int) -> nn.Module | None:
        """A whole network to fine-tune for segmentation (RGB -> (N, C, H, W) logits), or None to let the protocol
        put its own decoder on :meth:`representation` (the cGAN returns its generator, as Treneska et al. did).

        The network must expose ``head``, its freshly initialised part, which protocols train alone first."""
        return None


def merge_l_ab(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] from L (N, 1, H, W) in [0, 100] and ab (N, 2, h, w), upsampling ab bilinearly if smaller.

    Out-of-gamut ab is shrunk towards grey at constant L and hue first, so the output keeps the input's L (within
    0.5) instead of having it moved by RGB clipping: every colorizer's ``colorize`` goes through here."""
    if ab.shape[-2:] != lightness.shape[-2:]:
        ab = nn.functional.interpolate(ab, size=lightness.shape[-2:], mode="bilinear", align_corners=False)
    ab = fit_to_gamut(lightness, ab.to(lightness.dtype))
    return lab_to_rgb(torch.cat([lightness, ab], dim=1))

"""The encoder contract every pretext and protocol relies on.

An encoder is an ``nn.Module`` whose input is (N, in_chans, H, W): for the colour pretexts and ``supervised`` the
normalised L channel, ``colour.normalize_l(L)`` (in_chans 1; 2 for the ab half of split-brain), for the non-colour
references (``rotation``, ``jigsaw``) RGB scaled to [-1, 1] (in_chans 3); the pretext that builds it chooses. Its ``forward`` returns the list of
tapped feature maps, shallow to deep. ``taps`` describes them (name, channels, stride relative to the input), like
timm's ``feature_info``; :func:`check_taps` verifies the description against a real forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Tap", "Encoder", "BlockEncoder", "check_taps"]


@dataclass(frozen=True)
class Tap:
    """One tapped feature map: its name (``conv3``, ``stage2``), channel count and stride w.r.t. the input."""

    name: str
    channels: int
    stride: int


class Encoder(nn.Module):
    """Base class: subclasses set ``self.taps`` and implement ``forward(x) -> list[Tensor]`` (one map per tap)."""

    taps: tuple[Tap, ...] = ()
    in_chans: int = 1
    #: The factory's resolved keyword arguments: ``create_encoder(name, **encoder.config)`` rebuilds it.
    config: dict

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def tap_names(self) -> list[str]:
        return [t.name for t in self.taps]

    @property
    def out_channels(self) -> int:
        """Channels of the deepest tap."""
        return self.taps[-1].channels


class BlockEncoder(Encoder):
    """An encoder made of consecutive blocks (``self.blocks``, an ``nn.ModuleList``) with one tap after each."""

    blocks: nn.ModuleList

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every block, shallow to deep."""
        maps: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps


def check_taps(encoder: Encoder, image_size: int, batch: int = 2) -> list[torch.Tensor]:
    """Run a forward pass and check every map against ``encoder.taps``; returns the maps.

    Raises ``AssertionError`` naming the tap whose channels or spatial size disagree with its declared stride
    (spatial size must equal ``ceil(image_size / stride)`` or ``image_size // stride``).
    """
    param = next(encoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(batch, encoder.in_chans, image_size, image_size, device=device)
    with torch.no_grad():
        maps = encoder(x)
    assert len(maps) == len(encoder.taps), f"{len(maps)} maps for {len(encoder.taps)} taps"
    for tap, fmap in zip(encoder.taps, maps):
        assert fmap.shape[1] == tap.channels, f"tap {tap.name}: {fmap.shape[1]} channels, declared {tap.channels}"
        allowed = {image_size // tap.stride, -(-image_size // tap.stride)}
        assert fmap.shape[-1] in allowed, f"tap {tap.name}: width {fmap.shape[-1]}, stride {tap.stride} expects {allowed}"
    return maps

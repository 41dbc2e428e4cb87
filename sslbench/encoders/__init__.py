"""Registered encoders (``alexnet_bn``, ``vgg16_bn``, ``vgg_small``, ``unet``, and any timm CNN as ``timm/<name>``).

Each module registers a factory ``(*, in_chans, image_size, width_mult, **options) -> Encoder``; modules are imported
only when their encoder is created.
"""

from __future__ import annotations

from typing import Any

from sslbench.registry import ENCODERS, list_encoders

__all__ = ["create_encoder", "list_encoders"]


def create_encoder(name: str, **kwargs: Any) -> Any:
    """Build the registered encoder ``name`` (``timm/<model>`` for any timm CNN)."""
    return ENCODERS.create(name, **kwargs)

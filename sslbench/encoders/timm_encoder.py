"""Any timm CNN as an encoder: the ``timm/*`` family (``timm/resnet18``, ``timm/convnext_atto``, ...).

The model is built by ``timm.create_model(variant, features_only=True, pretrained=False, in_chans=in_chans,
out_indices=...)`` (timm, Wightman 2019-): weights are always random, nothing is downloaded. The taps are timm's
feature stages (``feature_info``): their names are timm's module names with dots turned into underscores (``act1``,
``layer1``..``layer4`` for a ResNet; ``stages_0``.. for a ConvNeXt; ``blocks_1``.. for an EfficientNet), their
channels timm's ``num_chs``, and their strides are measured by one forward pass of a zero image at construction, so
they stay true whatever the variant or its options (``output_stride``, say) do.

Small-input variant (``small_input``, default for ``image_size <= 64``), for 32x32 images: as CIFAR ResNets do, the
stem's downsampling is removed so the stages keep their spatial size. Every stride>1 convolution in the stem is
replaced by a stride-1 convolution with the same channels and groups and a kernel of at most 3x3 (``padding =
kernel // 2``, He-normal fan-out init), and the stem's strided pooling layers become identities. "The stem" is
found by timm's naming of the top-level modules of the feature extractor:

- ``conv1`` and ``maxpool``: the ResNet family (resnet, resnet*d deep stems, resnext, seresnet, wide_resnet ...);
  a ResNet loses its 7x7 stride-2 conv and its max-pool, so its stages run at strides 1, 1, 2, 4, 8 (``act1``,
  ``layer1``..``layer4``) instead of 2, 4, 8, 16, 32;
- ``stem`` / ``stem_*``: RegNet, ConvNeXt, CSPNet, ... (a ConvNeXt's 4x4 stride-4 patchify stem becomes a 3x3
  stride-1 convolution: stages at 1, 2, 4, 8);
- ``conv_stem``: EfficientNet, MobileNet-V2/V3, MNASNet, ... (stride 2 in the stem only, so stages end at stride 16).

Only those modules are adapted: downsampling elsewhere stays (HRNet's second stem conv, for instance), and the
measured strides report it. A variant with none of these modules, or whose stem downsamples with a module not
covered (a blur pool, say), raises a clear error instead of reporting strides it does not have; pass
``small_input=False`` for such models.
``width_mult`` is not supported (a timm variant's widths are fixed; choose a narrower variant).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

from sslbench.encoders.base import Encoder, Tap
from sslbench.registry import register_encoder

__all__ = ["TimmEncoder", "timm_encoder", "remove_stem_downsampling"]

#: timm options this wrapper sets itself (or that could download weights); passing them is an error.
RESERVED_OPTIONS: frozenset[str] = frozenset(
    {"pretrained", "features_only", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "feature_cls"}
)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


class TimmEncoder(Encoder):
    """A timm ``features_only`` model whose ``forward`` returns its feature maps as a list.

    Args:
        model: the timm feature extractor.
        taps: one :class:`Tap` per map the model returns.
        in_chans: input channels the model was built for.
    """

    def __init__(self, model: nn.Module, taps: Sequence[Tap], in_chans: int) -> None:
        super().__init__()
        self.model = model
        self.taps = tuple(taps)
        self.in_chans = in_chans
        self.config: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps of the selected stages, shallow to deep."""
        return list(self.model(x))


def _stem_children(model: nn.Module) -> list[str]:
    return [
        name
        for name, _ in model.named_children()
        if name in ("conv1", "maxpool", "conv_stem", "stem") or name.startswith("stem_")
    ]


def _stride_of(module: nn.Module) -> int:
    stride = getattr(module, "stride", 1)
    if isinstance(stride, (tuple, list)):
        return max(int(s) for s in stride)
    return int(stride) if isinstance(stride, int) else 1


def _stride1_conv(conv: nn.Conv2d) -> nn.Conv2d:
    k = max(conv.kernel_size)
    kernel = k if k % 2 == 1 and k <= 3 else 3
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=kernel,
        stride=1,
        padding=kernel // 2,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new.to(device=conv.weight.device, dtype=conv.weight.dtype)


def _replace(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def remove_stem_downsampling(model: nn.Module, label: str = "model") -> list[str]:
    """Make the stem of a timm feature extractor stride 1, in place; returns the names of the modules replaced.

    Raises ``ValueError`` when ``model`` has no recognisable stem or its stem downsamples with a module this
    function cannot adapt.
    """
    stem = _stem_children(model)
    if not stem:
        children = ", ".join(name for name, _ in model.named_children())
        raise ValueError(
            f"{label}: no small-input adaptation for this architecture (no conv1/maxpool, stem or conv_stem among its "
            f"top-level modules: {children}); pass small_input=False"
        )
    replaced: list[str] = []
    for top in stem:
        if top == "maxpool":
            if not isinstance(getattr(model, top), nn.Identity):
                setattr(model, top, nn.Identity())
                replaced.append(top)
            continue
        for sub_name, sub in list(getattr(model, top).named_modules()):
            if _stride_of(sub) <= 1:
                continue
            qualified = f"{top}.{sub_name}" if sub_name else top
            if isinstance(sub, nn.Conv2d):
                _replace(model, qualified, _stride1_conv(sub))
            elif isinstance(sub, _POOLS):
                _replace(model, qualified, nn.Identity())
            else:
                raise ValueError(
                    f"{label}: its stem downsamples with {qualified} ({type(sub).__name__}), which the small-input "
                    "adaptation does not handle; pass small_input=False"
                )
            replaced.append(qualified)
    return replaced


def _measure_taps(model: nn.Module, names: Sequence[str], in_chans: int, probe: int) -> list[Tap]:
    """Channels and strides of the model's maps, from one forward pass of a zero image of side ``probe``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = list(model(torch.zeros(1, in_chans, probe, probe)))
    finally:
        model.train(was_training)
    taps: list[Tap] = []
    for name, fmap in zip(names, maps):
        height, width = fmap.shape[-2:]
        if height != width or probe % width:
            raise ValueError(f"tap {name}: a {probe}x{probe} probe gave a {height}x{width} map, not a whole stride")
        taps.append(Tap(name, int(fmap.shape[1]), probe // width))
    return taps


def _create(variant: str, in_chans: int, out_indices: Sequence[int] | None, timm_kwargs: dict[str, Any]) -> nn.Module:
    label = f"timm/{variant}"
    if not timm.is_model(variant):
        close = difflib.get_close_matches(variant, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"{label}: timm has no model {variant!r}.{hint}")
    kwargs = dict(timm_kwargs)
    if out_indices is not None:
        kwargs["out_indices"] = tuple(int(i) for i in out_indices)
    try:
        return timm.create_model(variant, features_only=True, pretrained=False, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{label}: {exc}") from exc
    except (RuntimeError, AssertionError, IndexError) as exc:
        raise ValueError(f"{label}: timm cannot build a feature extractor: {exc}") from exc


@register_encoder("timm/*")
def timm_encoder(
    *,
    variant: str,
    in_chans: int = 1,
    image_size: int = 224,
    width_mult: float = 1.0,
    small_input: bool | None = None,
    out_indices: Sequence[int] | None = None,
    **timm_kwargs: Any,
) -> TimmEncoder:
    """Any timm CNN through ``timm.create_model(variant, features_only=True, pretrained=False)``; taps = its stages.

    Args:
        variant: the timm model name (``resnet18``); given by the registry for ``timm/<variant>``.
        in_chans: input channels (1: normalised L; 2: ab for split-brain).
        image_size: side of the square input the encoder is built for.
        width_mult: must be 1.0 (timm variants have fixed widths).
        small_input: remove the stem's downsampling (see the module docstring); default ``image_size <= 64``.
        out_indices: which feature stages to tap (timm's ``out_indices``); default all of them.
        **timm_kwargs: passed to the timm model's constructor (``drop_path_rate``, ``output_stride`` ...); an
            option the model does not take raises ``TypeError`` naming it.
    """
    label = f"timm/{variant}"
    reserved = sorted(RESERVED_OPTIONS.intersection(timm_kwargs))
    if reserved:
        raise TypeError(
            f"{label}: option {reserved[0]!r} is not accepted (encoders are built by this wrapper as feature "
            "extractors with random weights; nothing is downloaded)"
        )
    if width_mult != 1.0:
        raise ValueError(
            f"{label}: width_mult={width_mult} is not supported for timm models (a variant's widths are fixed); "
            "choose a narrower variant instead"
        )
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"{label}: in_chans must be a positive int, got {in_chans!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"{label}: image_size must be a positive int, got {image_size!r}")
    small = image_size <= 64 if small_input is None else bool(small_input)
    model = _create(variant, in_chans, out_indices, timm_kwargs)
    if small:
        remove_stem_downsampling(model, label)
    info = model.feature_info
    names = [name.replace(".", "_") for name in info.module_name()]
    # Strides only shrink when the stem is adapted, so a probe of side max(reduction) still gives whole maps there
    # while keeping the stride-1 stages cheap; the normal variant is probed at twice that.
    probe = max(info.reduction()) * (1 if small else 2)
    taps = _measure_taps(model, names, in_chans, probe)
    if image_size < taps[-1].stride:
        raise ValueError(f"{label}: image_size {image_size} is smaller than the deepest tap's stride {taps[-1].stride}")
    encoder = TimmEncoder(model, taps, in_chans)
    encoder.config = {
        "variant": variant,
        "in_chans": in_chans,
        "image_size": image_size,
        "width_mult": width_mult,
        "small_input": small,
        "out_indices": None if out_indices is None else [int(i) for i in out_indices],
        **timm_kwargs,
    }
    return encoder

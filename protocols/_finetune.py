"""Shared machinery of ``finetune_cls`` and ``finetune_seg``: the two-phase schedule and the segmentation decoder.

Two-phase fine-tuning follows Treneska et al. (Sensors 2022), who transfer a colorization cGAN to PASCAL VOC in
Keras: first the pretrained part is frozen and only the new layers learn (phase ``frozen``), then every layer is
trained at a lower learning rate (phase ``unfrozen``). Keras freezes a layer with ``trainable = False``, which also
runs its batch norm in inference mode, so the frozen part here has ``requires_grad = False`` and is kept in eval
mode (batch norm uses its running statistics and they are not updated). Each phase gets a fresh Adam optimiser, as
re-compiling a Keras model does. Epochs may be fractional (``--eval-epochs 0.5``): a phase runs
``round(epochs × batches per epoch)`` steps. Every phase runs the one training loop, :func:`sslbench.fit.fit`, through
the :class:`~sslbench.runtime.Runtime` (autocast, finite-loss check and scaled backward, step, end of step), so mixed
precision and DDP apply unchanged;
a NaN or infinite loss stops the protocol with :class:`~sslbench.errors.NonFiniteLossError` naming the protocol, the
phase and the step, and so do weights that end a phase non-finite (a last step can break them after the last loss).

:class:`HypercolumnDecoder` is the light decoder ``finetune_seg`` puts on a representation when the pretext offers
no whole segmentation network: an FPN-lite / hypercolumn head (a 1×1 projection of every tap, each upsampled
bilinearly to the resolution of the finest tap and summed, one 3×3 conv-BN-ReLU, a 1×1 classifier, then bilinear
upsampling to the input size).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from sslbench.encoders.base import Tap
from sslbench.fit import fit
from sslbench.progress import Progress
from sslbench.runtime import Runtime

__all__ = ["PhaseResult", "FinetuneHistory", "run_phase", "two_phase_finetune", "HypercolumnDecoder",
           "private_copy", "state_snapshot", "safe_name"]

#: ``loss_fn(model, batch) -> scalar loss``; called inside the runtime's autocast.
LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class PhaseResult:
    """What one phase did: its name, steps taken and the mean training loss of each (possibly partial) epoch."""

    name: str
    steps: int = 0
    epoch_losses: list[float] = field(default_factory=list)


@dataclass
class FinetuneHistory:
    """Both phases of a two-phase run, in order."""

    phases: list[PhaseResult] = field(default_factory=list)

    @property
    def epoch_losses(self) -> list[float]:
        """Mean loss of every epoch of the whole schedule, in order."""
        return [loss for phase in self.phases for loss in phase.epoch_losses]

    def metrics(self) -> dict[str, float]:
        """Training summary for the run record (``train/...``)."""
        out: dict[str, float] = {}
        for phase in self.phases:
            out[f"train/{phase.name}_steps"] = phase.steps
            if phase.epoch_losses:
                out[f"train/{phase.name}_loss_first"] = phase.epoch_losses[0]
                out[f"train/{phase.name}_loss_last"] = phase.epoch_losses[-1]
        return out


def private_copy(module: nn.Module) -> nn.Module:
    """A deep copy that shares no parameter or buffer with ``module`` (the pretext keeps its weights)."""
    return copy.deepcopy(module)


def state_snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of every parameter and buffer (to check later what training changed)."""
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


def safe_name(name: str) -> str:
    """A class name usable as one segment of a ``a/b/c`` metric key."""
    return name.replace("/", "_").replace(" ", "_")


def _set_phase_modes(model: nn.Module, head: nn.Module | None) -> None:
    """Train mode for the trainable part; with a ``head``, everything else is frozen in eval mode."""
    if head is None:
        model.train()
        return
    model.eval()
    head.train()


def run_phase(model: nn.Module, *, name: str, head: nn.Module | None, epochs: float, lr: float,
              weight_decay: float, dataset: Dataset, batch_size: int, loss_fn: LossFn, runtime: Runtime,
              progress: Progress, seed: int, first_epoch: int = 0, protocol: str = "fine-tuning",
              lr_option: str = "the learning rate") -> PhaseResult:
    """Train ``model`` for ``epochs`` passes over ``dataset`` with Adam at ``lr``.

    With ``head`` (a submodule of ``model``) only the head's parameters learn and the rest of ``model`` is frozen
    (``requires_grad = False``, eval mode); with ``head=None`` every parameter learns. ``first_epoch`` offsets the
    loader's epoch so consecutive phases see different shuffles. Batches of one sample are skipped (batch norm in
    train mode cannot use them). ``requires_grad`` is left as the phase set it.

    A non-finite loss, or weights left non-finite at the end, raise :class:`NonFiniteLossError` whose message names
    ``protocol``, the phase, the step and ``lr_option`` (the option to lower, e.g. ``finetune_cls.frozen_lr``).
    """
    where = f"{protocol} ({name} phase)"
    result = PhaseResult(name)
    if epochs <= 0:
        return result
    if head is None:
        model.requires_grad_(True)
    else:
        model.requires_grad_(False)
        head.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"fine-tuning phase {name!r} has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    train_model = runtime.wrap(model)
    drop_last = len(dataset) > batch_size

    def epoch_batches(epoch: int) -> DataLoader:
        return runtime.loader(dataset, batch_size, shuffle=True, seed=seed, epoch=first_epoch + epoch,
                              drop_last=drop_last)

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with runtime.autocast():
            return loss_fn(train_model, batch)

    total = max(1, round(epochs * len(epoch_batches(0))))
    state = fit(step, epoch_batches, total=total, runtime=runtime, progress=progress,
                description=f"fine-tune ({name})", optimizer=optimizer, modules=[train_model], min_batch=2,
                where=where, hint=f"lower {lr_option} (now {lr:g})", weights=model, epoch_means=True,
                on_epoch_start=lambda epoch: _set_phase_modes(model, head),
                empty_epoch=f"{where}: no batch of at least 2 images in the training split ({len(dataset)} images, "
                            f"batch size {batch_size}); batch norm needs 2, use a larger --subset or batch size")
    result.steps = state.step
    result.epoch_losses = [means["loss"] for means in state.epoch_means]
    model.eval()
    return result


def two_phase_finetune(model: nn.Module, head: nn.Module | None, *, frozen_epochs: float, frozen_lr: float,
                       epochs: float, lr: float, weight_decay: float, dataset: Dataset, batch_size: int,
                       loss_fn: LossFn, runtime: Runtime, progress: Progress, seed: int,
                       protocol: str = "fine-tuning") -> FinetuneHistory:
    """Treneska's schedule: ``frozen_epochs`` training only ``head`` at ``frozen_lr``, then ``epochs`` training
    all of ``model`` at ``lr``. Without a ``head`` (nothing identifiable as new) the frozen phase is skipped.
    ``protocol`` (the plugin's name) names the protocol and its learning-rate options in error messages."""
    history = FinetuneHistory()
    common = dict(weight_decay=weight_decay, dataset=dataset, batch_size=batch_size, loss_fn=loss_fn,
                  runtime=runtime, progress=progress, seed=seed, protocol=protocol)
    if head is not None:
        history.phases.append(run_phase(model, name="frozen", head=head, epochs=frozen_epochs, lr=frozen_lr,
                                        lr_option=f"{protocol}.frozen_lr", **common))
    history.phases.append(run_phase(model, name="unfrozen", head=None, epochs=epochs, lr=lr,
                                    first_epoch=math.ceil(max(frozen_epochs, 0.0)), lr_option=f"{protocol}.lr",
                                    **common))
    return history


class HypercolumnDecoder(nn.Module):
    """FPN-lite / hypercolumn segmentation head over every tap of a representation.

    Each tap is projected by a 1×1 convolution to ``channels``, resized bilinearly to the finest tap's resolution
    (the smallest stride) and summed; a 3×3 conv-BN-ReLU mixes the sum and a 1×1 convolution gives the class
    logits, which are upsampled bilinearly to ``size``.
    """

    def __init__(self, taps: Sequence[Tap], num_classes: int, channels: int = 64) -> None:
        super().__init__()
        if not taps:
            raise ValueError("the decoder needs at least one tap")
        self.finest = min(range(len(taps)), key=lambda i: taps[i].stride)
        self.lateral = nn.ModuleList(nn.Conv2d(tap.channels, channels, kernel_size=1) for tap in taps)
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        base = maps[self.finest].shape[-2:]
        summed = None
        for lateral, fmap in zip(self.lateral, maps):
            projected = lateral(fmap)
            if projected.shape[-2:] != base:
                projected = F.interpolate(projected, size=base, mode="bilinear", align_corners=False)
            summed = projected if summed is None else summed + projected
        logits = self.classifier(self.fuse(summed))
        if logits.shape[-2:] != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

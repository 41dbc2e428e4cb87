"""``finetune_seg``: semantic segmentation fine-tuning (Treneska et al., Sensors 2022; Split-Brain / Larsson transfer).

Model. When the pretext offers a whole segmentation network (``pretext.segmentation_model(num_classes)``: the
cGAN's generator with a new output layer, as Treneska et al. reuse theirs), a private deep copy of it is fine-tuned.
Otherwise a private deep copy of ``pretext.representation()`` gets the light decoder of
:class:`~sslbench.protocols._finetune.HypercolumnDecoder` (an FPN-lite / hypercolumn head: 1×1 projection of every
tap, bilinear upsampling to the finest tap, sum, 3×3 conv-BN-ReLU, 1×1 classifier, bilinear upsampling to the input
size). ``model = "decoder"`` forces the decoder even for a pretext that offers a network. Copies are private, so
the pretext's checkpointed weights stay as they were for the next protocol.

Training follows Treneska's two phases (:mod:`sslbench.protocols._finetune`): ``frozen_epochs`` (paper: 1) with
the pretrained part frozen in eval mode and only the new part learning, then ``epochs`` (paper: 5; ``--eval-epochs``
overrides it) with every layer learning; Adam in both, a fresh optimiser per phase. The loss is per-pixel
cross-entropy (softmax over classes, Treneska's output) with the dataset's ``ignore_index`` skipped, averaged over
the labelled pixels of the batch. The new part of a pretext's network is its ``head`` submodule when it has one,
otherwise its last convolution or linear layer with ``num_classes`` outputs (the "new output layer"); a network
with neither is trained whole and the frozen phase is skipped (``train/frozen_steps`` is then absent).

Evaluation. Logits are upsampled bilinearly to the mask's size when they differ, the prediction is their argmax,
and mIoU (%) comes from ONE confusion matrix accumulated over every labelled pixel of the evaluation split
(:class:`~sslbench.metrics.SegmentationMetrics`: FCN/SegNet/VOC protocol), the mean over the classes present in
the ground truth or predicted; also ``pixel_acc`` (%) and ``class/<name>/iou`` (%) for every such class, and the
mean training loss of the first and last epoch of each phase (``train/...``). ``save_predictions`` writes the
predicted masks (uint8, (N, H, W), in evaluation order) to ``<cache_dir>/finetune_seg_predictions.pt`` so the
numbers can be recomputed. Each evaluated image's own confusion matrix is kept (``per_image["miou"]``, kind
``confusion``, (N, C, C) int64 in evaluation order; their sum is the split's matrix) for bootstrap intervals. A NaN
or infinite loss, weights or evaluation logits stop the protocol with :class:`~sslbench.errors.NonFiniteLossError`
naming the phase and step (see :mod:`sslbench.protocols._finetune`).

Departures, and why:

- Learning rates: REFERENCE.md gives Treneska's rates for classification only (3e-4 frozen, 5e-5 unfrozen); a
  decoder learnt from scratch needs more, so sslbench defaults to 1e-3 for the frozen phase and 1e-4 after.
- Batch size 16 by default (not the run's ``--eval-batch-size``): segmentation sets are small (CamVid has 367
  training frames) and dense targets give many labels per image, so smaller batches give more steps per epoch.
- No augmentation and no crops: images come at the dataset adapter's size (CamVid 96×128 by default); the paper
  trains VOC at 128×128 (its exact pipeline is not specified further).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sslbench.checkpoints import atomic_torch_save
from sslbench.errors import NonFiniteLossError, SslbenchError
from sslbench.metrics import SegmentationMetrics, confusion_matrix
from sslbench.pretext import Pretext, Representation, images_to_rgb
from sslbench.progress import Progress
from sslbench.protocol import EvalData, PerImage, Protocol
from sslbench.protocols._finetune import HypercolumnDecoder, private_copy, safe_name, two_phase_finetune
from sslbench.registry import register_protocol
from sslbench.runtime import Runtime

#: File name of the saved predictions under the run's cache folder.
PREDICTIONS_FILE = "finetune_seg_predictions.pt"
MODELS = ("auto", "decoder")


@dataclass
class FinetuneSegConfig:
    """Options of the ``finetune_seg`` protocol (paper values in the comments)."""

    #: Epochs with the pretrained part frozen, only the new part learning (paper: 1).
    frozen_epochs: float = 1.0
    #: Adam learning rate of the frozen phase.
    frozen_lr: float = 1e-3
    #: Epochs with every layer learning (paper: 5); ``--eval-epochs`` overrides it.
    epochs: float = 5.0
    #: Adam learning rate of the unfrozen phase.
    lr: float = 1e-4
    #: Adam's weight decay in both phases.
    weight_decay: float = 0.0
    #: ``auto``: the pretext's own segmentation network when it offers one, else the decoder; ``decoder``: always
    #: the hypercolumn decoder on the representation.
    model: str = "auto"
    #: Width of the decoder's projections.
    decoder_channels: int = 64
    #: Training batch size; None uses the run's ``--eval-batch-size``.
    batch_size: int | None = 16
    #: Report ``class/<name>/iou`` for every class.
    per_class: bool = True
    #: Write the predicted masks to ``<cache_dir>/finetune_seg_predictions.pt``.
    save_predictions: bool = False


class DecodedSegmenter(nn.Module):
    """A representation with the hypercolumn decoder on its taps: RGB in, logits at the input size out."""

    def __init__(self, representation: Representation, num_classes: int, channels: int) -> None:
        super().__init__()
        self.encoder = representation
        self.decoder = HypercolumnDecoder(representation.taps, num_classes, channels)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(rgb), tuple(rgb.shape[-2:]))


def new_part(model: nn.Module, pretext_name: str) -> nn.Module:
    """The freshly initialised part of a pretext's segmentation network, which the frozen phase trains alone: its
    ``head`` submodule, by contract (:meth:`~sslbench.pretext.Pretext.segmentation_model`). A network without one is
    an error naming the pretext, never a guess."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise SslbenchError(
            f"pretext {pretext_name!r}: segmentation_model() returned a {type(model).__name__} without a `head` "
            "submodule; finetune_seg trains the new layers alone before unfreezing, so the network must expose them "
            "as `head` (or return None to get finetune_seg's own decoder)")
    return head


def build_segmenter(pretext: Pretext, num_classes: int, cfg: FinetuneSegConfig, runtime: Runtime
                    ) -> tuple[nn.Module, nn.Module | None, str]:
    """``(model, new part trained in the frozen phase, kind)``; the model is a private copy on the device."""
    if cfg.model not in MODELS:
        raise ValueError(f"finetune_seg.model={cfg.model!r}: choose one of {', '.join(MODELS)}")
    whole = pretext.segmentation_model(num_classes) if cfg.model == "auto" else None
    if whole is not None:
        model = private_copy(whole).to(runtime.device)
        return model, new_part(model, type(pretext).__name__), "pretext"
    model = DecodedSegmenter(private_copy(pretext.representation()), num_classes, cfg.decoder_channels)
    model = model.to(runtime.device)
    return model, model.decoder, "decoder"


def _logits_at(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.float()


def make_loss(ignore_index: int):
    """Per-pixel cross-entropy averaged over the labelled pixels (0 for a batch without any)."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["mask"]
        logits = _logits_at(model(images_to_rgb(batch["image"])), mask.shape[-2:])
        total = F.cross_entropy(logits, mask, ignore_index=ignore_index, reduction="sum")
        return total / (mask != ignore_index).sum().clamp(min=1)

    return loss_fn


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, dataset: Any, runtime: Runtime, batch_size: int, progress: Progress
                       ) -> tuple[SegmentationMetrics, torch.Tensor, torch.Tensor]:
    """One confusion matrix over ``dataset``, the predicted masks (uint8 on the CPU, in dataset order) and every
    image's own confusion matrix ((N, C, C) int64 on the CPU, in dataset order; they sum to the split's matrix).

    Under ``torchrun`` each process evaluates its shard (:meth:`~sslbench.runtime.Runtime.eval_loader`) with rank
    0's weights and batch-norm statistics (DDP leaves each process its own statistics); the int64 confusion
    matrices are summed over processes and the per-image values gathered in dataset order, so every process returns
    what one process would.

    Raises :class:`NonFiniteLossError` when the model's logits are not finite."""
    model.eval()
    runtime.sync_from_main(model)  # every shard with rank 0's weights and batch-norm statistics
    num_classes, ignore = dataset.num_mask_classes, dataset.ignore_index
    scores = SegmentationMetrics(num_classes, ignore)
    predictions, confusions = [], []
    loader = runtime.eval_loader(dataset, batch_size)
    for batch in progress.track(runtime.batches(loader), "evaluate", total=len(loader)):
        mask = batch["mask"]
        with runtime.autocast():
            logits = model(images_to_rgb(batch["image"]))
        logits = _logits_at(logits, mask.shape[-2:])
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteLossError("finetune_seg: the fine-tuned model's logits on the evaluation split are not "
                                     "finite; lower finetune_seg.lr or finetune_seg.frozen_lr")
        pred = logits.argmax(dim=1)
        scores.update(pred, mask)
        predictions.append(pred.to(torch.uint8).cpu())
        confusions.extend(confusion_matrix(p, m, num_classes, ignore).cpu() for p, m in zip(pred, mask))
    local = scores.confusion
    if local is None:  # a process without batches adds nothing
        local = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=runtime.device)
    scores.confusion = runtime.all_reduce_sum(local)
    return (scores, runtime.gather_rows(torch.cat(predictions) if predictions else None, "cpu"),
            runtime.gather_rows(torch.stack(confusions) if confusions else None, "cpu"))


@register_protocol("finetune_seg")
class FinetuneSeg(Protocol):
    """Two-phase segmentation fine-tuning (Treneska 2022): mIoU from one confusion matrix over the split."""

    requires = frozenset({"mask"})
    Config = FinetuneSegConfig
    headline = "miou"

    def evaluate(self, pretext: Pretext, data: EvalData, runtime: Runtime, progress: Progress) -> dict[str, Any]:
        cfg: FinetuneSegConfig = self.config
        num_classes = data.train.num_mask_classes
        if num_classes < 1:
            raise ValueError("finetune_seg needs a dataset with mask classes")
        torch.manual_seed(data.seed)
        model, head, kind = build_segmenter(pretext, num_classes, cfg, runtime)
        history = two_phase_finetune(
            model, head, frozen_epochs=cfg.frozen_epochs, frozen_lr=cfg.frozen_lr, epochs=cfg.epochs, lr=cfg.lr,
            weight_decay=cfg.weight_decay, dataset=data.train, batch_size=cfg.batch_size or data.batch_size,
            loss_fn=make_loss(data.train.ignore_index), runtime=runtime, progress=progress, seed=data.seed,
            protocol="finetune_seg",
        )
        scores, predictions, confusions = evaluate_segmenter(model, data.test, runtime, data.batch_size, progress)
        self.per_image["miou"] = PerImage("confusion", {"confusion": confusions.numpy()})
        result = scores.compute()
        metrics: dict[str, Any] = {"miou": 100.0 * result["miou"], "pixel_acc": 100.0 * result["pixel_acc"],
                                   "model": kind}
        if cfg.per_class:
            for name, iou in zip(data.test.mask_class_names, result["per_class_iou"].tolist()):
                if not math.isnan(iou):
                    metrics[f"class/{safe_name(name)}/iou"] = 100.0 * iou
        metrics.update(history.metrics())
        if cfg.save_predictions and data.cache_dir and runtime.is_main:
            atomic_torch_save({"predictions": predictions, "num_classes": num_classes,
                               "ignore_index": data.test.ignore_index}, Path(data.cache_dir) / PREDICTIONS_FILE)
        return metrics

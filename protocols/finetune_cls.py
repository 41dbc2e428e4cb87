"""``finetune_cls``: multi-label classification fine-tuning (Treneska et al., Sensors 2022, on PASCAL VOC).

Follows the paper: the pretrained encoder (here a private deep copy of ``pretext.representation()``, so the
pretext's checkpointed weights stay as they were for the next protocol) gets a head of two dense layers with
ReLU and dropout 0.5 and a final dense layer with one sigmoid output per class, trained with binary cross-entropy.
Training has two phases (:mod:`sslbench.protocols._finetune`): ``frozen_epochs`` (paper: 3) with the encoder frozen
in eval mode and only the head learning at Adam lr 3e-4, then ``epochs`` (paper: 1) with every layer learning at
Adam lr 5e-5. ``--eval-epochs`` overrides ``epochs``, the unfrozen phase.

Reports ``map`` (%): PASCAL VOC all-point AP averaged over classes, with the (image, class) pairs flagged
``difficult`` left out when the dataset provides those flags (VOC devkit), over the evaluation split; ``exact_match``
(%): the fraction of images whose predicted label set (sigmoid > 0.5) is exactly right, the "accuracy" Treneska et
al. report (47.18 scratch, 52.83 colorization); ``class/<name>/ap`` (%) for every class with a positive; and the
mean training loss of the first and last epoch of each phase (``train/...``). The evaluation logits, targets and
difficult flags (all False when the dataset has none) are kept per image (``per_image["map"]``, kind ``ap``) for
bootstrap intervals. A NaN or infinite loss, weights or evaluation logits stop the protocol with
:class:`~sslbench.errors.NonFiniteLossError` naming the phase and step (see :mod:`sslbench.protocols._finetune`).

Departures, and why:

- Hidden width: the paper's dense layers have 4096 units; sslbench defaults to ``hidden = 512`` because the
  default data (synthetic, 2,000 images of 8 classes) is far smaller than VOC and a 4096-wide head would dominate
  CPU time. ``--set finetune_cls.hidden=4096`` restores the paper's head.
- Head input: the paper flattens the deepest encoder map (1×1×512 for its 7-down U-Net at 128×128). sslbench
  flattens the deepest tap after adaptive average pooling to at most ``pool_size``×``pool_size`` positions
  (default 4: 256×4×4 = 4096 dimensions for ``vgg_small`` on 32×32 images, which is the plain flatten there), so the
  head stays bounded at larger resolutions.
- The paper's input pipeline (Keras, 128×128 VOC images, its batch size) is not specified further; sslbench uses
  the dataset's images as they come, no augmentation, and the run's ``--eval-batch-size`` unless ``batch_size``
  is set. The ReLU between dense layers is the usual Keras ``Dense(4096, activation="relu")`` reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sslbench.errors import NonFiniteLossError
from sslbench.metrics import exact_match_accuracy, mean_average_precision
from sslbench.pretext import Pretext, Representation, images_to_rgb
from sslbench.progress import Progress
from sslbench.protocol import EvalData, PerImage, Protocol
from sslbench.protocols._finetune import private_copy, safe_name, two_phase_finetune
from sslbench.registry import register_protocol
from sslbench.runtime import Runtime


@dataclass
class FinetuneClsConfig:
    """Options of the ``finetune_cls`` protocol (paper values in the comments)."""

    #: Epochs with the encoder frozen, only the head learning (paper: 3).
    frozen_epochs: float = 3.0
    #: Adam learning rate of the frozen phase (paper: 3e-4).
    frozen_lr: float = 3e-4
    #: Epochs with every layer learning (paper: 1); ``--eval-epochs`` overrides it.
    epochs: float = 1.0
    #: Adam learning rate of the unfrozen phase (paper: 5e-5).
    lr: float = 5e-5
    #: Width of the two hidden dense layers (paper: 4096).
    hidden: int = 512
    #: Dropout after each hidden layer (paper: 0.5).
    dropout: float = 0.5
    #: The deepest map is average-pooled to at most this many positions per side before flattening.
    pool_size: int = 4
    #: Adam's weight decay in both phases.
    weight_decay: float = 0.0
    #: Training batch size; None uses the run's ``--eval-batch-size``.
    batch_size: int | None = None
    #: Report ``class/<name>/ap`` for every class.
    per_class: bool = True


class MultiLabelClassifier(nn.Module):
    """Encoder + Treneska's dense head on the (pooled, flattened) deepest tap; RGB in, class logits out."""

    def __init__(self, representation: Representation, num_classes: int, *, hidden: int, dropout: float,
                 pool_size: int, sample: torch.Tensor) -> None:
        super().__init__()
        self.encoder = representation
        self.pool_size = pool_size
        was_training = representation.training
        representation.eval()
        with torch.no_grad():
            in_features = self.features(sample).shape[1]
        representation.train(was_training)
        self.head = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """The deepest tap, pooled to at most ``pool_size``² positions and flattened."""
        deepest = self.encoder(rgb)[-1]
        height, width = deepest.shape[-2:]
        grid = (min(self.pool_size, height), min(self.pool_size, width))
        if (height, width) != grid:
            deepest = F.adaptive_avg_pool2d(deepest, grid)
        return deepest.flatten(1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(rgb))


def build_classifier(pretext: Pretext, data: EvalData, cfg: FinetuneClsConfig, runtime: Runtime
                     ) -> MultiLabelClassifier:
    """A private copy of the pretext's representation with a fresh head, on the runtime's device."""
    representation = private_copy(pretext.representation()).to(runtime.device)
    sample = images_to_rgb(data.train[0]["image"].unsqueeze(0)).to(runtime.device)
    model = MultiLabelClassifier(representation, data.train.num_classes, hidden=cfg.hidden, dropout=cfg.dropout,
                                 pool_size=cfg.pool_size, sample=sample)
    return model.to(runtime.device)


def bce_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sigmoid binary cross-entropy over every class of the batch."""
    logits = model(images_to_rgb(batch["image"]))
    return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float())


@torch.no_grad()
def predict(model: nn.Module, dataset: Any, runtime: Runtime, batch_size: int, progress: Progress
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits, multi-hot targets and (when the dataset has them) difficult flags over ``dataset``, in dataset order.

    Under ``torchrun`` each process predicts its shard (:meth:`~sslbench.runtime.Runtime.eval_loader`) and the rows
    are gathered in dataset order, so every process returns what one process would (AP needs every score)."""
    model.eval()
    runtime.sync_from_main(model)  # every shard with rank 0's weights and batch-norm statistics
    logits, targets, difficult = [], [], []
    loader = runtime.eval_loader(dataset, batch_size)
    for batch in progress.track(runtime.batches(loader), "evaluate", total=len(loader)):
        with runtime.autocast():
            logits.append(model(images_to_rgb(batch["image"])).float())
        targets.append(batch["labels"].float())
        if "difficult" in batch:
            difficult.append(batch["difficult"].bool())
    has_flags = runtime.agree(bool(difficult) and len(difficult) == len(logits))

    def gathered(rows: list[torch.Tensor]) -> torch.Tensor:
        return runtime.gather_rows(torch.cat(rows) if rows else None, runtime.device)

    return gathered(logits), gathered(targets), gathered(difficult) if has_flags else None


@register_protocol("finetune_cls")
class FinetuneCls(Protocol):
    """Two-phase multi-label fine-tuning (Treneska 2022): VOC mAP and exact-match accuracy."""

    requires = frozenset({"labels"})
    Config = FinetuneClsConfig
    headline = "map"

    def evaluate(self, pretext: Pretext, data: EvalData, runtime: Runtime, progress: Progress) -> dict[str, Any]:
        cfg: FinetuneClsConfig = self.config
        if data.train.num_classes < 1:
            raise ValueError("finetune_cls needs a dataset with image-level classes")
        torch.manual_seed(data.seed)
        model = build_classifier(pretext, data, cfg, runtime)
        batch_size = cfg.batch_size or data.batch_size
        history = two_phase_finetune(
            model, model.head, frozen_epochs=cfg.frozen_epochs, frozen_lr=cfg.frozen_lr, epochs=cfg.epochs,
            lr=cfg.lr, weight_decay=cfg.weight_decay, dataset=data.train, batch_size=batch_size, loss_fn=bce_loss,
            runtime=runtime, progress=progress, seed=data.seed,
            protocol="finetune_cls",
        )
        logits, targets, difficult = predict(model, data.test, runtime, data.batch_size, progress)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteLossError(f"finetune_cls: the fine-tuned model's logits on the evaluation split are not "
                                     f"finite; lower finetune_cls.lr (now {cfg.lr:g}) or finetune_cls.frozen_lr")
        mean_ap, per_class = mean_average_precision(logits, targets, difficult)
        flags = torch.zeros_like(targets, dtype=torch.bool) if difficult is None else difficult
        self.per_image["map"] = PerImage("ap", {"scores": logits.cpu().numpy(), "targets": targets.cpu().numpy(),
                                                "difficult": flags.cpu().numpy()})
        metrics: dict[str, Any] = {
            "map": 100.0 * mean_ap,
            "exact_match": 100.0 * exact_match_accuracy(logits, targets),
        }
        if cfg.per_class:
            for name, ap in zip(data.train.class_names, per_class.tolist()):
                if not math.isnan(ap):
                    metrics[f"class/{safe_name(name)}/ap"] = 100.0 * ap
        metrics.update(history.metrics())
        return metrics

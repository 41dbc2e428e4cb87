"""``rotation``: predict by how much an image was rotated (Gidaris, Singh & Komodakis, "Unsupervised Representation
Learning by Predicting Image Rotations", ICLR 2018; RotNet).

A non-colour reference: the colorization pretexts are compared with it on the same encoder and the same probes.

Follows the paper in:

* every image of a batch is fed at all four rotations, 0°, 90°, 180° and 270° (counter-clockwise, ``torch.rot90``),
  in the same batch (the paper's best setting), so one step forwards 4 × ``batch_size`` images; the target is the
  rotation's index k (k · 90°);
* 4-way cross-entropy on a classifier over the trunk's last map;
* **RGB input**: RotNet saw colour images, so the encoder is built with three input channels and sees
  ``2·rgb - 1`` (RGB in [-1, 1], the range ``normalize_l`` gives the colour pretexts' L), in training and in
  :meth:`Rotation.representation` alike; the probes therefore evaluate exactly what was trained.

Where sslbench departs, and why:

* **Head.** The paper's CIFAR RotNet classifies with the last NIN block(s) on top of the probed trunk, its ImageNet
  AlexNet with fully connected layers. Here the head is one conv3×3-BN-ReLU block (``head_width`` channels, in the
  role of the NIN block) on the registered encoder's deepest tap, global average pooling and a linear 4-way layer;
  the encoder's taps are left to the probes, as for every pretext.
* **Square images only.** A 90° rotation swaps height and width; a non-square ``--image-size H,W`` is refused.
* **Optimiser.** Adam at lr 1e-3 with weight decay 5e-4 (the paper's decay), as the other pretexts use Adam so
  budgets compare; the paper used SGD with momentum 0.9 at lr 0.1 for about 100 epochs.

Logged terms: ``loss`` and ``train_top1`` (rotation accuracy over the 4 × ``batch_size`` images, in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sslbench.errors import UsageError
from sslbench.pretext import DataInfo, EncoderRepresentation, EncoderSpec, Pretext, images_to_rgb
from sslbench.registry import register_pretext

__all__ = ["Rotation", "RotationConfig", "rotate_batch", "normalize_rgb", "ROTATIONS"]

#: The number of rotations, 0°, 90°, 180° and 270°: the classes of the task.
ROTATIONS = 4


@dataclass
class RotationConfig:
    #: Channels of the head's conv3x3-BN-ReLU block before pooling and the 4-way linear layer.
    head_width: int = 256
    #: Adam's learning rate.
    lr: float = 1e-3
    #: Adam's weight decay (the paper's 5e-4).
    weight_decay: float = 5e-4


def normalize_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """Float RGB in [0, 1] to [-1, 1], the input of an RGB encoder here."""
    return rgb * 2.0 - 1.0


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) square images -> (4N, C, H, W) and their targets (4N,): block k holds every image rotated by
    k · 90° counter-clockwise (``torch.rot90`` over the last two dims), with target k."""
    if images.shape[-1] != images.shape[-2]:
        raise UsageError(f"rotation: images of {images.shape[-2]}x{images.shape[-1]} pixels are not square; rotating "
                         "them by 90 degrees changes their size; use a square --image-size S")
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(ROTATIONS)])
    targets = torch.arange(ROTATIONS, device=images.device).repeat_interleave(images.shape[0])
    return rotated, targets


class RotationHead(nn.Module):
    """conv3x3-BN-ReLU on the deepest map, global average pooling, a linear layer to the 4 rotations."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(width, ROTATIONS)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(feature).mean(dim=(2, 3)))


@register_pretext("rotation")
class Rotation(Pretext):
    """Predict the rotation (0/90/180/270°) of RGB images, all four in each batch (Gidaris 2018, RotNet)."""

    Config = RotationConfig

    def __init__(self, config: RotationConfig, encoder: EncoderSpec, data: DataInfo) -> None:
        super().__init__(config, encoder, data)
        size = data.image_size
        if isinstance(size, (tuple, list)) and size[0] != size[1]:
            raise UsageError(f"rotation needs square images: --image-size {size[0]},{size[1]} changes size under a "
                             f"90-degree rotation; use a square --image-size S (e.g. --image-size {max(size)})")
        if config.head_width < 1:
            raise UsageError(f"rotation.head_width must be >= 1, got {config.head_width}")
        self.encoder = encoder.build(in_chans=3)
        self.head = RotationHead(self.encoder.out_channels, config.head_width)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": torch.optim.Adam(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)}

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Rotation logits (N, 4) of uint8 or float RGB images (N, 3, H, W)."""
        return self.head(self.encoder(normalize_rgb(images_to_rgb(images)))[-1])

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rotated, targets = rotate_batch(batch["image"])
        logits = self.logits(rotated)
        loss = F.cross_entropy(logits.float(), targets)
        accuracy = (logits.argmax(1) == targets).float().mean()
        return loss, {"train_top1": accuracy}

    def representation(self) -> EncoderRepresentation:
        return EncoderRepresentation(self.encoder, normalize_rgb)

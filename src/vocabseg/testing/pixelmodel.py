"""A minimal trainable SegModel for engine tests: a per-pixel linear classifier whose loss is
the mean over images of each image's mean pixel cross-entropy — a loss that is a mean over
images, so gradient accumulation must reproduce the large batch exactly."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import SegModel


class PixelClassifier(SegModel):
    def __init__(self, num_classes: int = 6, width: int = 8):
        super().__init__()
        self.config = {"preset": "pixel-classifier-test"}
        self.body = nn.Conv2d(3, width, 3, padding=1)
        self.head = nn.Conv2d(width, num_classes, 1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(images)))

    def forward_train(self, batch, vocab):
        losses = []
        for item in batch:
            x = item["image"].to(self.device).float()[None] / 255.0
            target = item["sem_seg"].to(self.device)[None]
            losses.append(F.cross_entropy(self.logits(x), target, ignore_index=item.get("ignore_index", 255)))
        return {"loss_ce": torch.stack(losses).mean()}

"""What every vocabseg model provides.

A model splits its work in two so that a new vocabulary on the same image
reruns only the cheap part:

* ``encode_image(images)`` — everything that does not depend on the
  vocabulary (CLIP features, masks, region tokens); any object.
* ``classify(features, text, vocab)`` — [B, K, h, w] scores at the input
  resolution, where K is the number of synonyms or of classes (the model's
  choice, the same for every window). Windows of a sliding-window pass are
  averaged in this space and resized to the original image.
* ``finalize(scores, vocab)`` — [B, C, H, W] per-class scores (higher is
  more likely; probabilities where the method has them), after which the
  label map is the argmax.

``text`` is the [S, D] unit-norm synonym embeddings from ``text_encoder()``.
The test-time protocol (short side, whole or sliding window, padding) lives
in ``protocol`` and is carried out by ``engine.inference``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import speed
from .protocol import Protocol
from .text import TextEncoder
from .vocab import Vocabulary


# detectron2's norm_module_types: the layers SAN's and FC-CLIP's optimisers give ``weight_decay_norm``
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
              nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)


class SegModel(nn.Module):
    """Base class. Subclasses set ``protocol``, ``template_set``, ``text_average``
    and implement ``encode_image`` / ``classify`` (and ``finalize`` if needed)."""

    template_set: str = "vild"
    text_average: str = "normalized"

    def __init__(self):
        super().__init__()
        self.protocol = Protocol()
        self.config: dict = {}
        self._text_encoders: dict = {}

    def train(self, mode: bool = True):
        """As ``nn.Module.train``; ``eval()`` also switches the linear layers to the
        exact fast kernels of ``vocabseg.speed`` (a no-op with autograd on)."""
        super().train(mode)
        if not mode:
            speed.use_fast_linears(self)
        return self

    # --- text side -----------------------------------------------------
    def text_tower(self):
        """(open_clip model holding the text tower, tokenizer, identity string)."""
        raise NotImplementedError

    def text_encoder(self, template_set: str | None = None) -> TextEncoder:
        key = template_set or self.template_set
        if key not in self._text_encoders:
            clip, tok, ident = self.text_tower()
            self._text_encoders[key] = TextEncoder(clip, tok, ident, key, average=self.text_average)
        return self._text_encoders[key]

    def reset_text_cache(self) -> None:
        """Call after changing text weights in place (training, loading)."""
        self._text_encoders.clear()

    # --- image side ----------------------------------------------------
    def encode_image(self, images: torch.Tensor):
        raise NotImplementedError

    def classify(self, features, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        raise NotImplementedError

    def finalize(self, scores: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        return scores

    @torch.no_grad()
    def predict(self, images: torch.Tensor, vocab: Vocabulary, text: torch.Tensor | None = None) -> torch.Tensor:
        """Shortcut for one pass on already-normalised images: [B, C, h, w]."""
        text = self.text_encoder()(vocab) if text is None else text
        return self.finalize(self.classify(self.encode_image(images), text.to(images.device), vocab), vocab)

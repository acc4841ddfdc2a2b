"""The model contract: what every vocabseg method provides and what the engine
may call. The engine knows a model only through ``SegModel``; every hook below
has a default, so a method overrides only what it does differently.

A model splits its work in two so that a new vocabulary on the same image
reruns only the cheap part:

* ``encode_image(images)`` — everything that does not depend on the
  vocabulary (CLIP features, masks, region tokens); any object.
* ``classify(features, text, vocab)`` — [B, K, h, w] scores at the input
  resolution, where K is the number of synonyms or of classes (the model's
  choice, the same for every window). Windows of a sliding-window pass are
  averaged in this space and resized to the original image.
* ``classify_at(features, text, vocab, crop, size)`` — the scores of one
  whole-image pass cropped to the image before padding and resized to the
  original size (default: ``classify``, crop, bilinear resize; mask
  classifiers resize their mask logits first).
* ``finalize(scores, vocab)`` — [B, C, H, W] per-class scores (higher is
  more likely; probabilities where the method has them), after which the
  label map is the argmax.

``text`` is the [S, D] unit-norm synonym embeddings from ``text_encoder()``;
a method names its text tower with ``text_parts`` and ``text_identity`` and
the base caches encoders and identity (``reset_text_cache`` after weights
change; loading a state dict does it). The test-time protocol (short side,
whole or sliding window, padding) is ``self.protocol`` (``vocabseg.protocol``),
carried out by ``engine.inference``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers.mask_semantic import resize_rows
from .protocol import Protocol, normalize
from .bf16 import Fp32Module  # noqa: F401  (part of the model contract: methods import it from here)
from .text import TextEncoder, template_key
from .vocab import Vocabulary

# detectron2's norm_module_types: the layers whose parameters optimisers give ``weight_decay_norm``
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
              nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)
# Parameter names without weight decay in ``default_param_groups`` (Mask2Former's build_optimizer)
NO_DECAY_NAMES = ("pos_embed", "positional_embedding", "query_embed", "query_feat", "class_embedding",
                  "cls_token", "level_embed", "token_embedding")


class SegModel(nn.Module):
    """Base class. Subclasses set ``protocol``, ``template_set``, ``text_average``
    (and ``tasks`` beyond semantic) and implement ``text_parts``, ``text_identity``,
    ``encode_image`` and ``classify``; the rest is optional."""

    template_set: str = "vild"
    text_average: str = "normalized"
    tasks: tuple[str, ...] = ("semantic",)     # of "semantic", "panoptic" (``panoptic``), "instance" (``instances``)
    region_groups: bool = False                # ``group_map`` gives a region id per pixel (SegCLIP)

    def __init__(self):
        super().__init__()
        self.protocol = Protocol()
        self.config: dict = {}                 # {"preset": name, **build overrides}: what a checkpoint rebuilds
        self._text_encoders: dict = {}
        self._text_ident: str | None = None

    def attach(self, name: str, module: nn.Module) -> nn.Module:
        """Keep ``module`` as attribute ``name`` without registering it: a view (e.g. a
        backbone wrapper) on weights this model already holds, so state-dict keys are
        not doubled."""
        object.__setattr__(self, name, module)
        return module

    @property
    def device(self) -> torch.device:
        """Device of the first parameter (CPU for a model without parameters)."""
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; the text cache is reset (the text weights may have changed)."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.reset_text_cache()
        return result

    # --- text side -----------------------------------------------------
    def text_parts(self):
        """(open_clip model holding the text tower, tokenizer)."""
        raise NotImplementedError(f"{type(self).__name__} does not name its text tower (text_parts)")

    def text_identity(self) -> str:
        """A string naming the text tower's architecture and weights exactly (it keys
        the on-disk text cache); computed once until ``reset_text_cache``."""
        raise NotImplementedError(f"{type(self).__name__} does not name its text weights (text_identity)")

    def text_tower(self):
        """(open_clip model, tokenizer, identity string)."""
        if self._text_ident is None:
            self._text_ident = self.text_identity()
        return (*self.text_parts(), self._text_ident)

    def text_encoder(self, template_set: str | None = None) -> TextEncoder:
        key = template_key(self.template_set if template_set is None else template_set)   # a list: a tuple key
        if key not in self._text_encoders:
            clip, tok, ident = self.text_tower()
            self._text_encoders[key] = TextEncoder(clip, tok, ident, key, average=self.text_average)
        return self._text_encoders[key]

    def reset_text_cache(self) -> None:
        """Call after changing text weights in place (training)."""
        self._text_encoders.clear()
        self._text_ident = None

    # --- image side ----------------------------------------------------
    def encode_image(self, images: torch.Tensor):
        raise NotImplementedError

    def classify(self, features, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        raise NotImplementedError

    def classify_at(self, features, text: torch.Tensor, vocab: Vocabulary, crop: tuple[int, int] | None = None,
                    size: tuple[int, int] | None = None, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """[B, K, *size] scores of one whole-image pass: ``classify`` cropped to ``crop``
        (the image before padding) and resized bilinearly to ``size``. ``rows`` (r0, r1):
        only those output rows, [B, K, r1 - r0, W]; a row's values must not depend on
        the rows asked with it (the engine builds big images a band of rows at a time)."""
        out = self.classify(features, text, vocab)
        crop = tuple(crop or out.shape[-2:])
        size = tuple(size or crop)
        r0, r1 = rows or (0, size[0])
        return resize_rows(out, tuple(out.shape[-2:]), crop, size, r0, r1)

    def finalize(self, scores: torch.Tensor, vocab: Vocabulary, stats=None) -> torch.Tensor:
        """[B, K, H, W] ``classify`` scores -> [B, C, H, W]. ``stats``: the image's
        ``image_stats`` when ``scores`` is a band of its rows."""
        return scores

    def image_stats(self, scores: torch.Tensor, vocab: Vocabulary):
        """What ``finalize`` needs from the whole image beyond each pixel's own scores (e.g.
        per-class areas), from a band of ``classify`` scores: a tensor that sums over bands,
        or None (the default: each pixel is finalized on its own)."""
        return None

    def set_dataset(self, name: str | None) -> None:
        """Use the published test settings of benchmark ``name`` (None: the defaults).
        Methods without per-benchmark settings ignore it."""

    def group_map(self, feats) -> torch.Tensor:
        """LongTensor [H, W] region ids of an image's ``engine.inference.encode`` output
        (models with ``region_groups``)."""
        raise NotImplementedError(f"{type(self).__name__} has no region groups")

    @torch.no_grad()
    def predict(self, images: torch.Tensor, vocab: Vocabulary, text: torch.Tensor | None = None) -> torch.Tensor:
        """Shortcut for one pass on already-normalised images: [B, C, h, w]."""
        text = self.text_encoder()(vocab) if text is None else text
        return self.finalize(self.classify(self.encode_image(images), text.to(images.device), vocab), vocab)

    # --- training --------------------------------------------------------
    @property
    def trainable(self) -> bool:
        """True when the method has a training recipe (``forward_train``)."""
        return type(self).forward_train is not SegModel.forward_train

    def forward_train(self, batch: list[dict], vocab: Vocabulary | None) -> dict[str, torch.Tensor]:
        """Weighted losses of a batch of training items. A model whose ``loss_totals`` is not
        empty also takes ``norm=`` (see there)."""
        raise NotImplementedError(f"{type(self).__name__} has no training recipe: it cannot be trained")

    def loss_totals(self, batch: list[dict]) -> dict[str, float]:
        """Additive normalisers of the losses of training items, read from their targets before
        any forward pass (Mask2Former's number of target masks): {} (the default) when the losses
        are means over images. Under ``train.accumulate`` > 1 the engine sums them over the step's
        micro-batches and processes, divides by the number of processes, and calls
        ``forward_train(micro_batch, vocab, norm={**totals, "share": micro-batch images / the
        process's images in the step})``, expecting losses that, weighted by ``share`` and summed
        over the micro-batches, are those of the whole batch."""
        return {}

    def train_transform(self, cfg: dict | None = None):
        """Callable item -> training item (augmentation) from the training config, or
        None: items are used as read."""
        return None

    def param_groups(self, cfg: dict) -> list[dict]:
        """Optimiser parameter groups under the training config (see ``default_param_groups``)."""
        return default_param_groups(self, cfg)

    def set_activation_checkpointing(self, on: bool) -> None:
        """Recompute the activations of the trained CLIP tower's blocks in the backward pass
        instead of keeping them (``train.activation_checkpointing``): less memory, the same
        gradients. Methods whose CLIP is trained through override it."""
        if on:
            raise ValueError(f"{type(self).__name__} has no activation checkpointing (its CLIP towers are not "
                             "trained through, so their activations are not kept anyway)")

    def training_images(self, batch: list[dict]) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
        """Items' ``image`` (float [3, H, W] in 0..1, or uint8) -> (normalised images
        [B, 3, H', W'] zero-padded at the bottom / right to a common size that is a
        multiple of ``protocol.size_divisibility``, each item's ``F.pad`` amounts
        (0, right, 0, bottom) for padding its targets alike)."""
        div = self.protocol.size_divisibility
        h = -(-max(item["image"].shape[-2] for item in batch) // div) * div
        w = -(-max(item["image"].shape[-1] for item in batch) // div) * div
        images, pads = [], []
        for item in batch:
            img = item["image"].to(self.device)
            img = img.float() if img.is_floating_point() else img.float() / 255.0
            img = normalize(img[None], self.protocol)[0]
            pad = (0, w - img.shape[-1], 0, h - img.shape[-2])
            images.append(F.pad(img, pad))
            pads.append(pad)
        return torch.stack(images), pads


def grouped_parameters(model: nn.Module, kind, kinds: tuple[str, ...]) -> dict[str, list]:
    """Trainable parameters of ``model``, each once in module order, sorted into
    ``kinds`` by ``kind(module, name)`` (the module holding it, its name there)."""
    groups: dict[str, list] = {k: [] for k in kinds}
    seen = set()
    for _, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                groups[kind(module, name)].append(p)
    return groups


def default_param_groups(model: nn.Module, cfg: dict | None = None) -> list[dict]:
    """Trainable parameters in two groups, as Mask2Former's ``build_optimizer``: the
    optimiser's weight decay, and none on normalisation layers and embeddings
    (``nn.Embedding`` and the names in ``NO_DECAY_NAMES``)."""
    def kind(module, name):
        skip = isinstance(module, (*NORM_TYPES, nn.Embedding)) or any(k in name for k in NO_DECAY_NAMES)
        return "no_decay" if skip else "decay"
    groups = grouped_parameters(model, kind, ("decay", "no_decay"))
    return [{"params": groups["decay"], "name": "decay"},
            {"params": groups["no_decay"], "weight_decay": 0.0, "name": "no_decay"}]

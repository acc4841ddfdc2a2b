"""FC-CLIP — one frozen convolutional CLIP for open-vocabulary segmentation
(Yu et al., NeurIPS 2023), after the public bytedance/fc-clip code.

Data flow for normalised, padded images [B, 3, H, W]:

1. Frozen open_clip ConvNeXt (``backbones.convnext``): res2..res5 and the
   dense CLIP feature (res5 after ``norm_pre``).
2. Pixel decoder (``fcclip_pixel_decoder``): deformable encoder on res3..res5,
   FPN step to res2 -> ``mask_features`` (stride 4) and three maps.
3. Mask decoder (``fcclip_decoder``): Q queries -> mask logits and in-vocabulary
   embeddings for 1 + layers prediction sets.
4. Out-of-vocabulary branch: the final masks (bilinear to the dense feature,
   > 0) average-pool the dense CLIP feature, which goes through CLIP's head
   norm and projection.

Steps 1-4 do not depend on the vocabulary (``encode_image``). ``classify``
scores both embeddings against the synonym embeddings (+ the void row; class =
max over synonyms), ensembles them geometrically (``fcclip_postprocess``) and
returns the semantic map; ``panoptic`` / ``instances`` run the published
post-processing at the output size.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...backbones.clip import create_clip, tensor_fingerprint
from ...backbones.convnext import ClipConvNeXt
from ...layers.mask_semantic import mask_semantic, resize_rows
from ...losses.criterion import mask_criterion
from ...model import SegModel
from ...protocol import Protocol
from ...vocab import Vocabulary, VocabularyError, per_class_keep_last
from . import postprocess as post
from .decoder import MaskDecoder
from .pixel_decoder import PixelDecoder
from .train import FCCLIPTraining

TRAIN_VOCABULARY = "coco-panoptic:fcclip"


# Benchmarks whose published FC-CLIP config runs panoptic inference, which resizes the masks
# to the original size before the semantic sum (Mask2Former sem_seg_postprocess_before_inference).
MASKS_FIRST = ("ade150", "ade-panoptic", "cityscapes", "coco-panoptic", "coco-stuff", "coco-object")

class FCCLIP(FCCLIPTraining, SegModel):
    """``clip``: the whole open_clip ConvNeXt CLIP (frozen; its text tower encodes
    the vocabulary). ``pixel``: pixel decoder kwargs; ``decoder``: mask decoder kwargs."""

    template_set = "vild"
    text_average = "normalized"
    tasks = ("semantic", "panoptic", "instance")

    def __init__(self, clip_arch: str, clip_weights: str | None = None, pixel: dict | None = None,
                 decoder: dict | None = None, alpha: float = post.ALPHA, beta: float = post.BETA,
                 train_vocabulary: str | Vocabulary = TRAIN_VOCABULARY, loss_weights: dict | None = None,
                 no_object_weight: float = 0.1, train_points: int = 112 * 112, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, image_size: int = 1024,
                 resolution: tuple[int, int] = (800, 1333)):
        super().__init__()
        # LAION ConvNeXt CLIP uses GELU (no QuickGELU guess for a file); None: random init
        clip, self._tokenizer, _ = create_clip(clip_arch, clip_weights, quick_gelu=False, fingerprint=False)
        self.clip = clip
        self.clip_arch = clip_arch
        self.attach("backbone", ClipConvNeXt(clip))
        embed = self.backbone.embed_dim
        self.pixel_decoder = PixelDecoder(self.backbone.channels, **(pixel or {}))
        self.decoder = MaskDecoder(**{"embed_dim": embed, **(decoder or {})})
        self.void_embedding = nn.Embedding(1, embed)
        self.alpha, self.beta = alpha, beta
        self.object_threshold, self.overlap_threshold = post.OBJECT_THRESHOLD, post.OVERLAP_THRESHOLD
        self.topk = post.TOPK
        self.train_vocabulary = Vocabulary.resolve(train_vocabulary)
        self._train_synonyms = set(self.train_vocabulary.prompts)
        self.criterion = mask_criterion(loss_weights, no_object_weight, train_points, oversample_ratio,
                                        importance_sample_ratio)
        self.image_size = image_size
        self.masks_first = True     # see classify_at / set_dataset
        self.protocol = Protocol(short_side=resolution[0], max_side=resolution[1], mode="whole",
                                 size_divisibility=32, resize="pil")   # detectron2's ResizeShortestEdge
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()

    def train(self, mode: bool = True):
        """CLIP stays in eval mode (frozen, as published) whatever ``mode`` is."""
        super().train(mode)
        self.clip.eval()
        return self

    def set_resolution(self, short_side: int, max_side: int) -> None:
        """Test resolution: 800 / 1333 by default; Cityscapes and Mapillary use 1024 / 2560."""
        self.protocol = Protocol(**{**self.protocol.to_dict(), "short_side": short_side, "max_side": max_side})

    # --- text side -------------------------------------------------------
    def text_parts(self):
        return self.clip, self._tokenizer

    def text_identity(self) -> str:   # frozen, but a loaded checkpoint may bring its own
        return f"fcclip:{self.clip_arch}:text:{tensor_fingerprint(self.clip, exclude=('visual.',))}"

    def seen(self, vocab: Vocabulary) -> torch.Tensor:
        """bool [C]: a class is "seen" when one of its synonyms is a training synonym (exact match)."""
        return torch.tensor([any(s in self._train_synonyms for s in c) for c in vocab.classes], dtype=torch.bool)

    def classifier(self, text: torch.Tensor) -> torch.Tensor:
        """[S, D] unit synonym embeddings -> [S + 1, D] with the normalised void row last."""
        void = F.normalize(self.void_embedding.weight, dim=-1)
        return torch.cat([text.to(void), void], dim=0)

    # --- image side ------------------------------------------------------
    def forward_features(self, images: torch.Tensor, all_sets: bool = True):
        """-> (backbone features dict, list of (embedding, mask logits) per prediction set;
        only the last set unless ``all_sets``)."""
        with torch.no_grad():
            feats = self.backbone.features(images)
        mask_features, multi_scale = self.pixel_decoder(feats)
        return feats, self.decoder(multi_scale, mask_features, all_sets=all_sets)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> dict:
        """Normalised padded images [B, 3, H, W] -> dict(mask_logits [B, Q, H/4, W/4],
        class_emb [B, Q, D] (in-vocabulary), clip_emb [B, Q, D] (mask-pooled CLIP),
        size (H, W))."""
        feats, outputs = self.forward_features(images, all_sets=False)
        emb, masks = outputs[-1]
        clip_emb = self.backbone.pooled_embeddings(feats["clip_dense"], masks)
        return {"mask_logits": masks, "class_emb": emb, "clip_emb": clip_emb, "size": tuple(images.shape[-2:])}

    def in_vocab_logits(self, emb: torch.Tensor, classifier: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, Q, D] decoder embeddings -> [B, Q, C + 1] (max over synonyms, void last)."""
        return per_class_keep_last(self.decoder.class_logits(emb, classifier), vocab)

    def out_vocab_logits(self, clip_emb: torch.Tensor, classifier: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, Q, D] pooled CLIP embeddings -> [B, Q, C + 1], scaled by CLIP's own logit scale."""
        scale = self.clip.logit_scale.exp().clamp(max=100)
        return per_class_keep_last(scale * F.normalize(clip_emb, dim=-1) @ classifier.t().to(clip_emb.dtype), vocab)

    def class_logits(self, features: dict, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, Q, C + 1] final class logits (ensemble, void rescaled; softmax gives probabilities)."""
        cls = self.classifier(text.to(features["class_emb"].device))
        return post.ensemble_logits(self.in_vocab_logits(features["class_emb"], cls, vocab),
                                    self.out_vocab_logits(features["clip_emb"], cls, vocab),
                                    self.seen(vocab), self.alpha, self.beta)

    def classify(self, features: dict, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, C, H, W] semantic scores at the padded input size."""
        logits = self.class_logits(features, text, vocab)
        masks = F.interpolate(features["mask_logits"], size=features["size"], mode="bilinear", align_corners=False)
        return torch.stack([post.semantic_inference(lg, m) for lg, m in zip(logits, masks)])

    def _image_outputs(self, features: dict, text, vocab, crop_hw, out_hw):
        if features["mask_logits"].shape[0] != 1:
            raise ValueError("panoptic / instance inference takes the features of one image")
        logits = self.class_logits(features, text, vocab)[0]
        masks = F.interpolate(features["mask_logits"], size=features["size"], mode="bilinear",
                              align_corners=False)[0]
        return logits, post.resize_masks(masks, crop_hw, out_hw)

    def classify_at(self, features: dict, text: torch.Tensor, vocab: Vocabulary,
                    crop: tuple[int, int] | None = None, size: tuple[int, int] | None = None,
                    rows: tuple[int, int] | None = None) -> torch.Tensor:
        """[B, C, *size] semantic scores for the image cropped to ``crop`` (before padding) and
        resized to ``size``. With ``masks_first`` (the published panoptic configs: ADE-150,
        Cityscapes, COCO, and the default) the mask logits are cropped and resized before
        the sum over queries; otherwise the padded-size semantic map is (semantic-only configs)."""
        if not self.masks_first:
            return super().classify_at(features, text, vocab, crop, size, rows)
        prob = self.class_logits(features, text, vocab).softmax(-1)[..., :-1]
        return mask_semantic(prob, features["mask_logits"], features["size"], crop, size, rows)

    def set_dataset(self, name: str | None) -> None:
        """Published test settings of benchmark ``name``: Cityscapes at short side 1024 (max 2560),
        others 800 / 1333; masks resized before the semantic sum where the published config
        runs panoptic inference (ADE-150, Cityscapes, COCO). None restores the defaults."""
        from ...data.benchmarks import BENCHMARKS
        if name is not None and name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
        self.set_resolution(*((1024, 2560) if name == "cityscapes" else (800, 1333)))
        self.masks_first = name is None or name in MASKS_FIRST

    def panoptic(self, features: dict, text: torch.Tensor, vocab: Vocabulary, crop_hw, out_hw,
                 things: Sequence[bool] | None = None) -> dict:
        """-> {"pan_seg": IntTensor [H, W] (0 = void), "segments": [{id, category_id, isthing,
        score, area}]} at ``out_hw``. ``things``: per-class thing flags (see ``thing_flags``)."""
        if features["mask_logits"].shape[0] != 1:
            raise ValueError("panoptic inference takes the features of one image")
        logits = self.class_logits(features, text, vocab)[0]
        masks = functools.partial(mask_rows, features["mask_logits"], features["size"], tuple(crop_hw), tuple(out_hw))
        pan, segments = post.panoptic_inference(logits, masks, thing_flags(vocab, things), self.object_threshold,
                                                self.overlap_threshold, size=tuple(out_hw))
        return {"pan_seg": pan, "segments": segments}

    def instances(self, features: dict, text: torch.Tensor, vocab: Vocabulary, crop_hw, out_hw,
                  things: Sequence[bool] | None = None) -> dict:
        """-> {"masks": BoolTensor [N, H, W], "labels": LongTensor [N], "scores": [N]}: top-100
        (query, class) pairs restricted to thing classes (panoptic models)."""
        logits, masks = self._image_outputs(features, text, vocab, crop_hw, out_hw)
        out = post.instance_inference(logits, masks, thing_flags(vocab, things), self.topk)
        return {k: out[k] for k in ("masks", "labels", "scores")}


def mask_rows(mask_logits: torch.Tensor, padded, crop, size, r0: int, r1: int) -> torch.Tensor:
    """Rows r0..r1 of the mask logits [1, Q, h, w] resized to the padded input, cropped
    and resized to ``size`` -> [Q, r1 - r0, W] (the panoptic merge reads them row by row)."""
    return resize_rows(mask_logits, padded, crop, size, r0, r1)[0]


def thing_flags(vocab: Vocabulary, things: Sequence[bool] | None = None) -> list[bool]:
    """Per-class thing flags: ``things`` if given (bools, or class indices), else the
    vocabulary's own (``vocab.things``) if it has them, else those of the panoptic
    benchmark whose class names it is (COCO, ADE-150, Cityscapes, any convention),
    else all True (a user vocabulary: every class is an object, nothing is merged)."""
    if things is None:
        things = vocab.things
    if things is None:
        things = benchmark_things(tuple(vocab.names))
    if things is None:
        return [True] * len(vocab)
    arr = np.asarray(things.tolist() if torch.is_tensor(things) else list(things))
    if arr.size and arr.dtype != bool:   # class indices
        idx = {int(i) for i in arr.reshape(-1)}
        bad = [i for i in idx if not 0 <= i < len(vocab)]
        if bad:
            raise ValueError(f"thing class indices {bad} are outside the vocabulary (0..{len(vocab) - 1})")
        return [i in idx for i in range(len(vocab))]
    if arr.size != len(vocab):
        raise ValueError(f"{arr.size} thing flags for a vocabulary of {len(vocab)} classes")
    return [bool(t) for t in arr.reshape(-1)]


def _panoptic_things() -> dict[str, tuple[int, ...]]:
    from ...data import idmaps
    return {"coco-panoptic": tuple(range(len(idmaps.COCO_PANOPTIC_THING_IDS))),   # things come first
            "ade-panoptic": tuple(idmaps.ADE_PANOPTIC_THINGS), "ade150": tuple(idmaps.ADE_PANOPTIC_THINGS),
            "cityscapes": tuple(range(11, 19))}                                  # person .. bicycle


@functools.lru_cache(maxsize=64)
def benchmark_things(names: tuple[str, ...]) -> tuple[bool, ...] | None:
    """Thing flags of the panoptic benchmark whose display names are ``names``, or None."""
    names = tuple(names)
    for bench, things in _panoptic_things().items():
        for convention in (None, "fcclip", "san", "tf"):
            try:
                ref = Vocabulary.from_dataset(bench, convention)
            except VocabularyError:
                continue
            if tuple(ref.names) == names:
                return tuple(i in things for i in range(len(names)))
    return None


# Other ConvNeXt CLIPs the layout supports (no published FC-CLIP checkpoint; train one with
# configs/fcclip-convnext-l.yaml and model overrides ``clip_arch`` / ``clip_weights``).
CLIP_VARIANTS = {"convnext_base_w_320": "laion_aesthetic_s13b_b82k_augreg",
                 "convnext_large_d_320": "laion2b_s29b_b131k_ft_soup",
                 "convnext_xxlarge": "laion2b_s34b_b82k_augreg_soup"}

"""Training-free dense CLIP: MaskCLIP, SCLIP, ClearCLIP and NACLIP.

Every method runs a frozen open_clip ViT unchanged up to its last block and
replaces only that block (``LAST_BLOCK``); ``ln_post`` and ``proj`` then map
every token to the joint space, the class token is dropped and the patch
embeddings are compared with the text embeddings by cosine similarity. For
per-head q, k, v of the last block's ``ln_1`` input and s = head_dim ** -0.5:

=========  ===============================================  ========  =====
method     attention weights                                residual  FFN
=========  ===============================================  ========  =====
maskclip   identity (each token keeps its value embedding)  no        no
sclip      softmax(s q qᵀ) + softmax(s k kᵀ)                yes       yes
clearclip  softmax(s q qᵀ)                                  no        no
naclip     softmax(s k kᵀ + ω), ω Gaussian over the grid    no        no
=========  ===============================================  ========  =====

Without the residual, the block output is ``out_proj`` of the weighted values
alone. NACLIP's ω[(i, j), (k, l)] = exp(-((i-k)² + (j-l)²) / (2 std²)), std 5,
unnormalised (1 on the diagonal), 0 in the class token's row and column.

MaskCLIP here is the variant the SCLIP / ClearCLIP / NACLIP papers evaluate
(ClearCLIP's ``model_type='MaskCLIP'``, ``ignore_residual=True``). The original
chongzhou96/MaskCLIP code differs: it adds the residual and the FFN to the value
path and uses exact GELU and LayerNorm eps 1e-6 with CLIP's weights.

Inference follows the references' ``forward_slide`` / ``postprocess_result``
through ``engine.inference``: each window's cosine maps [S, h, w] (one per
synonym) are resized bilinearly to the window, averaged over windows, resized
to the image, then ``finalize`` takes softmax(logit_scale · cos) over all
synonyms, the max over each class's synonyms and, on vocabularies with a
background class only, SCLIP's area filter and the probability threshold
(pixels whose best class probability is below ``prob_thd`` become background).
Windows are not padded by the engine: SCLIP / NACLIP drop the pixels past the
last whole patch (the patch convolution floors) and stretch the map back over
the window; ClearCLIP (and MaskCLIP, whose runnable reference is ClearCLIP's
code) pads the window centred to a patch multiple and crops the map. Only
windows that are not patch multiples see the difference. In ``whole`` mode (the model's own
``protocol.mode``, as the references' ``slide_crop = 0``) every method follows the references'
whole-image path: the resized image is encoded unpadded (the patch grid floors) and the cosine
map is resized once, from the patch grid straight to the original image size. Published
per-benchmark settings are in ``settings.py`` (``model.set_dataset(name)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...backbones.clip import tensor_fingerprint
from ...backbones.vit import ClipViT, block_with_attention
from ...layers.mask_semantic import resize_rows
from ...vocab import Vocabulary, reduce_synonyms
from ...protocol import Protocol
from ...model import SegModel
from .settings import METHODS, PUBLISHED, TINY, settings_for

# method -> (residual and FFN kept, window padding); attention weights in ``attention_weights``.
LAST_BLOCK = {"maskclip": (False, "center"), "sclip": (True, "floor"),
              "clearclip": (False, "center"), "naclip": (False, "floor")}


def gaussian_bias(grid: tuple[int, int], std: float, num_prefix: int = 1) -> torch.Tensor:
    """NACLIP's neighbourhood bias ω [P + h*w, P + h*w] for a row-major h x w
    grid after ``num_prefix`` tokens (zero rows / columns)."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    d2 = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    out = torch.zeros(num_prefix + h * w, num_prefix + h * w, dtype=torch.float64)
    out[num_prefix:, num_prefix:] = torch.exp(-d2 / (2 * std ** 2))
    return out.float()


def attention_weights(method: str, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None):
    """Last-block attention weights [B, heads, N, N] from q, k [B, heads, N, d]
    (None = identity, MaskCLIP)."""
    s = q.shape[-1] ** -0.5
    if method == "maskclip":
        return None
    if method == "sclip":
        return (s * q @ q.transpose(-2, -1)).softmax(-1) + (s * k @ k.transpose(-2, -1)).softmax(-1)
    if method == "clearclip":
        return (s * q @ q.transpose(-2, -1)).softmax(-1)
    if method == "naclip":   # the bias is added to the scaled logits (NACLIP's custom_attn, 'naclip' strategy)
        return (s * k @ k.transpose(-2, -1) + bias.to(k.dtype)).softmax(-1)
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(LAST_BLOCK)}")


@dataclass
class DenseFeatures:
    """``encode_image`` output for B windows."""
    features: torch.Tensor          # [B, D, h, w] unit-norm patch embeddings
    size: tuple[int, int]           # (H, W) of the window given to encode_image
    padded: tuple[int, int]         # (H', W') after centred padding (== size when not padded)
    offset: tuple[int, int]         # (top, left) of the window inside the padded input
    whole: bool = False             # a whole-image pass: ``classify_at`` resizes grid -> image once


class TrainingFreeCLIP(SegModel):
    """One of ``LAST_BLOCK``'s methods over an open_clip ViT (``clip.visual``)."""

    template_set = "imagenet"       # OpenAI's 80 ImageNet templates, each normalised, averaged, renormalised
    text_average = "normalized"
    # As published, the softmax runs over all synonyms before the max per class, so a
    # synonym repeated with the same embedding lowers the probabilities (not the argmax).
    synonym_softmax = True

    def __init__(self, clip: nn.Module, tokenizer, identity: str, method: str, gaussian_std: float = 5.0,
                 settings: dict | None = None):
        super().__init__()
        if method not in LAST_BLOCK:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(LAST_BLOCK)}")
        _check_vit(clip)
        self.clip, self.tokenizer, self.clip_identity = clip, tokenizer, identity
        self.attach("vit", ClipViT(clip.visual, pos_offset=0.1))   # DINO-style position resizing
        self.method, self.gaussian_std = method, float(gaussian_std)
        self.residual, self.padding = LAST_BLOCK[method]
        self.settings_key = method          # which published settings ``set_dataset`` reads (settings.DATASETS)
        self.base_settings = {**METHODS[method], **(settings or {})}
        self.dataset: str | None = None
        self._use_settings(self.base_settings)

    # --- settings --------------------------------------------------------------
    def _use_settings(self, s: dict) -> None:
        self.protocol = Protocol(short_side=s["short_side"], max_side=s["max_side"], mode=s["mode"],
                                 window=s["window"], stride=s["stride"], size_divisibility=1,
                                 resize="cv2")   # mmseg's Resize: mmcv.imrescale, OpenCV bilinear on uint8
        self.logit_scale, self.prob_thd, self.area_thd = float(s["logit_scale"]), float(s["prob_thd"]), s["area_thd"]
        if not 0.0 <= self.prob_thd <= 1.0:
            raise ValueError(f"prob_thd is a probability in [0, 1], got {self.prob_thd}")

    def set_dataset(self, name: str | None) -> None:
        """Use the published settings of benchmark ``name`` (resize, window,
        logit scale, background threshold: ``maskclip_settings``); None restores the defaults."""
        self._use_settings(self.base_settings if name is None else settings_for(self.settings_key, name, self.base_settings))
        self.dataset = name
        if self.config:   # a saved checkpoint rebuilds with the same settings
            self.config = {k: v for k, v in self.config.items() if k != "dataset"}
            if name is not None:
                self.config["dataset"] = name

    def text_parts(self):
        return self.clip, self.tokenizer

    def text_identity(self) -> str:
        """Named weights keep create_clip's identity; random-init weights (which may be
        overwritten by loading a checkpoint) are named by their current content."""
        ident = self.clip_identity
        return f"{ident.split(':')[0]}:weights:{tensor_fingerprint(self.clip)}" if ":random:" in ident else ident

    # --- image -----------------------------------------------------------------
    def dense_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images [B, 3, H, W] -> all tokens after the replaced last
        block, ``ln_post`` and ``proj`` [B, 1 + h*w, D] (class token first), (h, w)."""
        vit = self.vit
        x, grid = vit.embed(images)
        x, _ = vit.forward_blocks(x, 0, vit.num_layers - 1)
        bias = gaussian_bias(grid, self.gaussian_std).to(x.device) if self.method == "naclip" else None
        x = block_with_attention(vit.blocks[-1], x, lambda q, k, v: attention_weights(self.method, q, k, bias),
                                 residual=self.residual, ffn=self.residual)
        return vit.head(x), grid

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> DenseFeatures:
        h, w = images.shape[-2:]
        top = left = 0
        whole, p = self.protocol.mode == "whole", self.vit.patch_size
        if self.padding == "center" and not whole:   # ClearCLIP's compute_padsize: centred, zeros
            ph, pw = (p - h % p) % p, (p - w % p) % p
        else:   # a side shorter than a patch (a 7 x 2048 resize of a 1 x 300 image) has no patch to
            ph, pw = max(0, p - h), max(0, p - w)   # floor to: padded, centred, to one (the references fail)
        if ph or pw:
            top, left = ph // 2, pw // 2
            images = F.pad(images, (left, pw - left, top, ph - top))
        tokens, grid = self.dense_tokens(images)
        feats = F.normalize(tokens[:, 1:], dim=-1)
        feats = feats.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], *grid)
        return DenseFeatures(feats, (h, w), tuple(images.shape[-2:]), (top, left), whole)

    def classify_at(self, features: DenseFeatures, text: torch.Tensor, vocab: Vocabulary,
                    crop: tuple[int, int] | None = None, size: tuple[int, int] | None = None, **band) -> torch.Tensor:
        """A whole-image pass: the references' ``forward_feature(img, ori_shape)``, the [B, S, h, w]
        grid cosines resized bilinearly straight to ``size`` (one resize, no padding). A single
        sliding window covering the image keeps the window path (``classify``, then resize).
        ``band`` (``rows=(r0, r1)``): only those output rows, as ``SegModel.classify_at``."""
        if not features.whole:
            return super().classify_at(features, text, vocab, crop, size, **band)
        cos, size = _cosines(features, text, vocab), tuple(size or features.size)
        r0, r1 = band.get("rows") or (0, size[0])
        return resize_rows(cos, cos.shape[-2:], cos.shape[-2:], size, r0, r1)

    def classify(self, features: DenseFeatures, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, S, H, W] cosine similarity of each pixel with each synonym's text
        embedding (S = len(vocab.prompts)), resized bilinearly to the window."""
        cos = F.interpolate(_cosines(features, text, vocab), size=features.padded, mode="bilinear", align_corners=False)
        (t, l), (h, w) = features.offset, features.size
        return cos[..., t:t + h, l:l + w]

    def image_stats(self, scores: torch.Tensor, vocab: Vocabulary):
        """LongTensor [B, C]: pixels each class wins (SCLIP's area filter), or None without it."""
        if vocab.background is None or self.area_thd is None:
            return None
        probs = reduce_synonyms((self.logit_scale * scores).softmax(1), vocab.synonym_index, len(vocab), dim=1)
        return F.one_hot(probs.argmax(1), len(vocab)).sum((1, 2))

    def finalize(self, scores: torch.Tensor, vocab: Vocabulary, stats=None) -> torch.Tensor:
        """[B, S, H, W] cosines -> [B, C, H, W] class probabilities (max over
        synonyms of the softmax over all synonyms). With a background class: SCLIP's
        area filter (``area_thd``) zeroes foreground classes whose predicted area is
        at most ``area_thd`` of the predicted foreground, then pixels whose best
        probability is below ``prob_thd`` get background probability 1. ``stats``: the
        whole image's ``image_stats`` when ``scores`` are some of its rows."""
        probs = (self.logit_scale * scores).softmax(1)
        probs = reduce_synonyms(probs, vocab.synonym_index, len(vocab), dim=1)
        bg = vocab.background
        if bg is None:
            return probs
        if self.area_thd is not None:
            area = (self.image_stats(scores, vocab) if stats is None else stats).to(probs.dtype)   # [B, C]
            area[:, bg] = 0
            keep = area > self.area_thd * area.sum(1, keepdim=True)
            keep[:, bg] = True
            probs = probs * keep[:, :, None, None]
        low = probs.max(1).values < self.prob_thd
        probs[:, bg] = torch.where(low, torch.ones_like(probs[:, bg]), probs[:, bg])
        return probs


def _cosines(features: DenseFeatures, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """[B, S, h, w] cosine of each patch with each synonym's text embedding."""
    if text.shape[0] != len(vocab.prompts):
        raise ValueError(f"text has {text.shape[0]} rows, the vocabulary {len(vocab.prompts)} synonyms")
    return torch.einsum("bdhw,sd->bshw", features.features, text.to(features.features))


def _check_vit(clip: nn.Module) -> None:
    from open_clip.transformer import VisionTransformer
    visual = getattr(clip, "visual", None)
    if not isinstance(visual, VisionTransformer) or not all(
            isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in visual.transformer.resblocks):
        raise ValueError(f"the training-free methods need an open_clip ViT with standard attention blocks, "
                         f"got a {type(visual).__name__} visual tower")
    if visual.attn_pool is not None:
        raise ValueError("the training-free methods need a ViT whose tokens go through ln_post / proj "
                         "(this one pools with attention)")

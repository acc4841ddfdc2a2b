"""CAT-Seg — Cost Aggregation for open-vocabulary semantic segmentation (Cho et
al., CVPR 2024) on an OpenAI CLIP whose attention q / v projections are fine-tuned.

Data flow for normalised images [B, 3, H, W]:

1. Views (``sliding``, the published test protocol, see ``sliding``): the image at
   640 x 640 cut into four 384 crops plus a global view; otherwise the (padded)
   image itself. Each view is resized to CLIP's input (384 for B/16, 336 for L/14).
2. CLIP (``clip_features``): the last visual block runs "dense" (value path
   only, residual = the block input's class token), then ``ln_post`` and ``proj``
   -> F [V, D, 24, 24]; the raw outputs of two middle blocks (``guidance_layers``,
   0-based) go through ``upsample1`` (ConvT 2x) and ``upsample2`` (ConvT 4x).
3. The aggregator's guidance projections. Steps 1-3 do not depend on the
   vocabulary: ``encode_image`` returns them (cached by ``Segmenter``).
4. ``classify``: cost volume with the text embeddings (one prompt, first synonym
   of each class), aggregation, decoder -> logits [V, N, 96, 96]; sigmoid;
   views folded back (sliding) -> probabilities, resized to the image.

Training (``forward_train``): one view per image at 384 x 384, pooled class
aggregation (2 x 2), BCE-with-logits against one-hot targets, text encoded with
gradients (the text tower's q / v are fine-tuned too).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import speed
from ...backbones.clip import create_clip, tensor_fingerprint, text_dim
from ...backbones.vit import ClipViT
from ...data.transforms import semantic_train_transform
from ...layers.mask_semantic import resize_rows
from ...model import NORM_TYPES, SegModel, grouped_parameters
from ...protocol import Protocol
from ...text import encode_text_tokens
from ...vocab import Vocabulary
from .aggregator import Aggregator
from .sliding import fold_views, slide_views

TEMPLATE = "A photo of a {} in the scene"     # PROMPT_ENSEMBLE_TYPE "single" (capital A, no full stop)
TRANSFORM_KEYS = ("crop_size", "short_sizes", "max_size", "cat_max_ratio", "color_aug", "ignore_index")


def split_qkv(attn: nn.MultiheadAttention) -> None:
    """Keep an attention layer's packed q / k / v projection as three parameters
    ``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight`` (``in_proj_bias`` stays),
    as CAT-Seg's CLIP does so that q and v can be trained alone. PyTorch's
    ``MultiheadAttention`` runs this layout itself (``use_separate_proj_weight``)."""
    if attn.in_proj_weight is None:
        return
    q, k, v = attn.in_proj_weight.detach().chunk(3, dim=0)
    del attn.in_proj_weight
    attn.register_parameter("in_proj_weight", None)
    attn.q_proj_weight = nn.Parameter(q.clone())
    attn.k_proj_weight = nn.Parameter(k.clone())
    attn.v_proj_weight = nn.Parameter(v.clone())
    attn._qkv_same_embed_dim = False


def dense_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CAT-Seg's last visual block on tokens [M, 1+L, C]: no attention, each token's
    value projected by ``out_proj``, plus the block input's class token, then the MLP."""
    attn, c = block.attn, x.shape[-1]
    v = speed.linear(block.ln_1(x), attn.v_proj_weight, attn.in_proj_bias[2 * c:])
    v = speed.linear(v, attn.out_proj.weight, attn.out_proj.bias) + x[:, :1]
    return v + block.mlp(block.ln_2(v))


class CATSeg(SegModel):
    """CAT-Seg. ``clip`` is the whole open_clip model (both towers fine-tuned in
    q / v), ``upsample1`` / ``upsample2`` lift the guidance maps, ``aggregator``
    is the cost aggregation network. ``sliding`` selects the published test
    protocol (views of ``kernel`` every ``stride`` on the image at ``out_res``)
    or the whole-image pass (the image padded to a multiple of 32, resized to CLIP's input)."""

    template_set = (TEMPLATE,)
    text_average = "normalized"

    def __init__(self, clip_arch: str, clip_weights: str | None = None, clip_size: int = 384,
                 guidance_layers: tuple[int, int] = (3, 7), hidden: int = 128, heads: int = 4, num_layers: int = 2,
                 window: int = 12, pad_len: int = 256, text_proj: int = 128, appearance_proj: int = 128,
                 decoder_dims=(64, 32), decoder_guidance_dims=(256, 128), decoder_guidance_proj=(32, 16),
                 test_pooling=(1, 1), train_pooling=(2, 2), sliding: bool = True, kernel: int = 384,
                 stride: int = 256, out_res: int = 640, quick_gelu: bool = True):
        super().__init__()
        clip, self._tokenizer, _ = create_clip(clip_arch, clip_weights, quick_gelu=quick_gelu, fingerprint=False)
        for m in clip.modules():
            if isinstance(m, nn.MultiheadAttention):
                split_qkv(m)
        self.clip = clip
        self.clip_arch = clip_arch
        vit = self.attach("vit", ClipViT(clip.visual))
        bad = [i for i in guidance_layers if not 0 <= i < vit.num_layers - 1]
        if bad:
            raise ValueError(f"guidance layers {bad} are not among CLIP's blocks 0..{vit.num_layers - 2}")
        if clip_size % vit.patch_size:
            raise ValueError(f"clip_size {clip_size} is not a multiple of the patch size {vit.patch_size}")
        self.clip_size = clip_size
        self.guidance_layers = tuple(guidance_layers)
        grid = clip_size // vit.patch_size
        self.upsample1 = nn.ConvTranspose2d(vit.width, decoder_guidance_dims[0], kernel_size=2, stride=2)
        self.upsample2 = nn.ConvTranspose2d(vit.width, decoder_guidance_dims[1], kernel_size=4, stride=4)
        dim = text_dim(clip)
        self.aggregator = Aggregator(
            text_dim=dim, appearance_dim=vit.output_dim, hidden=hidden, text_proj=text_proj,
            appearance_proj=appearance_proj, decoder_dims=tuple(decoder_dims),
            decoder_guidance_dims=tuple(decoder_guidance_dims), decoder_guidance_proj=tuple(decoder_guidance_proj),
            num_layers=num_layers, heads=heads, size=(grid, grid), window=window, prompts=1, pad_len=pad_len)
        self.test_pooling, self.train_pooling = tuple(test_pooling), tuple(train_pooling)
        self.sliding, self.kernel, self.stride, self.out_res = sliding, kernel, stride, out_res
        # the test loader's ResizeShortestEdge(640, 2560) (PIL); the whole-image path pads to a multiple of
        # 32 (MODEL.MASK_FORMER.SIZE_DIVISIBILITY, the CATSeg module's; INPUT.SIZE_DIVISIBILITY 384 is training's)
        self.protocol = Protocol(short_side=640, max_side=2560, mode="whole", resize="pil",
                                 size_divisibility=1 if sliding else 32)
        self._memo = None
        self.freeze_clip()

    # --- parameters ------------------------------------------------------
    def freeze_clip(self) -> None:
        """Trainable in CLIP (``CLIP_FINETUNE: attention``): the q and v projection
        weights of every block of both towers; everything else in CLIP is frozen."""
        for name, p in self.clip.named_parameters():
            p.requires_grad_(name.endswith(("attn.q_proj_weight", "attn.v_proj_weight")))

    def param_groups(self, cfg: dict | None = None) -> list[dict]:
        """AdamW groups of CAT-Seg's ``build_optimizer`` from the ``optim`` section:
        ``lr`` (2e-4), CLIP's parameters at ``lr * clip_multiplier`` (0.01);
        ``weight_decay`` (1e-4), ``weight_decay_norm`` (0) for torch norm layers."""
        optim = (cfg or {}).get("optim", cfg or {})
        self.freeze_clip()
        lr, mult = float(optim.get("lr", 2e-4)), float(optim.get("clip_multiplier", 0.01))
        wd, wd_norm = float(optim.get("weight_decay", 1e-4)), float(optim.get("weight_decay_norm", 0.0))
        clip_ids = {id(p) for p in self.clip.parameters()}
        groups = grouped_parameters(self, lambda m, n: ("clip_" if id(getattr(m, n)) in clip_ids else "")
                                    + ("norm" if isinstance(m, (*NORM_TYPES, nn.Embedding)) else "default"),
                                    ("default", "norm", "clip_default", "clip_norm"))
        return [{"name": k, "params": ps, "lr": lr * (mult if k.startswith("clip") else 1.0),
                 "weight_decay": wd_norm if k.endswith("norm") else wd} for k, ps in groups.items() if ps]

    # --- text side -------------------------------------------------------
    def text_parts(self):
        return self.clip, self._tokenizer

    def text_identity(self) -> str:
        return f"catseg:{self.clip_arch}:text:{tensor_fingerprint(self.clip, exclude=('visual.',))}"

    @staticmethod
    def first_synonyms(vocab: Vocabulary) -> list[int]:
        """Row of each class's first synonym in ``vocab.prompts`` (CAT-Seg encodes only
        the first name of "a, b")."""
        rows, i = [], 0
        for syns in vocab.classes:
            rows.append(i)
            i += len(syns)
        return rows

    def train_text(self, vocab: Vocabulary) -> torch.Tensor:
        """[N, D] unit text embeddings of the classes' first names, with gradients."""
        tokens = self._tokenizer([TEMPLATE.format(c[0]) for c in vocab.classes]).to(self.device)
        return F.normalize(encode_text_tokens(self.clip, tokens), dim=-1)

    # --- image side ------------------------------------------------------
    def clip_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised views [M, 3, s, s] (s = ``clip_size``) -> (dense F [M, D, g, g],
        upsampled guidance [M, *, 2g, 2g] and [M, *, 4g, 4g])."""
        tokens, (gh, gw) = self.vit.embed(x)
        first, second = (i + 1 for i in self.guidance_layers)       # forward_blocks counts outputs from 1
        tokens, taps = self.vit.forward_blocks(tokens, 0, self.vit.num_layers - 1, collect=(first, second))
        dense = self.vit.head(dense_block(self.vit.blocks[-1], tokens))
        grid = lambda t: t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, gh, gw)   # noqa: E731  (CLS dropped)
        return grid(dense), self.upsample1(grid(taps[first])), self.upsample2(grid(taps[second]))

    def views(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, V, 3, s, s]: the published views at CLIP's input size."""
        v = slide_views(images, self.out_res, self.kernel, self.stride) if self.sliding else images[:, None]
        if tuple(v.shape[-2:]) != (self.clip_size, self.clip_size):
            b, n = v.shape[:2]
            v = F.interpolate(v.flatten(0, 1), size=(self.clip_size, self.clip_size), mode="bilinear",
                              align_corners=False).unflatten(0, (b, n))
        return v

    def encode_image(self, images: torch.Tensor) -> dict:
        """-> dict(dense [B, V, D, g, g], appearance [B, V, A, g, g], decoder0 / decoder1
        (projected guidance at 2g / 4g), size (H, W) of the input): views x CLIP x guidance."""
        v = self.views(images)
        b, n = v.shape[:2]
        dense, g1, g2 = self.clip_features(v.flatten(0, 1))
        guide = self.aggregator.project_guidance(dense, [g1, g2])
        split = lambda t: t.unflatten(0, (b, n))     # noqa: E731
        return {"dense": split(dense), "appearance": split(guide["appearance"]),
                "decoder0": split(guide["decoder"][0]), "decoder1": split(guide["decoder"][1]),
                "size": tuple(images.shape[-2:])}

    def view_logits(self, features: dict, text: torch.Tensor, pooling=None) -> torch.Tensor:
        """``encode_image`` output, class embeddings [N, D] -> logits [B, V, N, 4g, 4g]."""
        b, n = features["dense"].shape[:2]
        flat = lambda t: t.flatten(0, 1)     # noqa: E731
        dense = flat(features["dense"])
        guide = {"appearance": flat(features["appearance"]),
                 "decoder": [flat(features["decoder0"]), flat(features["decoder1"])]}
        text = text.to(dense)[None, :, None, :].expand(dense.shape[0], -1, -1, -1)
        logits = self.aggregator(dense, text, guide, self.test_pooling if pooling is None else pooling)
        return logits.unflatten(0, (b, n))

    def probabilities(self, logits: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        """View logits [B, V, N, h, w] -> [B, N, R, R] probabilities: sliding, each view's
        logits resized to ``kernel``, sigmoid, crops folded and averaged with the global
        view at ``out_res`` (``chunk`` classes at a time); whole, the sigmoid of the one view."""
        if not self.sliding:
            return logits[:, 0].sigmoid()
        b, v, n = logits.shape[:3]
        out = logits.new_empty(b, n, self.out_res, self.out_res)
        for s in range(0, n, chunk):
            part = logits[:, :, s:s + chunk].flatten(0, 1)
            part = F.interpolate(part, size=(self.kernel, self.kernel), mode="bilinear", align_corners=False)
            out[:, s:s + chunk] = fold_views(part.sigmoid().unflatten(0, (b, v)), self.out_res, self.stride)
        return out

    def class_probabilities(self, features: dict, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, N, R, R] probabilities (``probabilities``); the last result is kept so a
        score map built a band of rows at a time runs the network once."""
        memo = self._memo
        if memo is not None and memo[0] is features and memo[1] is text and memo[2] == vocab:
            return memo[3]
        rows = torch.tensor(self.first_synonyms(vocab), device=text.device)
        prob = self.probabilities(self.view_logits(features, text[rows]))
        self._memo = (features, text, vocab, prob)
        return prob

    def classify(self, features: dict, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, N, H, W] probabilities at the input size."""
        prob = self.class_probabilities(features, text, vocab)
        return F.interpolate(prob, size=features["size"], mode="bilinear", align_corners=False)

    def classify_at(self, features: dict, text: torch.Tensor, vocab: Vocabulary,
                    crop: tuple[int, int] | None = None, size: tuple[int, int] | None = None,
                    rows: tuple[int, int] | None = None) -> torch.Tensor:
        """[B, N, *size] probabilities as CAT-Seg's ``sem_seg_postprocess`` makes them:
        sliding, the ``out_res`` map resized (bilinear) to ``size``; whole, the 96 x 96
        map cropped to ``crop`` (which, as published, crops nothing unless the image is
        smaller than the map: the padding stays in the map) and resized."""
        prob = self.class_probabilities(features, text, vocab)
        hw = tuple(prob.shape[-2:])
        crop = tuple(crop or features["size"])
        keep = hw if self.sliding else (min(crop[0], hw[0]), min(crop[1], hw[1]))
        size = tuple(size or crop)
        r0, r1 = rows or (0, size[0])
        return resize_rows(prob, hw, keep, size, r0, r1)

    # --- training --------------------------------------------------------
    def forward_train(self, batch: list[dict], vocab: Vocabulary,
                      text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"loss_sem_seg": BCE-with-logits} for items with ``image`` (float [3, H, W] in
        0..1, or uint8) and ``sem_seg`` LongTensor [H, W] (``ignore_index``, default 255:
        an all-zero target). Logits are resized (bilinear) to the padded targets;
        ``text`` [N, D] overrides the class embeddings (default: encoded with gradients)."""
        self._memo = None
        images, pads = self.training_images(batch)
        targets = torch.stack([F.pad(item["sem_seg"].to(self.device).long(), pad,
                                     value=int(item.get("ignore_index", 255))) for item, pad in zip(batch, pads)])
        n = len(vocab)
        ignore = int(batch[0].get("ignore_index", 255))
        valid = targets != ignore
        if valid.any() and int(targets[valid].max()) >= n:
            raise ValueError(f"sem_seg holds class {int(targets[valid].max())}, the vocabulary has {n}")
        x = images
        if tuple(x.shape[-2:]) != (self.clip_size, self.clip_size):
            x = F.interpolate(x, size=(self.clip_size, self.clip_size), mode="bilinear", align_corners=False)
        dense, g1, g2 = self.clip_features(x)
        guide = self.aggregator.project_guidance(dense, [g1, g2])
        text = self.train_text(vocab) if text is None else text.to(dense)
        logits = self.aggregator(dense, text[None, :, None, :].expand(dense.shape[0], -1, -1, -1), guide,
                                 self.train_pooling)
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        onehot = torch.zeros_like(logits.permute(0, 2, 3, 1))
        onehot[valid] = F.one_hot(targets[valid], n).to(onehot)
        loss = F.binary_cross_entropy_with_logits(logits.permute(0, 2, 3, 1), onehot)
        return {"loss_sem_seg": loss}

    def train_transform(self, cfg: dict | None = None):
        """The published augmentation (see ``train_transform``)."""
        return train_transform(cfg)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._memo = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def train_transform(cfg: dict | None = None):
    """CAT-Seg's ``MaskFormerSemanticDatasetMapper`` from ``data.transform`` of a config
    (or that dict): short side ``short_sizes`` [384] (long side <= ``max_size`` 1333,
    detectron2's MAX_SIZE_TRAIN), crop ``crop_size`` 384 (``cat_max_ratio`` 1.0),
    ``color_aug`` (ColorAugSSD), horizontal flip, pad to 384 with 128 / ``ignore_index``
    255 -> callable item (uint8 ``image``, ``sem_seg``) -> item with ``image`` float in 0..1."""
    cfg = cfg or {}
    t = ((cfg.get("data") or {}).get("transform") or {}) if "data" in cfg else cfg
    unknown = set(t) - set(TRANSFORM_KEYS)
    if unknown:
        raise ValueError(f"unknown CAT-Seg transform keys {sorted(unknown)}; known: {', '.join(TRANSFORM_KEYS)}")
    crop = int(t.get("crop_size", 384))
    aug = semantic_train_transform(crop_size=crop, short_sizes=list(t.get("short_sizes", [384])),
                                   max_size=int(t.get("max_size", 1333)),
                                   cat_max_ratio=float(t.get("cat_max_ratio", 1.0)),
                                   color=bool(t.get("color_aug", True)), ignore_index=int(t.get("ignore_index", 255)))

    def apply(item: dict) -> dict:
        out = aug(item)
        out["image"] = out["image"].float() / 255.0
        return out
    return apply

"""SAN — Side Adapter Network (Xu et al., CVPR 2023) on a frozen open_clip ViT.

Data flow for normalised, padded images [B, 3, H, W]:

1. CLIP sees the image bilinearly rescaled by ``clip_resolution`` (0.5 for
   B/16, 0.7 for L/14); its first ``split`` blocks give tokens at feature
   indices 0 (after ``ln_pre``) .. ``split``.
2. The side adapter (``san_side.SideAdapter``) reads the full image, fuses
   CLIP feature maps, and predicts Q mask logits [B, Q, H/16, W/16] and an
   attention bias [B, heads, Q, H/16, W/16].
3. The recognition head — CLIP's remaining blocks, ``ln_post`` and ``proj`` —
   runs [SOS x Q, CLS, patches] with the bias (max-pooled to the CLIP grid)
   injected into the SOS rows of the attention (``recognition_attn_mask``);
   the SOS outputs are the mask embeddings [B, Q, D], L2-normalised.
4. ``classify``: logits = exp(logit_scale) * cos(mask embedding, [text; bg]),
   softmax over C+1, drop the no-object column; semantic scores
   = sum_q p(q, c) * sigmoid(mask_q) at the padded input size.

Steps 1-3 do not depend on the vocabulary (``encode_image``); step 4 is a
few matrix products (``classify``).
"""
from __future__ import annotations

import dataclasses
import hashlib
from functools import partial

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones.clip import create_clip, register_configs
from ..backbones.vit import ClipViT, block_forward
from ..hub import ModelSpec, WeightSource
from ..losses.criterion import SetCriterion
from ..losses.matcher import HungarianMatcher
from ..vocab import Vocabulary, reduce_synonyms
from .base import Protocol, SegModel
from .san_side import SideAdapter, SideConfig

SOS_MASK = -100.0     # additive attention mask value SAN uses for "blocked"
TTA_SIZES = (320, 480, 640, 800, 960, 1120)


def recognition_attn_mask(bias: torch.Tensor) -> torch.Tensor:
    """Additive attention mask of the recognition head.

    ``bias`` [B, heads, Q, L] (the side network's bias on the CLIP grid of L
    patches) -> [B, heads, Q+1+L, Q+1+L] over the sequence [SOS x Q, CLS,
    patches]: every column of an SOS token is -100 except its own diagonal
    (0); SOS -> CLS is -100; SOS -> patch carries ``bias``; CLS and patches
    attend to CLS and patches freely (0), as in plain CLIP.
    """
    b, h, q, n = bias.shape
    size = q + 1 + n
    mask = bias.new_zeros(size, size)
    mask[:, :q] = SOS_MASK
    idx = torch.arange(q, device=bias.device)
    mask[idx, idx] = 0.0
    mask[:q, q] = SOS_MASK
    mask = mask.expand(b, h, size, size).clone()
    mask[:, :, :q, q + 1:] = bias
    return mask


class SAN(SegModel):
    """SAN model. ``clip`` is the whole open_clip model (its text tower encodes
    the vocabulary); ``side`` the side adapter network; ``bg_embed`` the
    learnable no-object row of the classifier."""

    template_set = "vild"
    text_average = "normalized"

    def __init__(self, clip_arch: str, clip_weights: str | None = None, split: int = 9,
                 clip_resolution: float = 0.5, side: SideConfig = SideConfig(), quick_gelu: bool = True,
                 loss_weights: dict | None = None, no_object_weight: float = 0.1,
                 train_points: int = 112 * 112, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75):
        super().__init__()
        if clip_weights is None:  # random init, no fingerprinting of the whole model
            register_configs()
            clip = open_clip.create_model(clip_arch, pretrained=None, force_quick_gelu=quick_gelu,
                                          device=torch.get_default_device())  # "meta" for counting
            self._tokenizer = open_clip.get_tokenizer(clip_arch)
        else:
            clip, self._tokenizer, _ = create_clip(clip_arch, clip_weights, quick_gelu=quick_gelu)
        self.clip = clip
        self.clip_arch = clip_arch
        vit = ClipViT(clip.visual)
        object.__setattr__(self, "vit", vit)   # a view on clip.visual, not a second set of keys
        if not 0 < split < vit.num_layers:
            raise ValueError(f"split must be in 1..{vit.num_layers - 1}, got {split}")
        if side.bias_heads != vit.heads:
            raise ValueError(f"side bias_heads={side.bias_heads} but CLIP blocks have {vit.heads} heads")
        bad = [i for i in side.fusion_map.values() if not 0 <= i <= split]
        if bad:
            raise ValueError(f"fusion reads CLIP features {bad}, only 0..{split} exist before the split")
        self.split = split
        self.clip_resolution = clip_resolution
        self.side = SideAdapter(side, vit.width)
        dim = vit.output_dim
        self.bg_embed = nn.Parameter(torch.randn(1, dim) * dim ** -0.5)
        weights = loss_weights or {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
        matcher = HungarianMatcher(weights["loss_ce"], weights["loss_mask"], weights["loss_dice"], train_points)
        self.criterion = SetCriterion(matcher, weights, no_object_weight, train_points, oversample_ratio,
                                      importance_sample_ratio)
        self.protocol = Protocol(short_side=640, max_side=2560, mode="whole", size_divisibility=32)
        self._text_ident: str | None = None
        self.freeze_clip()

    # --- parameters ------------------------------------------------------
    def freeze_clip(self) -> None:
        """Trainable: side network, CLIP's visual positional embedding, bg_embed."""
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.visual.positional_embedding.requires_grad_(True)

    def param_groups(self, cfg: dict | None = None) -> list[dict]:
        """AdamW groups as in SAN's ``build_optimizer``: weight decay
        ``optim.weight_decay`` except 0 (``optim.weight_decay_embed``) for
        ``nn.LayerNorm`` weights and position / query embeddings."""
        optim = (cfg or {}).get("optim", {}) if isinstance(cfg, dict) else {}
        wd = float(optim.get("weight_decay", 1e-4))
        wd_zero = float(optim.get("weight_decay_embed", 0.0))
        decay, no_decay = [], []
        for mname, module in self.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                embed = any(k in pname for k in ("pos_embed", "positional_embedding", "query_embed"))
                (no_decay if embed or isinstance(module, nn.LayerNorm) else decay).append(p)
        return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": wd_zero}]

    # --- text side -------------------------------------------------------
    def text_tower(self):
        if self._text_ident is None:
            h = hashlib.sha256()
            for name, t in sorted(self.clip.state_dict().items()):
                if not name.startswith("visual."):
                    h.update(name.encode())
                    h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            self._text_ident = f"san:{self.clip_arch}:text:{h.hexdigest()[:16]}"
        return self.clip, self._tokenizer, self._text_ident

    def reset_text_cache(self) -> None:
        super().reset_text_cache()
        self._text_ident = None

    # --- image side ------------------------------------------------------
    def forward_features(self, images: torch.Tensor, decode_all: bool = False):
        """Normalised images [B, 3, H, W] (H, W multiples of the side patch) ->
        (mask logits list of [B, Q, H/p, W/p], mask embeddings list of [B, Q, D]),
        one entry per decoded side block (all deep-supervision blocks when
        ``decode_all``, else the last)."""
        clip_in = images
        if self.clip_resolution != 1.0:
            clip_in = F.interpolate(images, scale_factor=self.clip_resolution, mode="bilinear")
        tokens, grid = self.vit.embed(clip_in)
        wanted = tuple(sorted(set(self.side.clip_indices) | {self.split}))
        x, feats = self.vit.forward_blocks(tokens, 0, self.split, collect=wanted)
        b, _, c = x.shape
        maps = {i: feats[i][:, 1:].transpose(1, 2).reshape(b, c, *grid) for i in self.side.clip_indices}
        masks, biases = self.side(images, maps, decode_all=decode_all)
        embs = [self.recognize(x, grid, bias) for bias in biases]
        return masks, embs

    def recognize(self, x: torch.Tensor, grid: tuple[int, int], bias: torch.Tensor) -> torch.Tensor:
        """Recognition head. ``x`` [B, 1+h*w, C] CLIP tokens at the split,
        ``bias`` [B, heads, Q, H', W'] -> unit mask embeddings [B, Q, D]."""
        b, heads, q, hs, ws = bias.shape
        bias = F.adaptive_max_pool2d(bias.reshape(b, heads * q, hs, ws), grid)
        mask = recognition_attn_mask(bias.reshape(b, heads, q, grid[0] * grid[1])).to(x.dtype)
        y = torch.cat([x[:, :1].expand(-1, q, -1), x], dim=1)
        for block in self.vit.blocks[self.split:]:
            y = block_forward(block, y, mask)
        return F.normalize(self.vit.head(y[:, :q]), dim=-1)

    def encode_image(self, images: torch.Tensor) -> dict:
        """-> dict(mask_logits [B, Q, H/16, W/16], mask_emb [B, Q, D] unit norm,
        size (H, W) of the padded input)."""
        masks, embs = self.forward_features(images)
        return {"mask_logits": masks[-1], "mask_emb": embs[-1], "size": tuple(images.shape[-2:])}

    def class_logits(self, emb: torch.Tensor, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """``emb`` [B, Q, D], ``text`` [S, D] synonym embeddings -> [B, Q, C+1]
        logits (class = max over its synonyms; last column = no object)."""
        cls = F.normalize(torch.cat([text.to(emb), self.bg_embed.to(emb)], dim=0), dim=-1)
        logits = self.clip.logit_scale.exp() * emb @ cls.T
        per_class = reduce_synonyms(logits[..., :-1], vocab.synonym_index, len(vocab), dim=-1)
        return torch.cat([per_class, logits[..., -1:]], dim=-1)

    def classify(self, features: dict, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, C, H, W] semantic scores at the padded input size."""
        prob = self.class_logits(features["mask_emb"], text, vocab).softmax(-1)[..., :-1]
        masks = F.interpolate(features["mask_logits"], size=features["size"], mode="bilinear",
                              align_corners=False).sigmoid()
        return torch.einsum("bqc,bqhw->bchw", prob, masks)

    # --- training --------------------------------------------------------
    def forward_train(self, batch: list[dict], vocab: Vocabulary) -> dict[str, torch.Tensor]:
        """Weighted losses for a batch of training items (``image`` float
        [3, H, W] in 0..1, ``sem_seg`` LongTensor[H, W] with the ignore label
        ``ignore_index`` (default 255)); one target mask per class present."""
        from ..data.transforms import sem_seg_to_masks
        from ..engine.inference import normalize, pad_to_multiple
        device = self.bg_embed.device
        div = self.protocol.size_divisibility
        h = max(item["image"].shape[-2] for item in batch)
        w = max(item["image"].shape[-1] for item in batch)
        h, w = -(-h // div) * div, -(-w // div) * div
        images, targets = [], []
        for item in batch:
            img = normalize(item["image"].to(device, torch.float32)[None], self.protocol)[0]
            images.append(F.pad(img, (0, w - img.shape[-1], 0, h - img.shape[-2])))
            t = sem_seg_to_masks(item["sem_seg"].to(device), item.get("ignore_index", 255))
            if t["labels"].numel() and int(t["labels"].max()) >= len(vocab):
                raise ValueError(f"sem_seg holds class {int(t['labels'].max())}, vocabulary has {len(vocab)}")
            targets.append(t)
        with torch.no_grad():
            text = self.text_encoder()(vocab).to(device)
        masks, embs = self.forward_features(torch.stack(images), decode_all=True)
        logits = [self.class_logits(e, text, vocab) for e in embs]
        outputs = {"pred_logits": logits[-1], "pred_masks": masks[-1],
                   "aux_outputs": [{"pred_logits": l, "pred_masks": m} for l, m in zip(logits[:-1], masks[:-1])]}
        return self.criterion.weighted(self.criterion(outputs, targets))

    def train_transform(self, cfg: dict | None = None):
        return train_transform(cfg)


def train_transform(cfg: dict | None = None):
    """SAN's training augmentation (``data`` section of a config: ``crop_size``
    640, ``short_sizes`` {320, 384, ..., 960}, ``max_size`` 2560,
    ``cat_max_ratio`` 1.0, ``color_aug`` true) -> callable item -> training item
    (``image`` float [3, H, W] in 0..1, ``sem_seg``)."""
    from ..data.transforms import semantic_train_transform
    data = (cfg or {}).get("data", {}) if isinstance(cfg, dict) else {}
    aug = semantic_train_transform(crop_size=int(data.get("crop_size", 640)),
                                   short_sizes=data.get("short_sizes"),
                                   max_size=int(data.get("max_size", 2560)),
                                   cat_max_ratio=float(data.get("cat_max_ratio", 1.0)),
                                   color=bool(data.get("color_aug", True)))

    def apply(item: dict) -> dict:
        out = aug(item)
        out["image"] = out["image"].float() / 255.0
        return out
    return apply


@torch.no_grad()
def segment_tta(model: SAN, image: torch.Tensor, vocab: Vocabulary, text: torch.Tensor | None = None,
                sizes=TTA_SIZES, max_side: int = 4480, flip: bool = True) -> torch.Tensor:
    """Test-time augmentation (off by default): mean of the [C, H, W] scores over
    short sides ``sizes`` (long side <= ``max_side``), each also horizontally flipped."""
    from ..engine.inference import infer
    text = model.text_encoder()(vocab) if text is None else text
    total, n = None, 0
    for s in sizes:
        proto = dataclasses.replace(model.protocol, short_side=s, max_side=max_side)
        for flipped in ((False, True) if flip else (False,)):
            img = image.flip(-1) if flipped else image
            out = infer(model, img, text, vocab, proto)
            out = out.flip(-1) if flipped else out
            total = out if total is None else total + out
            n += 1
    return total / n


# --- presets -------------------------------------------------------------------
def _build(clip_arch: str, split: int, fusion: dict, heads: int, resolution: float, side: dict | None = None,
           clip_weights: str | None = None, **kw) -> SAN:
    cfg = SideConfig(**{**dict(fusion_map=fusion, bias_heads=heads), **(side or {})})
    return SAN(clip_arch, clip_weights, split=split, clip_resolution=resolution, side=cfg, **kw)


def _preset(name: str, **fixed):
    def build(**overrides) -> SAN:
        model = _build(**{**fixed, **overrides})
        model.config = {"preset": name, **overrides}
        return model
    return build


build_san_vit_b16 = _preset("san-vit-b16", clip_arch="ViT-B-16", split=9, heads=12, resolution=0.5,
                            fusion={0: 0, 1: 3, 2: 6, 3: 9})
build_san_vit_l14 = _preset("san-vit-l14", clip_arch="ViT-L-14-336", split=18, heads=16, resolution=0.7,
                            fusion={0: 0, 1: 6, 2: 12, 3: 18})
build_san_tiny = _preset("san-tiny", clip_arch="tiny-vit", split=2, heads=3, resolution=0.5,
                         fusion={0: 0, 1: 1, 2: 2}, quick_gelu=False, train_points=32 * 32,
                         side=dict(width=32, depth=3, heads=2, image_size=64, num_queries=8,
                                   deep_supervision=(2, 3), embed_channels=24, mlp_channels=24))

PRESETS = {
    "san-vit-b16": ModelSpec(
        "san-vit-b16", "san", build_san_vit_b16,
        "SAN with CLIP ViT-B/16 (OpenAI), trained on COCO-Stuff 171",
        weights=WeightSource(filename="san_vit_b_16.pth", repo_id="Mendel192/san"),
        clip=("ViT-B-16", "openai"),
        published={"ade847": 10.1, "pc459": 12.6, "ade150": 27.5, "pc59": 53.8, "voc20": 94.0}),
    "san-vit-l14": ModelSpec(
        "san-vit-l14", "san", build_san_vit_l14,
        "SAN with CLIP ViT-L/14 at 336 px (OpenAI), trained on COCO-Stuff 171",
        weights=WeightSource(filename="san_vit_large_14.pth", repo_id="Mendel192/san"),
        clip=("ViT-L-14-336", "openai"),
        published={"ade847": 12.4, "pc459": 15.7, "ade150": 32.1, "pc59": 57.7, "voc20": 94.6}),
    "san-tiny": ModelSpec("san-tiny", "san", build_san_tiny, "tiny random SAN for tests",
                          clip=("tiny-vit", None), test_only=True),
}

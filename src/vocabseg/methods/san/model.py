"""SAN — Side Adapter Network (Xu et al., CVPR 2023) on a frozen open_clip ViT.

Data flow for normalised images [B, 3, H, W] padded to a multiple of 32:

1. CLIP sees the image bilinearly rescaled by ``clip_resolution`` (0.5 for
   B/16, 0.7 for L/14); its first ``split`` blocks give tokens at feature
   indices 0 (after ``ln_pre``) .. ``split``.
2. The side adapter (``san_side.SideAdapter``) reads the full image, fuses
   CLIP feature maps, and predicts Q mask logits [B, Q, H/16, W/16] and an
   attention bias [B, heads, Q, H/16, W/16].
3. The recognition head — CLIP's remaining blocks, ``ln_post`` and ``proj`` —
   runs [SOS x Q, CLS, patches] with the bias (max-pooled to the CLIP grid)
   injected into the SOS rows of the attention (``ClipViT.forward_sos``); the
   SOS outputs are the mask embeddings [B, Q, D], L2-normalised.
4. ``classify_at``: logits = exp(logit_scale) * cos(mask embedding, [text; bg]),
   softmax over C+1, drop the no-object column; mask logits upsampled to the
   padded input, cropped, resized, sigmoid; scores = sum_q p(q, c) * m_q.

Steps 1-3 do not depend on the vocabulary (``encode_image``); step 4 is a
few matrix products.
"""
from __future__ import annotations

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...backbones.clip import create_clip, register_configs, tensor_fingerprint
from ...backbones.vit import ClipViT
from ...hub import ModelSpec, WeightSource
from ...layers.mask_semantic import mask_semantic
from ...losses.criterion import SetCriterion
from ...losses.matcher import HungarianMatcher
from ...vocab import Vocabulary, per_class_keep_last
from ...model import NORM_TYPES, SegModel
from ...protocol import Protocol
from .side import SideAdapter, SideConfig

# SAN's build_optimizer: weight decay ``weight_decay_embed`` for parameters whose
# name holds one of these (SOLVER.WEIGHT_DECAY_EMBED_GROUP) and
# ``weight_decay_norm`` for ``base.NORM_TYPES`` (detectron2's norm_module_types).
EMBED_NAMES = ("absolute_pos_embed", "positional_embedding", "pos_embed", "query_embed",
               "relative_position_bias_table")
TRANSFORM_KEYS = ("crop_size", "short_sizes", "max_size", "cat_max_ratio", "color_aug", "ignore_index")


class SAN(SegModel):
    """SAN model. ``clip`` is the whole open_clip model (its text tower encodes
    the vocabulary), ``side`` the side adapter network, ``bg_embed`` the
    learnable no-object row of the classifier."""

    template_set = "vild"
    text_average = "normalized"

    def __init__(self, clip_arch: str, clip_weights: str | None = None, split: int = 9,
                 clip_resolution: float = 0.5, side: SideConfig = SideConfig(), quick_gelu: bool = True,
                 loss_weights: dict | None = None, no_object_weight: float = 0.1,
                 train_points: int = 112 * 112, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75):
        super().__init__()
        if clip_weights is None:  # random init (a published SAN file brings its own CLIP)
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
        w = loss_weights or {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
        matcher = HungarianMatcher(w["loss_ce"], w["loss_mask"], w["loss_dice"], train_points)
        self.criterion = SetCriterion(matcher, w, no_object_weight, train_points, oversample_ratio,
                                      importance_sample_ratio)
        self.protocol = Protocol(short_side=640, max_side=2560, mode="whole", size_divisibility=32, resize="pil")
        self._text_ident: str | None = None
        self.freeze_clip()

    # --- parameters ------------------------------------------------------
    def freeze_clip(self) -> None:
        """Trainable: side network, CLIP's visual positional embedding, bg_embed."""
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.visual.positional_embedding.requires_grad_(True)

    def param_groups(self, cfg: dict | None = None) -> list[dict]:
        """AdamW groups of SAN's ``build_optimizer`` from the ``optim`` section
        (or a whole config): ``lr``; weight decay ``weight_decay`` (1e-4), but
        ``weight_decay_embed`` (0) for position / query embeddings
        (``EMBED_NAMES``) and ``weight_decay_norm`` (0) for torch norm layers.
        As published, ``bg_embed``, biases and the fusion layers' channel
        LayerNorm (not a torch norm module) are decayed. CLIP is frozen first
        (only its visual positional embedding trains)."""
        optim = _section(cfg, "optim")
        self.freeze_clip()
        decay = {"default": float(optim.get("weight_decay", 1e-4)),
                 "embed": float(optim.get("weight_decay_embed", 0.0)),
                 "norm": float(optim.get("weight_decay_norm", 0.0))}
        groups: dict[str, list] = {k: [] for k in decay}
        for _, module in self.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                kind = "embed" if any(k in name for k in EMBED_NAMES) else "default"
                groups["norm" if isinstance(module, NORM_TYPES) else kind].append(p)
        lr = float(optim.get("lr", 1e-4))
        return [{"name": k, "params": ps, "lr": lr, "weight_decay": decay[k]} for k, ps in groups.items() if ps]

    # --- text side -------------------------------------------------------
    def text_tower(self):
        if self._text_ident is None:
            self._text_ident = f"san:{self.clip_arch}:text:{tensor_fingerprint(self.clip, exclude=('visual.',))}"
        return self.clip, self._tokenizer, self._text_ident

    def reset_text_cache(self) -> None:
        super().reset_text_cache()
        self._text_ident = None

    # --- image side ------------------------------------------------------
    def forward_features(self, images: torch.Tensor, decode_all: bool = False):
        """Normalised images [B, 3, H, W] (H, W multiples of the side patch) ->
        (mask logits list of [B, Q, H/p, W/p], unit mask embeddings list of
        [B, Q, D]), one entry per decoded side block (all deep-supervision
        blocks when ``decode_all``, else the last)."""
        clip_in = images
        if self.clip_resolution != 1.0:
            clip_in = F.interpolate(images, scale_factor=self.clip_resolution, mode="bilinear")
        tokens, grid = self.vit.embed(clip_in)
        wanted = tuple(sorted(set(self.side.clip_indices) | {self.split}))
        x, feats = self.vit.forward_blocks(tokens, 0, self.split, collect=wanted)
        b, _, c = x.shape
        maps = {i: feats[i][:, 1:].transpose(1, 2).reshape(b, c, *grid) for i in self.side.clip_indices}
        masks, biases = self.side(images, maps, decode_all=decode_all)
        return masks, [self.recognize(x, grid, bias) for bias in biases]

    def recognize(self, x: torch.Tensor, grid: tuple[int, int], bias: torch.Tensor) -> torch.Tensor:
        """Recognition head. ``x`` [B, 1+h*w, C] CLIP tokens at the split,
        ``bias`` [B, heads, Q, H', W'] on the side grid -> unit mask embeddings [B, Q, D]."""
        b, heads, q, hs, ws = bias.shape
        bias = F.adaptive_max_pool2d(bias.reshape(b, heads * q, hs, ws), grid)
        sos = self.vit.forward_sos(x, self.split, bias.reshape(b, heads, q, grid[0] * grid[1]))
        return F.normalize(self.vit.head(sos), dim=-1)

    def encode_image(self, images: torch.Tensor) -> dict:
        """-> dict(mask_logits [B, Q, H/16, W/16], mask_emb [B, Q, D] unit norm,
        size (H, W) of the padded input)."""
        masks, embs = self.forward_features(images)
        return {"mask_logits": masks[-1], "mask_emb": embs[-1], "size": tuple(images.shape[-2:])}

    def class_logits(self, emb: torch.Tensor, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """``emb`` [B, Q, D], ``text`` [S, D] synonym embeddings -> [B, Q, C+1]
        logits (class = max over its synonyms; last column = no object)."""
        cls = F.normalize(torch.cat([text.to(emb), self.bg_embed.to(emb)], dim=0), dim=-1)
        return per_class_keep_last(emb @ (self.clip.logit_scale.exp() * cls).T, vocab)

    def classify_at(self, features: dict, text: torch.Tensor, vocab: Vocabulary,
                    crop: tuple[int, int] | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
        """[B, C, *size] semantic scores: mask logits upsampled (bilinear) to the
        padded input, cropped to ``crop`` (the image before padding), resized
        (bilinear) to ``size``, then sigmoid and sum_q p(q, c) m_q — the order of
        SAN's ``sem_seg_postprocess`` before ``semantic_inference``."""
        prob = self.class_logits(features["mask_emb"], text, vocab).softmax(-1)[..., :-1]
        return mask_semantic(prob, features["mask_logits"], features["size"], crop, size)

    def classify(self, features: dict, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, C, H, W] semantic scores at the padded input size."""
        return self.classify_at(features, text, vocab)

    # --- training --------------------------------------------------------
    def forward_train(self, batch: list[dict], vocab: Vocabulary,
                      text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Weighted losses (main + deep supervision) for training items: ``image``
        float [3, H, W] in 0..1 (or uint8), ``sem_seg`` LongTensor[H, W] with ``ignore_index``
        (default 255); one target mask per class present, padded like the image.
        ``text`` [S, D] overrides the vocabulary's embeddings (default: the text encoder)."""
        from ...data.transforms import sem_seg_to_masks
        from ...protocol import normalize
        device = self.bg_embed.device
        div = self.protocol.size_divisibility
        h = -(-max(item["image"].shape[-2] for item in batch) // div) * div
        w = -(-max(item["image"].shape[-1] for item in batch) // div) * div
        images, targets = [], []
        for item in batch:
            img = item["image"].to(device)
            img = img.float() / 255.0 if not img.is_floating_point() else img.float()   # uint8 0..255 or float 0..1
            img = normalize(img[None], self.protocol)[0]
            pad = (0, w - img.shape[-1], 0, h - img.shape[-2])
            images.append(F.pad(img, pad))
            t = sem_seg_to_masks(item["sem_seg"].to(device), item.get("ignore_index", 255))
            if t["labels"].numel() and int(t["labels"].max()) >= len(vocab):
                raise ValueError(f"sem_seg holds class {int(t['labels'].max())}, the vocabulary has {len(vocab)}")
            targets.append({"labels": t["labels"], "masks": F.pad(t["masks"], pad)})
        if text is None:
            with torch.no_grad():
                text = self.text_encoder()(vocab)
        text = text.to(device)
        masks, embs = self.forward_features(torch.stack(images), decode_all=True)
        logits = [self.class_logits(e, text, vocab) for e in embs]
        outputs = {"pred_logits": logits[-1], "pred_masks": masks[-1],
                   "aux_outputs": [{"pred_logits": lg, "pred_masks": m} for lg, m in zip(logits[:-1], masks[:-1])]}
        return self.criterion.weighted(self.criterion(outputs, targets))

    def train_transform(self, cfg: dict | None = None):
        """The published augmentation (see ``train_transform``)."""
        return train_transform(cfg)


def _section(cfg: dict | None, name: str) -> dict:
    """``cfg[name]`` when ``cfg`` is a whole config holding that section, else ``cfg`` itself."""
    cfg = cfg or {}
    return (cfg[name] or {}) if name in cfg else cfg


def train_transform(cfg: dict | None = None):
    """SAN's training augmentation from ``data.transform`` of a config (or that
    dict itself): ``crop_size`` 640, ``short_sizes`` {320, 384, ..., 960},
    ``max_size`` 2560, ``cat_max_ratio`` 1.0, ``color_aug`` true, ``ignore_index``
    255 -> callable item (uint8 ``image``, ``sem_seg``) -> item with ``image``
    float [3, H, W] in 0..1."""
    from ...data.transforms import semantic_train_transform
    t = (_section(cfg, "data").get("transform") or {}) if "data" in (cfg or {}) else (cfg or {})
    unknown = set(t) - set(TRANSFORM_KEYS)
    if unknown:
        raise ValueError(f"unknown SAN transform keys {sorted(unknown)}; known: {', '.join(TRANSFORM_KEYS)}")
    aug = semantic_train_transform(crop_size=int(t.get("crop_size", 640)), short_sizes=t.get("short_sizes"),
                                   max_size=int(t.get("max_size", 2560)),
                                   cat_max_ratio=float(t.get("cat_max_ratio", 1.0)),
                                   color=bool(t.get("color_aug", True)),
                                   ignore_index=int(t.get("ignore_index", 255)))

    def apply(item: dict) -> dict:
        out = aug(item)
        out["image"] = out["image"].float() / 255.0
        return out
    return apply


# --- presets -------------------------------------------------------------------
def _preset(name: str, clip_arch: str, split: int, heads: int, resolution: float, fusion: dict,
            side: dict | None = None, **fixed):
    def build(**overrides) -> SAN:
        kw = {**fixed, **overrides}
        side_cfg = SideConfig(**{"fusion_map": fusion, "bias_heads": heads, **(side or {}), **kw.pop("side", {})})
        model = SAN(kw.pop("clip_arch", clip_arch), kw.pop("clip_weights", None), split=kw.pop("split", split),
                    clip_resolution=kw.pop("clip_resolution", resolution), side=side_cfg, **kw)
        model.config = {"preset": name, **overrides}
        return model
    return build


build_san_vit_b16 = _preset("san-vit-b16", "ViT-B-16", split=9, heads=12, resolution=0.5,
                            fusion={0: 0, 1: 3, 2: 6, 3: 9})
build_san_vit_l14 = _preset("san-vit-l14", "ViT-L-14-336", split=18, heads=16, resolution=0.7,
                            fusion={0: 0, 1: 6, 2: 12, 3: 18})
build_san_tiny = _preset("san-tiny", "tiny-vit", split=2, heads=3, resolution=0.5,
                         fusion={0: 0, 1: 1, 2: 2}, quick_gelu=False, train_points=32 * 32,
                         side=dict(width=32, depth=3, heads=2, patch_size=8, image_size=64, num_queries=8,
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

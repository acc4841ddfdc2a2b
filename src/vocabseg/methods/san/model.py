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

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...backbones.clip import create_clip, tensor_fingerprint
from ...backbones.vit import ClipViT
from ...data.transforms import sem_seg_to_masks, semantic_train_transform
from ...layers.mask_semantic import mask_semantic
from ...losses.criterion import mask_criterion
from ...model import NORM_TYPES, SegModel, grouped_parameters
from ...protocol import Protocol
from ...vocab import Vocabulary, per_class_keep_last
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
        # random init when clip_weights is None (a published SAN file brings its own CLIP)
        clip, self._tokenizer, _ = create_clip(clip_arch, clip_weights, quick_gelu=quick_gelu, fingerprint=False)
        self.clip = clip
        self.clip_arch = clip_arch
        vit = self.attach("vit", ClipViT(clip.visual))
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
        self.criterion = mask_criterion(loss_weights, no_object_weight, train_points, oversample_ratio,
                                        importance_sample_ratio)
        self.protocol = Protocol(short_side=640, max_side=2560, mode="whole", size_divisibility=32, resize="pil")
        self.freeze_clip()

    # --- parameters ------------------------------------------------------
    def freeze_clip(self) -> None:
        """Trainable: side network, CLIP's visual positional embedding, bg_embed."""
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.visual.positional_embedding.requires_grad_(True)

    def set_activation_checkpointing(self, on: bool) -> None:
        """Gradients reach the visual positional embedding through every CLIP block before the
        split: with ``on`` those blocks' activations are recomputed in backward."""
        self.vit.checkpointing = bool(on)

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
        groups = grouped_parameters(self, lambda module, name: "norm" if isinstance(module, NORM_TYPES) else
                                    "embed" if any(k in name for k in EMBED_NAMES) else "default", tuple(decay))
        lr = float(optim.get("lr", 1e-4))
        return [{"name": k, "params": ps, "lr": lr, "weight_decay": decay[k]} for k, ps in groups.items() if ps]

    # --- text side -------------------------------------------------------
    def text_parts(self):
        return self.clip, self._tokenizer

    def text_identity(self) -> str:
        return f"san:{self.clip_arch}:text:{tensor_fingerprint(self.clip, exclude=('visual.',))}"

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
                    crop: tuple[int, int] | None = None, size: tuple[int, int] | None = None,
                    rows: tuple[int, int] | None = None) -> torch.Tensor:
        """[B, C, *size] semantic scores: mask logits upsampled (bilinear) to the
        padded input, cropped to ``crop`` (the image before padding), resized
        (bilinear) to ``size``, then sigmoid and sum_q p(q, c) m_q — the order of
        SAN's ``sem_seg_postprocess`` before ``semantic_inference``. ``rows``: only those."""
        prob = self.class_logits(features["mask_emb"], text, vocab).softmax(-1)[..., :-1]
        return mask_semantic(prob, features["mask_logits"], features["size"], crop, size, rows)

    def classify(self, features: dict, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, C, H, W] semantic scores at the padded input size."""
        return self.classify_at(features, text, vocab)

    # --- training --------------------------------------------------------
    def loss_totals(self, batch: list[dict]) -> dict[str, float]:
        """The criterion's normalisers (``SetCriterion.totals``): one target mask per class present."""
        counts = []
        for item in batch:
            present = torch.unique(item["sem_seg"])
            counts.append(int((present != item.get("ignore_index", 255)).sum()))
        return self.criterion.totals(counts, self.side.query_embed.shape[1])

    def forward_train(self, batch: list[dict], vocab: Vocabulary,
                      text: torch.Tensor | None = None, norm: dict | None = None) -> dict[str, torch.Tensor]:
        """Weighted losses (main + deep supervision) for training items: ``image``
        float [3, H, W] in 0..1 (or uint8), ``sem_seg`` LongTensor[H, W] with ``ignore_index``
        (default 255); one target mask per class present, padded like the image.
        ``text`` [S, D] overrides the vocabulary's embeddings (default: the text encoder);
        ``norm``: the step's normalisers under gradient accumulation (``SegModel.loss_totals``)."""
        device = self.device
        images, pads = self.training_images(batch)
        targets = []
        for item, pad in zip(batch, pads):
            t = sem_seg_to_masks(item["sem_seg"].to(device), item.get("ignore_index", 255))
            if t["labels"].numel() and int(t["labels"].max()) >= len(vocab):
                raise ValueError(f"sem_seg holds class {int(t['labels'].max())}, the vocabulary has {len(vocab)}")
            targets.append({"labels": t["labels"], "masks": F.pad(t["masks"], pad)})
        if text is None:
            with torch.no_grad():
                text = self.text_encoder()(vocab)
        text = text.to(device)
        masks, embs = self.forward_features(images, decode_all=True)
        logits = [self.class_logits(e, text, vocab) for e in embs]
        outputs = {"pred_logits": logits[-1], "pred_masks": masks[-1],
                   "aux_outputs": [{"pred_logits": lg, "pred_masks": m} for lg, m in zip(logits[:-1], masks[:-1])]}
        losses = self.criterion(outputs, targets) if norm is None else self.criterion(outputs, targets, norm)
        return self.criterion.weighted(losses)

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

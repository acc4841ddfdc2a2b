"""SegCLIP (Luo et al., ICML 2023): patch aggregation with learnable centers.

A CLIP ViT whose class token is dropped; the patch tokens pass the first
``split`` blocks (10 of 12 for ViT-B/16), a semantic group module
(``segclip_group.SemanticGroup``) turns them into L = 8 region tokens, and the
last blocks see only the regions. The image token is the element-wise max over
the regions, then ``ln_post`` and ``proj``.

Inference (one window, as published): the soft assignment [B, L, h, w] is
resized bilinearly to the window, each pixel takes its argmax region (one-hot);
each region scores the classes with softmax(s · region · text) restricted to
the image's top-5 classes and multiplied by the unrestricted softmax; a pixel's
class scores are its region's. With a background class, pixels whose best score
is below min(bg_thresh, best region score) get background score 1 (others 0).
Thresholds per dataset are in ``BG_THRESH``.

Training (``forward_train``) returns the three losses of ``losses.segclip``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...backbones.clip import tensor_fingerprint
from ...backbones.vit import ClipViT
from ...data.benchmarks import BENCHMARKS
from ...data.captions import CaptionTransform
from ...model import SegModel
from ...protocol import Protocol
from ...text import encode_text_tokens
from ...vocab import Vocabulary, reduce_synonyms
from . import losses as L
from .group import SemanticGroup, reconstruct_patches

BG_THRESH = {"voc21": 0.80, "pc60": 0.25, "coco-object": 0.65}

# Parameters the published recipe does not train.
FROZEN = ("clip.visual.conv1.", "clip.visual.class_embedding", "clip.visual.positional_embedding",
          "clip.visual.ln_pre.", "clip.token_embedding.", "clip.positional_embedding")
# Parameters trained with the lower learning rate (the rest of CLIP except its last vision blocks).
LOWER_LR = ("clip.visual.transformer.resblocks.", "clip.transformer.", "clip.ln_final.", "clip.text_projection",
            "clip.logit_scale")


@dataclass
class SegCLIPFeatures:
    """Vocabulary-independent output of ``encode_image`` for B windows. The pixels' regions
    (``assign``, a hard argmax) are taken on first use rather than in ``encode_image``, so
    an exported image side holds only continuous outputs (see the README's Export bullet)."""
    soft: torch.Tensor      # [B, L, h, w]: soft assignment on the patch grid
    regions: torch.Tensor   # [B, L, D]: unit-norm projected region embeddings
    image: torch.Tensor     # [B, D]: unit-norm projected image embedding
    size: tuple[int, int]   # (H, W) of the window

    @cached_property
    def assign(self) -> torch.Tensor:
        """LongTensor [B, H, W]: region of each pixel (argmax of the soft assignment resized bilinearly)."""
        return F.interpolate(self.soft, size=tuple(self.size), mode="bilinear", align_corners=False).argmax(1)


class SegCLIP(SegModel):
    template_set = "single"
    text_average = "raw"
    region_groups = True

    def __init__(self, clip, tokenizer, split: int, arch: str = "", num_centers: int = 8, cross_layers: int = 2, tau: float = 0.9,
                 topk: int = 5, bg_thresh: float = 0.80, mask_ratio: float = 0.75, decoder_depth: int = 3,
                 decoder_heads: int = 8, caption_length: int = 32, loss_weights: dict | None = None,
                 protocol: Protocol | None = None):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.arch = arch     # open_clip architecture name: part of the text-cache identity (activation, sizes)
        vit = self.attach("vit", ClipViT(clip.visual))
        if not 0 < split < vit.num_layers:
            raise ValueError(f"split must lie in 1..{vit.num_layers - 1}, got {split}")
        self.split, self.topk, self.bg_thresh = split, topk, bg_thresh
        self.mask_ratio, self.caption_length = mask_ratio, caption_length
        self.group = SemanticGroup(vit.width, num_centers, vit.heads, cross_layers, tau)
        self.reconstruct = nn.Linear(num_centers, num_centers)
        self.mae_blocks = copy.deepcopy(vit.blocks[split:])
        for block in self.mae_blocks:
            _reinit_block(block)
        grid = clip.visual.positional_embedding.shape[0] - 1
        self.decoder = L.MaskedDecoder(vit.width, vit.width // 2, round(grid ** 0.5), vit.patch_size,
                                       decoder_depth, decoder_heads)
        self.loss_weights = {"contrastive": 1.0, "reconstruction": 1.0, "superpixel": 1.0}
        unknown = set(loss_weights or {}) - set(self.loss_weights)
        if unknown:
            raise ValueError(f"unknown SegCLIP losses {sorted(unknown)}; known: {', '.join(self.loss_weights)}")
        self.loss_weights.update({k: float(v) for k, v in (loss_weights or {}).items()})
        self.protocol = protocol or Protocol(short_side=224, max_side=2048, mode="slide", window=224, stride=224,
                                             size_divisibility=vit.patch_size, resize="cv2")

    # --- text ------------------------------------------------------------------
    def text_parts(self):
        return self.clip, self.tokenizer

    def text_identity(self) -> str:   # SegCLIP trains its text tower: name the weights by their content
        text = {k: v for k, v in self.clip.state_dict().items() if not k.startswith("visual.")}
        holder = nn.Module()
        for i, (k, v) in enumerate(sorted(text.items())):
            holder.register_buffer(f"t{i}", v)
        return f"segclip:{self.arch}:{tensor_fingerprint(holder)}"

    def set_dataset(self, name: str) -> None:
        """Use the published background threshold of benchmark ``name`` (voc21, pc60,
        coco-object). Datasets without a background class need none (no change)."""
        if name in BG_THRESH:
            self.bg_thresh = BG_THRESH[name]
        elif name in BENCHMARKS and BENCHMARKS[name].background is not None:
            raise ValueError(f"no SegCLIP background threshold for {name!r}; known: {', '.join(BG_THRESH)}")

    # --- image -----------------------------------------------------------------
    def visual(self, images: torch.Tensor, noise: bool = False):
        """Normalised images [B, 3, H, W] -> (regions [B, L, C] after the last
        blocks, image token [B, C], hard [B, L, N], soft [B, L, N], grid (h, w))."""
        x, grid = self.vit.embed(images)
        x, _ = self.vit.forward_blocks(x[:, 1:], 0, self.split)
        regions, hard, soft = self.group(x, noise=noise)
        regions, _ = self.vit.forward_blocks(regions, self.split)
        return regions, regions.max(dim=1).values, hard, soft, grid

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> SegCLIPFeatures:
        regions, image, _, soft, grid = self.visual(images, noise=False)
        soft = soft.reshape(soft.shape[0], soft.shape[1], *grid)
        return SegCLIPFeatures(soft, F.normalize(self.vit.head(regions), dim=-1),
                               F.normalize(self.vit.head(image), dim=-1), tuple(images.shape[-2:]))

    def groups(self, features: SegCLIPFeatures) -> torch.Tensor:
        """LongTensor [B, H, W]: the region (0..L-1) each pixel is assigned to."""
        return features.assign

    def group_map(self, feats) -> torch.Tensor:
        """LongTensor [H, W] region ids over a whole image from ``engine.inference.encode``
        output (windows pasted at their boxes, then nearest-resized to the original size)."""
        out = torch.zeros(feats.resized, dtype=torch.long)
        for (y0, x0, y1, x1), f in zip(feats.boxes, feats.features):
            out[y0:y1, x0:x1] = self.groups(f)[0, : y1 - y0, : x1 - x0].cpu()
        return F.interpolate(out[None, None].float(), size=feats.size, mode="nearest")[0, 0].long()

    def classify(self, features: SegCLIPFeatures, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """[B, C, H, W] class scores in 0..1 (C = classes of ``vocab``)."""
        num_classes = len(vocab)
        fg = [c for c in range(num_classes) if c != vocab.background]
        syn = vocab.synonym_index.to(text.device)
        text = text.to(features.regions.dtype)
        scale = self.clip.logit_scale.exp().clamp(max=100)
        region = reduce_synonyms(scale * features.regions @ text.t(), syn, num_classes, dim=-1)[..., fg]  # [B, L, F]
        image = reduce_synonyms(scale * features.image @ text.t(), syn, num_classes, dim=-1)[..., fg]     # [B, F]
        top = image.softmax(-1).topk(min(self.topk, len(fg)), dim=-1).indices
        allowed = torch.zeros_like(image, dtype=torch.bool).scatter_(-1, top, True)
        affinity = region.masked_fill(~allowed.unsqueeze(1), float("-inf")).softmax(-1) * region.softmax(-1)
        onehot = F.one_hot(features.assign, affinity.shape[1]).to(affinity.dtype)             # [B, H, W, L]
        pixel = torch.einsum("bhwl,blf->bfhw", onehot, affinity)
        b, _, h, w = pixel.shape
        out = pixel.new_zeros(b, num_classes, h, w)
        out[:, fg] = pixel
        if vocab.background is not None:
            thresh = affinity.flatten(1).max(1).values.clamp(max=self.bg_thresh).view(b, 1, 1)
            out[:, vocab.background] = (pixel.max(1).values < thresh).to(out.dtype)
        return out

    # --- training --------------------------------------------------------------
    def train_transform(self, cfg: dict | None = None):
        """Dataset item (uint8 image + caption) -> training item (see ``data.captions``).
        ``cfg``: the training config; options from ``data.transform`` (size, scale,
        superpixels, sp_short_side, sp_scale, sp_sigma, sp_min_size)."""
        opts = dict(((cfg or {}).get("data") or {}).get("transform") or {})
        opts.setdefault("size", round((self.clip.visual.positional_embedding.shape[0] - 1) ** 0.5) * self.vit.patch_size)
        return CaptionTransform(size=int(opts.pop("size")), patch=self.vit.patch_size, **opts)

    def forward_train(self, batch: list[dict], vocab: Vocabulary | None = None) -> dict[str, torch.Tensor]:
        """Losses (weighted by ``loss_weights``) for items with ``image`` float [3, S, S]
        in 0..1, ``caption`` str and, for the superpixel loss, ``superpixels`` [h, w]."""
        device = self.device
        images, _ = self.training_images(batch)
        tokens = self.tokenizer([b["caption"] for b in batch], context_length=self.caption_length).to(device)
        text = encode_text_tokens(self.clip, tokens)
        _, image, hard, _, _ = self.visual(images, noise=True)
        w = self.loss_weights
        losses = {"contrastive": w["contrastive"] * L.contrastive_loss(text, self.vit.head(image),
                                                                     self.clip.logit_scale)}
        if w["superpixel"]:
            if any("superpixels" not in b for b in batch):
                raise ValueError("the superpixel loss needs 'superpixels' in every item (CaptionTransform "
                                 "with superpixels=True), or set loss_weights['superpixel'] = 0")
            sp = torch.stack([b["superpixels"] for b in batch]).to(device)
            losses["superpixel"] = w["superpixel"] * L.superpixel_kl(hard, sp)
        if w["reconstruction"]:
            losses["reconstruction"] = w["reconstruction"] * self.reconstruction(images)
        return losses

    def reconstruction(self, images: torch.Tensor) -> torch.Tensor:
        """Masked pass (75% of tokens removed) through the shared first blocks and
        the group module, regions mixed back onto the visible patches, the MAE
        blocks, then the decoder; MSE on the removed patches."""
        x, _ = self.vit.embed(images)
        x, mask, ids_restore = L.random_masking(x, self.mask_ratio)
        x, _ = self.vit.forward_blocks(x[:, 1:], 0, self.split)
        regions, hard, _ = self.group(x, noise=True)
        x = reconstruct_patches(self.reconstruct, regions, hard)
        for block in self.mae_blocks:
            x = block(x)
        x = torch.cat([x.mean(1, keepdim=True), x], dim=1)
        return L.reconstruction_loss(self.decoder(x, ids_restore), images, mask, self.vit.patch_size)

    def param_groups(self, cfg: dict) -> list[dict]:
        """Published optimiser groups (``cfg``: the training config, read from its
        ``optim`` section): ``FROZEN`` parameters get requires_grad False;
        ``LOWER_LR`` ones use ``optim.lower_lr`` (4e-6), the rest (group module,
        last vision blocks, ln_post, proj, MAE parts) ``optim.lr`` (4e-3); weight
        decay ``optim.weight_decay`` on everything but biases (as published)."""
        optim = cfg["optim"]
        last = tuple(f"clip.visual.transformer.resblocks.{i}." for i in range(self.split, self.vit.num_layers))
        groups: dict[tuple, list] = {}
        for name, p in self.named_parameters():
            if name.startswith(FROZEN) or name == "decoder.decoder_pos_embed":
                p.requires_grad_(False)
                continue
            lower = name.startswith(LOWER_LR) and not name.startswith(last)
            decay = "bias" not in name
            groups.setdefault((lower, decay), []).append(p)
        lower_lr = optim.get("lower_lr", optim["lr"])
        return [{"params": ps, "lr": lower_lr if lower else optim["lr"],
                 "weight_decay": optim.get("weight_decay", 0.05) if decay else 0.0,
                 "name": f"{'lower' if lower else 'new'}{'' if decay else '_no_decay'}"}
                for (lower, decay), ps in sorted(groups.items())]


GROUP_PALETTE = torch.tensor([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                              [145, 30, 180], [70, 240, 240], [240, 50, 230]], dtype=torch.uint8)


def groups_image(groups: torch.Tensor, image: torch.Tensor | None = None, alpha: float = 0.6):
    """PIL image of a region map [H, W] (ids 0..7 coloured), blended over ``image``
    (uint8 [3, H, W] RGB) with ``alpha`` when given."""
    from PIL import Image
    colour = GROUP_PALETTE[groups.clamp(min=0) % len(GROUP_PALETTE)].float()      # [H, W, 3]
    if image is not None:
        colour = alpha * colour + (1 - alpha) * image.permute(1, 2, 0).float()
    return Image.fromarray(colour.round().clamp(0, 255).to(torch.uint8).numpy())


def _reinit_block(block: nn.Module) -> None:
    """Fresh weights for a CLIP block copied as a template (SegCLIP's MAE blocks)."""
    for m in block.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.xavier_uniform_(m.in_proj_weight)
            nn.init.zeros_(m.in_proj_bias)

"""ResCLIP (Yang et al., CVPR 2025; yvhangyang/ResCLIP) on SCLIP, ClearCLIP or NACLIP.

Two changes to the base method's last-block attention (``model.attention_weights``):

* RCS, residual cross-correlation self-attention: A_rcs, the mean of the per-head
  attention maps (after softmax) of blocks ``rcs_blocks`` (5-8, 0-based, as published
  for every CLIP), is mixed in **after** the base softmax: A = τ_r ((1 − λ_r) A + λ_r A_rcs),
  not renormalised. For SCLIP A is softmax(qq) + softmax(kk).
* SFR, semantic feedback refinement: a coarse pass (the last block with RCS only) gives
  each window's cosine maps, resized to the window, refined by PAMR (10 iterations,
  dilations 8, 16; ``layers.pamr``) and turned into probabilities softmax(scale · cos);
  each pixel's label is its best synonym (query) id, 0 where its probability is below
  ``temp_thd``; each patch takes the mode of its pixels' labels (``patch_labels``). Then
  ``sfr_matrix`` builds M (same label -> 1, the diagonal 1, pairs whose straight path
  leaves the label decayed, a 1D Gaussian over the flattened index, row-normalised,
  ÷ its maximum, rounded to half precision as published) and it is mixed in **before**
  the softmax: L' = τ_s ((1 − λ_s) L + λ_s M) for L = s·kk (NACLIP, then + ω unscaled),
  s·qq (ClearCLIP), s·qq and s·kk (SCLIP).

The last block then runs as its base (SCLIP: residual and FFN; the others: attention
output only), ``ln_post`` / ``proj``. No window is padded (the patch grid floors). The
coarse pass and M depend on the vocabulary, so ``encode_image`` caches the tokens
entering the last block and A_rcs, and ``classify`` runs the last block twice.

Differences from the published code: RCS and SFR can be switched off (the published
``use_rcs=use_rcs,`` makes a tuple, always true); batches run image by image here too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...backbones.vit import block_qkv, block_with_attention, merge_heads
from ...layers.pamr import pamr
from ...model import SegModel
from ...vocab import Vocabulary
from .model import TrainingFreeCLIP, gaussian_bias

BASES = ("sclip", "clearclip", "naclip")
RCS_BLOCKS = (5, 6, 7, 8)
PAMR_ITERS, PAMR_DILATIONS = 10, (8, 16)


def patch_labels(labels: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel labels [H, W] -> the mode of each patch's labels [h, w] (pixels past the last
    whole patch ignored; ties: the smallest label, as ``torch.mode``)."""
    h, w = grid
    cells = labels[:h * patch, :w * patch].reshape(h, patch, w, patch).permute(0, 2, 1, 3).reshape(h, w, -1)
    return torch.mode(cells, dim=-1).values


def path_ok(labels: torch.Tensor, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For patch labels [h, w]: (ok [N, N], steps [N, N], max_steps). steps = Chebyshev distance
    between patches i and j; ok[i, j] is True when every sample of the path from i towards j
    has i's label. As published, the samples are start·(1 − t) + end·t rounded, for
    t = k / max_steps, k = 0..steps (max_steps the largest distance of any pair): a short
    pair's samples cover only steps / max_steps of its segment."""
    h, w = labels.shape
    n = h * w
    idx = torch.arange(n, device=labels.device)
    coords = torch.stack([idx // w, idx % w], -1)                              # [N, 2] (row, col)
    steps = (coords[:, None] - coords[None]).abs().amax(-1)                     # [N, N]
    top = int(steps.max())
    if top == 0:
        return torch.ones(n, n, dtype=torch.bool, device=labels.device), steps, 0
    t = torch.linspace(0, 1, top + 1, device=labels.device)                     # [T]
    flat = labels.reshape(-1)
    ks = torch.arange(top + 1, device=labels.device)
    ok = torch.empty(n, n, dtype=torch.bool, device=labels.device)
    for i0 in range(0, n, chunk):
        start = coords[i0:i0 + chunk, None, None, :]                           # [c, 1, 1, 2]
        end = coords[None, :, None, :]                                          # [1, N, 1, 2]
        cur = (start * (1 - t)[:, None] + end * t[:, None]).round().long()      # [c, N, T, 2]
        vals = flat[cur[..., 0] * w + cur[..., 1]]                              # [c, N, T]
        same = vals == flat[i0:i0 + chunk, None, None]
        ok[i0:i0 + chunk] = (same | (ks > steps[i0:i0 + chunk, :, None])).all(-1)
    return ok, steps, top


def sfr_matrix(labels: torch.Tensor, std: float = 5.0, delete_same_entity: bool = True) -> torch.Tensor:
    """Patch labels [h, w] -> SFR's M [1 + N, 1 + N] (class token row / column 0), ÷ its
    maximum, in float16 as published (so λ·M is a float16 product there and here)."""
    flat = labels.reshape(-1)
    n = flat.numel()
    m = (flat[:, None] == flat[None]).float()
    m.fill_diagonal_(1.0)
    if delete_same_entity:
        ok, steps, top = path_ok(labels)
        if top:
            m = torch.where(ok, m, m * torch.exp(-steps / top))
    size = min(n, int(6 * std + 1))
    size += 1 - size % 2                                                        # odd
    x = torch.arange(size, device=m.device) - size // 2
    kernel = torch.exp(-(x ** 2) / (2 * std ** 2))
    kernel = kernel / kernel.sum()
    blurred = F.relu(F.conv1d(m[:, None], kernel.view(1, 1, -1).to(m), padding=size // 2)[:, 0])   # per row
    out = torch.zeros(n + 1, n + 1, device=m.device)
    out[1:, 1:] = blurred / (blurred.sum(1, keepdim=True) + 1e-8)
    return (out / out.max()).half()


def mix(tau_lambda, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """τ ((1 − λ) a + λ b)."""
    tau, lam = tau_lambda
    return tau * ((1 - lam) * a + lam * b)


def resclip_attention(base: str, q, k, omega=None, rcs=None, rcs_weights=None, sfr=None, sfr_weights=None):
    """Last-block weights [B, heads, N, N] from q, k [B, heads, N, d] of ``base`` with RCS
    (``rcs`` [B, heads, N, N], after the softmax) and SFR (``sfr`` [B, 1, N, N], before)."""
    s = q.shape[-1] ** -0.5
    refine = (lambda l: mix(sfr_weights, l, sfr)) if sfr is not None else (lambda l: l)
    if base == "sclip":
        a = refine(q @ q.transpose(-2, -1) * s).softmax(-1) + refine(k @ k.transpose(-2, -1) * s).softmax(-1)
    elif base == "clearclip":
        a = refine(q @ q.transpose(-2, -1) * s).softmax(-1)
    elif base == "naclip":
        a = (refine(k @ k.transpose(-2, -1) * s) + omega.to(k.dtype)).softmax(-1)
    else:
        raise ValueError(f"unknown ResCLIP base {base!r}; expected one of {', '.join(BASES)}")
    return mix(rcs_weights, a, rcs) if rcs is not None else a


@dataclass
class ResFeatures:
    """``encode_image`` output for B windows: what does not depend on the vocabulary."""
    tokens: torch.Tensor            # [B, 1 + h*w, C] entering the last block
    rcs: torch.Tensor | None        # [B, heads, 1 + h*w, 1 + h*w] A_rcs
    image: torch.Tensor             # [B, 3, H', W'] the (padded) normalised window, for PAMR
    grid: tuple[int, int]
    size: tuple[int, int]
    padded: tuple[int, int]
    offset: tuple[int, int]
    whole: bool = False


class ResCLIP(TrainingFreeCLIP):
    """ResCLIP (RCS + SFR) on one of ``BASES`` over an open_clip ViT."""

    def __init__(self, clip: nn.Module, tokenizer, identity: str, method: str, gaussian_std: float = 5.0,
                 settings: dict | None = None, rcs: bool = True, sfr: bool = True,
                 rcs_blocks=RCS_BLOCKS, delete_same_entity: bool = True):
        if method not in BASES:
            raise ValueError(f"ResCLIP runs on {', '.join(BASES)}, not {method!r}")
        from .settings import METHODS
        super().__init__(clip, tokenizer, identity, method, gaussian_std, {**METHODS["resclip"], **(settings or {})})
        self.settings_key, self.padding = "resclip", "floor"     # ResCLIP pads no window
        self.use_rcs, self.use_sfr, self.delete_same_entity = bool(rcs), bool(sfr), bool(delete_same_entity)
        self.rcs_blocks = tuple(int(i) for i in rcs_blocks)
        if self.use_rcs and (not self.rcs_blocks or not all(0 <= i < self.vit.num_layers - 1 for i in self.rcs_blocks)):
            raise ValueError(f"rcs_blocks {self.rcs_blocks} must be blocks before the last of {self.vit.num_layers}")

    def _use_settings(self, s: dict) -> None:
        super()._use_settings(s)
        self.temp_thd = float(s["temp_thd"])
        self.rcs_weights, self.sfr_weights = tuple(s["rcs_weights"]), tuple(s["sfr_weights"])

    # --- image side: blocks 1..L-1 and A_rcs (vocabulary-independent) ----------
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> ResFeatures:
        h, w = images.shape[-2:]
        p = self.vit.patch_size
        ph, pw = max(0, p - h), max(0, p - w)      # only a side shorter than a patch is padded (to one)
        top, left = ph // 2, pw // 2
        if ph or pw:
            images = F.pad(images, (left, pw - left, top, ph - top))
        vit = self.vit
        x, grid = vit.embed(images)
        maps = []
        last = vit.num_layers - 1
        keep = set(self.rcs_blocks) if self.use_rcs else set()
        i = 0
        while i < last:
            if i not in keep:       # plain blocks up to the next kept one
                j = min([b for b in keep if b > i], default=last)
                x, _ = vit.forward_blocks(x, i, j)
                i = j
                continue
            block = vit.blocks[i]
            q, k, v = block_qkv(block, x)
            a = (q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)).softmax(-1)
            maps.append(a)
            x = x + block.ls_1(merge_heads(block, a @ v))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
            i += 1
        rcs = torch.stack(maps).mean(0) if maps else None
        return ResFeatures(x, rcs, images, grid, (h, w), tuple(images.shape[-2:]), (top, left),
                           self.protocol.mode == "whole")

    # --- vocabulary side: coarse pass, M, the last block -------------------------
    def last_block(self, feats: ResFeatures, sfr: torch.Tensor | None) -> torch.Tensor:
        """Unit-norm patch embeddings [B, D, h, w] after the last block with RCS and ``sfr``."""
        omega = gaussian_bias(feats.grid, self.gaussian_std).to(feats.tokens.device) if self.method == "naclip" \
            else None
        rcs = feats.rcs if self.use_rcs else None
        x = block_with_attention(
            self.vit.blocks[-1], feats.tokens,
            lambda q, k, v: resclip_attention(self.method, q, k, omega, rcs, self.rcs_weights, sfr, self.sfr_weights),
            residual=self.residual, ffn=self.residual)
        f = F.normalize(self.vit.head(x)[:, 1:], dim=-1)
        return f.transpose(1, 2).reshape(f.shape[0], f.shape[2], *feats.grid)

    def window_cosines(self, feats: ResFeatures, emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[B, S, H', W'] cosines of ``emb`` with ``text``, resized to the (padded) window."""
        cos = torch.einsum("bdhw,sd->bshw", emb, text.to(emb))
        return F.interpolate(cos, size=feats.padded, mode="bilinear", align_corners=False)

    def feedback(self, feats: ResFeatures, text: torch.Tensor) -> torch.Tensor:
        """SFR's M [B, 1, 1 + N, 1 + N] from the coarse pass (RCS only)."""
        cos = self.window_cosines(feats, self.last_block(feats, None), text)
        cos = pamr(feats.image, cos, PAMR_ITERS, PAMR_DILATIONS)
        probs = (self.logit_scale * cos).softmax(1)
        best, labels = probs.max(1)
        labels = labels.masked_fill(best < self.temp_thd, 0)          # low confidence -> query 0
        grids = [patch_labels(lab, self.vit.patch_size, feats.grid) for lab in labels]
        return torch.stack([sfr_matrix(g, self.gaussian_std, self.delete_same_entity) for g in grids])[:, None]

    def classify(self, features: ResFeatures, text: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        if text.shape[0] != len(vocab.prompts):
            raise ValueError(f"text has {text.shape[0]} rows, the vocabulary {len(vocab.prompts)} synonyms")
        sfr = self.feedback(features, text) if self.use_sfr else None
        cos = self.window_cosines(features, self.last_block(features, sfr), text)
        (t, l), (h, w) = features.offset, features.size
        return cos[..., t:t + h, l:l + w]

    def classify_at(self, features, text, vocab, crop=None, size=None, **band):
        """As published in both modes: the window's map, then one resize to ``size``."""
        return SegModel.classify_at(self, features, text, vocab, crop, size, **band)

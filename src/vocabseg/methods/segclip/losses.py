"""SegCLIP's training losses: contrastive, masked reconstruction, superpixel KL.

- ``contrastive_loss``: symmetric CLIP InfoNCE of the local batch against the
  batch gathered from every rank (``torch.distributed.nn`` all-gather, so the
  gradient flows back to the rank that produced each row). Each rank returns
  the mean over its own rows; with DDP's gradient averaging this is exactly the
  single-process loss on the concatenated batch.
- ``MaskedDecoder`` + ``reconstruction_loss``: the MAE-style decoder
  (Linear C→C/2, mask tokens, fixed 2D sin-cos positions, 3 ViT blocks,
  LayerNorm, Linear → p·p·3 pixels) and the MSE on the masked patches of the
  normalised image.
- ``superpixel_kl``: symmetric KL between the softmax of each patch's hard
  assignment and the softmax of the assignment averaged over its superpixel.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block


# --- contrastive ---------------------------------------------------------------
def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[b, ...] -> ([world * b, ...] in rank order, rank). Gradients flow back
    to every rank's own rows. Without an initialised process group: (x, 0)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x.contiguous()), dim=0), dist.get_rank()


def contrastive_loss(text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE. ``text`` [b, D] and ``image`` [b, D] (not normalised)
    are this rank's pairs; ``logit_scale`` the log scale (exp clamped at 100).

    loss = (CE(s·t Vᵀ, i) + CE(s·v Tᵀ, i)) / 2 averaged over the local rows,
    where V, T are the gathered batches and i = rank·b + row.
    """
    text = F.normalize(text, dim=-1)
    image = F.normalize(image, dim=-1)
    scale = logit_scale.exp().clamp(max=100)
    all_image, rank = gather_with_grad(image)
    all_text, _ = gather_with_grad(text)
    labels = torch.arange(text.shape[0], device=text.device) + rank * text.shape[0]
    t2v = scale * text @ all_image.t()
    v2t = scale * image @ all_text.t()
    return (F.cross_entropy(t2v, labels) + F.cross_entropy(v2t, labels)) / 2


# --- superpixel KL -------------------------------------------------------------
def superpixel_kl(hard: torch.Tensor, superpixels: torch.Tensor) -> torch.Tensor:
    """hard assignment [B, L, N]; superpixel labels [B, h, w] (h·w = N) or [B, N].

    a_n = assignment of patch n (over L centers); m_n = mean of a over the
    patches with the same superpixel label as n. Returns
    (KL(softmax(m) || softmax(a)) + KL(softmax(a) || softmax(m))) / 2, each
    summed and divided by B·N·L.
    """
    a = hard.transpose(1, 2)                                   # [B, N, L]
    sp = superpixels.reshape(a.shape[0], -1)
    if sp.shape[1] != a.shape[1]:
        raise ValueError(f"superpixel map has {sp.shape[1]} cells, the assignment {a.shape[1]} patches")
    same = (sp.unsqueeze(2) == sp.unsqueeze(1)).to(a.dtype)    # [B, N, N]
    mean = same @ a / same.sum(-1, keepdim=True).clamp_min(1.0)
    coef = float(a.numel())
    kl1 = F.kl_div(F.log_softmax(a, -1), F.softmax(mean, -1), reduction="sum") / coef
    kl2 = F.kl_div(F.log_softmax(mean, -1), F.softmax(a, -1), reduction="sum") / coef
    return (kl1 + kl2) / 2


# --- masked reconstruction -----------------------------------------------------
def random_masking(x: torch.Tensor, ratio: float, keep_first: bool = True):
    """Keep a random ``1 - ratio`` of the tokens of x [B, T, C] (the first one,
    the class token, always kept and first).

    Returns (kept [B, K, C], mask [B, T] 1 = removed, ids_restore [B, T]) with
    K = int(T · (1 - ratio)), as MAE.
    """
    b, t, c = x.shape
    keep = int(t * (1 - ratio))
    noise = torch.rand(b, t, device=x.device)
    if keep_first:
        noise[:, 0] = -1.0
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, c))
    mask = torch.ones(b, t, device=x.device)
    mask[:, :keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, (H/p)(W/p), p·p·3], each patch flattened (row, col, channel)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2D sine-cosine positions [(1 +) grid², dim] (MAE's; class row zero)."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need a dimension divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

    def one(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(gw), one(gh)], axis=1)   # first half from the w-major grid, as MAE
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return torch.from_numpy(emb).float()


class MaskedDecoder(nn.Module):
    """MAE decoder predicting the pixels of every patch from the visible tokens."""

    def __init__(self, width: int, dim: int, grid: int, patch: int, depth: int = 3, heads: int = 8,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.patch = patch
        self.decoder_embed = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(dim, grid).unsqueeze(0), requires_grad=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.ModuleList(
            [Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.decoder_norm = norm(dim)
        self.decoder_pred = nn.Linear(dim, patch * patch * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, visible: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """visible [B, K, C] (class token first), ids_restore [B, T] -> pixels [B, T-1, p·p·3]."""
        x = self.decoder_embed(visible)
        masks = self.mask_token.expand(x.shape[0], ids_restore.shape[1] - x.shape[1], -1)
        x = torch.cat([x, masks.to(x.dtype)], dim=1)
        x = x.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        if x.shape[1] != self.decoder_pos_embed.shape[1]:
            raise ValueError(f"decoder expects {self.decoder_pos_embed.shape[1]} tokens (its training grid), "
                             f"got {x.shape[1]}")
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


def reconstruction_loss(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """MSE per patch between ``pred`` [B, N, p·p·3] and the normalised ``images``
    [B, 3, H, W], averaged over the removed patches (``mask`` [B, 1+N], 1 = removed,
    class column first)."""
    loss = ((pred - patchify(images, patch)) ** 2).mean(-1)
    m = mask[:, 1:]
    return (loss * m).sum() / m.sum()

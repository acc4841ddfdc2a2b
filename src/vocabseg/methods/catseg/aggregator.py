"""CAT-Seg's cost aggregation (Cho et al., CVPR 2024, Sec. 3): a cosine cost volume
between dense CLIP image features and class text embeddings, refined by
alternating spatial and class aggregation, then decoded to per-class logits.

    cost   = cos(F [B, D, h, w], E [B, T, P, D])            -> [B, P, T, h, w]
    x      = conv7x7(cost) per class                         -> [B, C, T, h, w]
    layer  = spatial (two Swin blocks, shift 0 and window/2, appearance guidance
             concatenated to q / k) then class (linear attention over the T
             classes at every pixel, text guidance concatenated to q / k,
             the class axis padded with learned tokens to ``pad_len``)
    logits = decoder(x, projected CLIP guidance)             -> [B, T, 4h, 4w]

With more than ``pad_len`` classes only the ``pad_len`` classes of highest cost
(max over prompts and pixels) are aggregated, per image; the others get logit
-100. Parameter names follow the published module, so checkpoints map by prefix.
Work that is independent per class (spatial blocks, decoder) or per pixel (class
attention) runs in chunks to bound memory; chunking does not change the numbers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

from ... import speed
from .decoder import Up, decode

BLOCKED = -100.0    # additive attention mask between pixels of different shifted-window regions


def shifted_window_mask(size: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """[num_windows, window^2, window^2] additive mask of a Swin block shifted by
    ``shift``: 0 between pixels of the same region of the rolled map, -100 else."""
    h, w = size
    region = torch.zeros(h, w)
    bounds = lambda n: ((0, n - window), (n - window, n - shift), (n - shift, n))   # noqa: E731
    label = 0
    for y0, y1 in bounds(h):
        for x0, x1 in bounds(w):
            region[y0:y1, x0:x1] = label
            label += 1
    ids = to_windows(region[None, :, :, None], window)[..., 0]                      # [nW, N]
    return (ids[:, None, :] != ids[:, :, None]).float() * BLOCKED


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """[M, H, W, C] -> [M * (H / win) * (W / win), win * win, C], windows in row-major order."""
    m, h, w, c = x.shape
    x = x.view(m, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def from_windows(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``to_windows``: -> [M, H, W, C]."""
    c = x.shape[-1]
    x = x.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head attention inside windows: q, k from [cost; guidance], v from the
    cost channels, scale (C / heads)^-0.5, no relative position bias, output ``proj``."""

    def __init__(self, dim: int, guidance: int, heads: int):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim + guidance, dim)
        self.k = nn.Linear(dim + guidance, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [M * nW, N, dim + guidance], mask [nW, N, N] or None -> [M * nW, N, dim]."""
        mw, n, _ = x.shape
        split = lambda t: t.view(mw, n, self.heads, -1).transpose(1, 2)   # noqa: E731
        q, k, v = split(self.q(x) * self.scale), split(self.k(x)), split(self.v(x[..., :self.dim]))
        attn = q @ k.transpose(-1, -2)                                    # [M * nW, heads, N, N]
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(mw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(mw, self.heads, n, n)
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(mw, n, -1)
        return self.proj(out)


class SwinBlock(nn.Module):
    """A Swin block on one class's cost map, with appearance guidance joined after ``norm1``."""

    def __init__(self, dim: int, guidance: int, heads: int, size: tuple[int, int], window: int, shift: int):
        super().__init__()
        if min(size) <= window:             # the published block: one window, no shift
            window, shift = min(size), 0
        self.size, self.window, self.shift = tuple(size), window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, guidance, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)        # timm Mlp: fc1, GELU, fc2
        mask = shifted_window_mask(self.size, window, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)   # the published file holds it: checked, not loaded

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """x [M, H*W, C], guidance [M, H*W, G] (normalised) or None -> [M, H*W, C]."""
        (h, w), m, c = self.size, x.shape[0], x.shape[-1]
        y = self.norm1(x)
        if guidance is not None:
            y = torch.cat([y, guidance], dim=-1)
        y = y.view(m, h, w, -1)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(to_windows(y, self.window), self.attn_mask)
        y = from_windows(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(m, h * w, c)
        return x + self.mlp(self.norm2(x))


class SpatialAggregation(nn.Module):
    """Two Swin blocks (shift 0, then window / 2) on every class map ("swin_block")."""

    def __init__(self, dim: int, guidance: int, size: tuple[int, int], heads: int, window: int):
        super().__init__()
        self.block_1 = SwinBlock(dim, guidance, heads, size, window, 0)
        self.block_2 = SwinBlock(dim, guidance, heads, size, window, window // 2)
        self.guidance_norm = nn.LayerNorm(guidance) if guidance > 0 else None

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None, chunk: int = 128) -> torch.Tensor:
        """x [B, C, T, H, W], guidance [B, G, H, W] or None -> [B, C, T, H, W]."""
        b, c, t, h, w = x.shape
        out = torch.empty_like(x)
        for i in range(b):
            g = None if guidance is None else self.guidance_norm(guidance[i].flatten(1).T)   # [H*W, G]
            for s in range(0, t, chunk):
                y = x[i, :, s:s + chunk].flatten(2).permute(1, 2, 0)                         # [t', H*W, C]
                gi = None if g is None else g.expand(y.shape[0], -1, -1)
                y = self.block_2(self.block_1(y, gi), gi)
                out[i, :, s:s + chunk] = y.permute(2, 0, 1).reshape(c, -1, h, w)
        return out


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention ("Transformers are RNNs", feature map elu + 1) over the
    sequence axis: q, k, v [N, L, heads, d] -> [N, L, heads, d],
    out_l = phi(q_l) sum_s phi(k_s) v_s^T / (phi(q_l) . sum_s phi(k_s) + eps)."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    length = v.shape[1]
    kv = torch.einsum("nshd,nshe->nhde", k, v / length)
    z = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(1)) + eps)
    return torch.einsum("nlhd,nhde->nlhe", q, kv) * z[..., None] * length


def padded_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pad: torch.Tensor,
                            v_pad: torch.Tensor, pad: int, eps: float = 1e-6) -> torch.Tensor:
    """``linear_attention`` of q, k, v [N, L, heads, d] with ``pad`` more keys / values
    that all equal ``k_pad`` / ``v_pad`` [heads, d] appended, for the L real queries
    only: the padded tokens enter the sums ``pad`` times, their queries are not run."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    k_pad = F.elu(k_pad) + 1
    length = v.shape[1] + pad
    kv = torch.einsum("nshd,nshe->nhde", k, v / length) + pad * k_pad[..., None] * (v_pad / length)[:, None, :]
    z = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(1) + pad * k_pad) + eps)
    return torch.einsum("nlhd,nhde->nlhe", q, kv) * z[..., None] * length


class ClassAttention(nn.Module):
    """q, k = Linear([x; text guidance]), v = Linear(x); linear attention; no output projection."""

    def __init__(self, dim: int, guidance: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim + guidance, dim)
        self.k = nn.Linear(dim + guidance, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None, pad_token: torch.Tensor | None = None,
                pad_guidance: torch.Tensor | None = None, pad: int = 0) -> torch.Tensor:
        """x [N, T, C], guidance [N, T, G] or None -> [N, T, C]. With ``pad`` > 0 the
        sequence is taken to continue with ``pad`` copies of ``pad_token`` [C] (and
        ``pad_guidance`` [G]) whose outputs are not computed (``padded_linear_attention``)."""
        xg = x if guidance is None else torch.cat([x, guidance], dim=-1)
        n, t, c = x.shape
        split = lambda y: y.view(n, t, self.heads, -1)    # noqa: E731
        if not pad:
            return linear_attention(split(self.q(xg)), split(self.k(xg)), split(self.v(x))).reshape(n, t, c)
        pg = pad_token if pad_guidance is None else torch.cat([pad_token, pad_guidance])
        k_pad, v_pad = self.k(pg).view(self.heads, -1), self.v(pad_token).view(self.heads, -1)
        out = padded_linear_attention(split(self.q(xg)), split(self.k(xg)), split(self.v(x)), k_pad, v_pad, pad)
        return out.reshape(n, t, c)


class ClassAggregation(nn.Module):
    """Attention across classes at every (pooled) pixel ("attention" of a published layer)."""

    def __init__(self, dim: int, guidance: int, heads: int, pad_len: int):
        super().__init__()
        self.attention = ClassAttention(dim, guidance, heads)
        self.MLP = nn.Sequential(nn.Linear(dim, dim * 4), nn.ReLU(), nn.Linear(dim * 4, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.pad_len = pad_len
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, dim)) if pad_len > 0 else None
        self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance)) if pad_len > 0 and guidance > 0 else None

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None, pooling=(1, 1),
                chunk: int = 256) -> torch.Tensor:
        """x [B, C, T, H, W], guidance [B, T, G] or None -> [B, C, T, H, W]:
        x + up(y), y = pool(x) padded to ``pad_len`` classes, y += attn(norm1 y), y += MLP(norm2 y)."""
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).flatten(0, 1)                                            # [B*T, C, H, W]
        if tuple(pooling) != (1, 1):
            y = F.avg_pool2d(y, tuple(pooling))
        hp, wp = y.shape[-2:]
        y = y.view(b, t, c, hp * wp).permute(0, 3, 1, 2)                               # [B, h*w, T, C]
        pad = self.pad_len - t if self.padding_tokens is not None and t < self.pad_len else 0
        skip = pad and speed.fast()     # fast path: the padded tokens' own outputs are never computed
        pad_guidance = self.padding_guidance[0, 0] if guidance is not None and self.padding_guidance is not None \
            else None
        if pad and not skip:
            y = torch.cat([y, self.padding_tokens.expand(b, hp * wp, pad, c)], dim=2)
            if pad_guidance is not None:
                guidance = torch.cat([guidance, self.padding_guidance.expand(b, pad, -1)], dim=1)
        y = y.flatten(0, 1)                                                             # [B*h*w, T', C]
        out = torch.empty_like(y)
        for s in range(0, y.shape[0], chunk):
            z = y[s:s + chunk]
            g = None if guidance is None else guidance[torch.arange(s, s + z.shape[0], device=z.device)
                                                       // (hp * wp)]
            if skip:
                z = z + self.attention(self.norm1(z), g, self.norm1(self.padding_tokens[0, 0]), pad_guidance, pad)
            else:
                z = z + self.attention(self.norm1(z), g)
            out[s:s + chunk] = z + self.MLP(self.norm2(z))
        kept = t if skip else t + pad
        y = out.view(b, hp, wp, kept, c)[:, :, :, :t].permute(0, 3, 4, 1, 2)           # [B, T, C, h, w]
        if (hp, wp) != (h, w):
            y = F.interpolate(y.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=True).view(b, t, c, h, w)
        return x + y.transpose(1, 2)


class AggregatorLayer(nn.Module):
    def __init__(self, dim: int, text_guidance: int, appearance_guidance: int, heads: int,
                 size: tuple[int, int], window: int, pad_len: int):
        super().__init__()
        self.swin_block = SpatialAggregation(dim, appearance_guidance, size, heads, window)
        self.attention = ClassAggregation(dim, text_guidance, heads, pad_len)

    def forward(self, x, appearance, text, pooling=(1, 1)):
        return self.attention(self.swin_block(x, appearance), text, pooling)


def conv_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


class Aggregator(nn.Module):
    """Cost volume, ``num_layers`` aggregation layers and the decoder.

    ``text_dim`` / ``appearance_dim``: width of the text embeddings and of the dense
    CLIP features (the joint space, 512 for ViT-B/16); ``decoder_guidance_dims``: the
    channels of the two upsampled CLIP guidance maps (at 2x and 4x the grid)."""

    def __init__(self, text_dim: int = 512, appearance_dim: int = 512, hidden: int = 128,
                 text_proj: int = 128, appearance_proj: int = 128, decoder_dims=(64, 32),
                 decoder_guidance_dims=(256, 128), decoder_guidance_proj=(32, 16), num_layers: int = 2,
                 heads: int = 4, size: tuple[int, int] = (24, 24), window: int = 12, prompts: int = 1,
                 pad_len: int = 256):
        super().__init__()
        self.pad_len = pad_len
        self.layers = nn.ModuleList([AggregatorLayer(hidden, text_proj, appearance_proj, heads, tuple(size), window,
                                                     pad_len) for _ in range(num_layers)])
        self.conv1 = nn.Conv2d(prompts, hidden, kernel_size=7, padding=3)
        self.guidance_projection = conv_relu(appearance_dim, appearance_proj)
        self.text_guidance_projection = nn.Sequential(nn.Linear(text_dim, text_proj), nn.ReLU())
        self.decoder_guidance_projection = nn.ModuleList(
            [conv_relu(d, p) for d, p in zip(decoder_guidance_dims, decoder_guidance_proj)])
        self.decoder1 = Up(hidden, decoder_dims[0], decoder_guidance_proj[0])
        self.decoder2 = Up(decoder_dims[0], decoder_dims[1], decoder_guidance_proj[1])
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, padding=1)

    def project_guidance(self, dense: torch.Tensor, guidance: list) -> dict:
        """Vocabulary-independent projections: dense [M, D, h, w] and the two upsampled
        CLIP maps -> {"appearance": [M, A, h, w], "decoder": [[M, g1, 2h, 2w], [M, g2, 4h, 4w]]}."""
        return {"appearance": self.guidance_projection(dense),
                "decoder": [proj(g) for proj, g in zip(self.decoder_guidance_projection, guidance)]}

    def cost(self, dense: torch.Tensor, text: torch.Tensor):
        """(cost [B, P, T', h, w], text [B, T', P, D] unit, kept class ids [B, T'] or None):
        the cosine cost of ``dense`` [B, D, h, w] and ``text`` [B, T, P, D]; with
        T > ``pad_len`` only the ``pad_len`` classes of highest max cost are kept."""
        img = F.normalize(dense, dim=1)
        text = F.normalize(text, dim=-1)
        cost = torch.einsum("bchw,btpc->bpthw", img, text)
        if not self.pad_len or text.shape[1] <= self.pad_len:
            return cost, text, None
        best = cost.transpose(1, 2).flatten(2).amax(-1)                                    # [B, T]
        keep = best.topk(self.pad_len, dim=-1).indices                                     # [B, pad_len]
        b, p = cost.shape[:2]
        cost = cost.gather(2, keep[:, None, :, None, None].expand(b, p, -1, *cost.shape[-2:]))
        text = text.gather(1, keep[..., None, None].expand(-1, -1, *text.shape[-2:]))
        return cost, text, keep

    def forward(self, dense: torch.Tensor, text: torch.Tensor, guidance: dict, pooling=(1, 1)) -> torch.Tensor:
        """dense [B, D, h, w] CLIP features, text [B, T, P, D], ``project_guidance``
        output -> logits [B, T, 4h, 4w] (classes left out by the truncation: -100)."""
        classes = text.shape[1]
        cost, text, keep = self.cost(dense, text)
        b, p, t, h, w = cost.shape
        x = self.conv1(cost.transpose(1, 2).reshape(b * t, p, h, w))
        x = x.view(b, t, -1, h, w).transpose(1, 2)                                         # [B, C, T, h, w]
        tg = self.text_guidance_projection(F.normalize(text.mean(dim=-2), dim=-1))         # [B, T, G]
        for layer in self.layers:
            x = layer(x, guidance["appearance"], tg, pooling)
        logits = decode(self.decoder1, self.decoder2, self.head, x, guidance["decoder"])
        if keep is None:
            return logits
        out = logits.new_full((b, classes, *logits.shape[-2:]), BLOCKED)
        return out.scatter(1, keep[..., None, None].expand(-1, -1, *logits.shape[-2:]), logits)

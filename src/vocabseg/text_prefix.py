"""CLIP text encoding with shared prefixes (the fast path of ``text.TextEncoder``).

CLIP's text transformer is causal: the hidden state of token i depends only on
tokens 0..i. Prompts built from templates share long prefixes ("<sot> a photo
of a", "<sot> there is a small", ...), so those tokens' keys and values are the
same in every prompt that starts with them. ``encode_shared`` computes them once
per distinct prefix and runs only each prompt's remaining tokens (the name and
the template's tail), attending to the cached prefix. The feature CLIP returns
is the end-of-text token's, so the last block runs only that row (the others are
needed there as keys and values alone). Identical prompts are encoded once.

The numbers equal ``text.encode_text_tokens`` (and open_clip's full 77-token
``encode_text``) up to float rounding; ``tests/test_speed_exact.py`` checks it.
For ADE-150 with FC-CLIP's synonyms and the 14 ViLD templates this runs 25k
token positions instead of 58k (each prompt up to its own end) or 433k (77
each).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbones.vit import _plain_block, block_qkv, merge_heads


def embed_tokens(clip_model, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Token ids [B, L] at positions [B, L] (or [L]) -> input embeddings [B, L, C]."""
    cast = clip_model.transformer.get_cast_dtype() if hasattr(clip_model.transformer, "get_cast_dtype") else None
    x = clip_model.token_embedding(tokens)
    x = x.to(cast) if cast is not None else x
    return x + clip_model.positional_embedding[positions].to(x.dtype)


def project_text(clip_model, x: torch.Tensor) -> torch.Tensor:
    """Pooled text tokens [N, C] (after ``ln_final``) -> the joint space [N, D]."""
    proj = clip_model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def standard_text_tower(m) -> bool:
    return (hasattr(m, "token_embedding") and hasattr(m, "transformer") and hasattr(m, "ln_final")
            and getattr(m, "text_pool_type", "argmax") == "argmax" and getattr(m, "attn_mask", None) is not None)


def supports(clip_model) -> bool:
    """An open_clip text tower this path handles: causal, argmax pooling, plain blocks."""
    return standard_text_tower(clip_model) and all(_plain_block(b) for b in clip_model.transformer.resblocks)


def assign_prefixes(seqs: list[tuple[int, ...]]) -> list[int]:
    """Shared-prefix length for each token sequence (its end-of-text token excluded).

    A group of sequences shares its longest common prefix; a subgroup (same next
    token) gets its own longer prefix when that saves more token positions than
    computing the longer prefix costs: (p' - p) * (n - 1) > p'. With template
    prompts this gives each template's words before the name."""
    out = [0] * len(seqs)

    def lcp(ids: list[int], start: int) -> int:
        first, p = seqs[ids[0]], start
        n = min(len(seqs[i]) for i in ids) - 1          # the end-of-text token always runs with the suffix
        while p < n and all(seqs[i][p] == first[p] for i in ids):
            p += 1
        return p

    def visit(ids: list[int], p: int) -> None:
        groups: dict[int, list[int]] = {}
        for i in ids:
            out[i] = p
            if p < len(seqs[i]) - 1:
                groups.setdefault(seqs[i][p], []).append(i)
        for g in groups.values():
            if len(g) > 1:
                q = lcp(g, p)
                if (q - p) * (len(g) - 1) > q:
                    visit(g, q)

    if seqs:
        everything = list(range(len(seqs)))
        visit(everything, lcp(everything, 0))
    return out


def _attend(block, x: torch.Tensor, past: tuple | None, mask: torch.Tensor | None, last_only: bool = False):
    """One text block on new tokens ``x`` [B, L, C] after cached keys / values ``past``
    ([B, h, P, d] each) with ``mask`` bool [B, 1, L, P + L] (True = attend), or plain
    causal over ``x`` when ``past`` is None. ``last_only``: run only the last query row
    (-> [B, 1, C]). Returns (output, (k, v) of the new tokens)."""
    q, k, v = block_qkv(block, x)
    keys, values = k, v
    if past is not None:
        keys, values = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    if last_only:
        q, x = q[:, :, -1:], x[:, -1:]
        mask = mask[:, :, -1:] if mask is not None else None
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                         is_causal=mask is None and not last_only)
    x = x + block.ls_1(merge_heads(block, out))
    return x + block.ls_2(block.mlp(block.ln_2(x))), (k, v)


@torch.no_grad()
def encode_shared(clip_model, tokens: torch.Tensor, batch: int = 256, progress=None) -> torch.Tensor:
    """CLIP text features [N, D] (not normalised) for token ids [N, ctx], as
    ``encode_text_tokens``; ``progress(k)`` is called after each k prompts.

    Every distinct shared prefix (``assign_prefixes``) runs once, all of them in
    one padded causal batch (a padded tail never reaches the real tokens before
    it); the remaining tokens of the prompts run in chunks of ``batch`` prompts
    with equal remaining length (no padding), each attending to its own prefix's
    cached keys and values."""
    device = tokens.device
    uniq, inverse = torch.unique(tokens, dim=0, return_inverse=True)
    copies = torch.bincount(inverse, minlength=uniq.shape[0]).tolist()
    lengths = (uniq != 0).sum(1).clamp(min=1).tolist()
    seqs = [tuple(r[:n]) for r, n in zip(uniq.tolist(), lengths)]
    plen = assign_prefixes(seqs)
    keys = sorted({seqs[i][:p] for i, p in enumerate(plen) if p})
    key_index = {k: j for j, k in enumerate(keys)}
    blocks = list(clip_model.transformer.resblocks)
    cache = []                                            # per block: (k, v) [num prefixes, h, P_max, d]
    pmax = max((len(k) for k in keys), default=0)
    if keys:
        ids = torch.zeros(len(keys), pmax, dtype=tokens.dtype)
        for j, k in enumerate(keys):
            ids[j, : len(k)] = torch.tensor(k)
        x = embed_tokens(clip_model, ids.to(device), torch.arange(pmax, device=device))
        for block in blocks:
            x, kv = _attend(block, x, None, None)
            cache.append(kv)
    by_length: dict[int, list[int]] = {}
    for i, (seq, p) in enumerate(zip(seqs, plen)):
        by_length.setdefault(len(seq) - p, []).append(i)
    out = None
    for n, members in sorted(by_length.items()):
        for s in range(0, len(members), batch):
            ids = members[s:s + batch]
            p = torch.tensor([plen[i] for i in ids], device=device)
            rest = torch.tensor([seqs[i][plen[i]:] for i in ids], device=device)
            x = embed_tokens(clip_model, rest, p[:, None] + torch.arange(n, device=device))
            past, mask = None, None
            if keys:
                owner = torch.tensor([key_index.get(seqs[i][:plen[i]], 0) for i in ids], device=device)
                seen = torch.arange(pmax, device=device)[None] < p[:, None]             # [B, P_max]
                own = torch.ones(n, n, dtype=torch.bool, device=device).tril()
                mask = torch.cat([seen[:, None].expand(-1, n, -1), own.expand(len(ids), -1, -1)], -1)[:, None]
            for li, block in enumerate(blocks):
                if keys:
                    past = (cache[li][0][owner], cache[li][1][owner])
                x, _ = _attend(block, x, past, mask, last_only=li == len(blocks) - 1)
            feats = project_text(clip_model, clip_model.ln_final(x[:, -1]))
            if out is None:
                out = feats.new_empty(len(seqs), feats.shape[-1])
            out[torch.tensor(ids, device=device)] = feats
            if progress is not None:
                progress(sum(copies[i] for i in ids))
    return out[inverse]

"""One switch for vocabseg's exact fast paths.

Every fast path computes the same numbers as the straightforward formulation
it replaces, up to float rounding (a different summation order); none drops a
term that can matter. Each place that has one keeps the straightforward path
next to it, and ``plain_paths()`` selects those instead — the tests compare the
two (``tests/test_speed_exact.py``) and ``vocabseg bench --plain`` times both.

The fast paths (see each function's docstring):

* SAN: the recognition head runs [SOS] rows with a compact [self, patches]
  attention instead of the masked (Q+1+L)^2 one, CLS and patches as plain CLIP
  blocks, and the last block's CLS/patch rows as keys and values only
  (``backbones.vit.ClipViT.forward_sos``); the attention-bias head folds its last
  1x1 convolution into the queries (``methods.san.side.MaskDecoder``).
* FC-CLIP: the ConvNeXt trunk runs channels-last; intermediate decoder heads
  build their attention masks at the attention resolution (bilinear resizing is
  linear, so it commutes with the query . pixel product) and skip the class
  embeddings only training reads (``methods.fcclip.decoder``); deformable
  attention gathers its bilinear corners with one weighted ``embedding_bag``
  (``methods.fcclip.ms_deform_attn``).
* Text: prompts sharing a token prefix (a template's words before the name)
  compute it once, and the last block runs only the end-of-text row
  (``text.encode_prompts``).
* Everywhere: inference-time affine maps
  on CPU float32 run oneDNN's matrix multiply (``linear``), which this CPU kind
  runs 10-40 % faster than the default BLAS call for the token counts here
  (M = 100..2500 rows); ``SegModel.eval()`` switches a model's ``nn.Linear``
  layers to it (``use_fast_linears``; parameters and keys unchanged).
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn as nn
import torch.nn.functional as F

_FAST = contextvars.ContextVar("vocabseg_fast_paths", default=True)
_ONEDNN = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None) \
    if torch.backends.mkldnn.is_available() else None


def fast() -> bool:
    """True unless inside ``plain_paths()`` (in this thread / context)."""
    return _FAST.get()


@contextlib.contextmanager
def plain_paths():
    """Run the straightforward formulation everywhere inside this block. The
    switch is a context variable: other threads keep their own setting, and a
    ``contextvars.copy_context()`` taken inside the block sees it."""
    token = _FAST.set(False)
    try:
        yield
    finally:
        _FAST.reset(token)


_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
_INT8 = contextvars.ContextVar("vocabseg_int8_linears", default=None)


@contextlib.contextmanager
def int8_linears(packs: dict):
    """Inside this block (this thread / context), ``linear`` runs a weight found in ``packs``
    ({id(weight): (weight, bias, packed int8 weights)}, ``engine.int8.packs``) as a dynamically
    quantised int8 matmul: int8 weights per output channel, the activation quantised per call
    (``torch.ops.quantized.linear_dynamic``), fp32 in and out. Opt-in precision, not a fast path."""
    token = _INT8.set(packs)
    try:
        yield
    finally:
        _INT8.reset(token)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; without autograd on CPU float32 or bfloat16 (input
    and weight of the same dtype; outside ``plain_paths()`` and CPU autocast, which casts
    ``F.linear``'s inputs) through oneDNN's matmul, the same products summed in another
    order (bf16: fp32 accumulation, one rounding of the output, as ``F.linear``; also
    under bf16 autocast when everything is bf16 already, where autocast casts nothing)."""
    packs = _INT8.get()
    if packs is not None and not torch.is_grad_enabled() and x.dtype == torch.float32 and x.numel():
        entry = packs.get(id(weight))
        if entry is not None and entry[0] is weight and entry[1] is bias:
            return torch.ops.quantized.linear_dynamic(x, entry[2], False)
    if (_ONEDNN is not None and _FAST.get() and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype in _ONEDNN_DTYPES and weight.dtype == x.dtype and x.numel()
            and (bias is None or bias.dtype == x.dtype)
            and (not torch.is_autocast_enabled("cpu") or torch.get_autocast_dtype("cpu") == x.dtype != torch.float32)):
        return _ONEDNN(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


ATTENTION_BLOCK = 1 << 20     # score entries per bf16 attention block (about 2 MB: kept in cache) ...
ATTENTION_ROWS = 64           # ... but at least this many query rows (smaller matrix products run slowly)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask)`` ([B, heads, N, d], additive float
    mask or None). Without autograd on CPU bfloat16 (outside ``plain_paths()``) it runs as
    bf16 matrix products over blocks of query rows (``ATTENTION_BLOCK`` scores, at least
    ``ATTENTION_ROWS`` rows): scores q . k^T / sqrt(d) rounded to bf16 (+ the mask in fp32), a
    softmax that accumulates in fp32, then . v; CPU's fused kernel converts bf16 blocks to fp32
    and ran 1.3-2x slower than this on the token counts here (577-1601). Same formula, bf16
    rounding of the scores and probabilities."""
    if (not (_FAST.get() and q.dtype == torch.bfloat16 and q.device.type == "cpu" and not torch.is_grad_enabled()
             and k.dtype == v.dtype == q.dtype and (attn_mask is None or attn_mask.is_floating_point()))):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    q, v = q.contiguous(), v.contiguous()          # row blocks of q below are then views, not copies
    kt = (k * (q.shape[-1] ** -0.5)).contiguous().transpose(-2, -1)
    out = q.new_empty(*torch.broadcast_shapes(q.shape[:-2], v.shape[:-2]), q.shape[-2], v.shape[-1])
    n = q.shape[-2]
    matrices = out.numel() // (n * out.shape[-1])               # batch x heads
    step = max(ATTENTION_ROWS, ATTENTION_BLOCK // (matrices * k.shape[-2]) // 16 * 16)
    for i in range(0, n, step):
        scores = torch.matmul(q[..., i:i + step, :], kt)
        if attn_mask is not None:
            rows = attn_mask if attn_mask.shape[-2] == 1 else attn_mask[..., i:i + step, :]
            scores = torch.softmax(scores.float() + rows, -1).to(v.dtype)   # the sum not rounded to bf16
        else:
            scores = scores.softmax(-1)
        out[..., i:i + step, :] = torch.matmul(scores, v)
    return out


class FusedLinear(nn.Linear):
    """A bf16 twin's linear layer with the activation after it (``post``: "gelu" exact, or
    "swish" x * sigmoid(x)) applied by oneDNN to the fp32 accumulator before the one bf16
    rounding (``vocabseg.bf16.fuse_activations``); elsewhere the layer then the activation."""

    post = "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if (_ONEDNN is not None and not torch.is_grad_enabled() and x.device.type == "cpu" and x.numel()
                and x.dtype == w.dtype == torch.bfloat16 and (b is None or b.dtype == x.dtype)):
            return _ONEDNN(x, w, b, self.post, [], "none" if self.post == "gelu" else "")
        y = F.linear(x, w, b)
        return F.gelu(y) if self.post == "gelu" else F.silu(y)


class BlockedAttention(torch.overrides.TorchFunctionMode):
    """While active (this thread), ``F.scaled_dot_product_attention`` calls made by code we do
    not own (timm's attention, e.g. SAN's side network and ProxyCLIP's VFM) run as
    ``attention`` above when they are plain (no dropout, not causal, default scale); every
    other call passes through unchanged. Entered by the bf16 image side only."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and len(args) >= 3:
            given = {**dict(zip(_SDPA_OPTIONS, args[3:])), **kwargs}
            if set(given) <= set(_SDPA_OPTIONS) and all(given.get(n, d) == d for n, d in _SDPA_OPTIONS.items()
                                                         if n != "attn_mask"):
                return attention(*args[:3], attn_mask=given.get("attn_mask"))
        return func(*args, **kwargs)


_SDPA_OPTIONS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


class FastLinear(nn.Linear):
    """``nn.Linear`` whose forward is ``speed.linear`` (same parameters and keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_fast_linears(module: nn.Module) -> nn.Module:
    """Switch every plain ``nn.Linear`` inside ``module`` to ``FastLinear`` in place
    (the instance's class only: parameters, buffers and state-dict keys unchanged;
    with autograd on it computes exactly as ``nn.Linear``)."""
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = FastLinear
    return module

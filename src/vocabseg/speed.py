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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; without autograd on CPU float32 (and outside
    ``plain_paths()`` and CPU autocast, which casts ``F.linear``'s inputs) through
    oneDNN's matmul, the same products summed in another order."""
    if (_ONEDNN is not None and _FAST.get() and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.numel()
            and not torch.is_autocast_enabled("cpu")):
        return _ONEDNN(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


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

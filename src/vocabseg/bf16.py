"""The bf16 twin of a model for the CPU image side (``precision.image_side``).

``twin(model)``: a copy made once, when first needed, whose linear / convolution /
attention weights and float buffers are bf16 and whose norm parameters are the
model's own fp32 tensors (shared, not copied), as are those of any
``model.Fp32Module`` part (run in fp32 with autocast off). It runs under bf16
autocast, which has nothing to cast where inputs and weights are both bf16
(activations stay bf16 from the input to the output, no weight is re-cast at every
call) and casts where an fp32 result meets bf16 weights (after an ``Fp32Module``);
the CPU kernels for layer / group norm and softmax (also inside attention)
accumulate in fp32 and round only their outputs. The twin is kept outside the
module tree (no state-dict keys, not moved by ``.to()``) and rebuilt when any
parameter or buffer of the model changes (a new tensor, an in-place update such as
``load_state_dict``, a device move).

In the twin, an MLP's first linear layer and the GELU / QuickGELU after it run as one
oneDNN matmul with the activation applied to its fp32 accumulator
(``speed.FusedLinear``; QuickGELU(y) = swish(1.702 y) / 1.702, the 1.702 folded into
that layer's weights and the 1 / 1.702 into the next layer's): one pass and one bf16
rounding fewer than the layer and the activation apart.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from . import speed

class Fp32Module(nn.Module):
    """A part of a model that runs in fp32 whatever the precision asked (its forward turns
    autocast off and casts its inputs to fp32): the bf16 twin keeps its parameters and
    buffers in fp32 instead of giving it a bf16 copy. Methods import it from ``vocabseg.model``."""


KEEP_FP32 = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)   # parameters shared with the twin
KEPT = "_vocabseg_bf16_twin"
QUICK_GELU = 1.702


def _stamp(model: nn.Module) -> tuple:
    """What the twin was made from: every parameter and buffer's identity, version
    counter (bumped by in-place writes), device."""
    return tuple((id(t), t._version, t.device) for t in (*model.parameters(), *model.buffers()))


def twin(model: nn.Module, skip: str | None = None) -> nn.Module:
    """The bf16 twin of ``model`` (see the module docstring), made on first use and kept
    on the model outside its module tree; remade when ``_stamp(model)`` changes. The
    model itself (its parameters, state dict, fp32 results) is not touched. ``skip``:
    the name of a submodule the twin never runs, whose tensors it shares instead of
    copying (e.g. a CLIP model's ``visual`` tower for the text side; none if absent)."""
    stamp = (_stamp(model), skip)
    kept = model.__dict__.get(KEPT)
    if kept is not None and kept[0] == stamp:
        return kept[1]
    model.__dict__.pop(KEPT, None)
    shared = {id(p) for m in model.modules() if isinstance(m, KEEP_FP32) for p in m.parameters(recurse=False)}
    shared |= {id(t) for m in model.modules() if isinstance(m, Fp32Module) for t in (*m.parameters(), *m.buffers())}
    part = dict(model.named_modules()).get(skip) if skip else None
    if part is not None:
        shared |= {id(t) for t in (*part.parameters(), *part.buffers())}
    memo = {}
    for t in (*model.parameters(), *model.buffers()):
        if id(t) in shared or not t.is_floating_point():
            memo[id(t)] = t
        elif isinstance(t, nn.Parameter):
            memo[id(t)] = nn.Parameter(t.detach().to(torch.bfloat16), requires_grad=False)
        else:
            memo[id(t)] = t.to(torch.bfloat16)
    out = copy.deepcopy(model, memo)
    out.eval()
    fuse_activations(model, out)
    model.__dict__[KEPT] = (stamp, out)
    return out


def _activation(module: nn.Module) -> str | None:
    """"gelu" (exact GELU) or "quick" (x * sigmoid(1.702 x)) for an activation module
    (torch's, timm's or open_clip's GELU / QuickGELU) that computes it on a probe
    vector; else None."""
    if "GELU" not in type(module).__name__ or list(module.parameters()):
        return None
    x = torch.linspace(-4, 4, 33)
    y = module(x)
    if torch.equal(y, torch.nn.functional.gelu(x)):
        return "gelu"
    if torch.equal(y, x * torch.sigmoid(QUICK_GELU * x)):
        return "quick"
    return None


def fuse_activations(model: nn.Module, bf16: nn.Module) -> int:
    """In ``bf16`` (the twin of ``model``), fuse every [linear, activation, (dropout),
    linear] run of an ``nn.Sequential`` or a timm ``Mlp`` (see the module docstring);
    a QuickGELU's scales are folded into bf16 weights rounded once from ``model``'s
    fp32 ones. Layers whose weights the twin shares in fp32 are left as they are.
    Returns how many were fused."""
    fused = 0
    for src, m in zip(model.modules(), bf16.modules()):
        for first, act_name, second in _mlp_runs(m):
            kind = _activation(getattr(m, act_name))
            lin, nxt = getattr(m, first), getattr(m, second, None) if second else None
            if kind is None or not _bf16_linear(lin) or (kind == "quick" and not _bf16_linear(nxt)):
                continue
            if kind == "quick":
                with torch.no_grad():
                    lin.weight.copy_(getattr(src, first).weight * QUICK_GELU)
                    if lin.bias is not None:
                        lin.bias.copy_(getattr(src, first).bias * QUICK_GELU)
                    nxt.weight.copy_(getattr(src, second).weight / QUICK_GELU)
            lin.__class__ = speed.FusedLinear
            lin.post = "gelu" if kind == "gelu" else "swish"
            setattr(m, act_name, nn.Identity())
            fused += 1
    return fused


def _bf16_linear(m) -> bool:
    return type(m) in (nn.Linear, speed.FastLinear) and m.weight.dtype == torch.bfloat16


def _mlp_runs(m: nn.Module):
    """(first linear, activation, next linear or None) attribute names of ``m``'s MLP patterns."""
    if isinstance(m, nn.Sequential):
        names = [n for n, _ in m.named_children()]
        for i in range(len(names) - 1):
            nxt = next((n for n in names[i + 2:] if not isinstance(getattr(m, n), nn.Dropout)), None)
            yield names[i], names[i + 1], nxt
    elif type(m).__name__ == "Mlp" and all(isinstance(getattr(m, n, None), nn.Module) for n in ("fc1", "act", "fc2")):
        between = (getattr(m, "drop1", nn.Identity()), getattr(m, "norm", nn.Identity()))
        if all(isinstance(b, (nn.Identity, nn.Dropout)) for b in between):
            yield "fc1", "act", "fc2"

"""int8 weights for the image side's linear layers on CPUs with VNNI / AMX (issue 15).

``packs(model)``: every ``nn.Linear`` weight and every ``nn.MultiheadAttention`` input
projection of the model, quantised once to int8 per output channel (symmetric, scale =
max |w| / 127) and packed for oneDNN's dynamic int8 matmul; kept on the model outside
its module tree and remade when a parameter changes. Under ``speed.int8_linears(packs)``
``speed.linear`` runs those weights as ``torch.ops.quantized.linear_dynamic``: the
activation quantised per call (per tensor, from its range), int32 accumulation, fp32 out.
Everything else (convolutions, norms, attention, the head) runs as in fp32. The model's
own parameters and state dict are untouched.

oneDNN's packing was the fastest of the three engines on a ViT-B/16 MLP layer (1601 x 768
-> 3072, one thread): 5.2x fp32 against 2.7x (fbgemm) and 3.4x (x86); see
``benchmarks/precision.py`` for whole models.
"""
from __future__ import annotations

import functools
import warnings

import torch
import torch.nn as nn

from . import cpu

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_PACKS = "_vocabseg_int8_packs"


def cpu_flags() -> tuple[str, ...]:
    """The int8 dot-product flags of this CPU (``INT8_FLAGS`` found in /proc/cpuinfo)."""
    return cpu.present(INT8_FLAGS)


@functools.lru_cache(maxsize=None)
def native_int8() -> bool:
    """Whether this CPU has int8 dot products (VNNI / AMX) and torch has the oneDNN
    quantised engine. Cached; tests monkeypatch it."""
    return bool(cpu_flags()) and "onednn" in torch.backends.quantized.supported_engines


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """fp32 [out, in] -> qint8 per output channel, symmetric: scale max|w_row| / 127."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # quantised tensor constructors are marked deprecated
        return torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)


def _pack(weight, bias):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "onednn"
    try:
        return torch.ops.quantized.linear_prepack(quantize_weight(weight),
                                                  None if bias is None else bias.detach().float())
    finally:
        torch.backends.quantized.engine = previous


def _linear_weights(model: nn.Module):
    for m in model.modules():
        if isinstance(m, nn.Linear):
            yield m.weight, m.bias
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            yield m.in_proj_weight, m.in_proj_bias


def packs(model: nn.Module) -> dict:
    """{id(weight): (weight, bias, packed)} for ``model``'s linear weights (see the module
    docstring), made once and remade when any parameter changes (identity, in-place version)."""
    stamp = tuple((id(p), p._version) for p in model.parameters())
    kept = model.__dict__.get(_PACKS)
    if kept is not None and kept[0] == stamp:
        return kept[1]
    out = {id(w): (w, b, _pack(w, b)) for w, b in _linear_weights(model)
           if w.is_floating_point() and w.dim() == 2 and w.device.type == "cpu"}
    model.__dict__[_PACKS] = (stamp, out)
    return out

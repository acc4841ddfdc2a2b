"""Mixed precision, shared by inference (``Segmenter(precision=...)``) and training
(``train.precision``): a name -> autocast dtype table, the context it selects, and
the run-time check of what the hardware runs natively.

At inference only the vocabulary-independent image side (``encode_image``) runs in
low precision (``image_side``); its outputs are cast back to fp32, so the head
(``classify`` / ``classify_at`` / ``image_stats`` / ``finalize``: the final
classification, the mask -> semantic sums, softmaxes) runs in fp32 on fp32 inputs.

bf16 on CPU runs the model's bf16 twin (``vocabseg.bf16``: bf16 weights, fp32 norms,
fused MLP activations) under bf16 autocast, with the attention calls of code we do not
own routed to ``speed.attention`` (``speed.BlockedAttention``).
Elsewhere (CUDA, fp16) the image side runs under autocast. int8 (CPU with VNNI / AMX)
runs the fp32 model with int8 linear weights (``engine.int8``).
"""
from __future__ import annotations

import contextvars
import functools
from contextlib import contextmanager, nullcontext

import torch

from .. import bf16, speed
from ..errors import UserError
from . import cpu, int8
from .agreement import MAX_MIOU_DROP, MEASURED, MIN_AGREEMENT, TRAINED, refusal  # noqa: F401
from .inference.image import map_tensors

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
CHOICES = ("fp32", "bf16", "fp16", "int8", "auto")     # what ``--precision`` accepts
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def autocast(device_type: str, precision: str):
    """``torch.autocast`` at ``precision``'s dtype on ``device_type``; nothing for fp32."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device_type, dtype=dtype) if dtype else nullcontext()


def cpu_flags() -> tuple[str, ...]:
    """The native-bf16 CPU flags of this machine (``BF16_FLAGS`` found in /proc/cpuinfo)."""
    return cpu.present(BF16_FLAGS)


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` runs bf16 matmuls natively: on CPU an ``avx512_bf16`` /
    ``amx_bf16`` flag (elsewhere than Linux: oneDNN's own check); on CUDA
    ``torch.cuda.is_bf16_supported()``. Cached; tests monkeypatch it."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    import os
    if os.path.exists("/proc/cpuinfo"):
        return bool(cpu_flags())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_measured(precision: str, preset: str | None) -> None:
    """A one-line ``UserError`` when ``precision`` is not offered for ``preset`` (``refusal``):
    argmax agreement under ``MIN_AGREEMENT`` or a held-out mIoU drop over ``MAX_MIOU_DROP``."""
    why = refusal(precision, preset)
    if why:
        raise UserError(f"precision {precision} is not offered for {preset}: {why}; use fp32")


def resolve(precision: str, device, preset: str | None = None) -> str:
    """The precision to run (``fp32`` / ``fp16`` / ``bf16`` / ``int8``) for a requested one on
    ``device`` for ``preset``: ``auto`` is bf16 where it is native and offered for ``preset``
    (``refusal``), else fp32. A precision the device does not run natively, or that agreed
    with fp32 on under 99 % of pixels for ``preset`` or lost it over 0.5 held-out mIoU points,
    is a one-line ``UserError`` saying what to use."""
    if precision not in CHOICES:
        raise UserError(f"unknown precision {precision!r}; use one of {', '.join(CHOICES)}")
    kind = torch.device(device).type
    if precision == "auto":
        return "bf16" if native_bf16(kind) and refusal("bf16", preset) is None else "fp32"
    out = _native(precision, kind)
    check_measured(out, preset)
    return out


def _native(precision: str, kind: str) -> str:
    if precision == "int8":
        if kind != "cpu" or not int8.native_int8():
            raise UserError(f"precision int8 needs a CPU with int8 dot products ({' or '.join(int8.INT8_FLAGS)}), "
                            f"which this {kind} lacks: there it is slower than fp32; use fp32 or auto")
        return precision
    if precision == "fp32" or kind == "cuda":
        return precision
    if precision == "fp16":
        raise UserError(f"precision fp16 is for CUDA devices only; on {kind} use bf16 (where native), auto or fp32")
    if not native_bf16(kind):
        raise UserError(f"precision bf16 needs native bf16 ({' or '.join(BF16_FLAGS)}), which this {kind} lacks: "
                        "there it is slower than fp32 and inexact; use fp32 or auto")
    return precision


INT8 = "int8"          # the image side's mode for int8 (no autocast dtype)
_IMAGE_DTYPE: contextvars.ContextVar = contextvars.ContextVar("vocabseg_image_dtype", default=None)


def to_fp32(x):
    """``x`` (an ``encode_image`` output) with every floating tensor as fp32."""
    return map_tensors(lambda t: t.float() if t.is_floating_point() else t, x)


@contextmanager
def image_side(model, precision: str):
    """While active (in this thread), ``model.encode_image`` runs under ``precision``'s
    autocast and returns fp32 features; everything else runs as called (fp32). The
    model's class is switched once to a subclass whose ``encode_image`` does this (as
    ``speed.use_fast_linears`` does for linears); outside the context it is the plain one."""
    if precision == "fp32":
        yield
        return
    if not getattr(type(model), "_image_side", False):
        model.__class__ = _image_side_class(type(model))
    token = _IMAGE_DTYPE.set(INT8 if precision == "int8" else PRECISIONS[precision])
    try:
        yield
    finally:
        _IMAGE_DTYPE.reset(token)


@functools.lru_cache(maxsize=None)
def _image_side_class(cls: type) -> type:
    def encode_image(self, images, *args, **kw):
        dtype = _IMAGE_DTYPE.get()
        if dtype is None:
            return cls.encode_image(self, images, *args, **kw)
        if dtype is INT8:                                          # fp32 model, int8 linear weights
            with speed.int8_linears(int8.packs(self)):
                return cls.encode_image(self, images, *args, **kw)
        if dtype == torch.bfloat16 and images.device.type == "cpu":
            with torch.autocast("cpu", dtype=torch.bfloat16), speed.BlockedAttention():   # casts only where fp32 meets bf16
                out = cls.encode_image(bf16.twin(self), images.to(torch.bfloat16), *args, **kw)
            return to_fp32(out)
        with torch.autocast(images.device.type, dtype=dtype):
            out = cls.encode_image(self, images, *args, **kw)
        return to_fp32(out)
    return type(cls.__name__, (cls,), {"encode_image": encode_image, "_image_side": True,
                                       "__module__": cls.__module__, "__doc__": cls.__doc__})

"""Mixed precision, shared by inference (``Segmenter(precision=...)``) and training
(``train.precision``): a name -> autocast dtype table and the context it selects."""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device_type: str, precision: str):
    """``torch.autocast`` at ``precision``'s dtype on ``device_type``; nothing for fp32."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device_type, dtype=dtype) if dtype else nullcontext()

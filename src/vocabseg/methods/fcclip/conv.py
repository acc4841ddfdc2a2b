"""Convolution followed by a normalisation and an optional activation
(detectron2's ``Conv2d(..., norm=, activation=)``)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


class ConvNorm(nn.Module):
    """``conv`` (no bias when normalised) -> ``norm`` (GroupNorm with ``groups``,
    or none when ``groups`` is 0) -> ``activation``. Parameters: ``conv.weight``
    (``conv.bias`` without norm), ``norm.weight``, ``norm.bias``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, groups: int = 32,
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=groups == 0)
        self.norm = nn.GroupNorm(groups, out_ch) if groups else nn.Identity()
        self.activation = activation
        nn.init.kaiming_uniform_(self.conv.weight, a=1)      # "c2_xavier_fill"
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return self.activation(x) if self.activation is not None else x

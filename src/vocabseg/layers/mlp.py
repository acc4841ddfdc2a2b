"""A plain multi-layer perceptron (DETR's "MLP")."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    """``num_layers`` affine maps with ReLU between them (none after the last);
    ``conv=True`` uses 1x1 convolutions on [B, C, H, W] instead of Linear on [..., C].
    Parameters are ``layers.<i>.weight / bias``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, conv: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError("an MLP needs at least one layer")
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        make = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if conv else nn.Linear
        self.layers = nn.ModuleList(make(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Everything but the last affine map: the input of ``layers[-1]``."""
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[-1](self.hidden(x))

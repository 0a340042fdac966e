"""A width-scalable MLP for muP: ``input``, ``hidden.{i}`` and ``readout`` Linear layers.

The layout of microsoft/mup's test MLP (``mup/test/models.py``: an input Linear
from a fixed input size to ``width``, width x width hidden Linears, and a
readout from ``width`` to a fixed output size). Only ``width`` changes between
a base model and a wide one, so every hidden matrix has two "infinite"
dimensions and the input and readout weights one each.
"""
from __future__ import annotations

import torch
from torch import nn


class MuMLP(nn.Module):
    def __init__(self, width: int = 256, depth: int = 2, in_features: int = 3072, out_features: int = 10,
                 bias: bool = True):
        super().__init__()
        self.width = width
        self.input = nn.Linear(in_features, width, bias=bias)
        self.hidden = nn.ModuleList(nn.Linear(width, width, bias=bias) for _ in range(depth))
        self.readout = nn.Linear(width, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.input(x))
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.readout(x)

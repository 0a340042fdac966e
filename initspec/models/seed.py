"""The networks of the seed notebook."""
from __future__ import annotations

import torch
from torch import nn


def mlp(in_features: int = 4, hidden: int = 3, out_features: int = 1) -> nn.Sequential:
    """``nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))`` (seed cell 1)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))


def shared_net() -> nn.Sequential:
    """Two *separate* ``Linear(1, 1, bias=False)``; the seed_shared spec ties them (seed cell 4)."""
    return nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))


class MyModel(nn.Module):
    """Seed cell 1b: ``weight1`` is a Parameter, ``weight2`` a plain tensor attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.weight1 = nn.Parameter(torch.rand(20, 20))
        self.weight2 = torch.rand(20, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - the seed's is empty
        return x

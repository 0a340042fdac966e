"""A width-scalable MLP for muP: ``input``, ``hidden.{i}`` and ``readout`` Linear layers.

The layout of microsoft/mup's test MLP (``mup/test/models.py``: an input Linear
from a fixed input size to ``width``, width x width hidden Linears, and a
readout from ``width`` to a fixed output size). Only ``width`` changes between
a base model and a wide one, so every hidden matrix has two "infinite"
dimensions and the input and readout weights one each.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from torch import nn

from ..errors import InitSpecError


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


# Parameter names whose fan_in grows with width, as the mup preset names them (hidden and readout weights).
HIDDEN = ("hidden.*.weight", "transformer.h.*.weight")
READOUT = ("readout.weight", "lm_head.weight")


def mup_param_groups(model: nn.Module, lr: float, *, width: float | None = None,
                     base_width: float = 256) -> list[dict]:
    """Optimizer parameter groups with muP's Adam learning rates for a model initialized by the mup preset.

    m = width / base_width (``width`` defaults to ``model.width``). Following Tensor Programs V
    (Yang et al. 2022), Table 3, and microsoft/mup's ``MuAdam``:

        hidden weights (two width dims: hidden.*.weight, 2-D transformer.h.*.weight)   lr / m
        readout weight (readout.weight, an untied lm_head.weight)                      lr / m
        input weights, biases, norm weights                                            lr

    MuAdam leaves the readout's lr alone because ``MuReadout`` divides the readout's input by m in its
    forward; a plain ``nn.Linear`` readout carries that 1/m in its init (the preset's N(0, sigma/m)) and,
    since Adam's step does not depend on the gradient's scale, in its lr. A readout tied to the input
    embedding is the input weight (named ``transformer.wte.weight``): lr. Pass the same ``base_width``
    as the spec's ``vars.base_width``.
    """
    width = getattr(model, "width", None) if width is None else width
    if not isinstance(width, (int, float)) or width <= 0 or base_width <= 0:
        raise InitSpecError("width", f"mup_param_groups needs positive widths (width {width!r}, base_width "
                            f"{base_width!r})", "pass width= (the model's width) when the model has no .width")
    m = width / base_width
    scaled, plain = [], []
    for name, p in model.named_parameters():
        hidden = p.ndim == 2 and any(fnmatchcase(name, pattern) for pattern in HIDDEN)
        (scaled if hidden or name in READOUT else plain).append(p)
    return [group for group in ({"params": plain, "lr": lr}, {"params": scaled, "lr": lr / m}) if group["params"]]

"""Adding steps to initspec from your own code: one file, registered on import.

    import custom_steps            # registers rademacher and small_init
    initspec.apply(model, {"rules": {"w": {"match": "*.weight", "init": {"name": "rademacher", "scale": 0.02}}}})

A step is ``f(t, **args) -> Op``: ``t`` is the tensor as planning sees it
(name, global shape, fans, dtype), ``args`` are evaluated and checked against
their declarations. A step built on an existing primitive (``small_init``) is
only its formula; a new way of filling (``rademacher``) is one
:class:`initspec.Primitive` stating how it fills, whether it draws from the
tensor's stream, and the bounds and std of what it writes.
"""
from __future__ import annotations

import math

import torch

import initspec
from initspec.primitives import NORMAL, Block, Op


@initspec.register_step("small_init")
def small_init(t: initspec.TensorInfo) -> Op:
    """w ~ N(0, 2 / (5 d)), d = fan_in (Nguyen & Salazar 2019, "Transformers without Tears")."""
    std = math.sqrt(2 / (5 * t.fan_in))
    return NORMAL.op(label=f"small_init = N(0, {std:.4g})", mean=0.0, std=std)


def _fill_rademacher(out: torch.Tensor, op: Op, block: Block) -> None:
    """w = ±scale with probability 1/2 each, from this block's own generator."""
    out.bernoulli_(0.5, generator=block.generator()).mul_(2 * op["scale"]).sub_(op["scale"])


RADEMACHER = initspec.Primitive(
    "rademacher", _fill_rademacher,
    random=True,                                                  # draws from the tensor's stream
    bounds=lambda op, before: (-op["scale"], op["scale"]),        # proves the fill finite: no staging
    std=lambda op, before, shape: op["scale"],                    # the report's expected std
)


@initspec.register_step("rademacher", args={"scale": initspec.Arg("number", 1.0, check="positive")})
def rademacher(t: initspec.TensorInfo, scale: float) -> Op:
    """w = ±scale with probability 1/2 each (random signs: binary and random-feature networks)."""
    return RADEMACHER.op(scale=scale)

"""Parts of a tensor: a rule's ``part`` cuts one dimension into pieces, each initialized on its own.

    part: {of: 4}                           # dim 0 in 4 equal parts (LSTM gates), each its own tensor
    part: {of: 4, index: 1}                 # only the second quarter (the forget gate)
    part: {dim: 1, of: 3, index: 0}         # GPT-2's fused c_attn (in, 3 * out): the q columns
    part: {sizes: ["n_heads * head_dim", "n_kv_heads * head_dim", "n_kv_heads * head_dim"], index: [1, 2]}

A part is filled as if it were the tensor: fans, ``shape`` and ``numel`` come from
its shape, whole-tensor steps (``orthogonal``, ``eye``) run on it alone, and it
draws from its own stream (the tensor's name plus ``@dim:start:stop``), so adding
a part rule changes no value outside its part.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from .errors import Problem
from .expr import ExprError, evaluate
from .sharding import Region


class TensorPart(NamedTuple):
    """Indices ``[start, stop)`` along dimension ``dim`` of a tensor."""

    dim: int
    start: int
    stop: int

    def shape_in(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[:self.dim] + (self.stop - self.start,) + shape[self.dim + 1:]

    def stream_name(self, name: str) -> str:
        """The part's stream key: its values depend on nothing outside it."""
        return f"{name}@{self.dim}:{self.start}:{self.stop}"

    def key(self, name: str) -> str:
        """How reports name the part: ``bias_ih_l0[16:32]``."""
        return name + self.label

    def index(self, ndim: int) -> tuple[slice, ...]:
        """The part as an index into the tensor."""
        return (slice(None),) * self.dim + (slice(self.start, self.stop),) + (slice(None),) * (ndim - self.dim - 1)

    @property
    def label(self) -> str:
        """``[16:32]`` along dim 0, ``[:, 0:768]`` along dim 1."""
        return "[" + ":, " * self.dim + f"{self.start}:{self.stop}]"


def cut(part: Any, shape: tuple[int, ...], variables: Mapping[str, Any], path: str) -> tuple[list[TensorPart], list[Problem]]:
    """The pieces a rule's ``part`` selects in a tensor of ``shape`` (problems at ``path``: ``...rules.r.part``)."""
    if part.dim >= len(shape):
        return [], [Problem(f"{path}.dim", f"dim {part.dim} is beyond a tensor of shape {list(shape)} "
                            f"({len(shape)} dimension{'s' if len(shape) != 1 else ''})",
                            f"use a dim below {len(shape)}, or restrict the rule with ndim:")]
    length = shape[part.dim]
    if part.of is not None:
        if length % part.of:
            return [], [Problem(f"{path}.of", f"of: {part.of} does not divide dim {part.dim} of shape {list(shape)} "
                                f"({length})", f"use a divisor of {length}, or give sizes: explicitly")]
        sizes = [length // part.of] * part.of
    else:
        sizes, problems = _sizes(part.sizes, shape, variables, path)
        if problems:
            return [], problems
        if sum(sizes) != length:
            return [], [Problem(f"{path}.sizes", f"sizes {sizes} sum to {sum(sizes)}, but dim {part.dim} of shape "
                                f"{list(shape)} is {length}", "make the sizes add up to the dimension")]
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    pieces = [TensorPart(part.dim, a, b) for a, b in zip(bounds, bounds[1:])]
    if part.index is None:
        return pieces, []
    wanted = part.index if isinstance(part.index, list) else [part.index]
    bad = [i for i in wanted if not 0 <= i < len(pieces)]
    if bad:
        return [], [Problem(f"{path}.index", f"index {bad[0]} is out of range: the part has {len(pieces)} pieces "
                            f"(0 to {len(pieces) - 1})", f"use an index below {len(pieces)}")]
    return [pieces[i] for i in dict.fromkeys(wanted)], []


def _sizes(texts: list[Any], shape: tuple[int, ...], variables: Mapping[str, Any],
           path: str) -> tuple[list[int], list[Problem]]:
    names = {**variables, "shape": tuple(shape), "numel": math.prod(shape), "ndim": len(shape)}
    sizes, problems = [], []
    for i, text in enumerate(texts):
        try:
            value = evaluate(text, names) if isinstance(text, str) else text
        except ExprError as exc:
            problems.append(Problem(f"{path}.sizes.{i}", exc.what, exc.fix))
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(Problem(f"{path}.sizes.{i}", f"size {text!r} is {value!r}, not a whole number >= 0",
                                    "write an expression that gives an integer (e.g. 'n_heads * head_dim')"))
            continue
        sizes.append(value)
    return sizes, problems


def part_region(region: Region, part: TensorPart) -> Region | None:
    """The piece of ``region`` (what this process holds of the tensor) inside ``part``, in the
    part's own coordinates; None when this process holds none of it."""
    d = part.dim
    offset, size = region.offset[d], region.local.shape[d]
    start, stop = max(offset, part.start), min(offset + size, part.stop)
    if start >= stop:
        return None
    local = region.local.narrow(d, start - offset, stop - start)
    new_offset = region.offset[:d] + (start - part.start,) + region.offset[d + 1:]
    return Region(local, new_offset, part.shape_in(region.global_shape))

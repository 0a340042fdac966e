"""What a step may know about the tensor it initializes."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

from .expr import ExprError

_INT_COMPONENT = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_of(name: str) -> int | None:
    """The first integer component of a dotted name (``h.3.attn.weight`` -> 3), or None."""
    found = _INT_COMPONENT.search(name)
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as planning sees it: canonical name, global shape, owner."""

    name: str
    shape: tuple[int, ...]
    dtype: Any
    owner_class: type | None = None
    owner_attrs: Mapping[str, Any] = field(default_factory=dict)   # what the step declared it reads
    transposed: bool = False
    captures: tuple[str, ...] = ()     # what each * / ? of the rule's pattern matched in the name
    part: Any = None                   # the TensorPart this is, when a rule fills a part (shape is the part's)
    whole_shape: tuple[int, ...] = ()  # then: the whole tensor's shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def fans(self) -> tuple[int, int]:
        """(fan_in, fan_out) as ``torch.nn.init``: dim 1 is the input for >= 2-D."""
        if self.ndim < 2:
            raise ExprError(
                f"fan_in/fan_out are undefined for {self.ndim}-D tensor {self.name!r} (shape {list(self.shape)})",
                "use the rule's 'ndim: 2' filter or an explicit std for 1-D parameters")
        receptive = math.prod(self.shape[2:])
        fan_in, fan_out = self.shape[1] * receptive, self.shape[0] * receptive
        return (fan_out, fan_in) if self.transposed else (fan_in, fan_out)

    @property
    def fan_in(self) -> int:
        return self.fans()[0]

    @property
    def fan_out(self) -> int:
        return self.fans()[1]

    @property
    def layer(self) -> int:
        """The first integer component of the name (``h.3.attn.weight`` -> 3)."""
        layer = layer_of(self.name)
        if layer is None:
            raise ExprError(f"'layer' is undefined for {self.name!r}: its name has no integer component",
                            "restrict the rule to per-layer parameters (e.g. 'h.*.attn.c_proj.weight')")
        return layer


class ExprNames(Mapping):
    """Names an expression may use: tensor facts (computed on demand) and vars."""

    TENSOR_NAMES = ("fan_in", "fan_out", "numel", "ndim", "shape", "layer")

    def __init__(self, info: TensorInfo, variables: Mapping[str, Any]):
        self.info = info
        self.variables = variables

    def __getitem__(self, key: str) -> Any:
        if key in self.TENSOR_NAMES:
            return getattr(self.info, key) if key != "shape" else tuple(self.info.shape)
        return self.variables[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.TENSOR_NAMES
        yield from self.variables

    def __len__(self) -> int:
        return len(self.TENSOR_NAMES) + len(self.variables)

    def __contains__(self, key: object) -> bool:
        return key in self.TENSOR_NAMES or key in self.variables

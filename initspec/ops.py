"""Primitive operations: what a resolved step does to a tensor.

Every catalog step (``kaiming_normal``, ``lecun_normal`` ...) resolves, per
parameter, into one :class:`Op` with concrete numbers. The executor only
knows these primitives. Chunked ops run on any block of whole rows and draw
from the block's own generator; whole ops need the full tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

RANDOM_CHUNKED = frozenset({"normal", "uniform", "trunc_normal"})
TRANSFORMS = frozenset({"scale", "add", "clamp", "zero_below", "padding_zero"})
CHUNKED = RANDOM_CHUNKED | TRANSFORMS | {"constant", "checkpoint"}
WHOLE = frozenset({"orthogonal", "sparse", "eye", "dirac", "custom"})

# |z| of torch's Box-Muller normal_ is below sqrt(-2 ln 2**-53) = 8.6 in float64.
NORMAL_BOUND = 9.0


@dataclass(frozen=True, eq=False)
class Op:
    """A primitive with concrete arguments, e.g. ``Op("normal", {"mean": 0, "std": 0.02})``."""

    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    fn: Callable[..., Any] | None = None  # custom ops only
    origin: str = ""                       # config path of the step it came from

    def __getitem__(self, key: str) -> Any:
        return self.args[key]

    def __str__(self) -> str:
        return self.label or self.kind

    @property
    def random(self) -> bool:
        return self.kind in RANDOM_CHUNKED or self.kind in ("orthogonal", "sparse", "custom")


def op(kind: str, label: str | None = None, fn: Callable | None = None, **args: Any) -> Op:
    if label is None:
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in args.items())
        label = f"{kind}({inner})" if inner else kind
    return Op(kind, args, label, fn)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


def trunc_normal_std(std: float, a: float, b: float) -> float:
    """Std of N(0, std²) truncated to [a*std, b*std] (a, b in units of std)."""
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    z = cdf(b) - cdf(a)
    if z <= 0:
        return 0.0
    fa = 0.0 if math.isinf(a) else a * phi(a)
    fb = 0.0 if math.isinf(b) else b * phi(b)
    var = 1 + (fa - fb) / z - ((phi(a) - phi(b)) / z) ** 2
    return std * math.sqrt(max(var, 0.0))


def expected_std(ops: tuple[Op, ...], shape: tuple[int, ...]) -> float | None:
    """The std a pipeline should produce, when it is known from its formulas."""
    std: float | None = None
    numel = math.prod(shape) if shape else 1
    if numel == 0:
        return None  # nothing to measure
    for o in ops:
        k = o.kind
        if k == "normal":
            std = o["std"]
        elif k == "uniform":
            std = (o["b"] - o["a"]) / math.sqrt(12)
        elif k == "trunc_normal":
            std = trunc_normal_std(o["std"], o["a"], o["b"])
        elif k == "constant":
            std = 0.0
        elif k == "scale":
            std = None if std is None else std * abs(o["by"])
        elif k == "add":
            pass
        elif k == "orthogonal":
            rows = shape[0]
            cols = numel // rows if rows else 0
            std = o["gain"] / math.sqrt(max(rows, cols)) if rows and cols else None
        elif k in ("eye", "dirac"):
            if k == "eye":
                ones = min(shape[0], shape[1])
            else:
                ones = o["groups"] * min(shape[0] // o["groups"], shape[1])
            mean = ones / numel
            std = math.sqrt(max(mean - mean * mean, 0.0))
        elif k == "sparse":
            keep = 1 - math.ceil(o["sparsity"] * shape[0]) / shape[0]
            std = o["std"] * math.sqrt(keep)
        else:
            std = None
    return std


def value_bounds(ops: tuple[Op, ...]) -> tuple[float, float] | None:
    """An interval every produced value lies in, or None when it is not known.

    Used to prove at plan time that a pipeline cannot produce inf/NaN, so it
    can be filled in place; other pipelines are staged and checked.
    """
    lo_hi: tuple[float, float] | None = None
    for o in ops:
        k = o.kind
        if k == "normal":
            lo_hi = (o["mean"] - NORMAL_BOUND * o["std"], o["mean"] + NORMAL_BOUND * o["std"])
        elif k == "uniform":
            lo_hi = (o["a"], o["b"])
        elif k == "trunc_normal":
            lo_hi = (o["mean"] + o["a"] * o["std"], o["mean"] + o["b"] * o["std"])
        elif k == "constant":
            lo_hi = (o["value"], o["value"])
        elif k in ("eye", "dirac"):
            lo_hi = (0.0, 1.0)
        elif k == "orthogonal":
            lo_hi = (-abs(o["gain"]), abs(o["gain"]))
        elif k == "sparse":
            lo_hi = (-NORMAL_BOUND * o["std"], NORMAL_BOUND * o["std"])
        elif lo_hi is None:
            return None  # transform on unknown values, checkpoint, custom
        elif k == "scale":
            a, b = lo_hi[0] * o["by"], lo_hi[1] * o["by"]
            lo_hi = (min(a, b), max(a, b))
        elif k == "add":
            lo_hi = (lo_hi[0] + o["value"], lo_hi[1] + o["value"])
        elif k == "clamp":
            lo = lo_hi[0] if o["min"] is None else max(lo_hi[0], o["min"])
            hi = lo_hi[1] if o["max"] is None else min(lo_hi[1], o["max"])
            lo_hi = (min(lo, hi), max(lo, hi))
        elif k in ("zero_below", "padding_zero"):
            lo_hi = (min(lo_hi[0], 0.0), max(lo_hi[1], 0.0))
        else:
            return None
    return lo_hi


def reads_existing(ops: tuple[Op, ...]) -> bool:
    """True when the pipeline starts by transforming the tensor's current values."""
    return bool(ops) and ops[0].kind in TRANSFORMS


def starts_custom(ops: tuple[Op, ...]) -> bool:
    """A custom function first: it receives the current values (zeros on a fresh empty build)."""
    return bool(ops) and ops[0].kind == "custom"


def needs_whole(ops: tuple[Op, ...]) -> bool:
    return any(o.kind in WHOLE for o in ops)

"""Primitives: the operations that put values into a tensor.

Every catalog step (``kaiming_normal``, ``lecun_normal`` ...) resolves, per
tensor, into :class:`Op` s: a :class:`Primitive` with concrete numbers. A
primitive states in one place everything planning and execution need:

* ``fill(out, op, block)``: how it writes ``out`` in place;
* ``random``: whether it draws from the tensor's stream;
* ``whole``: whether it needs the whole tensor at once, or runs on any block
  of whole rows (one stream chunk: then a shard computes only its rows);
* ``input``: what must be in ``out`` before it runs: ``"none"`` (it writes
  every value), ``"values"`` (it transforms the current values) or
  ``"values_or_zeros"`` (a custom function: current values, or zeros for a
  tensor that had none);
* ``draws``: for a random row primitive, how it consumes its generator
  (``"per_value"``: one draw per value; ``"normal"``: torch's ``normal_``,
  16 values at a time), so a shard can skip the draws of rows it does not hold;
* ``bounds(op, before)``: an interval every value lies in afterwards, given
  the interval before (None: unknown). Proves at plan time that a pipeline
  cannot produce inf/NaN;
* ``std(op, before, shape)``: the std the values have afterwards, when the
  formula knows it (the report compares it with the measured std);
* ``data_pass(batch_pass)``: for a data-dependent primitive (``lsuv``), what runs
  once every tensor is filled, with the caller's batch; it must be the last op of
  its pipeline, and ``fill`` is not called for it.

The planner and the executor ask the primitive; they never switch on its name.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .streams import Stream, stream_seed

Interval = tuple[float, float]

# |z| of torch's Box-Muller normal_ is below sqrt(-2 ln 2**-53) = 8.6 in float64.
NORMAL_BOUND = 9.0

RNG_LOCK = threading.RLock()  # guards the global RNG while legacy code runs under fork_rng


@dataclass(frozen=True)
class Block:
    """Rows ``[first, end)`` of the tensor being filled, and where step ``step`` draws them from.

    ``chunk`` is the stream chunk (-1 for a whole-tensor primitive). ``drawn`` is a
    generator already advanced to these rows (a shard that cuts a chunk).
    """

    first: int
    end: int
    stream: Stream
    step: int
    chunk: int
    drawn: torch.Generator | None = None

    def generator(self) -> torch.Generator:
        return self.drawn if self.drawn is not None else self.stream.generator(self.step, self.chunk)

    def seed(self) -> int:
        """The 64-bit seed of this block's generator (for code that seeds the global RNG)."""
        return stream_seed(self.stream.seed, self.stream.name, self.step, self.chunk)


def _unknown_bounds(op: Op, before: Interval | None) -> Interval | None:
    return None


def _unknown_std(op: Op, before: float | None, shape: tuple[int, ...]) -> float | None:
    return None


@dataclass(frozen=True, eq=False)
class Primitive:
    """One way of producing values; see the module docstring for each field."""

    name: str
    fill: Callable[[torch.Tensor, Op, Block], None]
    random: bool = False
    whole: bool = False
    input: str = "none"
    draws: str | None = None
    bounds: Callable[[Op, Interval | None], Interval | None] = _unknown_bounds
    std: Callable[[Op, float | None, tuple[int, ...]], float | None] = _unknown_std
    example: Mapping[str, Any] = field(default_factory=dict)   # arguments for the partial-draw self-check
    data_pass: Callable[[DataPass], list[dict[str, Any]]] | None = None

    def op(self, label: str | None = None, **args: Any) -> Op:
        """This primitive with concrete arguments; ``label`` is how plans show it."""
        if label is None:
            inner = ", ".join(f"{k}={_fmt(v)}" for k, v in args.items())
            label = f"{self.name}({inner})" if inner else self.name
        return Op(self, args, label)


@dataclass(frozen=True)
class DataTarget:
    """A tensor whose pipeline ends with a data-dependent op."""

    name: str               # the entry's canonical name
    op: Op
    module: Any             # the nn.Module that owns it
    module_name: str
    attr: str               # its key in module._parameters


@dataclass(frozen=True)
class DataPass:
    """What a data-dependent primitive's ``data_pass`` gets: the filled model, the batch, its targets."""

    model: Any
    batch: Any
    targets: tuple[DataTarget, ...]
    seed: int


def fill_ops(ops: tuple[Op, ...]) -> tuple[Op, ...]:
    """The ops the executor fills with (a data-dependent op runs later, in its data pass)."""
    return tuple(o for o in ops if o.primitive.data_pass is None)


@dataclass(frozen=True, eq=False)
class Op:
    """A primitive with concrete arguments, e.g. ``NORMAL.op(mean=0.0, std=0.02)``."""

    primitive: Primitive
    args: Mapping[str, Any]
    label: str = ""
    origin: str = ""        # config path of the step it came from

    @property
    def kind(self) -> str:
        return self.primitive.name

    def __getitem__(self, key: str) -> Any:
        return self.args[key]

    def __str__(self) -> str:
        return self.label or self.kind


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


# ------------------------------------------------------------------- pipelines

def expected_std(ops: tuple[Op, ...], shape: tuple[int, ...]) -> float | None:
    """The std a pipeline should produce, when its formulas know it."""
    if math.prod(shape) == 0:
        return None  # nothing to measure
    std: float | None = None
    for o in ops:
        std = o.primitive.std(o, std, shape)
    return std


def value_bounds(ops: tuple[Op, ...]) -> Interval | None:
    """An interval every produced value lies in, or None when it is not known.

    Used to prove at plan time that a pipeline cannot produce inf/NaN, so it
    can be filled in place; other pipelines are staged and checked.
    """
    bounds: Interval | None = None
    for o in ops:
        bounds = o.primitive.bounds(o, bounds)
        if bounds is None:
            return None
    return bounds


def reads_values(ops: tuple[Op, ...]) -> bool:
    """True when the pipeline starts by transforming the tensor's current values."""
    return bool(ops) and ops[0].primitive.input == "values"


def starts_custom(ops: tuple[Op, ...]) -> bool:
    """A custom function first: it receives the current values (zeros on a fresh empty build)."""
    return bool(ops) and ops[0].primitive.input == "values_or_zeros"


def needs_whole(ops: tuple[Op, ...]) -> bool:
    return any(o.primitive.whole for o in ops)


# -------------------------------------------------------------------- samplers

def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def trunc_normal_std(std: float, a: float, b: float) -> float:
    """Std of N(0, std²) truncated to [a·std, b·std] (a, b in units of std)."""
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    z = _norm_cdf(b) - _norm_cdf(a)
    if z <= 0:
        return 0.0
    fa = 0.0 if math.isinf(a) else a * phi(a)
    fb = 0.0 if math.isinf(b) else b * phi(b)
    var = 1 + (fa - fb) / z - ((phi(a) - phi(b)) / z) ** 2
    return std * math.sqrt(max(var, 0.0))


def _fill_normal(out: torch.Tensor, op: Op, block: Block) -> None:
    out.normal_(op["mean"], op["std"], generator=block.generator())


def _fill_uniform(out: torch.Tensor, op: Op, block: Block) -> None:
    out.uniform_(op["a"], op["b"], generator=block.generator())


def _fill_trunc_normal(out: torch.Tensor, op: Op, block: Block) -> None:
    """Inverse-CDF sampling: u ~ U(2Φ(a) - 1, 2Φ(b) - 1), w = mean + std·√2·erfinv(u), as torch's trunc_normal_."""
    lo, hi = _norm_cdf(op["a"]), _norm_cdf(op["b"])
    out.uniform_(2 * lo - 1, 2 * hi - 1, generator=block.generator())
    out.erfinv_().mul_(op["std"] * math.sqrt(2.0)).add_(op["mean"])
    out.clamp_(op["mean"] + op["a"] * op["std"], op["mean"] + op["b"] * op["std"])


NORMAL = Primitive(
    "normal", _fill_normal, random=True, draws="normal",
    bounds=lambda op, before: (op["mean"] - NORMAL_BOUND * op["std"], op["mean"] + NORMAL_BOUND * op["std"]),
    std=lambda op, before, shape: op["std"], example={"mean": 0.5, "std": 2.0})

UNIFORM = Primitive(
    "uniform", _fill_uniform, random=True, draws="per_value",
    bounds=lambda op, before: (op["a"], op["b"]),
    std=lambda op, before, shape: (op["b"] - op["a"]) / math.sqrt(12), example={"a": -1.0, "b": 3.0})

TRUNC_NORMAL = Primitive(
    "trunc_normal", _fill_trunc_normal, random=True, draws="per_value",
    bounds=lambda op, before: (op["mean"] + op["a"] * op["std"], op["mean"] + op["b"] * op["std"]),
    std=lambda op, before, shape: trunc_normal_std(op["std"], op["a"], op["b"]),
    example={"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0})

CONSTANT = Primitive(
    "constant", lambda out, op, block: out.fill_(op["value"]),
    bounds=lambda op, before: (op["value"], op["value"]), std=lambda op, before, shape: 0.0)


# ------------------------------------------------------------------ transforms

def _scaled(op: Op, before: Interval | None) -> Interval | None:
    if before is None:
        return None
    a, b = before[0] * op["by"], before[1] * op["by"]
    return min(a, b), max(a, b)


def _clamped(op: Op, before: Interval | None) -> Interval | None:
    if before is None:
        return None
    lo = before[0] if op["min"] is None else max(before[0], op["min"])
    hi = before[1] if op["max"] is None else min(before[1], op["max"])
    return min(lo, hi), max(lo, hi)


def _with_zero(op: Op, before: Interval | None) -> Interval | None:
    return None if before is None else (min(before[0], 0.0), max(before[1], 0.0))


def _fill_padding_zero(out: torch.Tensor, op: Op, block: Block) -> None:
    index = op["index"]
    if index is not None and block.first <= index < block.end:
        out[index - block.first].zero_()


SCALE = Primitive(
    "scale", lambda out, op, block: out.mul_(op["by"]), input="values", bounds=_scaled,
    std=lambda op, before, shape: None if before is None else before * abs(op["by"]))

ADD = Primitive(
    "add", lambda out, op, block: out.add_(op["value"]), input="values",
    bounds=lambda op, before: None if before is None else (before[0] + op["value"], before[1] + op["value"]),
    std=lambda op, before, shape: before)

CLAMP = Primitive("clamp", lambda out, op, block: out.clamp_(op["min"], op["max"]), input="values",
                  bounds=_clamped)

ZERO_BELOW = Primitive(
    "zero_below", lambda out, op, block: out.masked_fill_(out.abs() < op["threshold"], 0.0), input="values",
    bounds=_with_zero)

PADDING_ZERO = Primitive("padding_zero", _fill_padding_zero, input="values", bounds=_with_zero)


# ----------------------------------------------------------------- whole tensor

def _fill_orthogonal(out: torch.Tensor, op: Op, block: Block) -> None:
    torch.nn.init.orthogonal_(out, op["gain"], generator=block.generator())


def _orthogonal_std(op: Op, before: float | None, shape: tuple[int, ...]) -> float | None:
    """A (semi-)orthogonal rows x cols matrix times gain has std gain / sqrt(max(rows, cols))."""
    rows = shape[0]
    cols = math.prod(shape) // rows if rows else 0
    return op["gain"] / math.sqrt(max(rows, cols)) if rows and cols else None


def _fill_sparse(out: torch.Tensor, op: Op, block: Block) -> None:
    gen = block.generator()
    rows, cols = out.shape
    out.normal_(0.0, op["std"], generator=gen)
    zeros = math.ceil(op["sparsity"] * rows)
    if zeros:
        order = torch.rand((rows, cols), generator=gen, device=out.device).argsort(dim=0)[:zeros]
        out.scatter_(0, order, 0.0)


def _sparse_std(op: Op, before: float | None, shape: tuple[int, ...]) -> float | None:
    keep = 1 - math.ceil(op["sparsity"] * shape[0]) / shape[0]
    return op["std"] * math.sqrt(keep)


def _ones_std(ones: int, numel: int) -> float:
    """Std of a 0/1 tensor with ``ones`` ones."""
    mean = ones / numel
    return math.sqrt(max(mean - mean * mean, 0.0))


def _fill_custom(out: torch.Tensor, op: Op, block: Block) -> None:
    """``fn(out, **kwargs)``, with the block's generator when ``fn`` takes one, else under a seeded, forked global RNG."""
    fn, kwargs = op["fn"], dict(op["kwargs"])
    if op["takes_generator"]:
        fn(out, **kwargs, generator=block.generator())
        return
    with RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(block.seed())
        fn(out, **kwargs)


ORTHOGONAL = Primitive("orthogonal", _fill_orthogonal, random=True, whole=True,
                       bounds=lambda op, before: (-abs(op["gain"]), abs(op["gain"])), std=_orthogonal_std)

SPARSE = Primitive("sparse", _fill_sparse, random=True, whole=True,
                   bounds=lambda op, before: (-NORMAL_BOUND * op["std"], NORMAL_BOUND * op["std"]), std=_sparse_std)

EYE = Primitive("eye", lambda out, op, block: torch.nn.init.eye_(out), whole=True,
                bounds=lambda op, before: (0.0, 1.0),
                std=lambda op, before, shape: _ones_std(min(shape[0], shape[1]), math.prod(shape)))

DIRAC = Primitive("dirac", lambda out, op, block: torch.nn.init.dirac_(out, op["groups"]), whole=True,
                  bounds=lambda op, before: (0.0, 1.0),
                  std=lambda op, before, shape: _ones_std(op["groups"] * min(shape[0] // op["groups"], shape[1]),
                                                          math.prod(shape)))

CUSTOM = Primitive("custom", _fill_custom, random=True, whole=True, input="values_or_zeros")


def custom_op(fn: Callable[..., Any], label: str, **kwargs: Any) -> Op:
    """An op that calls ``fn(tensor, **kwargs)`` on the whole tensor (``fn:`` steps use it).

    ``fn`` fills in place; when it takes a ``generator`` keyword it receives the
    tensor's own stream, else it runs under a forked global RNG seeded from it.
    """
    import inspect
    try:
        takes_generator = "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_generator = False
    return CUSTOM.op(label=label, fn=fn, kwargs=kwargs, takes_generator=takes_generator)

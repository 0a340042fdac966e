"""The step registry: every name a spec's ``init`` can use, and the one contract they share.

A step is a function ``f(t: TensorInfo, **args) -> Op | sequence of Ops``. It
checks its arguments against the tensor (raising :class:`StepArgError`) and
returns :class:`~initspec.primitives.Op` s with concrete numbers. The built-in
steps (``catalog.py``) and steps registered from Python follow the same
contract::

    @register_step("block_orthogonal", args={"blocks": Arg("int"), "gain": Arg("number", 1.0)})
    def block_orthogonal(t, blocks, gain): ...

A step declares what it reads of a tensor beyond its shape and dtype
(``reads``: ``"name"``, ``"layer"``, ``"owner.<attribute>"``); planning caches
a step's result across tensors that agree on exactly those facts.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import StepArgError, suggest
from .primitives import Op

REQUIRED = object()
ARG_KINDS = ("number", "int", "choice", "str", "bool")
CHECKS = {
    "positive": ("> 0", lambda v: v > 0),
    "nonnegative": (">= 0", lambda v: v >= 0),
    "fraction": ("in [0, 1)", lambda v: 0 <= v < 1),
    "probability": ("in (0, 1)", lambda v: 0 < v < 1),
}


@dataclass(frozen=True)
class Arg:
    """A step argument. ``kind``: 'number' (a number or an expression string), 'int',
    'choice' (one of ``choices``), 'str' or 'bool'; ``check``: '', 'positive',
    'nonnegative', 'fraction' or 'probability'."""

    kind: str = "number"
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    check: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ARG_KINDS:
            raise ValueError(f"Arg kind must be one of {', '.join(ARG_KINDS)}, got {self.kind!r}")
        if self.check and self.check not in CHECKS:
            raise ValueError(f"Arg check must be one of {', '.join(CHECKS)}, got {self.check!r}")


def number(default: Any = REQUIRED, check: str = "") -> Arg:
    return Arg("number", default, (), check)


def choice(default: str, *choices: str) -> Arg:
    return Arg("choice", default, choices)


@dataclass(frozen=True)
class Exclusive:
    """A step result that is the rule's whole pipeline: the other steps are its fallback
    (a checkpoint key that is present, with ``missing: init``)."""

    ops: tuple[Op, ...]


StepResult = Op | Iterable[Op] | Exclusive


@dataclass(frozen=True)
class StepDef:
    name: str
    fn: Callable[..., StepResult]
    args: Mapping[str, Arg] = field(default_factory=dict)
    reads: frozenset[str] = frozenset()   # "name", "layer", "owner.<attribute>"
    builtin: bool = True

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""

    @property
    def owner_attrs(self) -> tuple[str, ...]:
        return tuple(sorted(r.removeprefix("owner.") for r in self.reads if r.startswith("owner.")))


STEPS: dict[str, StepDef] = {}
READ_NAMES = ("name", "layer")


def _check_reads(reads: Iterable[str]) -> frozenset[str]:
    reads = frozenset(reads)
    bad = [r for r in reads if r not in READ_NAMES and not (r.startswith("owner.") and r[6:].isidentifier())]
    if bad:
        raise ValueError(f"a step reads 'name', 'layer' or 'owner.<attribute>', got {bad[0]!r}")
    return reads


def builtin_step(name: str, reads: Iterable[str] = (), **args: Arg) -> Callable[[Callable], Callable]:
    """Decorator for the built-in steps of :mod:`initspec.catalog`."""
    def register(fn: Callable[..., StepResult]) -> Callable[..., StepResult]:
        STEPS[name] = StepDef(name, fn, args, _check_reads(reads))
        return fn
    return register


def register_step(name: str, *, args: Mapping[str, Arg] | None = None,
                  reads: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """Register ``fn(t: TensorInfo, **args) -> Op | sequence of Ops`` as step ``name``.

    The contract of every built-in step: ``args`` declares the arguments
    (numbers may be expressions such as ``"1 / sqrt(fan_in)"``), ``reads`` what
    the step looks at beyond shape and dtype (``"name"``, ``"layer"``,
    ``"owner.<attribute>"``, filled into ``t.owner_attrs``). Registered steps are
    trusted by construction: registering is Python code, a spec cannot do it.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"step name must be an identifier, got {name!r}")
    if name in STEPS and STEPS[name].builtin:
        raise ValueError(f"{name!r} is a built-in step and cannot be replaced")
    args = dict(args or {})
    for key, arg in args.items():
        if not isinstance(arg, Arg):
            raise TypeError(f"register_step({name!r}): argument {key!r} must be an initspec.Arg, got {arg!r}")
    checked_reads = _check_reads(reads)

    def register(fn: Callable[..., StepResult]) -> Callable[..., StepResult]:
        if not callable(fn):
            raise TypeError(f"register_step({name!r}) needs a callable")
        STEPS[name] = StepDef(name, fn, args, checked_reads, builtin=False)
        return fn
    return register


def unregister_step(name: str) -> None:
    """Remove a step registered with :func:`register_step`."""
    if name in STEPS and not STEPS[name].builtin:
        del STEPS[name]


def check_value(name: str, arg: Arg, value: Any) -> Any:
    """Check an evaluated argument; returns it cleaned or raises StepArgError."""
    if value is None and arg.default is None:
        return None
    if arg.kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise StepArgError(name, f"expected a number or an expression string, got {value!r}", "")
        value = float(value)
        if not math.isfinite(value):
            raise StepArgError(name, f"must be finite (got {value})", "use a finite number")
        if arg.check:
            wanted, holds = CHECKS[arg.check]
            if not holds(value):
                raise StepArgError(name, f"must be {wanted} (got {value:g})", f"give {name} a value {wanted}")
        return value
    if arg.kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise StepArgError(name, f"expected an integer, got {value!r}", "")
        return value
    if arg.kind == "choice":
        if value not in arg.choices:
            raise StepArgError(name, f"must be one of {', '.join(arg.choices)} (got {value!r}).{suggest(value, arg.choices)}",
                               "")
        return value
    if arg.kind == "str":
        if not isinstance(value, str):
            raise StepArgError(name, f"expected a string, got {value!r}", "")
        return value
    if not isinstance(value, bool):
        raise StepArgError(name, f"expected true or false, got {value!r}", "")
    return value


def as_ops(result: Any, step: str) -> tuple[Op, ...] | Exclusive:
    """A step's return value as a tuple of ops (or an Exclusive); anything else is the step's bug."""
    if isinstance(result, (Op, Exclusive)):
        return (result,) if isinstance(result, Op) else result
    if isinstance(result, (list, tuple)) and all(isinstance(o, Op) for o in result):
        return tuple(result)
    raise TypeError(f"step {step!r} returned {type(result).__name__}; a step returns an Op or a sequence of Ops")

"""The recipe catalog: every step a spec can name.

Each step is a small function ``f(t, **args) -> Op`` whose docstring gives its
formula; ``t`` is the :class:`~initspec.tensor_info.TensorInfo` of the
parameter being planned, with numeric arguments already evaluated.
Steps resolve at plan time into primitive :class:`~initspec.ops.Op` s, so a
mistake (a 1-D tensor for xavier, a negative std) surfaces before any value
in the model changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .expr import ExprError
from .ops import NORMAL_BOUND, Op, op
from .tensor_info import TensorInfo

REQUIRED = object()


class StepArgError(Exception):
    """A step argument that does not fit; ``arg`` is its key (or '' for the step)."""

    def __init__(self, arg: str, what: str, fix: str = ""):
        super().__init__(what)
        self.arg, self.what, self.fix = arg, what, fix


@dataclass(frozen=True)
class Arg:
    """A step argument: kind is 'number', 'int', 'choice', 'str' or 'bool'."""

    kind: str = "number"
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    check: str = ""  # '', 'positive', 'nonnegative', 'fraction', 'probability'


@dataclass(frozen=True)
class StepDef:
    name: str
    fn: Callable[..., Op]
    args: Mapping[str, Arg] = field(default_factory=dict)
    custom: bool = False  # registered from Python: kwargs pass through as for fn:

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


STEPS: dict[str, StepDef] = {}


def _step(name: str, **args: Arg) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
    def register(fn: Callable[..., Op]) -> Callable[..., Op]:
        STEPS[name] = StepDef(name, fn, args)
        return fn
    return register


def num(default: Any = REQUIRED, check: str = "") -> Arg:
    return Arg("number", default, (), check)


def choice(default: str, *choices: str) -> Arg:
    return Arg("choice", default, choices)


# ---------------------------------------------------------------- samplers

@_step("normal", mean=num(0.0), std=num(1.0, "positive"))
def normal(t: TensorInfo, mean: float, std: float) -> Op:
    """w ~ N(mean, std²)."""
    return op("normal", mean=mean, std=std)


@_step("uniform", a=num(0.0), b=num(1.0))
def uniform(t: TensorInfo, a: float, b: float) -> Op:
    """w ~ U(a, b); a == b gives the constant a (as in torch)."""
    if a > b:
        raise StepArgError("a", f"a must be <= b (got a={a}, b={b})", "swap a and b")
    if a == b:
        return op("constant", label=f"uniform(a={a:g}, b={b:g})", value=a)
    return op("uniform", a=a, b=b)


@_step("trunc_normal", mean=num(0.0), std=num(1.0, "positive"), cutoff=num(None, "positive"),
       a=num(None), b=num(None))
def trunc_normal(t: TensorInfo, mean: float, std: float, cutoff: float | None,
                 a: float | None, b: float | None) -> Op:
    """w ~ N(mean, std²) truncated to [mean + a·std, mean + b·std]; cutoff c gives a = -c, b = c (default 2)."""
    if cutoff is not None and (a is not None or b is not None):
        raise StepArgError("cutoff", "give either cutoff or a/b, not both", "drop cutoff or a/b")
    if a is None and b is None:
        cutoff = 2.0 if cutoff is None else cutoff
        a, b = -cutoff, cutoff
    # A one-sided bound is cut at 9 std, where a float32 normal never reaches.
    a = -NORMAL_BOUND if a is None else max(a, -NORMAL_BOUND)
    b = NORMAL_BOUND if b is None else min(b, NORMAL_BOUND)
    if not a < b:
        raise StepArgError("a", f"a must be < b (got a={a}, b={b}, in units of std)", "swap a and b")
    return op("trunc_normal", mean=mean, std=std, a=a, b=b)


@_step("constant", value=num())
def constant(t: TensorInfo, value: float) -> Op:
    """w = value."""
    return op("constant", value=value)


@_step("zeros")
def zeros(t: TensorInfo) -> Op:
    """w = 0."""
    return op("constant", label="zeros", value=0.0)


@_step("ones")
def ones(t: TensorInfo) -> Op:
    """w = 1."""
    return op("constant", label="ones", value=1.0)


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """Gain of ``torch.nn.init.calculate_gain``."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                        "conv_transpose2d", "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise StepArgError("nonlinearity", f"unsupported nonlinearity {nonlinearity!r}", "")


_NONLINEARITIES = ("leaky_relu", "relu", "linear", "tanh", "sigmoid", "selu", "conv1d", "conv2d",
                   "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


@_step("xavier_uniform", gain=num(1.0))
def xavier_uniform(t: TensorInfo, gain: float) -> Op:
    """w ~ U(-b, b), b = gain · sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(t, "xavier_uniform")
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return op("uniform", label=f"xavier_uniform(gain={gain:g}) = U(±{bound:.6g})", a=-bound, b=bound)


@_step("xavier_normal", gain=num(1.0))
def xavier_normal(t: TensorInfo, gain: float) -> Op:
    """w ~ N(0, std²), std = gain · sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(t, "xavier_normal")
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return op("normal", label=f"xavier_normal(gain={gain:g}) = N(0, {std:.6g})", mean=0.0, std=std)


@_step("kaiming_uniform", a=num(0.0), mode=choice("fan_in", "fan_in", "fan_out"),
       nonlinearity=choice("leaky_relu", *_NONLINEARITIES))
def kaiming_uniform(t: TensorInfo, a: float, mode: str, nonlinearity: str) -> Op:
    """w ~ U(-b, b), b = gain(nonlinearity, a) · sqrt(3 / fan_mode)."""
    fan = _fans(t, "kaiming_uniform")[0 if mode == "fan_in" else 1]
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return op("uniform", label=f"kaiming_uniform({mode}, {nonlinearity}) = U(±{bound:.6g})", a=-bound, b=bound)


@_step("kaiming_normal", a=num(0.0), mode=choice("fan_in", "fan_in", "fan_out"),
       nonlinearity=choice("leaky_relu", *_NONLINEARITIES))
def kaiming_normal(t: TensorInfo, a: float, mode: str, nonlinearity: str) -> Op:
    """w ~ N(0, std²), std = gain(nonlinearity, a) / sqrt(fan_mode)."""
    fan = _fans(t, "kaiming_normal")[0 if mode == "fan_in" else 1]
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return op("normal", label=f"kaiming_normal({mode}, {nonlinearity}) = N(0, {std:.6g})", mean=0.0, std=std)


# Std of a standard normal truncated to [-2, 2] (JAX's variance_scaling constant).
TRUNC2_STD = 0.87962566103423978


@_step("variance_scaling", scale=num(1.0, "positive"),
       mode=choice("fan_in", "fan_in", "fan_out", "fan_avg"),
       distribution=choice("truncated_normal", "truncated_normal", "normal", "untruncated_normal", "uniform"))
def variance_scaling(t: TensorInfo, scale: float, mode: str, distribution: str) -> Op:
    """JAX/Flax variance_scaling: variance scale / n, n = fan_in, fan_out or their mean.

    truncated_normal: N(0, (sqrt(scale/n)/0.8796)²) cut at ±2 std; normal and
    untruncated_normal: N(0, scale/n); uniform: U(±sqrt(3·scale/n)).
    """
    fan_in, fan_out = _fans(t, "variance_scaling")
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    variance = scale / n
    label = f"variance_scaling({scale:g}, {mode}, {distribution})"
    if distribution == "truncated_normal":
        std = math.sqrt(variance) / TRUNC2_STD
        return op("trunc_normal", label=f"{label} = TN(0, {std:.6g}, ±2σ)", mean=0.0, std=std, a=-2.0, b=2.0)
    if distribution in ("normal", "untruncated_normal"):
        std = math.sqrt(variance)
        return op("normal", label=f"{label} = N(0, {std:.6g})", mean=0.0, std=std)
    bound = math.sqrt(3 * variance)
    return op("uniform", label=f"{label} = U(±{bound:.6g})", a=-bound, b=bound)


@_step("lecun_normal")
def lecun_normal(t: TensorInfo) -> Op:
    """JAX lecun_normal: variance_scaling(1, fan_in, truncated_normal), std = 1/sqrt(fan_in)/0.8796 cut at ±2 std."""
    return variance_scaling(t, 1.0, "fan_in", "truncated_normal")


@_step("bias_prob", prior=num(check="probability"))
def bias_prob(t: TensorInfo, prior: float) -> Op:
    """b = -log((1 - prior) / prior): a sigmoid output starts at probability ``prior``."""
    value = -math.log((1 - prior) / prior)
    return op("constant", label=f"bias_prob({prior:g}) = {value:.6g}", value=value)


# ------------------------------------------------------------ whole tensor

@_step("orthogonal", gain=num(1.0))
def orthogonal(t: TensorInfo, gain: float) -> Op:
    """(Semi-)orthogonal matrix from the QR of a Gaussian, times gain; trailing dims are flattened."""
    if t.ndim < 2:
        raise StepArgError("", f"orthogonal needs a tensor with >= 2 dimensions, {t.name!r} has shape {list(t.shape)}",
                           "exclude 1-D parameters from this rule (e.g. 'ndim: 2')")
    return op("orthogonal", gain=gain)


@_step("sparse", sparsity=num(check="fraction"), std=num(0.01, "positive"))
def sparse(t: TensorInfo, sparsity: float, std: float) -> Op:
    """N(0, std²), then ceil(sparsity·rows) random entries of each column set to 0 (2-D only)."""
    if t.ndim != 2:
        raise StepArgError("", f"sparse needs a 2-D tensor, {t.name!r} has shape {list(t.shape)}",
                           "restrict the rule with 'ndim: 2'")
    return op("sparse", sparsity=sparsity, std=std)


@_step("eye")
def eye(t: TensorInfo) -> Op:
    """Identity matrix (2-D only): w[i, i] = 1, 0 elsewhere."""
    if t.ndim != 2:
        raise StepArgError("", f"eye needs a 2-D tensor, {t.name!r} has shape {list(t.shape)}",
                           "restrict the rule with 'ndim: 2'")
    return op("eye")


@_step("dirac", groups=Arg("int", 1))
def dirac(t: TensorInfo, groups: int) -> Op:
    """Dirac delta for 3-, 4- and 5-D conv weights: preserves the identity of the inputs per group."""
    if t.ndim not in (3, 4, 5):
        raise StepArgError("", f"dirac needs a 3-, 4- or 5-D conv weight, {t.name!r} has shape {list(t.shape)}",
                           "restrict the rule to conv weights with 'ndim: [3, 4, 5]'")
    if groups < 1 or t.shape[0] % groups:
        raise StepArgError("groups", f"dim 0 ({t.shape[0]}) must be divisible by groups ({groups})",
                           "use a divisor of the output channels")
    return op("dirac", groups=groups)


# ------------------------------------------------------------- transforms

@_step("scale", by=num())
def scale(t: TensorInfo, by: float) -> Op:
    """w = w · by."""
    return op("scale", by=by)


@_step("add", value=num())
def add(t: TensorInfo, value: float) -> Op:
    """w = w + value."""
    return op("add", value=value)


@_step("clamp", min=num(None), max=num(None))
def clamp(t: TensorInfo, min: float | None, max: float | None) -> Op:  # noqa: A002
    """w = clamp(w, min, max)."""
    if min is None and max is None:
        raise StepArgError("", "clamp needs min, max or both", "add min: or max:")
    if min is not None and max is not None and min > max:
        raise StepArgError("min", f"min must be <= max (got min={min}, max={max})", "swap them")
    return op("clamp", min=min, max=max)


@_step("zero_below", threshold=num(check="nonnegative"))
def zero_below(t: TensorInfo, threshold: float) -> Op:
    """w = 0 where |w| < threshold (the seed notebook's custom init)."""
    return op("zero_below", threshold=threshold)


@_step("padding_zero")
def padding_zero(t: TensorInfo) -> Op:
    """w[padding_idx] = 0 for the owning Embedding's padding_idx; a no-op when it has none."""
    idx = t.owner_attrs.get("padding_idx")
    if idx is None:
        return op("padding_zero", label="padding_zero (no padding_idx: no-op)", index=None)
    if idx < 0:
        idx += t.shape[0]
    return op("padding_zero", label=f"padding_zero(row {idx})", index=int(idx))


# ---------------------------------------------------------------- sources

@_step("checkpoint", path=Arg("str"), key=Arg("str", "{name}"),
       missing=choice("error", "error", "init"), format=choice("auto", "auto", "safetensors", "torch"))
def checkpoint(t: TensorInfo, path: str, key: str, missing: str, format: str) -> Op:  # noqa: A002
    """w = tensor ``key`` of the file at ``path`` (safetensors, or torch.load with weights_only=True).

    ``key`` may use ``{name}`` (the canonical name) and ``{0}``, ``{1}`` ...
    for the glob captures of the rule's pattern. ``missing: init`` falls back to
    the rule's other steps when the key is absent.
    """
    from .sources import resolve_checkpoint
    return resolve_checkpoint(t, path, key, missing, format)


# ------------------------------------------------------------ registration

def register_step(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``f(tensor, **kwargs)`` (fills in place) as step ``name``.

    Registered steps are trusted by construction. Use them in a spec as
    ``{name: my_init, some_kwarg: 1}``; string kwargs pass through literally
    and ``{expr: "1 / sqrt(fan_in)"}`` is evaluated per parameter. A
    ``generator`` keyword, when the function accepts one, receives the
    parameter's own stream.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"step name must be an identifier, got {name!r}")
    if name in STEPS and not STEPS[name].custom:
        raise ValueError(f"{name!r} is a built-in step and cannot be replaced")

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError(f"register_step({name!r}) needs a callable")
        STEPS[name] = StepDef(name, fn, {}, custom=True)
        return fn
    return register


def unregister_step(name: str) -> None:
    """Remove a step registered with :func:`register_step`."""
    if name in STEPS and STEPS[name].custom:
        del STEPS[name]


# ----------------------------------------------------------------- helpers

def _fans(t: TensorInfo, step: str) -> tuple[int, int]:
    """Fans for a step's formula; a zero-element tensor (nothing to fill) counts its fans as >= 1."""
    try:
        fan_in, fan_out = t.fans()
    except ExprError as exc:
        raise StepArgError("", f"{step}: {exc.what}", exc.fix) from None
    return (max(fan_in, 1), max(fan_out, 1)) if t.numel == 0 else (fan_in, fan_out)


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
        rule = {
            "positive": ("> 0", value <= 0),
            "nonnegative": (">= 0", value < 0),
            "fraction": ("in [0, 1)", not 0 <= value < 1),
            "probability": ("in (0, 1)", not 0 < value < 1),
        }.get(arg.check)
        if rule and rule[1]:
            raise StepArgError(name, f"must be {rule[0]} (got {value:g})", f"give {name} a value {rule[0]}")
        return value
    if arg.kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise StepArgError(name, f"expected an integer, got {value!r}", "")
        return value
    if arg.kind == "choice":
        if value not in arg.choices:
            from .errors import suggest
            raise StepArgError(name, f"must be one of {', '.join(arg.choices)} (got {value!r}).{suggest(value, arg.choices)}", "")
        return value
    if arg.kind == "str":
        if not isinstance(value, str):
            raise StepArgError(name, f"expected a string, got {value!r}", "")
        return value
    if arg.kind == "bool":
        if not isinstance(value, bool):
            raise StepArgError(name, f"expected true or false, got {value!r}", "")
        return value
    return value

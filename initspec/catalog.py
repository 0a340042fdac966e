"""The built-in steps: every step a spec can name.

Each step is a small function ``f(t, **args)`` whose docstring gives its
formula; ``t`` is the :class:`~initspec.tensor_info.TensorInfo` of the tensor
being planned, with numeric arguments already evaluated. It returns
:class:`~initspec.primitives.Op` s with concrete numbers, so a mistake (a 1-D
tensor for xavier, a negative std) surfaces at plan time, before any value in
the model changes. Steps registered from Python (:func:`initspec.register_step`)
follow the same contract.
"""
from __future__ import annotations

import math

import torch

from .errors import StepArgError
from .expr import ExprError
from .primitives import (CONSTANT, DIRAC, EYE, NORMAL, NORMAL_BOUND, ORTHOGONAL, PADDING_ZERO, SCALE,
                         SPARSE, TRUNC_NORMAL, UNIFORM, ADD, CLAMP, ZERO_BELOW, Op)
from .sources import checkpoint_op
from .steps import Arg, Exclusive, builtin_step, choice, number
from .streams import generation_dtype
from .tensor_info import TensorInfo


# ---------------------------------------------------------------- samplers

@builtin_step("normal", mean=number(0.0), std=number(1.0, "positive"))
def normal(t: TensorInfo, mean: float, std: float) -> Op:
    """w ~ N(mean, std²)."""
    return NORMAL.op(mean=mean, std=std)


@builtin_step("uniform", a=number(0.0), b=number(1.0))
def uniform(t: TensorInfo, a: float, b: float) -> Op:
    """w ~ U(a, b); a == b gives the constant a (as in torch)."""
    if a > b:
        raise StepArgError("a", f"a must be <= b (got a={a}, b={b})", "swap a and b")
    if a == b:
        return CONSTANT.op(label=f"uniform(a={a:g}, b={b:g})", value=a)
    return _uniform(t, None, a, b)


@builtin_step("trunc_normal", mean=number(0.0), std=number(1.0, "positive"), cutoff=number(None, "positive"),
       a=number(None), b=number(None))
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
    return TRUNC_NORMAL.op(mean=mean, std=std, a=a, b=b)


@builtin_step("constant", value=number())
def constant(t: TensorInfo, value: float) -> Op:
    """w = value."""
    return CONSTANT.op(value=value)


@builtin_step("zeros")
def zeros(t: TensorInfo) -> Op:
    """w = 0."""
    return CONSTANT.op(label="zeros", value=0.0)


@builtin_step("ones")
def ones(t: TensorInfo) -> Op:
    """w = 1."""
    return CONSTANT.op(label="ones", value=1.0)


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


@builtin_step("xavier_uniform", gain=number(1.0))
def xavier_uniform(t: TensorInfo, gain: float) -> Op:
    """w ~ U(-b, b), b = gain · sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(t, "xavier_uniform")
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _uniform(t, f"xavier_uniform(gain={gain:g}) = U(±{bound:.6g})", -bound, bound)


@builtin_step("xavier_normal", gain=number(1.0))
def xavier_normal(t: TensorInfo, gain: float) -> Op:
    """w ~ N(0, std²), std = gain · sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(t, "xavier_normal")
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return NORMAL.op(label=f"xavier_normal(gain={gain:g}) = N(0, {std:.6g})", mean=0.0, std=std)


@builtin_step("kaiming_uniform", a=number(0.0), mode=choice("fan_in", "fan_in", "fan_out"),
       nonlinearity=choice("leaky_relu", *_NONLINEARITIES))
def kaiming_uniform(t: TensorInfo, a: float, mode: str, nonlinearity: str) -> Op:
    """w ~ U(-b, b), b = gain(nonlinearity, a) · sqrt(3 / fan_mode)."""
    fan = _fans(t, "kaiming_uniform")[0 if mode == "fan_in" else 1]
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return _uniform(t, f"kaiming_uniform({mode}, {nonlinearity}) = U(±{bound:.6g})", -bound, bound)


@builtin_step("kaiming_normal", a=number(0.0), mode=choice("fan_in", "fan_in", "fan_out"),
       nonlinearity=choice("leaky_relu", *_NONLINEARITIES))
def kaiming_normal(t: TensorInfo, a: float, mode: str, nonlinearity: str) -> Op:
    """w ~ N(0, std²), std = gain(nonlinearity, a) / sqrt(fan_mode)."""
    fan = _fans(t, "kaiming_normal")[0 if mode == "fan_in" else 1]
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return NORMAL.op(label=f"kaiming_normal({mode}, {nonlinearity}) = N(0, {std:.6g})", mean=0.0, std=std)


# Std of a standard normal truncated to [-2, 2] (JAX's variance_scaling constant).
TRUNC2_STD = 0.87962566103423978


@builtin_step("variance_scaling", scale=number(1.0, "positive"),
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
        return TRUNC_NORMAL.op(label=f"{label} = TN(0, {std:.6g}, ±2σ)", mean=0.0, std=std, a=-2.0, b=2.0)
    if distribution in ("normal", "untruncated_normal"):
        std = math.sqrt(variance)
        return NORMAL.op(label=f"{label} = N(0, {std:.6g})", mean=0.0, std=std)
    bound = math.sqrt(3 * variance)
    return _uniform(t, f"{label} = U(±{bound:.6g})", -bound, bound)


@builtin_step("lecun_normal")
def lecun_normal(t: TensorInfo) -> Op:
    """JAX lecun_normal: variance_scaling(1, fan_in, truncated_normal), std = 1/sqrt(fan_in)/0.8796 cut at ±2 std."""
    return variance_scaling(t, 1.0, "fan_in", "truncated_normal")


@builtin_step("bias_prob", prior=number(check="probability"))
def bias_prob(t: TensorInfo, prior: float) -> Op:
    """b = -log((1 - prior) / prior): a sigmoid output starts at probability ``prior``."""
    value = -math.log((1 - prior) / prior)
    return CONSTANT.op(label=f"bias_prob({prior:g}) = {value:.6g}", value=value)


# ------------------------------------------------------------ whole tensor

@builtin_step("orthogonal", gain=number(1.0))
def orthogonal(t: TensorInfo, gain: float) -> Op:
    """(Semi-)orthogonal matrix from the QR of a Gaussian, times gain; trailing dims are flattened."""
    if t.ndim < 2:
        raise StepArgError("", f"orthogonal needs a tensor with >= 2 dimensions, {t.name!r} has shape {list(t.shape)}",
                           "exclude 1-D parameters from this rule (e.g. 'ndim: 2')")
    return ORTHOGONAL.op(gain=gain)


@builtin_step("sparse", sparsity=number(check="fraction"), std=number(0.01, "positive"))
def sparse(t: TensorInfo, sparsity: float, std: float) -> Op:
    """N(0, std²), then ceil(sparsity·rows) random entries of each column set to 0 (2-D only)."""
    if t.ndim != 2:
        raise StepArgError("", f"sparse needs a 2-D tensor, {t.name!r} has shape {list(t.shape)}",
                           "restrict the rule with 'ndim: 2'")
    return SPARSE.op(sparsity=sparsity, std=std)


@builtin_step("eye")
def eye(t: TensorInfo) -> Op:
    """Identity matrix (2-D only): w[i, i] = 1, 0 elsewhere."""
    if t.ndim != 2:
        raise StepArgError("", f"eye needs a 2-D tensor, {t.name!r} has shape {list(t.shape)}",
                           "restrict the rule with 'ndim: 2'")
    return EYE.op()


@builtin_step("dirac", groups=Arg("int", 1))
def dirac(t: TensorInfo, groups: int) -> Op:
    """Dirac delta for 3-, 4- and 5-D conv weights: preserves the identity of the inputs per group."""
    if t.ndim not in (3, 4, 5):
        raise StepArgError("", f"dirac needs a 3-, 4- or 5-D conv weight, {t.name!r} has shape {list(t.shape)}",
                           "restrict the rule to conv weights with 'ndim: [3, 4, 5]'")
    if groups < 1 or t.shape[0] % groups:
        raise StepArgError("groups", f"dim 0 ({t.shape[0]}) must be divisible by groups ({groups})",
                           "use a divisor of the output channels")
    return DIRAC.op(groups=groups)


# ------------------------------------------------------------- transforms

@builtin_step("scale", by=number())
def scale(t: TensorInfo, by: float) -> Op:
    """w = w · by."""
    return SCALE.op(by=by)


@builtin_step("add", value=number())
def add(t: TensorInfo, value: float) -> Op:
    """w = w + value."""
    return ADD.op(value=value)


@builtin_step("clamp", min=number(None), max=number(None))
def clamp(t: TensorInfo, min: float | None, max: float | None) -> Op:  # noqa: A002
    """w = clamp(w, min, max)."""
    if min is None and max is None:
        raise StepArgError("", "clamp needs min, max or both", "add min: or max:")
    if min is not None and max is not None and min > max:
        raise StepArgError("min", f"min must be <= max (got min={min}, max={max})", "swap them")
    return CLAMP.op(min=min, max=max)


@builtin_step("zero_below", threshold=number(check="nonnegative"))
def zero_below(t: TensorInfo, threshold: float) -> Op:
    """w = 0 where |w| < threshold (the seed notebook's custom init)."""
    return ZERO_BELOW.op(threshold=threshold)


@builtin_step("padding_zero", reads=["owner.padding_idx"])
def padding_zero(t: TensorInfo) -> Op:
    """w[padding_idx] = 0 for the owning Embedding's padding_idx; a no-op when it has none."""
    idx = t.owner_attrs.get("padding_idx")
    if idx is None:
        return PADDING_ZERO.op(label="padding_zero (no padding_idx: no-op)", index=None)
    rows = (t.whole_shape if t.part is not None else t.shape)[0]
    if idx < 0:
        idx += rows
    if t.part is not None and t.part.dim == 0:   # a piece of the rows: the padding row in its coordinates
        if not t.part.start <= idx < t.part.stop:
            return PADDING_ZERO.op(label=f"padding_zero (row {idx} is outside this part: no-op)", index=None)
        return PADDING_ZERO.op(label=f"padding_zero(row {idx})", index=int(idx) - t.part.start)
    return PADDING_ZERO.op(label=f"padding_zero(row {idx})", index=int(idx))


# ---------------------------------------------------------------- sources

@builtin_step("checkpoint", reads=["name"], path=Arg("str"), key=Arg("str", "{name}"),
       missing=choice("error", "error", "init"), format=choice("auto", "auto", "safetensors", "torch"))
def checkpoint(t: TensorInfo, path: str, key: str, missing: str, format: str) -> Op:  # noqa: A002
    """w = tensor ``key`` of the file at ``path`` (safetensors, or torch.load with weights_only=True).

    ``key`` may use ``{name}`` (the canonical name) and ``{0}``, ``{1}`` ...
    for the glob captures of the rule's pattern. ``missing: init`` falls back to
    the rule's other steps when the key is absent.
    """
    found = checkpoint_op(t, path, _format_key(key, t), missing, format)
    if missing == "init":
        return Exclusive((found,)) if found is not None else ()
    return found


# ----------------------------------------------------------------- helpers

def _format_key(template: str, t: TensorInfo) -> str:
    try:
        return template.format(*t.captures, name=t.name)
    except (IndexError, KeyError, ValueError) as exc:
        raise StepArgError("key", f"cannot fill key template {template!r} for {t.name!r}: {exc!r} "
                           f"(captures: {list(t.captures)})",
                           "use {name} or {0}, {1} for the pattern's * captures") from None


def _uniform(t: TensorInfo, label: str | None, a: float, b: float) -> Op:
    """U(a, b), refused when the generation dtype cannot hold the range (torch would refuse it mid-fill)."""
    gen = generation_dtype(t.dtype)
    limit = torch.finfo(gen).max
    if not (abs(a) <= limit and abs(b) <= limit and b - a <= limit):
        shown = label or f"uniform(a={a:.6g}, b={b:.6g})"
        raise StepArgError("", f"{shown} needs a range of {b - a:g}, more than {str(gen).removeprefix('torch.')} "
                           f"holds (max {limit:g})",
                           "narrow the range" + (", or use float64 parameters" if gen != torch.float64 else ""))
    return UNIFORM.op(label=label, a=a, b=b)


def _fans(t: TensorInfo, step: str) -> tuple[int, int]:
    """Fans for a step's formula; a zero-element tensor (nothing to fill) counts its fans as >= 1."""
    try:
        fan_in, fan_out = t.fans()
    except ExprError as exc:
        raise StepArgError("", f"{step}: {exc.what}", exc.fix) from None
    return (max(fan_in, 1), max(fan_out, 1)) if t.numel == 0 else (fan_in, fan_out)

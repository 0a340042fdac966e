"""The simplest formulas that explain fitted tensors, and the fewest groups that share one.

A random tensor's scale (std, uniform bound or truncated-normal sigma, from
:mod:`initspec.fit`) is explained by a formula

    scale = const · base(t) · depth(t)

* base: 1 (``const`` is a literal such as 0.02), 1/sqrt(fan_in), 1/sqrt(fan_out) or
  sqrt(2 / (fan_in + fan_out)) (xavier), where ``const`` is a gain from :data:`GAINS`
  (for a uniform, times sqrt(3): the bound of a std);
* depth: 1, 1/sqrt(2 · n_layer) (GPT-2's residual projections) or
  1/sqrt(2 · (layer + 1)) (depth init), with ``n_layer`` the number of distinct layer
  indices in the model's names and ``layer`` the tensor's own index.

A formula explains a tensor when its prediction lies in the tensor's interval (a few
standard errors plus a relative tolerance). Groups are chosen greedily: the candidate
(family, formula) that explains the most remaining tensors, the simplest among equals
(:func:`cost`), until every tensor is explained; so one formula is shared by a group,
and a literal is a number with few significant digits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .catalog import TRUNC2_STD      # std of N(0, 1) cut at ±2: lecun_normal's constant
from .fit import REL_TOL, STD_ERRORS, TensorFit, Variant, digits_of, nice, nice_at, significant

SQRT3 = math.sqrt(3)
GAINS = {                            # gain (std units) -> (text, nonlinearity, kaiming a, cost)
    1.0: ("1", "linear", None, 1.5),
    math.sqrt(2): ("sqrt(2)", "relu", None, 2.0),
    5 / 3: ("5 / 3", "tanh", None, 2.5),
    3 / 4: ("3 / 4", "selu", None, 2.5),
    math.sqrt(1 / 3): ("sqrt(1 / 3)", "leaky_relu", "sqrt(5)", 2.0),
    1 / TRUNC2_STD: ("1 / 0.8796", None, None, 2.5),
}
FAN_TEXT = {"fan_in": "fan_in", "fan_out": "fan_out", "fan_avg": "(fan_in + fan_out) / 2"}
DEPTH_TEXT = {"n_layer": "2 * n_layer", "layer": "2 * (layer + 1)"}
FAMILY_COST = {"normal": 0.0, "uniform": 0.1, "trunc_normal": 0.2, "uniform_ab": 0.3}


@dataclass(frozen=True)
class Formula:
    """scale = const · base · depth (see the module docstring)."""

    base: str            # literal | fan_in | fan_out | fan_avg
    depth: str           # "" | n_layer | layer
    const: float         # the literal (in the family's own units) or the gain (std units)

    def describe(self, family: str, n_layer: int | None) -> str:
        """Short text for a comment: ``0.02/sqrt(2*12)``, ``sqrt(2)/sqrt(fan_out)``."""
        depth = {"": "", "n_layer": f"/sqrt(2*{n_layer})", "layer": "/sqrt(2*(layer+1))"}[self.depth]
        if self.base == "literal":
            return f"{self.const:g}{depth}"
        text = GAINS[self.const][0].replace(" ", "")
        unit = "sqrt(3)*" if family == "uniform" else ""
        fan = {"fan_in": "sqrt(fan_in)", "fan_out": "sqrt(fan_out)", "fan_avg": "sqrt((fan_in+fan_out)/2)"}[self.base]
        return f"{unit}{text}/{fan}{depth}"


@dataclass(frozen=True)
class Candidate:
    family: str
    mean: float
    cutoff: float | None
    pad: bool
    formula: Formula | None           # None: uniform_ab with literal bounds
    bounds: tuple[float, float] | None = None
    cost: float = 0.0


@dataclass(frozen=True)
class RandomGroup:
    """Tensors explained by one candidate."""

    candidate: Candidate
    members: tuple[int, ...]          # indices into the fits
    variants: tuple[Variant, ...] = field(default=())   # each member's variant of the candidate's family


@dataclass(frozen=True)
class TensorFacts:
    """What a formula may use of a tensor besides its values."""

    fans: tuple[int, int] | None      # (fan_in, fan_out) for >= 2-D
    layer: int | None                 # the first integer component of its name


def base_factor(base: str, facts: TensorFacts) -> float | None:
    if base == "literal":
        return 1.0
    if facts.fans is None or min(facts.fans) <= 0:
        return None
    fan_in, fan_out = facts.fans
    return {"fan_in": 1 / math.sqrt(fan_in), "fan_out": 1 / math.sqrt(fan_out),
            "fan_avg": math.sqrt(2 / (fan_in + fan_out))}[base]


def depth_factor(depth: str, facts: TensorFacts, n_layer: int | None) -> float | None:
    if depth == "":
        return 1.0
    if depth == "n_layer":
        return None if not n_layer else 1 / math.sqrt(2 * n_layer)
    return None if facts.layer is None else 1 / math.sqrt(2 * (facts.layer + 1))


def cost(family: str, formula: Formula | None, pad: bool) -> float:
    """Simpler is cheaper: a literal costs its significant digits; a fan formula its gain's cost;
    a depth factor adds 0.5 to a literal (0.02/sqrt(2*n_layer) beats 0.0071), 1 to a fan formula;
    then the family (normal < uniform < truncated normal)."""
    if formula is None:
        base = 4.0
    elif formula.base == "literal":
        base = float(digits_of(formula.const))
    else:
        base = GAINS[formula.const][3] + {"fan_in": 0.0, "fan_avg": 0.1, "fan_out": 0.2}[formula.base]
    depth = 0.0 if formula is None or not formula.depth else 0.5 if formula.base == "literal" else 1.0
    return base + depth + FAMILY_COST[family] + (0.05 if pad else 0.0)


def group_random(fits: list[TensorFit], facts: list[TensorFacts], n_layer: int | None) -> list[RandomGroup]:
    """The fewest candidates that explain every random fit (greedy; see the module docstring)."""
    candidates: list[Candidate] = []
    covers: list[dict[int, float]] = []       # per candidate: tensor index -> its estimate of the constant
    pads = [False, True] if any(f.pad for f in fits) else [False]
    keys = sorted({(v.family, v.mean, v.cutoff) for f in fits for v in f.variants if v.family != "uniform_ab"},
                  key=repr)
    for family, mean, cutoff in keys:
        for pad in pads:
            for base in ("literal", "fan_in", "fan_avg", "fan_out"):
                for depth in ("", "n_layer", "layer"):
                    if base != "literal" and depth and mean != 0:
                        continue
                    _add_candidates(fits, facts, n_layer, (family, mean, cutoff, pad, base, depth), candidates, covers)
    for pad in pads:
        _add_uniform_ab(fits, pad, candidates, covers)
    return _greedy(fits, facts, n_layer, candidates, covers)


def _interval(variant: Variant, facts: TensorFacts, n_layer: int | None, base: str,
              depth: str) -> tuple[float, float, float] | None:
    """(low, high, estimate) of the constant of (base, depth) that explains this variant of a tensor."""
    b, d = base_factor(base, facts), depth_factor(depth, facts, n_layer)
    if b is None or d is None:
        return None
    unit = SQRT3 if variant.family == "uniform" and base != "literal" else 1.0
    factor = unit * b * d
    return variant.low / factor, variant.high / factor, variant.scale / factor


def _add_candidates(fits, facts, n_layer, key, candidates, covers) -> None:
    family, mean, cutoff, pad, base, depth = key
    intervals: list[tuple[int, float, float, float]] = []
    for i, fit in enumerate(fits):
        if fit.pad is not None and fit.pad != pad:
            continue
        for v in fit.variants:
            if (v.family, v.mean, v.cutoff) == (family, mean, cutoff):
                found = _interval(v, facts[i], n_layer, base, depth)
                if found is not None:
                    intervals.append((i, *found))
    if not intervals:
        return
    if base == "literal":
        consts = set()
        for _, low, high, estimate in intervals:
            low = max(low, high * 1e-3)
            for digits in (1, 2, 3):
                found = nice_at(low, high, estimate, digits)
                if found is not None:
                    consts.add(found)
            consts.update((significant(estimate, 4), significant(estimate, 6)))   # 6 digits: always inside
    else:
        consts = set(GAINS)
    for const in sorted(consts):
        if const <= 0:
            continue
        covered = {i: estimate for i, low, high, estimate in intervals if low <= const <= high}
        if covered:
            formula = Formula(base, depth, const)
            candidates.append(Candidate(family, mean, cutoff, pad, formula, cost=cost(family, formula, pad)))
            covers.append(covered)


def _add_uniform_ab(fits, pad, candidates, covers) -> None:
    """Asymmetric uniforms: literal bounds, shared by the tensors whose intervals agree on them."""
    by_bounds: dict[tuple[float, float], dict[int, float]] = {}
    for i, fit in enumerate(fits):
        if fit.pad is not None and fit.pad != pad:
            continue
        for v in fit.variants:
            if v.family == "uniform_ab":
                (a_low, a_high), (b_low, b_high) = v.bounds
                a = nice(a_low, a_high, a_high, 6) or (a_high, 0)
                b = nice(b_low, b_high, b_low, 6) or (b_low, 0)
                by_bounds.setdefault((a[0], b[0]), {})[i] = v.scale
    for bounds, members in by_bounds.items():
        candidates.append(Candidate("uniform_ab", 0.0, None, pad, None, bounds, cost("uniform_ab", None, pad)))
        covers.append(members)


def pooled_error(candidate: Candidate, estimates: list[float], sizes: list[int]) -> float | None:
    """How far the candidate's constant is from the members taken together, in pooled standard
    errors (std / sqrt(2 N) over all N values); None when that is beyond STD_ERRORS plus REL_TOL.
    A uniform's bound must be reached: the largest value relative to it is at least 1 - 8 / N."""
    if candidate.formula is None:
        return 0.0
    total, const = sum(sizes), candidate.formula.const
    if candidate.family == "uniform":
        return 0.0 if max(e / const for e in estimates) >= 1 - 8 / total - REL_TOL else None
    pooled = sum(n * e for n, e in zip(sizes, estimates)) / total
    error = 1 / math.sqrt(2 * total)
    off = abs(pooled / const - 1)
    return off / error if off <= STD_ERRORS * error + REL_TOL else None


def _eligible(candidate: Candidate, members: tuple[int, ...], facts: list[TensorFacts], n_layer: int | None,
              literals: set[float]) -> bool:
    """A depth factor must vary across the members, or scale a literal another rule already uses
    (0.02 / sqrt(2 * n_layer) next to 0.02): else a literal says the same more plainly."""
    formula = candidate.formula
    if formula is None or not formula.depth:
        return True
    factors = {depth_factor(formula.depth, facts[i], n_layer) for i in members}
    return len(factors) > 1 or (formula.base == "literal" and formula.const in literals)


def _greedy(fits: list[TensorFit], facts: list[TensorFacts], n_layer: int | None, candidates: list[Candidate],
            covers: list[dict[int, float]]) -> list[RandomGroup]:
    """Repeatedly: of the candidates that explain the most remaining tensors and fit them pooled,
    the cheapest, counting 0.25 per pooled standard error it is off."""
    random = [i for i, f in enumerate(fits) if f.kind == "random"]
    if not random or not candidates:
        return []
    matrix = torch.zeros(len(candidates), len(fits), dtype=torch.float32)
    for row, covered in enumerate(covers):
        matrix[row, list(covered)] = 1.0
    remaining = torch.zeros(len(fits), dtype=torch.float32)
    remaining[random] = 1.0
    left = set(random)
    groups: list[RandomGroup] = []
    literals: set[float] = set()
    while left:
        counts = (matrix @ remaining).long().tolist()
        best = None
        for count in sorted({c for c in counts if c > 0}, reverse=True):
            options = []
            for row in (r for r, c in enumerate(counts) if c == count):
                members = tuple(i for i in covers[row] if i in left)
                if not _eligible(candidates[row], members, facts, n_layer, literals):
                    continue
                error = pooled_error(candidates[row], [covers[row][i] for i in members],
                                     [fits[i].stats.numel for i in members])
                if error is not None:
                    options.append((candidates[row].cost + 0.25 * error, row, members))
            if options:
                best = min(options)
                break
        if best is None:
            break
        _, row, members = best
        candidate = candidates[row]
        if candidate.formula is not None and candidate.formula.base == "literal":
            literals.add(candidate.formula.const)
        groups.append(RandomGroup(candidate, members, tuple(_variant_of(fits[i], candidate) for i in members)))
        remaining[list(members)] = 0.0
        left -= set(members)
    return groups


def _variant_of(fit: TensorFit, candidate: Candidate) -> Variant:
    for v in fit.variants:
        if (v.family, v.mean, v.cutoff) == (candidate.family, candidate.mean, candidate.cutoff):
            return v
    raise AssertionError(f"{fit.name} has no {candidate.family} variant")   # pragma: no cover


# ----------------------------------------------------------------- steps

def number_text(x: float) -> str:
    """A constant as an expression: ``sqrt(2)``, ``5 / 3`` or the number."""
    for gain, (text, *_rest) in GAINS.items():
        if math.isclose(x, gain, rel_tol=1e-12):
            return text
    square = x * x
    k = round(square)
    if abs(square - k) < 1e-9 * square and k > 1 and math.isqrt(k) ** 2 != k:
        return f"sqrt({k})"
    return f"{x:g}" if digits_of(x) <= 6 else repr(x)


def gain_value(gain: float) -> float | str:
    """An exact gain (orthogonal) as a spec writes it: ``sqrt(2)``, ``5 / 3`` or the shortest number
    within 2e-4 of it."""
    for known in (math.sqrt(2), 5 / 3):
        if math.isclose(gain, known, rel_tol=2e-4):
            return number_text(known)
    found = nice(gain * (1 - 2e-4), gain * (1 + 2e-4), gain, 4)
    return found[0] if found else significant(gain, 6)


def scale_value(formula: Formula, family: str, n_layer: int | None) -> float | str:
    """The family's own scale argument: a number, or an expression over fan_in/fan_out/layer/n_layer."""
    if formula.base == "literal":
        if not formula.depth:
            return formula.const
        return f"{formula.const:g} / sqrt({DEPTH_TEXT[formula.depth]})"
    coef = formula.const * (SQRT3 if family == "uniform" else 1.0)
    inside = FAN_TEXT[formula.base]
    if formula.depth:
        inside = f"{DEPTH_TEXT[formula.depth]} * {inside}" if formula.base != "fan_avg" else \
            f"{DEPTH_TEXT[formula.depth]} * ({inside})"
    return f"{number_text(coef)} / sqrt({inside})"


def random_steps(candidate: Candidate, n_layer: int | None) -> list:
    """Spec steps for a candidate: built-in steps where one says it, else normal/uniform/trunc_normal."""
    family, formula = candidate.family, candidate.formula
    steps: list = []
    if family == "uniform_ab":
        steps.append({"name": "uniform", "a": candidate.bounds[0], "b": candidate.bounds[1]})
    else:
        steps.append(_named_step(candidate) or _plain_step(candidate, n_layer))
    if candidate.pad:
        steps.append("padding_zero")
    return steps


def _named_step(candidate: Candidate) -> dict | str | None:
    """xavier_*, kaiming_*, lecun_normal when the formula is one of theirs (no depth, mean 0)."""
    family, formula = candidate.family, candidate.formula
    if formula.base == "literal" or formula.depth or candidate.mean != 0:
        return None
    text, nonlinearity, a, _ = GAINS[formula.const]
    if family == "trunc_normal":
        if formula.base == "fan_in" and formula.const == 1 / TRUNC2_STD and candidate.cutoff == 2:
            return "lecun_normal"
        return None
    if formula.const == 1.0 and formula.base != "fan_avg":
        return None                          # 1/sqrt(fan): plainer as an expression
    if family == "uniform" and formula.const == math.sqrt(1 / 3) and formula.base == "fan_in":
        return None                          # U(±1/sqrt(fan_in)): plainer as an expression
    if formula.base == "fan_avg":
        name = f"xavier_{family}"
        return name if formula.const == 1.0 else {"name": name, "gain": text}
    if nonlinearity is None:
        return None
    step: dict = {"name": f"kaiming_{family}"}
    if formula.base == "fan_out":
        step["mode"] = "fan_out"
    step["nonlinearity"] = nonlinearity
    if a is not None:
        step["a"] = a
    return step


def _plain_step(candidate: Candidate, n_layer: int | None) -> dict:
    value = scale_value(candidate.formula, candidate.family, n_layer)
    if candidate.family == "uniform":
        negative = -value if isinstance(value, float) else f"-{value}"
        return {"name": "uniform", "a": negative, "b": value}
    mean = candidate.mean if candidate.mean else 0
    step = {"name": candidate.family, "mean": mean, "std": value}
    if candidate.family == "trunc_normal":
        step["cutoff"] = candidate.cutoff
    return step

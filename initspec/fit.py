"""What one tensor's values say about how it was initialized (the per-tensor half of ``initspec infer``).

Detection reads values only, never class or parameter names:

* constants (``min == max``); ``eye`` and ``dirac`` (exact 0/1 patterns);
* (scaled) orthogonal: the rows of the smaller side of W (rows x the rest, flattened)
  are orthonormal times a gain, i.e. W Wᵀ or WᵀW = gain² I;
* a padding row: a 2-D tensor whose row ``padding_idx`` (the owner's attribute) is all zero;
* random tensors: normal, uniform or truncated normal, decided from the extremes of the
  whole tensor and a Kolmogorov-Smirnov test on a sample of at most :data:`SAMPLE` values:

  - bounded? Under N(m, s²) all n values lie within m ± B with probability
    (1 - 2 Q(B / s))^n; below 1e-6 the tensor is bounded (uniform or truncated normal);
  - KS distance D = max |F_sample - F| against the candidate, accepted when
    D <= 2.7 sqrt(1/k + 1/n) (alpha about 1e-6 for k values drawn with replacement from n;
    2.7 / sqrt(n) when all n values are used).

A random tensor yields :class:`Variant` s, one per family its values allow, each with
its natural scale (normal: std; uniform: bound b; truncated normal: sigma, cut at
``cutoff`` sigma) and the interval in which a predicted scale explains the tensor:
a few standard errors of a sample std (std / sqrt(2 n)) plus :data:`REL_TOL`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SAMPLE = 8192            # values per tensor for the KS test (never the whole tensor)
REL_TOL = 5e-4          # relative tolerance on a scale, on top of the sampling error
STD_ERRORS = 4.5         # how many standard errors a predicted scale may be off
KS_CRITICAL = 2.7        # D <= KS_CRITICAL sqrt(1/k + 1/n): alpha about 1e-6 (many tensors are tested)
BOUNDED_LOG_P = math.log(1e-6)
NICE_CUTOFFS = sorted({round(x / 10, 1) for x in range(5, 100)} | set(range(10, 21)))


@dataclass(frozen=True)
class Stats:
    """Whole-tensor statistics (a padding row left out)."""

    numel: int
    mean: float
    std: float
    min: float
    max: float

    def describe(self) -> str:
        return (f"{self.numel} values, mean {self.mean:.4g}, std {self.std:.4g}, "
                f"min {self.min:.4g}, max {self.max:.4g}")


@dataclass(frozen=True)
class Variant:
    """One family that explains a random tensor: a predicted natural scale in [low, high] fits it."""

    family: str                          # normal | uniform | trunc_normal | uniform_ab
    scale: float                         # std, bound b, or sigma (uniform_ab: the width)
    low: float
    high: float
    mean: float = 0.0                    # normal, trunc_normal
    cutoff: float | None = None          # trunc_normal: in units of sigma
    bounds: tuple[tuple[float, float], tuple[float, float]] | None = None   # uniform_ab: intervals of a and b


@dataclass(frozen=True)
class TensorFit:
    """What the values of one tensor say."""

    name: str
    shape: tuple[int, ...]
    stats: Stats
    kind: str                  # constant | eye | dirac | orthogonal | random | unexplained | empty
    value: float = 0.0         # constant: the value; orthogonal: the gain; dirac: the groups
    variants: tuple[Variant, ...] = ()
    pad: bool | None = None    # True: row padding_idx is all zero; False: it is not; None: no padding_idx
    note: str = ""             # why it is unexplained, or what else was seen


# --------------------------------------------------------------- numbers

def phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def upper_tail(x: float) -> float:
    """Q(x) = P(Z > x) for a standard normal Z."""
    return 0.5 * math.erfc(x / math.sqrt(2))


def trunc_std_factor(c: float) -> float:
    """Std of N(0, 1) truncated to [-c, c]: sqrt(1 - 2 c phi(c) / (2 Phi(c) - 1))."""
    return math.sqrt(max(1 - 2 * c * phi(c) / math.erf(c / math.sqrt(2)), 0.0))


def cutoff_from_ratio(ratio: float) -> float:
    """The cutoff c of a symmetric truncated normal whose std / bound is ``ratio`` (tau(c) / c)."""
    if ratio >= 1 / math.sqrt(3):
        return 0.0
    lo, hi = 1e-3, 60.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if trunc_std_factor(mid) / mid > ratio:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def significant(x: float, digits: int, how: str = "round") -> float:
    """``x`` to ``digits`` significant digits, rounded, or towards +inf (ceil) / -inf (floor)."""
    if x == 0 or not math.isfinite(x):
        return x
    step = 10 ** (math.floor(math.log10(abs(x))) - digits + 1)
    f = {"round": round, "ceil": math.ceil, "floor": math.floor}[how]
    return float(f"{f(x / step) * step:.{digits - 1}e}")


def nice(low: float, high: float, target: float, max_digits: int = 4) -> tuple[float, int] | None:
    """The number in [low, high] with the fewest significant digits (then nearest ``target``)."""
    if low <= 0 <= high:
        return 0.0, 0
    for digits in range(1, max_digits + 1):
        found = nice_at(low, high, target, digits)
        if found is not None:
            return found, digits
    return None


def nice_at(low: float, high: float, target: float, digits: int) -> float | None:
    """The number of ``digits`` significant digits in [low, high] nearest ``target``, if any."""
    found = [v for v in {significant(target, digits, h) for h in ("round", "ceil", "floor")} if low <= v <= high]
    return min(found, key=lambda v: abs(v - target)) if found else None


def digits_of(x: float) -> int:
    """Significant digits ``x`` needs (at most 17)."""
    for d in range(1, 17):
        if significant(x, d) == x:
            return d
    return 17


def ks_distance(sorted_values: torch.Tensor, cdf: torch.Tensor) -> float:
    """max |F_sample - F| for a sorted sample and the candidate CDF at those values."""
    k = sorted_values.numel()
    upper = torch.arange(1, k + 1, dtype=torch.float64) / k
    return max(float((upper - cdf).max()), float((cdf - (upper - 1 / k)).max()))


def normal_cdf(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return torch.special.ndtr((x - mean) / std)


def trunc_cdf(x: torch.Tensor, mean: float, sigma: float, c: float) -> torch.Tensor:
    z = ((x - mean) / sigma).clamp(-c, c)
    low = float(torch.special.ndtr(torch.tensor(-c, dtype=torch.float64)))
    return (torch.special.ndtr(z) - low) / (1 - 2 * low)


def uniform_cdf(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    return ((x - a) / (b - a)).clamp(0, 1)


# --------------------------------------------------------------- tensors

def fit_tensor(name: str, tensor: torch.Tensor, padding_idx: int | None = None, seed: int = 0,
               sample: int = SAMPLE) -> TensorFit:
    """What the values of ``tensor`` say (see the module docstring)."""
    x = tensor.detach()
    shape = tuple(x.shape)
    if x.numel() == 0:
        return TensorFit(name, shape, Stats(0, 0.0, 0.0, 0.0, 0.0), "empty")
    if not x.is_floating_point():
        return TensorFit(name, shape, Stats(x.numel(), 0.0, 0.0, 0.0, 0.0), "unexplained",
                         note=f"dtype {x.dtype} is not floating point")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    low, high = (float(v) for v in torch.aminmax(x))
    if not (math.isfinite(low) and math.isfinite(high)):
        return TensorFit(name, shape, Stats(x.numel(), math.nan, math.nan, low, high), "unexplained",
                         note="holds inf or NaN")
    if low == high:
        return TensorFit(name, shape, Stats(x.numel(), low, 0.0, low, high), "constant", value=low)
    rows = x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)
    row_norms = torch.linalg.vector_norm(rows, dim=1).double()     # one pass: sums of squares, zero rows
    pad, skip, note = padding_row(x, row_norms, padding_idx)
    stats = whole_stats(x, row_norms, low, high, skip)
    if low == 0 and high == 1:
        pattern = exact_pattern(x)
        if pattern is not None:
            return TensorFit(name, shape, stats, pattern[0], value=pattern[1])
    gain = orthogonal_gain(x, row_norms)
    if gain is not None:
        return TensorFit(name, shape, stats, "orthogonal", value=gain)
    values = sample_values(x.reshape(-1), skip, sample, seed)
    variants, why = random_variants(values, stats)
    if not variants:
        return TensorFit(name, shape, stats, "unexplained", pad=pad, note=why)
    return TensorFit(name, shape, stats, "random", variants=variants, pad=pad, note=note)


def padding_row(x: torch.Tensor, row_norms: torch.Tensor,
                padding_idx: int | None) -> tuple[bool | None, tuple[int, int] | None, str]:
    """(pad, flat range of the zero row to leave out, note) for a 2-D tensor."""
    if x.ndim != 2:
        return None, None, ""
    width = x.shape[1]
    if padding_idx is not None and -x.shape[0] <= padding_idx < x.shape[0]:
        row = padding_idx % x.shape[0]
        if float(row_norms[row]) == 0:
            return True, (row * width, (row + 1) * width), ""
        return False, None, ""
    zero_rows = (row_norms == 0).nonzero().flatten().tolist()
    if len(zero_rows) == 1:
        return None, None, (f"row {zero_rows[0]} is all zero, but the owner has no padding_idx "
                            "(padding_zero cannot reproduce it)")
    return None, None, ""


def whole_stats(x: torch.Tensor, row_norms: torch.Tensor, low: float, high: float,
                skip: tuple[int, int] | None) -> Stats:
    """Mean and std of every value but a skipped all-zero row, from the sum and the sums of squares
    per row (float64 over rows: a float32 sum of 38M squares is off by 0.2%)."""
    n = x.numel() - (0 if skip is None else skip[1] - skip[0])      # the zero row adds nothing to either sum
    mean = float(x.sum(dtype=x.dtype)) / n
    variance = float((row_norms ** 2).sum()) / n - mean * mean
    if mean * mean > 100 * abs(variance):                          # the difference cancels: one exact pass
        skipped = x.numel() - n                                    # zeros, each (0 - mean)² in the sum
        variance = (float((x.double() - mean).pow(2).sum()) - skipped * mean * mean) / n
    std = math.sqrt(max(variance, 0.0) * n / max(n - 1, 1))
    if skip is not None and (low == 0 or high == 0):
        flat = x.reshape(-1)
        low, high = (float(v) for v in torch.aminmax(torch.cat([flat[:skip[0]], flat[skip[1]:]])))
    return Stats(n, mean, std, low, high)


def exact_pattern(x: torch.Tensor) -> tuple[str, float] | None:
    """("eye", 0) or ("dirac", groups) when the 0/1 tensor is exactly that."""
    if x.ndim == 2 and torch.equal(x, torch.eye(*x.shape, dtype=x.dtype)):
        return "eye", 0.0
    if x.ndim in (3, 4, 5):
        out_channels = x.shape[0]
        for groups in (g for g in range(1, out_channels + 1) if out_channels % g == 0):
            reference = torch.zeros(x.shape, dtype=x.dtype)
            torch.nn.init.dirac_(reference, groups=groups)
            if torch.equal(x, reference):
                return "dirac", float(groups)
    return None


def orthogonal_gain(x: torch.Tensor, row_norms: torch.Tensor) -> float | None:
    """g when the smaller side of W (dim 0 x the rest) has orthogonal rows of norm g, else None."""
    if x.ndim < 2:
        return None
    m = x.reshape(x.shape[0], -1)
    tall = m.shape[0] > m.shape[1]
    if tall:
        m = m.T
    rows, cols = m.shape
    if rows < 2:
        return None
    eps = torch.finfo(x.dtype).eps
    tol = min(0.3 / math.sqrt(cols), max(1e-4, 16 * eps / math.sqrt(cols)))
    probe = m[:8].double().norm(dim=1) if tall else row_norms[:8]
    if float(probe.max() - probe.min()) > tol * float(probe.max()):
        return None
    norms = m.double().norm(dim=1) if tall else row_norms
    gain = float(norms.mean())
    if gain == 0 or float((norms - gain).abs().max()) > tol * gain:
        return None
    picked = m[torch.linspace(0, rows - 1, min(rows, 256)).long()].double() / gain
    gram = picked @ picked.T
    if float((gram - torch.eye(gram.shape[0], dtype=gram.dtype)).abs().max()) > 2 * tol:
        return None
    return gain


def sample_values(flat: torch.Tensor, skip: tuple[int, int] | None, k: int, seed: int) -> torch.Tensor:
    """At most ``k`` values (uniformly drawn, with replacement, from a local generator), sorted, float64."""
    skipped = 0 if skip is None else skip[1] - skip[0]
    n = flat.numel() - skipped
    if n <= k:
        values = flat if skip is None else torch.cat([flat[:skip[0]], flat[skip[1]:]])
    else:
        index = torch.randint(0, n, (k,), generator=torch.Generator().manual_seed(seed))
        if skip is not None:
            index = index + (index >= skip[0]).long() * skipped
        values = flat[index]
    return values.double().sort().values


def random_variants(values: torch.Tensor, stats: Stats) -> tuple[tuple[Variant, ...], str]:
    """Every family the sample and the whole tensor's extremes allow; else ((), why not)."""
    n, s, m, low, high = stats.numel, stats.std, stats.mean, stats.min, stats.max
    k = values.numel()
    critical = KS_CRITICAL * math.sqrt(1 / k + (1 / n if k < n else 0.0))
    tol = STD_ERRORS / math.sqrt(2 * max(n - 1, 1)) + REL_TOL
    mean_error = STD_ERRORS * s / math.sqrt(n)
    mean = 0.0 if abs(m) <= mean_error else (nice(m - mean_error, m + mean_error, m) or (m, 0))[0]
    reach = max(high - mean, mean - low)
    bounded = n * math.log1p(-2 * upper_tail(reach / s)) < BOUNDED_LOG_P
    found: list[Variant] = []
    distances = {}
    if not bounded:
        distances["normal"] = ks_distance(values, normal_cdf(values, mean, s))
        if distances["normal"] <= critical:
            found.append(Variant("normal", s, s * (1 - tol), s * (1 + tol), mean=mean))
    width = high - low
    # How far inside its bounds the extreme of n uniform values may lie: P(max < b (1 - t)) = (1 - t)^n
    # <= exp(-t n), about 3e-4 at t = 8 / n (of the bound b, or of the width for bounds a, b).
    gap = 8 / n + REL_TOL
    if abs(low + high) <= 20 * width / n:   # symmetric about 0
        b = max(-low, high)
        distances["uniform"] = ks_distance(values, uniform_cdf(values, -b * (1 + 1 / n), b * (1 + 1 / n)))
        if distances["uniform"] <= critical:
            found.append(Variant("uniform", b, b * (1 - 1e-5), b * (1 + gap)))
    else:
        distances["uniform"] = ks_distance(values, uniform_cdf(values, low - width / n, high + width / n))
        if distances["uniform"] <= critical:
            slack = width * gap
            found.append(Variant("uniform_ab", width, width, width, bounds=((low - slack, low), (high, high + slack))))
    if bounded and abs((high - mean) + (low - mean)) <= 0.05 * reach:
        variant = trunc_variant(values, stats, mean, reach, tol)
        if variant is not None:
            distances["trunc_normal"] = ks_distance(values, trunc_cdf(values, mean, variant.scale, variant.cutoff))
            if distances["trunc_normal"] <= critical:
                found.append(variant)
    why = "" if found else ("no family fits: KS distance " + ", ".join(f"{k} {v:.3g}" for k, v in distances.items())
                            + f" (accepted <= {critical:.3g})" + ("; bounded" if bounded else ""))
    return tuple(found), why


def trunc_variant(values: torch.Tensor, stats: Stats, mean: float, reach: float, tol: float) -> Variant | None:
    """N(mean, sigma²) cut at ±c sigma: c the simplest cutoff whose reach/std fits, sigma = std / tau(c)."""
    s, n = stats.std, stats.numel
    c_hat = cutoff_from_ratio(s / reach)
    if c_hat < 0.5:
        return None                          # flatter than any useful truncation: uniform
    density = phi(c_hat) / math.erf(c_hat / math.sqrt(2))     # per sigma, at the bound
    shortfall = 8 / (2 * n * density) / c_hat                  # how far the extremes may fall short, relative
    ratio = reach / s
    low, high = ratio * (1 - tol), ratio * (1 + tol) * (1 + shortfall)
    fitting = [c for c in NICE_CUTOFFS if low <= c / trunc_std_factor(c) <= high]
    if fitting:
        c = min(fitting, key=lambda v: (digits_of(v), abs(v - c_hat)))
    else:
        c = significant(c_hat, 3)
    sigma = s / trunc_std_factor(c)
    return Variant("trunc_normal", sigma, sigma * (1 - tol), sigma * (1 + tol), mean=mean, cutoff=c)

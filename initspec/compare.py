"""Compare the values of two tensors: summaries, a two-sample Kolmogorov-Smirnov test, a verdict.

Verdicts, tried in this order:

* ``identical``: same shape, same dtype, same bits.
* ``same constant``: every value on both sides is one number c (the bits may differ:
  -0.0 vs 0.0, float32 vs bfloat16).
* ``same distribution``: neither side is constant and no check below fails.
* ``differs``: different shapes, different constants, a constant vs random values,
  NaN or inf values, or a failed check (each failure is stated in the reason).

Checks between two random tensors of n_a and n_b values (means m, stds s, zero
fractions f over the whole tensor; z = 5 standard errors, widened for few values
as Student's t widens the normal: z(df) = 5 + 130 / (4 df) + 17640 / (96 df^2),
df = min(n_a, n_b) - 1, so 5.3 at 128 values, 8.0 at 16. Two draws of the same
init fail a check about once in a million, measured over 200k pairs per size):

* std: ``|ln(s_a / s_b)| <= z * sqrt((k - 1) / (4 (n_a - 1)) + (k - 1) / (4 (n_b - 1)))``,
  k the larger kurtosis of the two samples (at least 1.8, a uniform's);
* mean: ``|m_a - m_b| <= z * sqrt(s_a^2 / n_a + s_b^2 / n_b)``;
* zeros: ``|f_a - f_b| <= z * sqrt(p (1 - p) (1 / n_a + 1 / n_b))``, p the pooled fraction;
* tails: at most 40 sampled values of one side lie outside the other side's
  [min, max] (for two draws of one continuous distribution that count is
  about geometric with mean <= 1, so 40 happens about once in 10^12: a
  normal where a truncated normal belongs, or a wider bound, shows thousands);
* KS: the two-sample Kolmogorov-Smirnov p-value is at least 1e-6 (asymptotic
  Kolmogorov distribution with Stephens' correction), on every value of a
  tensor of up to 32768 values, else on 32768 of them: one drawn from each of
  32768 equal stretches of the flattened tensor, at positions seeded per side
  (the same for every tensor of one size).

Small tensors carry little information: the tolerances widen by themselves,
and a tensor whose std cannot be pinned to +-10% says so in its reason
("small: 64 vs 64 values, std known to ±97%", or "std not pinned down" past a
factor 10); 3 values against 3 are almost never told apart. A constant is never the same as random values, whatever the size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

IDENTICAL, SAME_CONSTANT, SAME_DISTRIBUTION, DIFFERS = "identical", "same constant", "same distribution", "differs"
AGREE = (IDENTICAL, SAME_CONSTANT, SAME_DISTRIBUTION)
SAMPLE = 32_768      # values per side for the KS test: 2^15, the largest torch sorts on one thread
KS_ALPHA = 1e-6      # a KS p-value below this is a difference
Z = 5.0              # std, mean and zero-fraction tolerances, in standard errors (many values)
TAIL_COUNT = 40      # sampled values outside the other side's [min, max] that make a difference
SMALL_STD = 0.10     # a std tolerance wider than this is reported as "small"
SEEDS = (0, 1)       # seeds of the sample positions of side a and side b
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Summary:
    """One side of a tensor: shape, dtype and statistics over every value (None when empty)."""

    shape: tuple[int, ...]
    dtype: str
    numel: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    zero_fraction: float | None
    nonfinite: int = 0          # NaN and inf values

    @property
    def constant(self) -> bool:
        return self.numel > 0 and self.nonfinite == 0 and self.min == self.max

    def to_dict(self) -> dict:
        out = {"shape": list(self.shape), "dtype": self.dtype, "numel": self.numel}
        for key in ("mean", "std", "min", "max", "zero_fraction"):
            value = getattr(self, key)
            out[key] = value if value is None or math.isfinite(value) else None   # JSON has no NaN
        out["nonfinite"] = self.nonfinite
        return out


@dataclass(frozen=True)
class KS:
    """A two-sample Kolmogorov-Smirnov test: D = max |F_a(x) - F_b(x)| over the two samples
    (of sample_a and sample_b values), and its asymptotic p-value."""

    statistic: float
    pvalue: float
    sample_a: int
    sample_b: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Measured:
    """What :func:`measure` found by passing over two whole tensors: their summaries, whether they are
    bitwise equal, and (when they are not, and hold values) an unsorted sample of each."""

    a: Summary
    b: Summary
    identical: bool
    samples: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class Comparison:
    """The verdict for one pair of tensors, with what it rests on. ``samples`` (sorted, at most
    a few thousand values each) are kept for plots when the tensors differ."""

    verdict: str
    reason: str
    a: Summary
    b: Summary
    ks: KS | None = None
    samples: tuple[torch.Tensor, torch.Tensor] | None = None


def method(sample: int = SAMPLE) -> dict:
    """The verdicts, the test, the sample size and the thresholds, as data (the JSON output's "method")."""
    return {
        "identical": "same shape, dtype and bits",
        "same constant": "every value on both sides is the same number (bits may differ: -0.0 vs 0.0, dtypes)",
        "same distribution": {
            "summary": (f"KS p >= {KS_ALPHA:g} on <= {sample} sampled values per side; std, mean and zero "
                        f"fraction within {Z:g} standard errors; <= {TAIL_COUNT} sampled values outside "
                        "the other side's [min, max]"),
            "test": "two-sample Kolmogorov-Smirnov, asymptotic p-value with Stephens' correction "
                    "Q((sqrt(n) + 0.12 + 0.11 / sqrt(n)) D), n = n_a n_b / (n_a + n_b)",
            "sample": f"every value of a tensor of up to {sample}, else {sample}: one from each of {sample} equal "
                      "stretches of the flattened tensor, at positions drawn by a generator seeded per side "
                      "(0 for a, 1 for b; tensors of one size share them)",
            "ks_p_min": KS_ALPHA,
            "z": f"{Z:g} standard errors, widened for df = min(n_a, n_b) - 1 values: "
                 "z + (z^3 + z)/(4 df) + (5 z^5 + 16 z^3 + 3 z)/(96 df^2)",
            "std": "|ln(s_a/s_b)| <= z sqrt((k - 1)/(4 (n_a - 1)) + (k - 1)/(4 (n_b - 1))), "
                   "k = the larger sample kurtosis, >= 1.8",
            "mean": "|m_a - m_b| <= z sqrt(s_a^2/n_a + s_b^2/n_b)",
            "zeros": "|f_a - f_b| <= z sqrt(p (1 - p) (1/n_a + 1/n_b)), p = pooled zero fraction",
            "tails": f"<= {TAIL_COUNT} sampled values of one side outside the other side's [min, max]",
            "small": f"a std tolerance wider than ±{SMALL_STD:.0%} is reported as 'small' in the reason",
        },
        "differs": "anything else; the reason names each failed check",
    }


def summarize(tensor: torch.Tensor) -> Summary:
    """Shape, dtype, mean, std (unbiased), min, max and zero fraction of every value
    (a constant needs one pass: min == max)."""
    t = tensor.detach()
    shape, dtype, n = tuple(t.shape), str(t.dtype).removeprefix("torch."), t.numel()
    if n == 0:
        return Summary(shape, dtype, 0, None, None, None, None, None)
    x = _as_float(t)
    low, high = (float(v) for v in x.aminmax())
    if low == high:   # a constant (all +inf or all -inf counts as non-finite; NaN never equals itself)
        return Summary(shape, dtype, n, low, 0.0, low, high, 1.0 if low == 0 else 0.0,
                       0 if math.isfinite(low) else n)
    mean = float(x.mean())
    std = float(x.std()) if n > 1 else 0.0
    zeros = 1.0 - int(torch.count_nonzero(x)) / n
    nonfinite = 0 if math.isfinite(mean) and math.isfinite(std) else int((~torch.isfinite(x)).sum())
    return Summary(shape, dtype, n, mean, std, low, high, zeros, nonfinite)


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """A floating view or copy fit for statistics: float64 for 64-bit and integer types, float32 for
    half types (whose own reductions lose precision), complex as (real, imag) pairs."""
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype in (torch.float32, torch.float64):
        return t
    if t.is_floating_point():
        return t.float()
    return t.double()


def bitwise_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Same shape, dtype and bits (NaN payloads and -0.0 included)."""
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    x, y = x.detach(), y.detach()
    if (x.is_floating_point() or x.is_complex()) and x.element_size() in _INT_OF_SIZE:
        bits = _INT_OF_SIZE[x.element_size()]
        return torch.equal(x.view(bits), y.view(bits))
    return torch.equal(x, y)


class SampleKey(NamedTuple):
    """What a tensor's sample positions depend on (never its values)."""

    numel: int
    size: int
    seed: int


def sample_positions(key: SampleKey) -> torch.Tensor:
    """One position from each of ``key.size`` equal stretches of ``range(key.numel)``, drawn
    uniformly by a generator seeded with ``key.seed`` (stratified, without replacement)."""
    starts = torch.arange(key.size + 1, dtype=torch.int64) * key.numel // key.size
    offsets = torch.rand(key.size, generator=torch.Generator().manual_seed(key.seed), dtype=torch.float64)
    return starts[:-1] + (offsets * (starts[1:] - starts[:-1])).long()


def draw_sample(tensor: torch.Tensor, size: int, seed: int,
                positions: dict[SampleKey, torch.Tensor] | None = None) -> torch.Tensor:
    """Every value when there are at most ``size``; else the values at :func:`sample_positions`
    (the positions ignore the values, so values drawn i.i.d. stay i.i.d., and row blocks of
    different inits are sampled in proportion). As float, unsorted. ``positions`` caches the
    positions per :class:`SampleKey`: tensors of one size share them."""
    flat = _as_float(tensor.detach()).reshape(-1)
    n = flat.numel()
    if n <= size:
        return flat
    key = SampleKey(n, size, seed)
    index = positions.get(key) if positions is not None else None
    if index is None:
        index = sample_positions(key)
        if positions is not None:
            positions[key] = index
    return flat[index.to(flat.device)]


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution: 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 x^2), or, where
    that series converges slowly (x < 1), 1 - sqrt(2 pi) / x sum_{j>=1} exp(-(2j-1)^2 pi^2 / (8 x^2))."""
    if x <= 0:
        return 1.0
    if x < 1.0:
        tail = sum(math.exp(-((2 * j - 1) ** 2) * math.pi ** 2 / (8 * x * x)) for j in range(1, 8))
        return min(1.0, max(0.0, 1.0 - math.sqrt(2 * math.pi) / x * tail))
    series = sum((-1) ** (j - 1) * math.exp(-2 * j * j * x * x) for j in range(1, 30))
    return min(1.0, max(0.0, 2.0 * series))


def ks_pvalue(statistic: float, n_a: float, n_b: float) -> float:
    """Asymptotic two-sided p-value with Stephens' small-sample correction:
    Q((sqrt(n_e) + 0.12 + 0.11 / sqrt(n_e)) D), n_e = n_a n_b / (n_a + n_b)."""
    root = math.sqrt(n_a * n_b / (n_a + n_b))
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * statistic)


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """D = sup_x |F_a(x) - F_b(x)|, F the right-continuous empirical CDFs (ties counted as
    scipy.stats.ks_2samp counts them), from one sort of both samples together.

    Walking the merged values in order, each value of a adds n_b and each value of b subtracts
    n_a, so the running sum is n_a n_b (F_a - F_b) in integers; it is read where a run of equal
    values ends, as the right-continuous CDFs are.
    """
    n_a, n_b = a.numel(), b.numel()
    keys, order = sort_key(torch.cat((a.reshape(-1), b.reshape(-1)))).sort()
    gap = torch.where(order < n_a, n_b, -n_a).cumsum_(0).abs_()   # n_a n_b |F_a - F_b| after each value
    gap[:-1][keys[1:] == keys[:-1]] = 0                           # inside a run of equal values: not read
    return int(gap.max()) / (n_a * n_b)


def sort_key(v: torch.Tensor) -> torch.Tensor:
    """Integers that order (and tie) as the finite float32/float64 values ``v`` do; torch sorts
    integers by radix, ten times faster than floats on the CPU (0.6 vs 6.2 ms for 65536 values).

    IEEE 754: non-negative floats order as their bit patterns read as signed integers; negative
    ones order in reverse, so their bits other than the sign are flipped. -0.0 becomes 0.0 first.
    """
    signed = {torch.float32: torch.int32, torch.float64: torch.int64}[v.dtype]
    bits = (v + 0.0).view(signed)
    negative_mask = (bits >> (8 * bits.element_size() - 1)).bitwise_and_(torch.iinfo(signed).max)
    return bits.bitwise_xor_(negative_mask)


def ks_test(a: torch.Tensor, b: torch.Tensor) -> KS:
    """The two-sample KS test on two samples (any order)."""
    d = ks_statistic(a, b)
    return KS(d, ks_pvalue(d, a.numel(), b.numel()), a.numel(), b.numel())


def ks_2samp(a: torch.Tensor, b: torch.Tensor) -> KS:
    """The two-sample KS test on every value of ``a`` and ``b`` (as scipy.stats.ks_2samp with
    method="asymp" tests them)."""
    return ks_test(_as_float(a.detach()).reshape(-1), _as_float(b.detach()).reshape(-1))


def compare(x: torch.Tensor, y: torch.Tensor, *, sample: int = SAMPLE, seeds: tuple[int, int] = SEEDS) -> Comparison:
    """The verdict for tensor ``x`` (side a) against ``y`` (side b); see the module docstring."""
    return judge(measure(x, y, sample=sample, seeds=seeds))


def measure(x: torch.Tensor, y: torch.Tensor, *, sample: int = SAMPLE, seeds: tuple[int, int] = SEEDS,
            positions: dict[SampleKey, torch.Tensor] | None = None) -> Measured:
    """The passes over the whole tensors (bitwise equality, summaries) and the samples, side a's
    positions seeded by ``seeds[0]`` and side b's by ``seeds[1]`` (cached in ``positions``)."""
    if bitwise_equal(x, y):
        summary = summarize(x)
        return Measured(summary, summary, True)
    a, b = summarize(x), summarize(y)
    if a.numel == 0 or b.numel == 0:
        return Measured(a, b, False)
    return Measured(a, b, False, (draw_sample(x, sample, seeds[0], positions),
                                  draw_sample(y, sample, seeds[1], positions)))


def judge(m: Measured, keep_samples: int = 4096) -> Comparison:
    """The verdict from what :func:`measure` found; it works on the samples only (sorts, the KS test,
    the checks), so verdicts of many tensors can be judged on threads of their own."""
    a, b = m.a, m.b
    if m.identical:
        return Comparison(IDENTICAL, "", a, b)
    if m.samples is None:   # one side (or both) holds no values
        if a.numel == b.numel == 0 and a.shape == b.shape:
            return Comparison(SAME_CONSTANT, f"no values; dtype {a.dtype} vs {b.dtype}", a, b)
        shapes = f"shape {_shape(a.shape)} vs {_shape(b.shape)}; " if a.shape != b.shape else ""
        return Comparison(DIFFERS, f"{shapes}{a.numel} vs {b.numel} values", a, b)
    sa, sb = m.samples
    verdict, reason, ks = _values_verdict(a, b, sa, sb)
    notes = []
    if a.shape != b.shape:
        notes.append(f"shape {_shape(a.shape)} vs {_shape(b.shape)}")
    if a.dtype != b.dtype:
        notes.append(f"dtype {a.dtype} vs {b.dtype}")
    if a.shape != b.shape:
        values = reason if verdict in (DIFFERS, SAME_CONSTANT) else verdict
        reason, verdict = "; ".join(notes) + f" (values: {values})", DIFFERS
    elif notes:
        reason = "; ".join([reason, *notes] if reason else notes)
    kept = None
    if verdict == DIFFERS:   # a few thousand sorted values per side, for plots
        kept = (_thin(sa.sort().values, keep_samples), _thin(sb.sort().values, keep_samples))
    return Comparison(verdict, reason, a, b, ks, kept)


def _values_verdict(a: Summary, b: Summary, sa: torch.Tensor, sb: torch.Tensor) -> tuple[str, str, KS | None]:
    if a.nonfinite or b.nonfinite:
        return DIFFERS, f"NaN/inf values: {a.nonfinite} vs {b.nonfinite}", None
    if a.numel == 1 and b.numel == 1 and a.min != b.min:
        return DIFFERS, f"value {_num(a.min)} vs {_num(b.min)} (one value each: constant or random cannot be told)", None
    if a.constant and b.constant:
        if a.min == b.min:
            return SAME_CONSTANT, f"constant {_num(a.min)}", None
        return DIFFERS, f"constant {_num(a.min)} vs {_num(b.min)}", None
    if a.constant or b.constant:
        return DIFFERS, _constant_vs_random(a, b), None
    ks = ks_test(sa, sb)
    z = z_small(min(a.numel, b.numel) - 1)
    log_std_error = _log_std_error(a, b, sa, sb)
    failures = [f for f in (_std_check(a, b, z * log_std_error), _tail_check(a, b, sa, sb), _zeros_check(a, b, z),
                            _mean_check(a, b, z)) if f]
    if ks.pvalue < KS_ALPHA:
        failures.append(f"KS D={ks.statistic:.3g}, p={ks.pvalue:.1e} < {KS_ALPHA:g}" if ks.pvalue > 0
                        else f"KS D={ks.statistic:.3g}, p < 1e-300")
    if failures:
        return DIFFERS, "; ".join(failures), ks
    reason = f"KS p={ks.pvalue:.2g}"
    tolerance = math.exp(z * log_std_error) - 1
    if tolerance > 9:     # a tolerance beyond a factor of 10 says nothing as a percentage
        reason += f"; small: {a.numel} vs {b.numel} values, std not pinned down (tolerance over a factor 10)"
    elif tolerance > SMALL_STD:
        reason += f"; small: {a.numel} vs {b.numel} values, std known to ±{tolerance:.0%}"
    return SAME_DISTRIBUTION, reason, ks


def _constant_vs_random(a: Summary, b: Summary) -> str:
    left = f"constant {_num(a.min)}" if a.constant else "random"
    right = f"constant {_num(b.min)}" if b.constant else "random"
    text = f"{left} vs {right}: std {_num(a.std)} vs {_num(b.std)}"
    if a.zero_fraction != b.zero_fraction:
        text += f", zeros {_percent(a.zero_fraction)} vs {_percent(b.zero_fraction)}"
    return text


def _kurtosis(sample: torch.Tensor) -> float:
    """E[(x - m)^4] / var^2 of the sample, between 1.8 (a uniform's) and the sample size."""
    n = sample.numel()
    squares = sample.to(torch.float64, copy=True)
    squares.sub_(squares.mean()).square_()      # (x - m)^2, in one buffer
    var = float(squares.mean())
    if var <= 0:
        return max(1.8, float(n))
    fourth = float(torch.dot(squares, squares)) / n
    return min(max(1.8, fourth / (var * var)), max(1.8, float(n)))


def z_small(df: int) -> float:
    """Z widened for few values as Student's t widens the normal (Cornish-Fisher, two terms):
    z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2); 5.27 at 128 values, 8.0 at 16, 67 at 3."""
    df = max(df, 1)
    return Z + (Z ** 3 + Z) / (4 * df) + (5 * Z ** 5 + 16 * Z ** 3 + 3 * Z) / (96 * df * df)


def _log_std_error(a: Summary, b: Summary, sa: torch.Tensor, sb: torch.Tensor) -> float:
    """Standard error of ln(s_a / s_b): var(ln s) = (k - 1) / (4 (n - 1)) per side, k the larger
    of the two kurtoses (two small samples of one init can measure it quite differently)."""
    k = max(_kurtosis(sa), _kurtosis(sb))
    return math.sqrt((k - 1) / (4 * max(a.numel - 1, 1)) + (k - 1) / (4 * max(b.numel - 1, 1)))


def _std_check(a: Summary, b: Summary, bound: float) -> str:
    log_ratio = math.log(a.std / b.std)
    if abs(log_ratio) <= bound + 1e-9:
        return ""
    return (f"std {_num(a.std)} vs {_num(b.std)} ({math.exp(log_ratio) - 1:+.1%}; "
            f"allowed {math.exp(-bound) - 1:+.1%} to {math.exp(bound) - 1:+.1%})")


def _mean_check(a: Summary, b: Summary, z: float) -> str:
    bound = z * math.sqrt(a.std ** 2 / a.numel + b.std ** 2 / b.numel) + 1e-7 * (abs(a.mean) + abs(b.mean))
    if abs(a.mean - b.mean) <= bound:
        return ""
    return f"mean {_num(a.mean)} vs {_num(b.mean)} (tolerance ±{bound:.2g})"


def _zeros_check(a: Summary, b: Summary, z: float) -> str:
    pooled = (a.zero_fraction * a.numel + b.zero_fraction * b.numel) / (a.numel + b.numel)
    bound = z * math.sqrt(pooled * (1 - pooled) * (1 / a.numel + 1 / b.numel))
    if abs(a.zero_fraction - b.zero_fraction) <= bound + 1e-12:
        return ""
    return f"zeros {_percent(a.zero_fraction)} vs {_percent(b.zero_fraction)}"


def _outside(v: torch.Tensor, low: float, high: float) -> int:
    """Values of a sample below ``low`` or above ``high``."""
    return int((v < low).sum()) + int((v > high).sum())


def _tail_check(a: Summary, b: Summary, sa: torch.Tensor, sb: torch.Tensor) -> str:
    out_b, out_a = _outside(sb, a.min, a.max), _outside(sa, b.min, b.max)
    if max(out_a, out_b) <= TAIL_COUNT:
        return ""
    ea, eb = _extent(a), _extent(b)
    text = f"range {_range(a)} vs {_range(b)}" if ea == eb == "unbounded" else f"{ea} vs {eb}"
    if out_b >= out_a:
        return text + f" ({out_b / sb.numel():.1%} of b's values outside a's range)"
    return text + f" ({out_a / sa.numel():.1%} of a's values outside b's range)"


def _extent(s: Summary) -> str:
    """'unbounded' when the extreme value lies as far out as a normal's maximum would
    (max |x - mean| / std >= sqrt(2 ln n) - 1), else the range."""
    reach = max(abs(s.min - s.mean), abs(s.max - s.mean)) / s.std
    return "unbounded" if reach >= math.sqrt(2 * math.log(s.numel)) - 1 else f"bounded at {_range(s)}"


def _range(s: Summary) -> str:
    if abs(s.max + s.min) <= 0.05 * (s.max - s.min):
        return f"±{_num(max(abs(s.min), abs(s.max)))}"
    return f"[{_num(s.min)}, {_num(s.max)}]"


def _thin(values: torch.Tensor, limit: int) -> torch.Tensor:
    """At most ``limit`` evenly spaced values of a sorted sample (the same distribution, fewer points)."""
    if values.numel() <= limit:
        return values.cpu()
    return values[torch.linspace(0, values.numel() - 1, limit).round().long().to(values.device)].cpu()


def _num(x: float | None) -> str:
    """Three significant digits, trailing zeros kept: 0.0200, 1.00, -3.14e-05; 0 and integers as such."""
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:#.3g}"


def _percent(x: float | None) -> str:
    if x is None:
        return "-"
    if x in (0.0, 1.0):
        return f"{x:.0%}"
    return f"{x:.1%}" if 0.001 <= x <= 0.999 else f"{100 * x:.2g}%"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "()"

"""What :func:`initspec.diff` found: one row per tensor, the table, JSON and histograms.

A leaf above :mod:`initspec.compare`: rows hold its :class:`Summary` and
:class:`KS`; nothing here computes a verdict.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from .compare import AGREE, DIFFERS, KS, SAME_DISTRIBUTION, Summary, method

ONLY_IN_A, ONLY_IN_B = "only in a", "only in b"


@dataclass(frozen=True)
class TensorDiff:
    """One tensor (and the names tied to it on both sides): its two summaries and the verdict.

    ``verdict`` is identical, same constant, same distribution, differs, only in a or only in b;
    ``reason`` says why; ``tie`` describes a tie one side has and the other lacks (a tie
    difference makes the verdict ``differs``). ``samples`` holds a few thousand sorted values
    per side of a differing tensor, for :meth:`DiffReport.plot`.
    """

    name: str
    verdict: str
    reason: str
    a: Summary | None
    b: Summary | None
    aliases: tuple[str, ...] = ()
    tie: str = ""
    ks: KS | None = None
    samples: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.verdict in AGREE

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "aliases": list(self.aliases), "template": template(self.name),
                "verdict": self.verdict, "reason": self.reason, "tie": self.tie,
                "a": None if self.a is None else self.a.to_dict(), "b": None if self.b is None else self.b.to_dict(),
                "ks": None if self.ks is None else self.ks.to_dict()}


@dataclass(frozen=True)
class DiffReport:
    """Returned by :func:`initspec.diff`: ``rows`` in the order of side a, then names only b has."""

    labels: tuple[str, str]
    rows: tuple[TensorDiff, ...]
    sample: int

    @property
    def ok(self) -> bool:
        """Every tensor agrees (identical, same constant or same distribution), on both sides, tied alike."""
        return all(row.ok for row in self.rows)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(row.verdict for row in self.rows))

    @property
    def differing(self) -> tuple[TensorDiff, ...]:
        return tuple(row for row in self.rows if not row.ok)

    @property
    def only_in_a(self) -> tuple[str, ...]:
        return tuple(name for row in self.rows if row.verdict == ONLY_IN_A for name in (row.name, *row.aliases))

    @property
    def only_in_b(self) -> tuple[str, ...]:
        return tuple(name for row in self.rows if row.verdict == ONLY_IN_B for name in (row.name, *row.aliases))

    @property
    def tie_differences(self) -> tuple[TensorDiff, ...]:
        return tuple(row for row in self.rows if row.tie)

    def row(self, name: str) -> TensorDiff:
        """The row of a tensor, by its name or one of its aliases."""
        for row in self.rows:
            if name == row.name or name in row.aliases:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.labels[0], "b": self.labels[1], "ok": self.ok, "counts": self.counts,
                "method": method(self.sample), "tensors": [row.to_dict() for row in self.rows],
                "only_in_a": list(self.only_in_a), "only_in_b": list(self.only_in_b),
                "tie_differences": [{"name": row.name, "tie": row.tie} for row in self.tie_differences]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def explain(self, width: int | None = None, collapse: bool = True) -> str:
        """The table; with ``collapse``, agreeing rows that share a name template
        (``transformer.h.*.attn.c_attn.weight``) and a verdict show as one row, statistics pooled."""
        return render(self, width=width, collapse=collapse)

    def __str__(self) -> str:
        return self.explain()

    def plot(self, path: str, max_panels: int = 12) -> None:
        """Overlaid histograms (sampled values) of up to ``max_panels`` differing tensors, as a PNG."""
        plot_differences(self, path, max_panels)


# ------------------------------------------------------------------ collapsing by template

def template(name: str) -> str:
    """The name with every all-digit component written ``*``: ``transformer.h.*.attn.c_attn.weight``
    (digits inside a component stay: ``ln_1``, ``w2``)."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


@dataclass(frozen=True)
class Shown:
    """One table row: a tensor, or agreeing tensors of one template collapsed."""

    label: str
    members: tuple[TensorDiff, ...]

    @property
    def first(self) -> TensorDiff:
        return self.members[0]


def shown_rows(report: DiffReport, collapse: bool) -> list[Shown]:
    if not collapse:
        return [Shown(_name(row), (row,)) for row in report.rows]
    groups: dict[tuple[str, str], list[TensorDiff]] = {}
    order: list[tuple[str, str] | TensorDiff] = []
    for row in report.rows:
        if not row.ok or row.tie or row.aliases:
            order.append(row)
            continue
        key = (template(row.name), row.verdict)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(row)
    out = []
    for item in order:
        if isinstance(item, TensorDiff):
            out.append(Shown(_name(item), (item,)))
        else:
            members = tuple(groups[item])
            label = members[0].name if len(members) == 1 else f"{item[0]}\n({len(members)} tensors)"
            out.append(Shown(label, members))
    return out


def _name(row: TensorDiff) -> str:
    if not row.aliases:
        return row.name
    shown = ", ".join(row.aliases[:3]) + (" ..." if len(row.aliases) > 3 else "")
    return f"{row.name}\n(= {shown})"


def pooled(summaries: list[Summary]) -> Summary | None:
    """The statistics of several tensors taken as one: numel-weighted mean, pooled std, extremes."""
    full = [s for s in summaries if s.numel and s.mean is not None]
    if not full:
        return summaries[0] if summaries else None
    if len(full) == 1:
        return full[0]
    n = sum(s.numel for s in full)
    mean = sum(s.mean * s.numel for s in full) / n
    spread = sum((s.numel - 1) * s.std ** 2 + s.numel * (s.mean - mean) ** 2 for s in full)
    return Summary(full[0].shape, full[0].dtype, n, mean, math.sqrt(max(spread, 0.0) / max(n - 1, 1)),
                   min(s.min for s in full), max(s.max for s in full),
                   sum(s.zero_fraction * s.numel for s in full) / n, sum(s.nonfinite for s in full))


# ------------------------------------------------------------------ the table

def render(report: DiffReport, width: int | None = None, collapse: bool = True) -> str:
    from .render import table, text_of
    la, lb = report.labels
    rows = table(f"initspec diff: {la} (a) vs {lb} (b)", show_lines=True)
    for column in ("tensor", "shape", "dtype", "side", "mean", "std", "min", "max", "zeros", "verdict", "reason"):
        rows.add_column(column, overflow="fold")
    for shown in shown_rows(report, collapse):
        a = pooled([r.a for r in shown.members if r.a is not None])
        b = pooled([r.b for r in shown.members if r.b is not None])
        shapes = [_distinct(r.a.shape for r in shown.members if r.a), _distinct(r.b.shape for r in shown.members if r.b)]
        dtypes = [_distinct(r.a.dtype for r in shown.members if r.a), _distinct(r.b.dtype for r in shown.members if r.b)]
        rows.add_row(shown.label, _pair(*shapes), _pair(*dtypes), f"{la}\n{lb}",
                     *(f"{_stat(a, key)}\n{_stat(b, key)}" for key in ("mean", "std", "min", "max")),
                     f"{_zeros(a)}\n{_zeros(b)}", shown.first.verdict, _reason(shown))
    return text_of(rows, *footer(report), width=width)


def _distinct(values) -> str:
    seen = list(dict.fromkeys(values))
    if not seen:
        return "-"
    text = [("x".join(map(str, v)) or "()") if isinstance(v, tuple) else str(v) for v in seen[:3]]
    return ", ".join(text) + (" ..." if len(seen) > 3 else "")


def _pair(a: str, b: str) -> str:
    return a if a == b else f"{a}\n{b}"


def _stat(s: Summary | None, key: str) -> str:
    value = None if s is None else getattr(s, key)
    return "-" if value is None else f"{value:.4g}"


def _zeros(s: Summary | None) -> str:
    return "-" if s is None or s.zero_fraction is None else f"{100 * s.zero_fraction:.1f}%"


def _reason(shown: Shown) -> str:
    reasons = list(dict.fromkeys(r.reason for r in shown.members))
    if len(reasons) == 1:
        text = reasons[0]
    elif shown.first.verdict == SAME_DISTRIBUTION:
        lowest = min(r.ks.pvalue for r in shown.members if r.ks is not None)
        text = f"KS p >= {lowest:.2g}" + ("; small tensors" if any("small:" in r for r in reasons) else "")
    else:
        text = reasons[0] + " ..."
    return text


def footer(report: DiffReport) -> list[str]:
    la, lb = report.labels
    counts = report.counts
    listed = ", ".join(f"{counts[v]} {v}" for v in (*AGREE, DIFFERS, ONLY_IN_A, ONLY_IN_B) if v in counts)
    lines = [f"{len(report.rows)} tensors: {listed}"]
    if report.only_in_a:
        lines.append(f"only in {la}: " + _listed(report.only_in_a))
    if report.only_in_b:
        lines.append(f"only in {lb}: " + _listed(report.only_in_b))
    if report.tie_differences:
        lines.append("tied on one side only: " + _listed(tuple(row.name for row in report.tie_differences)))
    m = method(report.sample)["same distribution"]
    lines.append(f"same distribution: {m['summary']}")
    return lines


def _listed(names: tuple[str, ...], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


# ------------------------------------------------------------------ histograms

def plot_differences(report: DiffReport, path: str, max_panels: int = 12) -> None:
    """Overlaid histograms of the sampled values of differing tensors (each side's bars sum to 1)."""
    from .figures import figure, save
    rows = [r for r in report.differing if r.samples is not None]
    shown = rows[:max_panels]
    cols = max(1, min(3, len(shown)))
    nrows = max(1, (len(shown) + cols - 1) // cols)
    fig, axes = figure(nrows, cols, figsize=(4.8 * cols, 3.2 * nrows))
    for ax, row in zip(axes.flat, shown):
        a, b = (s.float()[torch.isfinite(s.float())] for s in row.samples)   # NaN/inf would blank the panel
        both = torch.cat([a, b])
        low, high = (float(both.min()), float(both.max())) if both.numel() else (0.0, 0.0)
        if low == high:
            low, high = low - 0.5, high + 0.5
        edges = torch.linspace(low, high, 61).tolist()
        for values, label, color in ((a, report.labels[0], "#4477aa"), (b, report.labels[1], "#cc6677")):
            if values.numel():
                ax.hist(values.numpy(), bins=edges, weights=torch.full((values.numel(),), 1 / values.numel()).numpy(),
                        alpha=0.55, color=color, label=label)
        reason = row.reason if len(row.reason) <= 70 else row.reason[:67] + "..."
        ax.set_title(f"{row.name}\n{reason}", fontsize=8)
        ax.locator_params(axis="x", nbins=5)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    if not shown:
        axes.flat[0].text(0.5, 0.5, "no tensor differs in its values", ha="center", va="center")
    elif len(rows) > len(shown):
        fig.suptitle(f"{len(shown)} of {len(rows)} differing tensors", fontsize=9)
    save(fig, path, "plot")

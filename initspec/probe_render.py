"""Tables (rich, as plain text) and figures (matplotlib, no pyplot state) of probes and coordinate checks.

A leaf module like :mod:`initspec.render`: it reads the fields of
:class:`~initspec.probe.ProbeResult` and :class:`~initspec.coordcheck.CoordCheck`
objects and imports neither. matplotlib is imported only by the plot functions.
"""
from __future__ import annotations

from typing import Any

from .figures import figure, save
from .render import table, text_of

MAX_LEGEND = 10   # more layers than this: one colour and one legend entry per layer type


def number(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def probe_table(result: Any, width: int | None = None) -> str:
    """One row per module in forward order; with gradients, a row per parameter under its module."""
    loss = "" if result.loss is None else f", loss {result.loss:.4g}"
    rows = table(f"initspec probe ({len(result.modules)} modules in forward order{loss})")
    columns = ["#", "module", "type", "calls", "mean", "std", "rms", "zeros"]
    if result.params:
        columns += ["grad std", "|grad|/|w|"]
    for column in columns:
        rows.add_column(column, overflow="fold", justify="right" if column not in ("module", "type") else "left")
    params: dict[str, list[Any]] = {}
    for p in result.params:
        params.setdefault(p.module, []).append(p)
    for m in result.modules:
        cells = [str(m.index), m.name or "(model)", m.type, str(m.calls), number(m.mean), number(m.std),
                 number(m.rms), f"{100 * m.zero_fraction:.1f}%"]
        rows.add_row(*cells, *(["", ""] if result.params else []))
        for p in params.pop(m.name, []):
            rows.add_row("", "  ." + p.name.rpartition(".")[2], "", "", "", "", "", "", number(p.grad_std),
                         number(p.grad_to_weight))
    for rest in params.values():          # parameters of modules that never ran
        for p in rest:
            rows.add_row("", p.name, "(not called)", "", "", "", "", "", number(p.grad_std),
                         number(p.grad_to_weight))
    return text_of(rows, width=width)


def coord_table(check: Any, width: int | None = None) -> str:
    """Slopes of log RMS vs log width per layer and per layer type at each step, then the verdict."""
    steps = [f"step {s}" for s in check.steps]
    header = (f"coordinate check: slope of log RMS vs log {check.key} over "
              f"{', '.join(f'{w:g}' for w in check.widths)}, per layer")
    layers = table()
    for column in ("module", "type", *steps):
        layers.add_column(column, justify="right" if column.startswith("step") else "left")
    per_module: dict[str, list[Any]] = {}
    for s in check.slopes:
        per_module.setdefault(s.module, []).append(s)
    for module, rows in per_module.items():
        layers.add_row(module or "(model)", rows[0].type, *(signed(r.slope) for r in rows))
    types = table()
    for column in ("layer type (largest |slope|)", *steps):
        types.add_column(column, justify="right" if column.startswith("step") else "left")
    for kind, at in check.by_type().items():
        types.add_row(kind, *(signed(at[s]) for s in check.steps))
    return text_of(header, layers, types, check.verdict(), width=width)


def signed(x: float | None) -> str:
    return "undefined" if x is None else f"{x:+.3f}"


# ------------------------------------------------------------------ figures

def plot_probe(result: Any, path: str) -> None:
    """Activation std (left) and gradient std (right) against depth (forward order), one line per module
    type; gradients one line per module type and parameter (``Linear.weight``, ``Linear.bias``)."""
    panels = 2 if result.params else 1
    fig, axes = figure(1, panels, figsize=(6.5 * panels, 4.2))
    lines: dict[str, list[tuple[int, float]]] = {}
    for m in result.modules:
        lines.setdefault(m.type, []).append((m.index, m.std))
    draw(axes[0][0], lines, "depth (module in forward order)", "activation std", "activations")
    if result.params:
        where = {m.name: m for m in result.modules}
        grads: dict[str, list[tuple[int, float]]] = {}
        for p in result.params:
            if p.grad_std is not None and p.module in where:
                owner = where[p.module]
                grads.setdefault(f"{owner.type}.{p.name.rpartition('.')[2]}", []).append((owner.index, p.grad_std))
        draw(axes[0][1], grads, "depth (owner module in forward order)", "gradient std", "gradients")
    save(fig, path)


def plot_coord_check(check: Any, path: str, subtitle: str | None = None) -> None:
    """The µP coordinate-check figure: per-layer activation RMS against width (log-log), one panel per step,
    each panel titled with its largest slope; the verdict (and ``subtitle``: how it was trained) on top."""
    fig, axes = figure(1, len(check.steps), figsize=(4.2 * len(check.steps), 4.0), sharey=True)
    from matplotlib import colormaps
    from matplotlib.ticker import NullLocator
    types = check.layer_types()                      # one line per layer, labelled by layer or by layer type
    classes = {r.module: r.type for r in check.rms}
    labels = types if len(types) > MAX_LEGEND else {m: f"{m} ({classes[m]})" for m in types}
    distinct = list(dict.fromkeys(labels.values()))
    palette = colormaps["tab10" if len(distinct) <= 10 else "tab20"]   # tab20 pairs similar shades: only if needed
    colours = {label: palette(i % palette.N) for i, label in enumerate(distinct)}
    for ax, step in zip(axes[0], check.steps):
        labelled, zero = set(), []
        for module, label in labels.items():
            points = [(r.width, r.rms) for r in check.rms if r.step == step and r.module == module]
            if all(rms == 0 for _, rms in points):
                zero.append(module)                  # no point on a log axis: named in the panel instead
            points = [(w, rms) for w, rms in points if rms > 0]
            if not points:
                continue
            colour = colours[label]
            ax.plot(*zip(*points), marker="o", markersize=3, color=colour,
                    label=None if label in labelled else label)
            labelled.add(label)
        if zero:
            ax.text(0.03, 0.97, f"0 at every width: {', '.join(zero)}", transform=ax.transAxes, fontsize=7,
                    va="top", wrap=True)
        ax.set_xscale("log", base=2)
        ax.set_xticks(check.widths, [f"{w:g}" for w in check.widths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_title(f"step {step}\n{largest_slope(check, step)}", fontsize=9)
        ax.set_xlabel(check.key)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("activation RMS")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))   # beside the last panel
    title = check.verdict().removeprefix("verdict: ")
    fig.suptitle(title if subtitle is None else f"{title}\n{subtitle}", fontsize=9)
    save(fig, path)


def largest_slope(check: Any, step: int) -> str:
    """``slope farthest from 0: +1.200`` and, on a line of its own, the layer (the least width-stable at ``step``)."""
    rows = [s for s in check.slopes if s.step == step]
    worst = max(rows, key=lambda s: float("inf") if s.slope is None else abs(s.slope))
    return f"slope farthest from 0: {signed(worst.slope)}\n{worst.module or '(model)'}"


def draw(ax: Any, lines: dict[str, list[tuple[int, float]]], xlabel: str, ylabel: str, title: str) -> None:
    for label, points in lines.items():
        points = [(x, y) for x, y in points if y > 0]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, linewidth=1, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if lines:
        ax.legend(fontsize=7, loc="best")

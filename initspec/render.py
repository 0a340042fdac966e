"""Tables for plans and reports (rich), as plain text; :func:`table` and :func:`text_of` are the one
way every command renders a table.

A leaf module: it reads the fields of :class:`~initspec.results.Plan` and
:class:`~initspec.report.Report` objects and imports neither. rich is imported
only when a table is rendered (``import initspec`` stays light).
"""
from __future__ import annotations

import io
from typing import Any


def table(title: str | None = None, **options: Any) -> Any:
    """A ``rich.table.Table``."""
    from rich.table import Table
    return Table(title=title, **options)


def text_of(*renderables: Any, width: int | None = None) -> str:
    """``renderables`` (tables, strings) printed one after the other as plain text, ``width`` columns
    wide (default 200). Text is never read as rich markup: names and patterns hold ``[ ]``."""
    from rich.console import Console
    console = Console(file=io.StringIO(), width=width or 200, color_system=None, force_terminal=False,
                      highlight=False, soft_wrap=False, markup=False)
    for item in renderables:
        console.print(item)
    return console.file.getvalue()


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def _name(entry) -> str:
    if not entry.aliases:
        return entry.name
    shown = ", ".join(entry.aliases[:3]) + (" ..." if len(entry.aliases) > 3 else "")
    return f"{entry.name} (= {shown})"


def _steps(entry) -> str:
    if entry.action == "keep":
        return "(kept)"
    if entry.action == "reset":
        return "reset_parameters()"
    return entry.steps


def _footer(plan: Any) -> list[str]:
    lines = []
    for group in plan.ties:
        lines.append(f"tie {group.name} ({group.kind}): {group.source} <- {', '.join(group.targets) or '(nothing)'}")
    for rule in plan.rules:
        if rule.fully_shadowed:
            lines.append(f"rule {rule.name}: fully shadowed (matches {rule.matched}, fills none)")
        elif rule.matched == 0:
            lines.append(f"rule {rule.name}: matches nothing (optional or strict: false)")
    if plan.resets:
        lines.append("reset_parameters() first on: " + ", ".join(n or "(root)" for n in plan.resets))
    lines += [f"warning: {w}" for w in plan.warnings]
    return lines


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "()"


def _rule(entry) -> str:
    if entry.rule:
        return entry.rule
    return "(parts)" if entry.action == "fill" else f"({entry.action})"


def render_plan(plan: Any, width: int | None = None) -> str:
    rows = table(f"initspec plan (seed {plan.seed}, streams {plan.streams})", show_lines=False)
    for column in ("parameter", "shape", "rule", "steps", "tie", "shadowed"):
        rows.add_column(column, overflow="fold")
    for e in plan.entries:
        rows.add_row(_name(e), _shape(e.shape), _rule(e), _steps(e) if e.rule or not e.parts else "",
                     e.tie or "", ", ".join(e.shadowed))
        for f in e.parts:
            rows.add_row(f"{e.name} {f.part.label}", _shape(f.part.shape_in(e.shape)), f.rule, f.steps, "", "")
    return text_of(rows, *_footer(plan), width=width)


def render_report(report: Any, width: int | None = None) -> str:
    plan = report.plan
    rows = table(f"initspec report (seed {plan.seed}, {report.seconds:.3f} s)")
    for column in ("parameter", "shape", "rule", "steps", "tie", "expected std", "mean", "std", "min", "max", "zeros"):
        rows.add_column(column, overflow="fold")
    stats = report.stats
    for e in plan.entries:
        rows.add_row(_name(e), _shape(e.shape), _rule(e), _steps(e) if e.rule or not e.parts else "",
                     e.tie or "", _num(e.expected_std), *_measured(stats.get(e.name)))
        for f in e.parts:
            rows.add_row(f"{e.name} {f.part.label}", _shape(f.part.shape_in(e.shape)), f.rule, f.steps, "",
                         _num(f.expected_std), *_measured(stats.get(f.part.key(e.name))))
    data = [_data_table(report.data_results)] if report.data_results else []
    return text_of(rows, *data, *_footer(plan), width=width)


def _data_table(results: tuple[dict[str, Any], ...]) -> Any:
    """What data-dependent steps measured, one row per result (columns from the results' keys)."""
    columns = list(dict.fromkeys(k for row in results for k in row))
    rows = table("data-dependent steps")
    for column in columns:
        rows.add_column(column.replace("_", " "))
    for row in results:
        rows.add_row(*(_num(v) if isinstance(v, float) else str(v) for v in (row.get(c, "") for c in columns)))
    return rows


def _measured(s: Any) -> tuple[str, ...]:
    if s is None:
        return ("",) * 5
    return _num(s.mean), _num(s.std), _num(s.min), _num(s.max), f"{100 * s.zero_fraction:.1f}%"


def render_rule_stats(report: Any, width: int | None = None) -> str:
    rows = table("statistics per rule")
    for column in ("rule", "tensors", "numel", "expected std", "std", "mean", "min", "max"):
        rows.add_column(column)
    for rule, acc in report.rule_stats().items():
        rows.add_row(rule, str(acc["tensors"]), str(acc["numel"]),
                     ", ".join(f"{x:.4g}" for x in acc["expected_std"]) or "-",
                     _num(acc["std"]), _num(acc["mean"]), _num(acc["min"]), _num(acc["max"]))
    return text_of(rows, width=width)

"""Figures without pyplot: every ``--plot`` draws on a ``matplotlib.figure.Figure`` of its own and
saves it through the Agg canvas, so the caller's backend and open figures are left alone.

matplotlib is imported only when a figure is made (``import initspec`` stays light).
"""
from __future__ import annotations

from typing import Any

from .errors import InitSpecError


def figure(rows: int, cols: int, **options: Any) -> tuple[Any, Any]:
    """A Figure and its ``rows`` x ``cols`` grid of axes (always 2-D); ``options`` go to ``Figure``
    (``figsize``) and ``subplots`` (``sharey``, ...)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=options.pop("figsize"))
    return fig, fig.subplots(rows, cols, squeeze=False, **options)


def save(fig: Any, path: str, config_path: str = "--plot") -> None:
    """Lay out and write ``fig`` to ``path`` (the format from its suffix); an unwritable path or an
    unknown format is an InitSpecError under ``config_path``."""
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    except (OSError, ValueError) as exc:
        raise InitSpecError(config_path, f"cannot write {path!r}: {exc}", "give a writable .png path") from None

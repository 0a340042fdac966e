"""Custom callables (``fn:`` steps): resolved only under allowed prefixes.

The allowed prefixes come from the caller (``apply(..., allow_fn=[...])``,
``build(...)``, the CLI's ``--allow-fn``), never from the spec, so a
command-line override cannot widen what code may run. ``torch.nn.init`` is
always allowed. Steps registered from Python with ``register_step`` are
trusted by construction.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Iterable

from .catalog import StepArgError

ALWAYS_ALLOWED = ("torch.nn.init",)


def allowed_prefixes(extra: Iterable[str] | str | None = ()) -> tuple[str, ...]:
    if isinstance(extra, str):
        extra = [extra]
    return ALWAYS_ALLOWED + tuple(p.rstrip(".") for p in (extra or ()) if p)


def resolve_fn(path: str, extra_allowed: Iterable[str] = ()) -> Callable[..., Any]:
    """Import ``path`` if it lies under an allowed prefix; else StepArgError('fn', ...)."""
    allowed = allowed_prefixes(extra_allowed)
    if not any(path == p or path.startswith(p + ".") for p in allowed):
        raise StepArgError("fn", f"{path!r} is outside the allowed prefixes ({', '.join(allowed)})",
                           "allow its package from Python (apply(..., allow_fn=['my_pkg.inits'])) or the "
                           "CLI (--allow-fn my_pkg.inits); a spec cannot allow code by itself")
    parts = path.split(".")
    obj: Any = None
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise StepArgError("fn", f"{path!r}: module {'.'.join(parts[:cut])!r} has no attribute "
                               f"{'.'.join(parts[cut:])!r}", "check the dotted path") from None
        break
    else:
        raise StepArgError("fn", f"cannot import {path!r}", "check the dotted path and that its package is installed")
    if not callable(obj) or inspect.isclass(obj):
        raise StepArgError("fn", f"{path!r} is not a function (got {type(obj).__name__})",
                           "name a function f(tensor, **kwargs) that fills the tensor in place")
    return obj


def accepts_generator(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params

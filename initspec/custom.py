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

from .errors import StepArgError

ALWAYS_ALLOWED = ("torch.nn.init",)


def allowed_prefixes(extra: Iterable[str] | str | None = ()) -> tuple[str, ...]:
    if isinstance(extra, str):
        extra = [extra]
    return ALWAYS_ALLOWED + tuple(p.rstrip(".") for p in (extra or ()) if p)


def resolve_fn(path: str, extra_allowed: Iterable[str] = ()) -> Callable[..., Any]:
    """Import ``path`` if it lies under an allowed prefix; else StepArgError('fn', ...).

    The path must stay inside the allowed prefixes all the way: no step of the
    attribute walk may leave them through a module the prefix merely imports
    (``torch.nn.init.torch.save`` is ``torch.save``), and the function found
    must be defined under an allowed prefix. Dunder names are refused.
    """
    allowed = allowed_prefixes(extra_allowed)
    if not _under(path, allowed):
        raise StepArgError("fn", f"{path!r} is outside the allowed prefixes ({', '.join(allowed)})",
                           "allow its package from Python (apply(..., allow_fn=['my_pkg.inits'])) or the "
                           "CLI (--allow-fn my_pkg.inits); a spec cannot allow code by itself")
    parts = path.split(".")
    if any(p.startswith("__") for p in parts):
        raise StepArgError("fn", f"{path!r} names a dunder attribute", "name a plain function")
    obj, cut = _import_longest(path, parts)
    for i, attr in enumerate(parts[cut:], start=cut):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise StepArgError("fn", f"{path!r}: {'.'.join(parts[:i])!r} has no attribute {attr!r}",
                               "check the dotted path") from None
        except Exception as exc:
            raise StepArgError("fn", f"{path!r}: looking up {attr!r} failed: {type(exc).__name__}: {exc}",
                               "check the dotted path") from None
        if inspect.ismodule(obj) and not _under(obj.__name__, allowed):
            raise StepArgError("fn", f"{path!r} leaves the allowed prefixes: {'.'.join(parts[:i + 1])!r} is the "
                               f"module {obj.__name__!r}", "name a function defined under an allowed prefix")
    if not callable(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
        raise StepArgError("fn", f"{path!r} is not a function (got {type(obj).__name__})",
                           "name a function f(tensor, **kwargs) that fills the tensor in place")
    home = getattr(obj, "__module__", None) or type(obj).__module__
    if not isinstance(home, str) or not _under(home, allowed):
        raise StepArgError("fn", f"{path!r} is {home}.{getattr(obj, '__qualname__', type(obj).__name__)}, defined "
                           f"outside the allowed prefixes ({', '.join(allowed)})",
                           "name the function where it is defined, and allow that package from Python")
    return obj


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _import_longest(path: str, parts: list[str]) -> tuple[Any, int]:
    """The module named by the longest importable prefix of ``parts`` and its length."""
    for cut in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:cut])
        try:
            return importlib.import_module(name), cut
        except ModuleNotFoundError as exc:
            if exc.name and not (name == exc.name or name.startswith(exc.name + ".")):
                raise StepArgError("fn", f"importing {name!r} failed: {exc}",
                                   "install the missing package") from None
            continue
        except Exception as exc:
            raise StepArgError("fn", f"importing {name!r} failed: {type(exc).__name__}: {exc}",
                               "fix the module so it imports") from None
    raise StepArgError("fn", f"cannot import {path!r}", "check the dotted path and that its package is installed")

"""The public entry points: load_spec, plan, apply."""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from .errors import InitSpecError, raise_all
from .execute import execute
from .load import check_vars_arg, load_data
from .plan import make_plan
from .report import Report
from .results import Plan
from .spec import Spec, check_vars, validate


def load_spec(obj: Any, *, vars: Mapping[str, Any] | None = None) -> Spec:
    """A validated :class:`Spec` from a YAML path, a preset name, a dict or a DictConfig.

    ``vars`` fill or override the spec's ``vars`` (e.g. ``{"n_layer": 12}`` for a
    preset that interpolates ``${model.n_layer}`` when used outside Hydra).
    """
    if isinstance(obj, Spec):
        check_vars_arg(vars)
        if vars:
            merged = {**obj.vars, **vars}
            raise_all(check_vars(merged))
            return obj.model_copy(update={"vars": merged})
        return obj
    return validate(load_data(obj, vars=vars))


def spec_with_seed(spec: Any, seed: int | None, vars: Mapping[str, Any] | None) -> Spec:
    """The loaded spec, its seed replaced by ``seed`` when one is given."""
    loaded = load_spec(spec, vars=vars)
    if seed is None:
        return loaded
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InitSpecError("seed", f"seed= must be an integer, got {seed!r}", "pass e.g. seed=0")
    return loaded.model_copy(update={"seed": seed})


def checked_allow_fn(allow_fn: Iterable[str] | str | None) -> tuple[str, ...]:
    """``allow_fn=``: dotted package prefixes (a single string is one prefix, not its letters)."""
    prefixes = [allow_fn] if isinstance(allow_fn, str) else list(allow_fn or ())
    bad = [p for p in prefixes if not isinstance(p, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", p)]
    if bad:
        raise InitSpecError("allow_fn", f"allow_fn= takes dotted package prefixes, got {bad[0]!r}",
                            "pass e.g. allow_fn=['my_pkg.inits']")
    return tuple(prefixes)


def plan(model: nn.Module, spec: Any, *, seed: int | None = None, vars: Mapping[str, Any] | None = None,
         allow_fn: Iterable[str] = ()) -> Plan:
    """What :func:`apply` would do to ``model``; the model is not changed."""
    return make_plan(model, spec_with_seed(spec, seed, vars), checked_allow_fn(allow_fn))[0]


def apply(model: nn.Module, spec: Any, *, seed: int | None = None, device: Any = None,
          vars: Mapping[str, Any] | None = None, allow_fn: Iterable[str] = (),
          threads: int | None = None, progress: Callable[[int, int], None] | None = None,
          data: Any = None) -> Report:
    """Initialize ``model`` by ``spec``; returns a :class:`Report`.

    ``seed`` overrides ``spec.seed``. ``device`` is where tensors on the meta
    device are materialized. ``allow_fn`` widens the prefixes ``fn:`` steps may
    import from (``torch.nn.init`` always). ``threads`` fills chunks in
    parallel (values never depend on it). ``progress(done, total)`` is called
    with element counts while filling. ``data`` is the batch that data-dependent
    steps (``lsuv``) run the model on, after every tensor is filled. On any
    error the model is unchanged.
    """
    start = time.perf_counter()
    the_plan, layout = make_plan(model, spec_with_seed(spec, seed, vars), checked_allow_fn(allow_fn))
    if data is None:
        needy = [e for e in the_plan.entries if e.ops and e.ops[-1].primitive.data_pass is not None]
        if needy:
            step = needy[0].ops[-1]
            raise InitSpecError(step.origin, f"rule {needy[0].rule!r} ends with {step.kind!r}, which runs the model on a "
                                f"batch, and no batch was given (for {needy[0].name!r})",
                                "pass data=<batch> to initspec.apply / initspec.build (the CLI: a probe config with "
                                "probe.data), or drop the step")
    results = execute(model, the_plan, layout, device=device, threads=threads, progress=progress, data=data)
    return Report(the_plan, model, time.perf_counter() - start, data_results=tuple(results))

"""The public entry points: load_spec, plan, apply."""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from .execute import execute
from .load import load_data
from .plan import Plan, make_plan
from .report import Report
from .spec import Spec, validate


def load_spec(obj: Any, *, vars: Mapping[str, Any] | None = None) -> Spec:
    """A validated :class:`Spec` from a YAML path, a preset name, a dict or a DictConfig.

    ``vars`` fill or override the spec's ``vars`` (e.g. ``{"n_layer": 12}`` for a
    preset that interpolates ``${model.n_layer}`` when used outside Hydra).
    """
    if isinstance(obj, Spec):
        if vars:
            return obj.model_copy(update={"vars": {**obj.vars, **vars}})
        return obj
    return validate(load_data(obj, vars=vars))


def _spec(spec: Any, seed: int | None, vars: Mapping[str, Any] | None) -> Spec:
    loaded = load_spec(spec, vars=vars)
    return loaded.model_copy(update={"seed": seed}) if seed is not None else loaded


def plan(model: nn.Module, spec: Any, *, seed: int | None = None, vars: Mapping[str, Any] | None = None,
         allow_fn: Iterable[str] = ()) -> Plan:
    """What :func:`apply` would do to ``model``; the model is not changed."""
    return make_plan(model, _spec(spec, seed, vars), tuple(allow_fn))[0]


def apply(model: nn.Module, spec: Any, *, seed: int | None = None, device: Any = None,
          vars: Mapping[str, Any] | None = None, allow_fn: Iterable[str] = (),
          threads: int | None = None) -> Report:
    """Initialize ``model`` by ``spec``; returns a :class:`Report`.

    ``seed`` overrides ``spec.seed``. ``device`` is where tensors on the meta
    device are materialized. ``allow_fn`` widens the prefixes ``fn:`` steps may
    import from (``torch.nn.init`` always). ``threads`` fills chunks in
    parallel (values never depend on it). On any error the model is unchanged.
    """
    start = time.perf_counter()
    the_plan, layout = make_plan(model, _spec(spec, seed, vars), tuple(allow_fn))
    execute(model, the_plan, layout, device=device, threads=threads)
    return Report(the_plan, model, time.perf_counter() - start)

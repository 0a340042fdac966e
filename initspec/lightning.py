"""PyTorch Lightning: build a LightningModule's model through initspec in ``configure_model``, once.

    class LitModel(L.LightningModule):
        def __init__(self, model_cfg, spec):
            super().__init__()
            self.model_cfg, self.spec, self.model = model_cfg, spec, None

        def configure_model(self):                 # Lightning may call it once per fit/validate/test
            initspec.lightning.build_once(self, "model", self.model_cfg, self.spec)

Lightning calls ``configure_model`` in every process before wrapping the model
(DDP, FSDP), under the strategy's device: the model is built there empty
(parameters on meta, no PyTorch default init) and filled by the spec from
per-parameter streams, so every rank holds bitwise the same weights without a
broadcast. The hook may run again (``trainer.fit`` then ``trainer.test``): the
call after the first is a no-op; one that would build something else raises
:class:`initspec.InitSpecError`.

Fabric needs no helper: ``with fabric.init_module(empty_init=True): model = ...``,
then ``initspec.apply(model, spec, device=fabric.device)``.

Nothing here imports lightning: the helper works on any ``nn.Module`` owner.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .builder import build
from .errors import InitSpecError
from .report import Report

RECORD = "_initspec_builds"      # attribute of the owner: {attr: Built} of what build_once made


class Built(NamedTuple):
    """What :func:`build_once` built into ``owner.<attr>``: from which config and spec."""

    module: nn.Module
    model: Any
    spec: Any
    report: Report


def build_once(owner: nn.Module, attr: str, model: Any, spec: Any, *, device: Any = None, seed: int | None = None,
               vars: Mapping[str, Any] | None = None, allow_fn: Iterable[str] = (),
               threads: int | None = None) -> Report:
    """Set ``owner.<attr>`` to ``initspec.build(model, spec, ...)`` the first time; later calls with
    the same ``model`` and ``spec`` return the first :class:`Report` and change nothing.

    ``device`` defaults to the current default device, which Lightning sets to the
    strategy's root device around ``configure_model``. Raises InitSpecError when
    building would replace a model: ``owner.<attr>`` already holds one that was not
    built here (in ``__init__``?), or a later call names another config or spec.
    """
    records = owner.__dict__.setdefault(RECORD, {})
    current, done = getattr(owner, attr, None), records.get(attr)
    if done is not None and current is done.module:
        if _same(done.model, model) and _same(done.spec, spec):
            return done.report
        raise InitSpecError("configure_model", f"self.{attr} was built by initspec already, and this call names "
                            "another model config or spec: building again would replace the model and its weights",
                            "build once per LightningModule (configure_model runs for fit, validate and test), or "
                            f"set self.{attr} = None first to rebuild on purpose")
    if current is not None:
        raise InitSpecError("configure_model", f"self.{attr} already holds a {type(current).__name__} built "
                            "elsewhere (in __init__?): building it in configure_model would replace it and its weights",
                            f"set self.{attr} = None in __init__ and let configure_model build it, "
                            "or do not call build_once for it")
    module, report = build(model, spec, device=_device(device, attr), seed=seed, vars=vars, allow_fn=allow_fn,
                           threads=threads)
    setattr(owner, attr, module)
    records[attr] = Built(module, model, spec, report)
    return report


def _device(device: Any, attr: str) -> Any:
    """``device``, or the default device; never meta (build materializes)."""
    chosen = torch.get_default_device() if device is None else device
    if torch.device(chosen).type == "meta":
        raise InitSpecError("device", f"self.{attr} would be built under the meta device (a sharded strategy's "
                            "empty init?) and no device= was given",
                            "pass device=self.trainer.strategy.root_device, or build on meta yourself, shard, then "
                            "initspec.apply(self.model, spec, device=self.trainer.strategy.root_device)")
    return chosen


def _same(a: Any, b: Any) -> bool:
    """Equal configs (dicts, DictConfigs, preset names, Specs) or the same object (a factory, a module)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):      # == that is elementwise or refuses: not the same
        return False

"""Build a model and initialize it once: the helper for training launchers.

    model, report = initspec.build(cfg.model, cfg.initspec, device="cpu")

With ``empty_init=True`` (the default) the model is constructed with its
parameters on the meta device while buffers are built for real, so
PyTorch's default initialization costs nothing; :func:`initspec.apply` then
gives each unique parameter storage once on ``device`` and fills it. Ties
made in the model's ``__init__`` survive. Parameters no rule covers get their
module's ``reset_parameters()`` (seeded, global RNG untouched), or a clear
error when the module has none.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .errors import InitSpecError
from .report import Report

_PATCH_LOCK = threading.RLock()
_OWNERS: list[int] = []          # threads building empty right now (one shared patch, re-entrant)
_SAVED: dict[str, Any] = {}      # what the patch replaced, while installed
# torch.nn.init functions that default initialization calls; on a meta tensor they are skipped
# (they compute nothing there, and normal_ on meta imports torch._dynamo: ~2 s the first time).
INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                  "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                  "sparse_")


class Built(NamedTuple):
    model: nn.Module
    report: Report


def _building() -> bool:
    return threading.get_ident() in _OWNERS


def _install() -> None:
    register = _SAVED["register_parameter"] = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if (param is not None and _building() and not param.is_meta
                and not isinstance(param, nn.parameter.UninitializedParameter)):
            param = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    for name in INIT_FUNCTIONS:
        if hasattr(nn.init, name):
            _SAVED[name] = getattr(nn.init, name)
            setattr(nn.init, name, _skipping_meta(_SAVED[name]))


def _skipping_meta(init: Callable) -> Callable:
    @functools.wraps(init)
    def skip_on_meta(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        if _building() and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return init(tensor, *args, **kwargs)
    return skip_on_meta


def _uninstall() -> None:
    nn.Module.register_parameter = _SAVED.pop("register_parameter")
    for name, init in _SAVED.items():
        setattr(nn.init, name, init)
    _SAVED.clear()


@contextlib.contextmanager
def meta_parameters():
    """Within this block, modules built by this thread register parameters on the meta device.

    Buffers are built normally, so computed tables (rotary frequencies, masks)
    stay correct; ``torch.nn.init`` calls on meta tensors are skipped. Other
    threads are not affected; the patch is removed when the last user leaves.
    """
    with _PATCH_LOCK:
        if not _OWNERS:
            _install()
        _OWNERS.append(threading.get_ident())
    try:
        yield
    finally:
        with _PATCH_LOCK:
            _OWNERS.remove(threading.get_ident())
            if not _OWNERS:
                _uninstall()


def checked_device(device: Any) -> torch.device:
    """``device`` as a torch.device this process can allocate on, else an InitSpecError."""
    try:
        result = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InitSpecError("device", f"{device!r} is not a device: {str(exc).splitlines()[0]}",
                            "use 'cpu', 'cuda', 'cuda:1', 'mps', ...") from None
    if result.type == "meta":
        raise InitSpecError("device", "build() materializes parameters, so device cannot be 'meta'",
                            "use initspec.meta_parameters() to build on the meta device")
    try:
        torch.empty(0, device=result)
    except (RuntimeError, AssertionError) as exc:
        raise InitSpecError("device", f"cannot allocate on {str(result)!r}: {str(exc).splitlines()[0]}",
                            "choose a device this machine has (e.g. 'cpu')") from None
    return result


def instantiate(model: Any) -> nn.Module:
    """An nn.Module from a ``_target_`` config (dict/DictConfig), a factory, or a module."""
    if isinstance(model, nn.Module):
        return model
    if callable(model) and not isinstance(model, Mapping):
        built = model()
    else:
        from hydra.utils import instantiate as hydra_instantiate
        from omegaconf import DictConfig, OmegaConf
        if isinstance(model, Mapping) and not isinstance(model, DictConfig):
            model = OmegaConf.create(dict(model))
        if not isinstance(model, DictConfig) or "_target_" not in model:
            raise InitSpecError("model", "a model config needs a _target_ (e.g. initspec.models.gpt.GPT)",
                                "pass a mapping with _target_, a factory function, or an nn.Module")
        try:
            built = hydra_instantiate(model)
        except Exception as exc:
            raise InitSpecError("model", f"cannot instantiate the model: {exc}",
                                "check model._target_ and its arguments") from exc
    if not isinstance(built, nn.Module):
        raise InitSpecError("model", f"the model config built a {type(built).__name__}, not an nn.Module",
                            "point _target_ at a module class or a function returning one")
    return built


def spec_with_model(spec: Any, model: Any) -> Any:
    """Attach a standalone spec (path, preset, dict) next to a model config so that
    ``${model.n_layer}``-style vars resolve; other specs are returned as they are."""
    from omegaconf import DictConfig, OmegaConf
    from .load import find_spec_file, read_yaml
    from .spec import Spec
    if isinstance(spec, Spec) or not isinstance(model, Mapping) or "_target_" not in model:
        return spec
    if isinstance(spec, DictConfig) and spec._get_parent() is not None:
        return spec
    if isinstance(spec, (str, bytes)) or hasattr(spec, "__fspath__"):
        node = read_yaml(find_spec_file(spec))
    elif isinstance(spec, Mapping):
        node = OmegaConf.create(dict(spec)) if not isinstance(spec, DictConfig) else spec
    else:
        return spec
    model_node = model if isinstance(model, DictConfig) else OmegaConf.create(dict(model))
    root = OmegaConf.create({"model": OmegaConf.to_container(model_node, resolve=False),
                             "initspec": OmegaConf.to_container(node, resolve=False)})
    return root.initspec


def build(model: Any, spec: Any, *, device: Any = "cpu", empty_init: bool = True, seed: int | None = None,
          vars: Mapping[str, Any] | None = None, allow_fn: Iterable[str] = (), threads: int | None = None,
          progress: Callable[[int, int], None] | None = None, data: Any = None) -> Built:
    """Instantiate ``model`` (a ``_target_`` config, a factory or a module), initialize it by ``spec``.

    Returns ``(model, report)``. ``empty_init`` skips PyTorch's default
    initialization (no double init). A spec given as a path, preset name or
    dict resolves ``${model.*}`` interpolations against a model config.
    ``data`` is the batch of data-dependent steps (``lsuv``), as in :func:`initspec.apply`.
    """
    from .api import apply
    device = checked_device(device)
    with torch.device(device) if device.type != "cpu" else contextlib.nullcontext():
        if empty_init:
            with meta_parameters():
                module = instantiate(model)
        else:
            module = instantiate(model)
    report = apply(module, spec_with_model(spec, model), seed=seed, device=device, vars=vars,
                   allow_fn=allow_fn, threads=threads, progress=progress, data=data)
    return Built(module, report)

"""The model as planning sees it: every module and tensor, under canonical names.

Canonical names drop the wrapper components that DDP, FSDP1, activation
checkpointing and ``torch.compile`` insert (``module.``, ``_fsdp_wrapped_module.``,
``_checkpoint_wrapped_module.``, ``_orig_mod.``), so one spec fits the model
however it is wrapped. ``module.`` is dropped only below a DDP/DataParallel.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

WRAPPER_CHILDREN = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
_MODULE_KEYS = frozenset(nn.Module().__dict__)  # attributes every module has: never loose tensors


class ModuleSlot(NamedTuple):
    """One place a module sits in the tree (a shared module has several)."""

    name: str        # canonical path, "" for the root
    path: str        # real path, as model.get_submodule takes it
    module: nn.Module
    parent_path: str | None
    attr: str


class TensorSlot(NamedTuple):
    """One name a parameter or buffer is reachable under."""

    name: str        # canonical name
    path: str        # real dotted name
    owner: ModuleSlot
    attr: str
    kind: str        # "parameter" | "buffer"
    tensor: torch.Tensor


@dataclass(frozen=True, eq=False)
class Tree:
    modules: tuple[ModuleSlot, ...]
    tensors: tuple[TensorSlot, ...]
    unregistered: tuple[str, ...] = ()   # tensor attributes that are not parameters/buffers
    by_module_name: dict[str, ModuleSlot] = field(default_factory=dict)
    by_tensor_name: dict[str, TensorSlot] = field(default_factory=dict)


def _is_data_parallel(module: nn.Module) -> bool:
    return isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel))


def walk(model: nn.Module) -> Tree:
    """All module and tensor slots of ``model``, duplicates included, in registration order."""
    if not isinstance(model, nn.Module):
        from .errors import InitSpecError
        raise InitSpecError("model", f"expected a torch.nn.Module, got {type(model).__name__}",
                            "pass the model object (or build it first)")
    modules: list[ModuleSlot] = []
    tensors: list[TensorSlot] = []
    unregistered: list[str] = []
    Tensor = torch.Tensor
    stack: list[tuple[ModuleSlot, int]] = [(ModuleSlot("", "", model, None, ""), 0)]
    while stack:
        slot, depth = stack.pop()
        if depth > 256:
            continue
        modules.append(slot)
        module = slot.module
        name, path = slot.name, slot.path
        prefix, real = (name + "." if name else ""), (path + "." if path else "")
        for attr, tensor in module._parameters.items():
            if tensor is not None:
                tensors.append(TensorSlot(prefix + attr, real + attr, slot, attr, "parameter", tensor))
        for attr, tensor in module._buffers.items():
            if tensor is not None:
                tensors.append(TensorSlot(prefix + attr, real + attr, slot, attr, "buffer", tensor))
        state = module.__dict__
        loose = [attr for attr in state.keys() - _MODULE_KEYS if attr[0] != "_" and isinstance(state[attr], Tensor)]
        if loose:
            unregistered += [f"{prefix}{attr} ({type(module).__name__}.{attr})" for attr in loose]
        children = []
        data_parallel = "module" in module._modules and _is_data_parallel(module)
        for attr, child in module._modules.items():
            if child is None:
                continue
            hidden = attr in WRAPPER_CHILDREN or (data_parallel and attr == "module")
            children.append((ModuleSlot(name if hidden else prefix + attr, real + attr, child, path, attr), depth + 1))
        stack.extend(reversed(children))
    by_module: dict[str, ModuleSlot] = {}
    for m in modules:
        by_module.setdefault(m.name, m)
    by_tensor: dict[str, TensorSlot] = {}
    for t in tensors:
        by_tensor.setdefault(t.name, t)
    return Tree(tuple(modules), tuple(tensors), tuple(unregistered), by_module, by_tensor)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The storage this process holds: a DTensor's local shard, else the tensor."""
    if is_dtensor(tensor):
        return tensor._local_tensor
    return tensor


def is_dtensor(tensor: Any) -> bool:
    """True for a DTensor (no DTensor can exist before torch.distributed.tensor is imported)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def is_meta(tensor: torch.Tensor) -> bool:
    return local_tensor(tensor).is_meta

"""The model as planning sees it: every module and tensor, under canonical names.

Canonical names drop the wrapper components that DDP, FSDP1, activation
checkpointing and ``torch.compile`` insert (``module.``, ``_fsdp_wrapped_module.``,
``_checkpoint_wrapped_module.``, ``_orig_mod.``), so one spec fits the model
however it is wrapped. ``module.`` is dropped only below a DDP/DataParallel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

WRAPPER_CHILDREN = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


@dataclass(frozen=True, eq=False)
class ModuleSlot:
    """One place a module sits in the tree (a shared module has several)."""

    name: str        # canonical path, "" for the root
    path: str        # real path, as model.get_submodule takes it
    module: nn.Module
    parent_path: str | None
    attr: str


@dataclass(frozen=True, eq=False)
class TensorSlot:
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


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def walk(model: nn.Module) -> Tree:
    """All module and tensor slots of ``model``, duplicates included, in registration order."""
    if not isinstance(model, nn.Module):
        from .errors import InitSpecError
        raise InitSpecError("model", f"expected a torch.nn.Module, got {type(model).__name__}",
                            "pass the model object (or build it first)")
    modules: list[ModuleSlot] = []
    tensors: list[TensorSlot] = []
    unregistered: list[str] = []
    stack: list[tuple[ModuleSlot, int]] = [(ModuleSlot("", "", model, None, ""), 0)]
    while stack:
        slot, depth = stack.pop()
        if depth > 256:
            continue
        modules.append(slot)
        module = slot.module
        for attr, tensor in module._parameters.items():
            if tensor is not None:
                tensors.append(TensorSlot(_join(slot.name, attr), _join(slot.path, attr), slot, attr,
                                          "parameter", tensor))
        for attr, tensor in module._buffers.items():
            if tensor is not None:
                tensors.append(TensorSlot(_join(slot.name, attr), _join(slot.path, attr), slot, attr,
                                          "buffer", tensor))
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not attr.startswith("_"):
                unregistered.append(f"{_join(slot.name, attr)} ({type(module).__name__}.{attr})")
        children = []
        for attr, child in module._modules.items():
            if child is None:
                continue
            hidden = attr in WRAPPER_CHILDREN or (attr == "module" and _is_data_parallel(module))
            name = slot.name if hidden else _join(slot.name, attr)
            children.append((ModuleSlot(name, _join(slot.path, attr), child, slot.path, attr), depth + 1))
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
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(tensor, DTensor)


def is_meta(tensor: torch.Tensor) -> bool:
    return local_tensor(tensor).is_meta

"""The model as planning sees it: every module and tensor, under canonical names.

Canonical names drop the wrapper components that DDP, FSDP1, activation
checkpointing and ``torch.compile`` insert (``module.``, ``_fsdp_wrapped_module.``,
``_checkpoint_wrapped_module.``, ``_orig_mod.``), so one spec fits the model
however it is wrapped. ``module.`` is dropped only below a DDP/DataParallel.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .errors import InitSpecError

WRAPPER_CHILDREN = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
MODULE_KEYS = frozenset(nn.Module().__dict__)  # attributes every module has: never loose tensors
MAX_DEPTH = 256
SCALAR_TYPES = frozenset({int, float, bool, str, type(None)})   # never tensors: skips isinstance (~0.25 us)


class ModuleSlot(NamedTuple):
    """One place a module sits in the tree (a shared module has several)."""

    name: str                   # canonical path, "" for the root
    path: str                   # real path, as model.get_submodule takes it
    module: nn.Module
    up: ModuleSlot | None       # the slot of the module holding it (None for the root)
    attr: str                   # its key in parent._modules

    @property
    def parent(self) -> nn.Module | None:
        return None if self.up is None else self.up.module

    def within(self, classes: list[str]) -> bool:
        """This module or one above it is an instance of one of ``classes`` (names or dotted paths)."""
        slot: ModuleSlot | None = self
        while slot is not None:
            if any(class_matches(type(slot.module), c) for c in classes):
                return True
            slot = slot.up
        return False


class TensorSlot(NamedTuple):
    """One name a parameter or buffer is reachable under."""

    name: str                   # canonical name
    path: str                   # real dotted name
    owner: ModuleSlot
    attr: str                   # its key in owner.module._parameters / _buffers
    kind: str                   # "parameter" | "buffer"
    tensor: torch.Tensor        # as walked


@dataclass(frozen=True, eq=False)
class Tree:
    """Every module and tensor slot of a model, duplicates included, in registration order."""

    modules: tuple[ModuleSlot, ...]
    tensors: tuple[TensorSlot, ...]
    unregistered: tuple[str, ...] = ()   # tensor attributes that are not parameters or buffers

    @functools.cached_property
    def by_module_name(self) -> dict[str, ModuleSlot]:
        """Canonical name -> first slot of that module."""
        return _first_by_name(self.modules)

    @functools.cached_property
    def by_tensor_name(self) -> dict[str, TensorSlot]:
        """Canonical name -> first slot of that tensor."""
        return _first_by_name(self.tensors)


class LooseTensors:
    """Finds tensors set as plain attributes (``self.w2 = torch.ones(3)``), which initspec cannot see.

    Only the public attributes a module's class adds to ``nn.Module``'s own can hold one. They are
    listed once per (class, attribute count) and reused for the next module of that layout: an
    instance with as many attributes that has every listed one has exactly those.
    """

    def __init__(self) -> None:
        self.attributes_of: dict[tuple[type, int], tuple[frozenset[str], tuple[str, ...]]] = {}

    def tensor_attributes(self, module: nn.Module) -> list[str]:
        state = module.__dict__
        layout = (type(module), len(state))
        known = self.attributes_of.get(layout)
        if known is None or not state.keys() >= known[0]:   # a new layout: list this module's own
            own = sorted(k for k in state if k[0] != "_" and k not in MODULE_KEYS)
            known = self.attributes_of[layout] = (frozenset(own), tuple(own))
        found = []
        for name in known[1]:
            value = state[name]
            if type(value) not in SCALAR_TYPES and isinstance(value, torch.Tensor):
                found.append(name)
        return found


def class_matches(cls: type, wanted: str) -> bool:
    """``Linear`` or ``torch.nn.Linear`` or ``torch.nn.modules.linear.Linear``; subclasses count."""
    for base in cls.__mro__:
        if "." not in wanted:
            if base.__name__ == wanted:
                return True
            continue
        module, _, qualname = wanted.rpartition(".")
        if base.__qualname__ == qualname and (base.__module__ == module or base.__module__.startswith(module + ".")):
            return True
    return False


def _first_by_name(slots: tuple) -> dict:
    out: dict = {}
    for slot in slots:
        out.setdefault(slot.name, slot)
    return out


def _is_data_parallel(module: nn.Module) -> bool:
    return isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel))


def walk(model: nn.Module) -> Tree:
    """All module and tensor slots of ``model``, parents before children, in registration order."""
    if not isinstance(model, nn.Module):
        raise InitSpecError("model", f"expected a torch.nn.Module, got {type(model).__name__}",
                            "pass the model object (or build it first)")
    modules: list[ModuleSlot] = []
    tensors: list[TensorSlot] = []
    unregistered: list[str] = []
    loose = LooseTensors()
    pending = [(ModuleSlot("", "", model, None, ""), 0)]   # (slot, depth), a stack: the next to visit is last
    while pending:
        slot, level = pending.pop()
        modules.append(slot)
        module = slot.module
        prefix = slot.name + "." if slot.name else ""
        real = slot.path + "." if slot.path else ""
        for kind, store in (("parameter", module._parameters), ("buffer", module._buffers)):
            for key, tensor in store.items():
                if tensor is not None:
                    tensors.append(TensorSlot(prefix + key, real + key, slot, key, kind, tensor))
        for key in loose.tensor_attributes(module):
            unregistered.append(f"{prefix}{key} ({type(module).__name__}.{key})")
        if level >= MAX_DEPTH:
            continue
        data_parallel = "module" in module._modules and _is_data_parallel(module)
        children = []
        for key, child in module._modules.items():
            if child is None:
                continue
            hidden = key in WRAPPER_CHILDREN or (data_parallel and key == "module")
            name = slot.name if hidden else prefix + key
            children.append((ModuleSlot(name, real + key, child, slot, key), level + 1))
        pending.extend(reversed(children))
    return Tree(tuple(modules), tuple(tensors), tuple(unregistered))

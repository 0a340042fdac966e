"""The model as planning sees it: every module and tensor, under canonical names.

Canonical names drop the wrapper components that DDP, FSDP1, activation
checkpointing and ``torch.compile`` insert (``module.``, ``_fsdp_wrapped_module.``,
``_checkpoint_wrapped_module.``, ``_orig_mod.``), so one spec fits the model
however it is wrapped. ``module.`` is dropped only below a DDP/DataParallel.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

import torch
from torch import nn

WRAPPER_CHILDREN = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
_MODULE_KEYS = frozenset(nn.Module().__dict__)  # attributes every module has: never loose tensors
_PLAIN_TYPES = frozenset({int, float, bool, str, type(None), tuple, list, dict, set, torch.dtype, torch.device,
                          torch.Size})  # attribute values that are never tensors (skips a 0.25 us isinstance)
_GONE = object()


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


class ModuleColumns(NamedTuple):
    """Every module slot, column by column (row ``i`` is ``Tree.modules[i]``)."""

    names: list[str]
    paths: list[str]
    modules: list[nn.Module]
    parent_paths: list[str | None]
    attrs: list[str]


class TensorColumns(NamedTuple):
    """Every tensor slot, column by column (row ``i`` is ``Tree.tensors[i]``)."""

    names: list[str]
    paths: list[str]
    owners: list[int]       # row of the owning module slot
    attrs: list[str]
    kinds: list[str]
    tensors: list[torch.Tensor]


@dataclass(frozen=True, eq=False)
class Tree:
    """The walk's result as columns; slot objects are built on first use (planning needs none)."""

    module_columns: ModuleColumns
    tensor_columns: TensorColumns
    unregistered: tuple[str, ...] = ()   # tensor attributes that are not parameters/buffers

    @functools.cached_property
    def modules(self) -> tuple[ModuleSlot, ...]:
        return tuple(map(tuple.__new__, repeat(ModuleSlot), zip(*self.module_columns)))

    @functools.cached_property
    def tensors(self) -> tuple[TensorSlot, ...]:
        c = self.tensor_columns
        return tuple(map(tuple.__new__, repeat(TensorSlot),
                         zip(c.names, c.paths, map(self.modules.__getitem__, c.owners), c.attrs, c.kinds, c.tensors)))

    def tensor(self, row: int) -> TensorSlot:
        """Slot ``row`` (without building every slot when they are not built yet)."""
        built = self.__dict__.get("tensors")
        if built is not None:
            return built[row]
        c = self.tensor_columns
        owner = ModuleSlot._make(column[c.owners[row]] for column in self.module_columns)
        return TensorSlot(c.names[row], c.paths[row], owner, c.attrs[row], c.kinds[row], c.tensors[row])

    def fsdp_modules(self) -> list[nn.Module]:
        """The modules ``fully_shard`` has made FSDP2 modules (they have ``_get_fsdp_state``)."""
        return [m for m in self.module_columns.modules if hasattr(m, "_get_fsdp_state")]

    @functools.cached_property
    def by_module_name(self) -> dict[str, ModuleSlot]:
        """Canonical name -> first slot of that module (built on first use: only ties need it)."""
        return _first_by_name(self.modules)

    @functools.cached_property
    def by_tensor_name(self) -> dict[str, TensorSlot]:
        """Canonical name -> first slot of that tensor (built on first use)."""
        return _first_by_name(self.tensors)


def _is_data_parallel(module: nn.Module) -> bool:
    return isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel))


def walk(model: nn.Module) -> Tree:
    """All module and tensor slots of ``model``, duplicates included, in registration order."""
    if not isinstance(model, nn.Module):
        from .errors import InitSpecError
        raise InitSpecError("model", f"expected a torch.nn.Module, got {type(model).__name__}",
                            "pass the model object (or build it first)")
    modules = ModuleColumns([], [], [], [], [])
    tensors = TensorColumns([], [], [], [], [], [])
    unregistered: list[str] = []
    Tensor, plain, get = torch.Tensor, _PLAIN_TYPES, dict.get
    module_rows = modules.names.__len__
    add_name, add_path, add_module, add_parent, add_attr = (c.append for c in modules)
    t_name, t_path, t_owner, t_attr, t_kind, t_value = (c.append for c in tensors)   # rows, not slot objects
    own_attrs: dict[tuple[type, int], tuple[str, ...]] = {}   # (class, attribute count) -> attributes to check

    def visit(module: nn.Module, name: str, path: str, parent: str | None, attr: str, depth: int) -> None:
        row = module_rows()
        add_name(name)
        add_path(path)
        add_module(module)
        add_parent(parent)
        add_attr(attr)
        prefix, real = (name + "." if name else ""), (path + "." if path else "")
        same = prefix == real   # no wrapper hidden above: canonical and real names coincide
        for kind, store in (("parameter", module._parameters), ("buffer", module._buffers)):
            if not store:
                continue
            for key, tensor in store.items():
                if tensor is not None:
                    full = prefix + key
                    t_name(full)
                    t_path(full if same else real + key)
                    t_owner(row)
                    t_attr(key)
                    t_kind(kind)
                    t_value(tensor)
        state = module.__dict__
        layout = (type(module), len(state))
        own = own_attrs.get(layout)   # modules of one class share their attribute layout: computed once
        if own is None:
            own = own_attrs[layout] = _own_attrs(state)
        found = None
        for key in own:
            value = get(state, key, _GONE)
            if type(value) not in plain:   # (a type check first: isinstance against Tensor costs 0.25 us)
                if value is _GONE:         # same class and count, other attributes: this module on its own
                    found = [a for a in _own_attrs(state) if isinstance(state[a], Tensor)]
                    break
                if isinstance(value, Tensor):
                    found = (found or []) + [key]
        if found:
            unregistered.extend(f"{prefix}{key} ({type(module).__name__}.{key})" for key in found)
        children = module._modules
        if not children or depth >= 256:
            return
        data_parallel = "module" in children and _is_data_parallel(module)
        for key, child in children.items():
            if child is None:
                continue
            hidden = key in WRAPPER_CHILDREN or (data_parallel and key == "module")
            full = real + key
            visit(child, name if hidden else full if same else prefix + key, full, path, key, depth + 1)

    visit(model, "", "", None, "", 0)
    visit = None  # a recursive closure is a reference cycle: it would keep every slot alive until a GC pass
    return Tree(modules, tensors, tuple(unregistered))


def _own_attrs(state: dict) -> tuple[str, ...]:
    """The attributes of a module's ``__dict__`` that may hold a loose tensor (not nn.Module's own, not private)."""
    return tuple(k for k in state if k not in _MODULE_KEYS and k[0] != "_")


def _first_by_name(slots: tuple) -> dict:
    """Name -> first slot of that name, in order of first appearance."""
    out = dict(zip([s[0] for s in slots], slots))
    if len(out) == len(slots):  # no repeated names (the usual case): one C-level pass
        return out
    out = {}
    for s in slots:
        out.setdefault(s[0], s)
    return out


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

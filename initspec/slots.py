"""Reading, writing, tying and undoing tensor and module slots: the one way initspec changes a model.

A *slot* is a place in a module where a tensor or a submodule sits (a
:class:`~initspec.tree.TensorSlot` or :class:`~initspec.tree.ModuleSlot`).
Everything that replaces an object in the model (materializing meta tensors,
tying, ``reset_parameters``, ``load_checkpoint``) goes through :func:`put`,
:func:`put_module` and :func:`keep_values`, each of which records how to undo
itself in an :class:`Undo`; a failed operation calls :meth:`Undo.rollback`
and the model is as it was.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class Undo:
    """What to run, newest first, to put the model back as it was."""

    def __init__(self) -> None:
        self._actions: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def push(self, action: Callable[..., Any], *args: Any) -> None:
        self._actions.append((action, args))

    def rollback(self) -> None:
        while self._actions:
            action, args = self._actions.pop()
            action(*args)

    def __len__(self) -> int:
        return len(self._actions)


def store_of(slot: Any) -> dict[str, Any]:
    """The dict a tensor slot lives in: its module's ``_parameters`` or ``_buffers``."""
    module = slot.owner.module
    return module._parameters if slot.kind == "parameter" else module._buffers


def live(slot: Any) -> torch.Tensor:
    """The tensor in ``slot`` now (materializing or tying may have replaced the walked one)."""
    return store_of(slot)[slot.attr]


def put(slot: Any, tensor: torch.Tensor, undo: Undo) -> None:
    """Put ``tensor`` into a tensor slot (a tie, or a materialized tensor)."""
    store = store_of(slot)
    undo.push(store.__setitem__, slot.attr, store[slot.attr])
    store[slot.attr] = tensor


def put_module(slot: Any, module: nn.Module, undo: Undo) -> None:
    """Put ``module`` into a module slot (a module tie)."""
    children = slot.parent._modules
    undo.push(children.__setitem__, slot.attr, children[slot.attr])
    children[slot.attr] = module


def keep_values(tensor: torch.Tensor, undo: Undo) -> None:
    """Record ``tensor``'s current values, to be copied back on rollback."""
    saved = tensor.detach().clone()
    undo.push(_copy_back, tensor, saved)


def keep_registrations(module: nn.Module, undo: Undo) -> None:
    """Record which objects ``module`` registers now (``reset_parameters()`` may assign new ones)."""
    for store in (module._parameters, module._buffers):
        undo.push(_restore_dict, store, dict(store))


def _copy_back(tensor: torch.Tensor, saved: torch.Tensor) -> None:
    with torch.no_grad():
        tensor.copy_(saved)


def _restore_dict(store: dict, saved: dict) -> None:
    store.clear()
    store.update(saved)

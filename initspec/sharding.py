"""DTensor and FSDP2: every access to torch.distributed and to FSDP2's private state is here.

* :func:`region_of`: the part of a (possibly sharded) tensor this process holds;
* :func:`materialize_dtensor`: give a meta DTensor parameter storage in place,
  in FSDP2's padded layout when FSDP2 owns it, with undo records;
* :func:`rank_and_world` and :func:`require_process_group` for launchers.

FSDP2's attributes (``_get_fsdp_state``, ``_fsdp_param_groups``,
``_sharded_param_data``, ``padded_sharded_param_size`` ...) are private and may
change between torch releases; every use checks for them and falls back to
FSDP2's own public path (``reset_sharded_param``) when they are missing.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import InitSpecError
from .slots import Undo


def is_dtensor(tensor: Any) -> bool:
    """True for a DTensor (no DTensor can exist before torch.distributed.tensor is imported)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The storage this process holds: a DTensor's local shard, else the tensor."""
    return tensor._local_tensor if is_dtensor(tensor) else tensor


def is_meta(tensor: torch.Tensor) -> bool:
    return local_tensor(tensor).is_meta


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def require_process_group() -> None:
    """Raise a clear error when a collective is needed but no process group exists."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise InitSpecError("model", "the model holds DTensors but no process group is initialized",
                            "call torch.distributed.init_process_group() first (torchrun sets the environment)")


# ---------------------------------------------------------------------- regions

@dataclass(frozen=True)
class Region:
    """The part of a tensor this process holds, in global coordinates."""

    local: torch.Tensor             # the storage to write
    offset: tuple[int, ...]
    global_shape: tuple[int, ...]

    @property
    def full(self) -> bool:
        return tuple(self.local.shape) == self.global_shape

    @property
    def rows(self) -> tuple[int, int]:
        if not self.global_shape:
            return 0, 1
        return self.offset[0], self.offset[0] + self.local.shape[0]

    def full_width(self) -> bool:
        return all(o == 0 for o in self.offset[1:]) and tuple(self.local.shape[1:]) == self.global_shape[1:]

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.local.shape))


class LocalShapes:
    """Local shape and offset of DTensors, computed once per (global shape, mesh, placements)."""

    def __init__(self) -> None:
        self._found: dict[tuple, tuple] = {}

    def of(self, tensor: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
        key = (tuple(tensor.shape), tensor.device_mesh, tuple(tensor.placements))
        if key not in self._found:
            self._found[key] = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh,
                                                                     tensor.placements)
        return self._found[key]


def region_of(tensor: torch.Tensor, shapes: LocalShapes | None = None) -> Region:
    """The region of ``tensor`` this process holds (all of it, unless it is a DTensor)."""
    if not is_dtensor(tensor):
        return Region(tensor, (0,) * tensor.dim(), tuple(tensor.shape))
    shape, offset = (shapes or LocalShapes()).of(tensor)
    local = tensor._local_tensor
    if tuple(local.shape) != tuple(shape):  # padded shard storage
        local = local[tuple(slice(0, n) for n in shape)]
    return Region(local, tuple(offset), tuple(tensor.shape))


# ------------------------------------------------------------------------ FSDP2

def fsdp_modules(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """The modules ``fully_shard`` has made FSDP2 modules (they have ``_get_fsdp_state``)."""
    return [m for m in modules if hasattr(m, "_get_fsdp_state")]


def _fsdp_params(modules: Iterable[nn.Module]) -> Iterator[Any]:
    """Every FSDP2 ``FSDPParam`` of the ``fully_shard`` modules among ``modules``."""
    for module in fsdp_modules(modules):
        for group in getattr(module._get_fsdp_state(), "_fsdp_param_groups", ()):
            yield from group.fsdp_params


def reshard_after_forward(model: nn.Module) -> None:
    """Put every FSDP2 module of ``model`` back to its sharded parameters (FSDP2 may keep the
    root's unsharded after a forward pass without backward); no-op without FSDP2."""
    for module in fsdp_modules(model.modules()):
        module.reshard()


def refresh_fsdp(modules: Iterable[nn.Module]) -> None:
    """Let FSDP2 re-read its sharded parameters after their storage changed (what FSDP2's own
    ``Module._apply`` hook does after ``to_empty``); shards already in FSDP2's padded
    layout (see :func:`materialize_dtensor`) are recognized and not copied."""
    for fsdp_param in _fsdp_params(modules):
        fsdp_param.reset_sharded_param()


class ShardedMaterializer:
    """Gives meta DTensor parameters storage in place; FSDP2 is refreshed once, when done."""

    def __init__(self, modules: list[nn.Module], undo: Undo):
        self.modules, self.undo = modules, undo
        self.owner_of = {p.sharded_param: p for p in _fsdp_params(modules)}   # sharded Parameter -> its FSDPParam
        self.swapped = False

    def swap_in(self, name: str, old: nn.Parameter, device: torch.device) -> None:
        """Give a meta DTensor parameter local storage on ``device`` *in place* (``swap_tensors``,
        as ``Module.to_empty`` does for DTensors): the object stays the same, so ties, FSDP2's
        bookkeeping and optimizers that already hold it stay valid.

        For an FSDP2 ``Shard(0)`` parameter the storage is allocated padded, as FSDP2 keeps it
        (its all-gather input): the local tensor is a view of the real rows and FSDP2's
        ``_sharded_param_data`` the whole padded storage, so ``reset_sharded_param()`` finds
        its own layout and copies nothing.
        """
        if not self.swapped:
            self.undo.push(refresh_fsdp, self.modules)   # runs last on rollback: after the swaps are undone
            self.swapped = True
        fsdp_param = self.owner_of.get(old)
        padded = _padded_storage(old, device, fsdp_param)
        if padded is None:
            local = torch.empty_like(old, device=device)
        else:
            from torch.distributed.tensor import DTensor
            rows = old._local_tensor.shape[0]
            if rows < padded.shape[0]:
                padded[rows:].zero_()   # FSDP2 pads with zeros
            local = DTensor(padded.narrow(0, 0, rows), old._spec, requires_grad=False)
        new = nn.Parameter(local, requires_grad=old.requires_grad)
        try:
            torch.utils.swap_tensors(old, new)
        except RuntimeError as exc:
            raise InitSpecError("device", f"cannot materialize the meta DTensor {name!r} in place: {exc}",
                                "drop other references to the meta parameter (e.g. an autograd graph) "
                                "before apply") from None
        self.undo.push(torch.utils.swap_tensors, old, new)
        if padded is not None:
            self.undo.push(setattr, fsdp_param, "_sharded_param_data", fsdp_param._sharded_param_data)
            fsdp_param._sharded_param_data = padded.view(-1)

    def finish(self) -> None:
        if self.swapped:
            refresh_fsdp(self.modules)


def _padded_storage(old: nn.Parameter, device: torch.device, fsdp_param: Any) -> torch.Tensor | None:
    """Uninitialized padded shard storage for ``old`` as FSDP2 lays it out, or None when
    ``old`` is not an FSDP2 ``Shard(0)`` parameter in the plain layout (then FSDP2 pads)."""
    if fsdp_param is None:
        return None
    try:
        placement = fsdp_param.fsdp_placement
        padded_size = tuple(fsdp_param.padded_sharded_param_size)
        data = fsdp_param._sharded_param_data
        if (getattr(placement, "dim", None) != 0 or getattr(fsdp_param, "pin_memory", False)
                or fsdp_param.sharded_param is not old or type(data) is not torch.Tensor):
            return None
    except AttributeError:   # another FSDP2 version: let reset_sharded_param() pad
        return None
    local = old._local_tensor
    if (type(local) is not torch.Tensor or hasattr(local, "fsdp_pre_all_gather") or not local.is_contiguous()
            or not padded_size or local.dim() != len(padded_size) or tuple(local.shape[1:]) != padded_size[1:]
            or local.shape[0] > padded_size[0] or math.prod(padded_size) == 0):
        return None
    return torch.empty(padded_size, dtype=local.dtype, device=device)

"""Launcher helpers for sharded models (FSDP2 ``fully_shard``, DTensor tensor parallel).

The flow (every rank runs it; see examples/fsdp_train.py)::

    with torch.device("meta"):
        model = GPT(...)                              # no memory, no default init
    groups = initspec.distributed.tie(model, spec)  # spec ties now: FSDP2 must see one parameter
    for block in model.transformer.h:
        fully_shard(block)                            # tied modules stay in one group (here the root)
    fully_shard(model)
    initspec.apply(model, spec, device="cpu")         # each rank fills only its shard

``initspec.apply`` gives every meta DTensor parameter local storage in place
(``swap_tensors``, the object stays the same; an FSDP2 shard is allocated in
FSDP2's padded layout, so FSDP2 makes no padded copy of it) and draws only the chunks of
the per-parameter streams its shard overlaps, so the gathered tensors are
bitwise what one process gets with the same spec and seed.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .errors import InitSpecError


def tie(model: nn.Module, spec: Any, *, seed: int | None = None, vars: Mapping[str, Any] | None = None,
        allow_fn: Iterable[str] = ()) -> dict[str, list[str]]:
    """Make the tie groups of ``spec`` (or of a seed checkpoint's metadata) true now, before
    ``fully_shard``; returns ``{group: [source, *targets]}`` (keep each in one shard group).

    ``spec`` is anything :func:`initspec.apply` takes, or the path of a ``.safetensors``
    file written by :func:`initspec.save_checkpoint` (its recorded aliases are tied).
    Nothing else changes: values are filled later by ``apply`` / ``load_checkpoint``.
    """
    if isinstance(spec, (str, Path)) and str(spec).endswith(".safetensors"):
        from .export import tie_aliases
        return tie_aliases(model, spec)
    from .api import _allow, _spec
    from .plan import make_plan
    from .ties import tie as tie_group
    plan, layout = make_plan(model, _spec(spec, seed, vars), _allow(allow_fn))
    for group in plan.ties:
        tie_group(model, layout.tree, group)
    return plan.tie_groups


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

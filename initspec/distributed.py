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

from .api import checked_allow_fn, spec_with_seed
from .export import tie_aliases
from .plan import make_plan
from .sharding import rank_and_world, require_process_group
from .slots import Undo

__all__ = ["tie", "rank_and_world", "require_process_group"]


def tie(model: nn.Module, spec: Any, *, seed: int | None = None, vars: Mapping[str, Any] | None = None,
        allow_fn: Iterable[str] = ()) -> dict[str, list[str]]:
    """Make the tie groups of ``spec`` (or of a seed checkpoint's metadata) true now, before
    ``fully_shard``; returns ``{group: [source, *targets]}`` (keep each in one shard group).

    ``spec`` is anything :func:`initspec.apply` takes, or the path of a ``.safetensors``
    file written by :func:`initspec.save_checkpoint` (its recorded aliases are tied).
    Nothing else changes: values are filled later by ``apply`` / ``load_checkpoint``.
    """
    if isinstance(spec, (str, Path)) and str(spec).endswith(".safetensors"):
        return tie_aliases(model, spec)
    plan, layout = make_plan(model, spec_with_seed(spec, seed, vars), checked_allow_fn(allow_fn))
    undo = Undo()
    try:
        for group in plan.ties:
            group.make(layout.tree, undo)
    except BaseException:
        undo.rollback()
        raise
    return plan.tie_groups

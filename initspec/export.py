"""Seed checkpoints: save an initialized model to safetensors with its ties, load it back.

The file holds each unique tensor once under its canonical name; the
metadata records every alias (tied and shared names) and the seed, so a
launcher on any number of ranks can load it and restore the ties.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InitSpecError, StepArgError
from .execute import materialize
from .results import Plan
from .sharding import fsdp_modules, is_dtensor, is_meta, rank_and_world, region_of
from .slots import Undo, live, put
from .sources import header
from .tree import walk

ALIASES_KEY = "initspec.aliases"
TIES_KEY = "initspec.tie_groups"


def save_checkpoint(model: nn.Module, path: str | Path, plan: Plan | None = None) -> dict[str, list[str]]:
    """Write every unique tensor of ``model`` to ``path``; returns {canonical name: aliases}.

    Sharded (DTensor) tensors are gathered, so under ``torch.distributed`` every rank must
    call it; rank 0 writes the file and all ranks return once it exists.
    """
    from safetensors.torch import save_file
    tree = walk(model)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, list[str]] = {}
    first: dict[torch.Tensor, str] = {}   # keyed by the tensor object (tensors hash by identity)
    for slot in tree.tensors:
        if slot.tensor in first:
            aliases[first[slot.tensor]].append(slot.name)
            continue
        first[slot.tensor] = slot.name
        aliases[slot.name] = []
        if is_meta(slot.tensor):
            raise InitSpecError("model", f"{slot.name!r} is on the meta device: there are no values to save",
                                "initialize the model first (initspec.apply(model, spec, device=...))")
        tensor = slot.tensor.full_tensor() if is_dtensor(slot.tensor) else slot.tensor
        tensors[slot.name] = tensor.detach().contiguous().cpu()
    metadata = {ALIASES_KEY: json.dumps({k: v for k, v in aliases.items() if v})}
    if plan is not None:
        metadata[TIES_KEY] = json.dumps(plan.tie_groups)
        metadata["initspec.seed"] = str(plan.seed)
    rank, world = rank_and_world()
    if rank == 0:
        save_file(tensors, str(path), metadata=metadata)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    return aliases


def read_metadata(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    return {k: (json.loads(v) if k in (ALIASES_KEY, TIES_KEY) else v) for k, v in raw.items()}


def tie_aliases(model: nn.Module, path: str | Path, undo: Undo | None = None) -> dict[str, list[str]]:
    """Make the names a seed checkpoint records as aliases one object in ``model``
    (before ``fully_shard``, on a meta model); returns {canonical name: aliases}."""
    aliases: dict[str, list[str]] = read_metadata(path).get(ALIASES_KEY, {})
    tree = walk(model)
    slots = {s.name: s for s in tree.tensors}
    sharded = bool(fsdp_modules(m.module for m in tree.modules))
    undo = Undo() if undo is None else undo
    for name, others in aliases.items():
        if name not in slots:
            continue
        source = slots[name]
        for alias in others:
            target = slots.get(alias)
            if target is None or live(target) is live(source):
                continue
            if sharded and (is_dtensor(target.tensor) or is_dtensor(source.tensor)):
                raise InitSpecError("checkpoint", f"{path} ties {alias!r} to {name!r}, but fully_shard already "
                                    "sharded them as two parameters (FSDP2 would untie them on every forward)",
                                    "tie before sharding: initspec.distributed.tie(model, path) on the meta model, "
                                    "then fully_shard, then load_checkpoint")
            put(target, live(source), undo)
    return {k: list(v) for k, v in aliases.items() if k in slots}


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True, device: Any = None) -> nn.Module:
    """Copy a seed checkpoint into ``model`` and restore the ties it records.

    Tied names in the file become one ``Parameter`` in the model (the
    canonical one) before values are copied. Tensors on the meta device get
    storage on ``device`` first (once per unique tensor; DTensor parameters in
    place). A sharded model reads only its local slice of each tensor. Every
    check (names, shapes, devices) runs before anything changes; if one fails,
    the model is left as it was. A read error part-way through the copy (a file
    changed on disk) undoes the ties and the materialization, but values already
    copied into existing tensors stay copied.
    """
    from safetensors import safe_open
    try:
        on_file = header(str(path), "safetensors")
    except StepArgError as exc:
        raise InitSpecError("checkpoint", exc.what, exc.fix) from None
    undo = Undo()
    try:
        tie_aliases(model, path, undo)
        tree = walk(model)
        aliases = read_metadata(path).get(ALIASES_KEY, {})
        slots = {s.name: s for s in tree.tensors}
        tied = {a for v in aliases.values() for a in v}
        expected = {s.name for s in tree.tensors if s.name not in tied}
        missing = sorted(expected - set(on_file))
        if strict and missing:
            raise InitSpecError("checkpoint", f"{path} lacks {len(missing)} tensor(s): {', '.join(missing[:5])}",
                                "save it from the same model configuration")
        extra = sorted(set(on_file) - set(slots))
        if strict and extra:
            raise InitSpecError("checkpoint", f"{path} holds {extra[0]!r}, which the model does not have",
                                "load it into the model it was saved from, or strict=False")
        keys = sorted(set(on_file) & set(slots))
        for key in keys:
            if on_file[key][0] != tuple(slots[key].tensor.shape):
                raise InitSpecError("checkpoint", f"{key!r} has shape {list(on_file[key][0])} in {path} but "
                                    f"{list(slots[key].tensor.shape)} in the model", "load into the same model configuration")
        meta: dict[torch.Tensor, tuple[str, torch.Tensor, list]] = {}   # keyed by the tensor object
        for slot in tree.tensors:
            if is_meta(slot.tensor):
                meta.setdefault(slot.tensor, (slot.name, slot.tensor, []))[2].append(slot)
        unfilled = [n for n, _, _ in meta.values() if n not in keys]
        if unfilled:
            raise InitSpecError("checkpoint", f"{unfilled[0]!r} is on the meta device and {path} has no values for it",
                                "initialize it with initspec.apply, or load a checkpoint that holds it")
        if meta:
            if device is None:
                raise InitSpecError("device", f"{len(meta)} tensor(s) are on the meta device and no device was given",
                                    "pass device='cpu' (or 'cuda') to load_checkpoint()")
            materialize(list(meta.values()), device, tree, undo)
        with torch.no_grad(), safe_open(str(path), framework="pt") as f:
            for key in keys:
                _copy_into(live(slots[key]), f, key)
    except BaseException:
        undo.rollback()
        raise
    return model


def _copy_into(tensor: torch.Tensor, handle: Any, key: str) -> None:
    """Copy a file tensor into a (possibly sharded) model tensor, reading only the local slice."""
    region = region_of(tensor)
    if region.local.numel() == 0:
        return
    part = handle.get_slice(key)[region.slices()] if region.global_shape else handle.get_tensor(key)
    region.local.copy_(part.reshape(region.local.shape))

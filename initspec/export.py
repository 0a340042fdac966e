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

from .errors import InitSpecError
from .plan import Plan
from .tree import walk

ALIASES_KEY = "initspec.aliases"
TIES_KEY = "initspec.tie_groups"


def save_checkpoint(model: nn.Module, path: str | Path, plan: Plan | None = None) -> dict[str, list[str]]:
    """Write every unique tensor of ``model`` to ``path``; returns {canonical name: aliases}."""
    from safetensors.torch import save_file
    tree = walk(model)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, list[str]] = {}
    first: dict[int, str] = {}
    for slot in tree.tensors:
        key = id(slot.tensor)
        if key in first:
            aliases[first[key]].append(slot.name)
            continue
        first[key] = slot.name
        aliases[slot.name] = []
        tensor = slot.tensor.full_tensor() if hasattr(slot.tensor, "full_tensor") else slot.tensor
        tensors[slot.name] = tensor.detach().contiguous().cpu()
    metadata = {ALIASES_KEY: json.dumps({k: v for k, v in aliases.items() if v})}
    if plan is not None:
        metadata[TIES_KEY] = json.dumps(plan.tie_groups)
        metadata["initspec.seed"] = str(plan.seed)
    save_file(tensors, str(path), metadata=metadata)
    return aliases


def read_metadata(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    return {k: (json.loads(v) if k in (ALIASES_KEY, TIES_KEY) else v) for k, v in raw.items()}


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Copy a seed checkpoint into ``model`` and restore the ties it records.

    Tied names in the file become one ``Parameter`` in the model (the
    canonical one) before values are copied.
    """
    from safetensors import safe_open
    tree = walk(model)
    meta = read_metadata(path)
    aliases: dict[str, list[str]] = meta.get(ALIASES_KEY, {})
    slots = {s.name: s for s in tree.tensors}
    with torch.no_grad():
        for name, others in aliases.items():
            if name not in slots:
                continue
            source = slots[name]
            for alias in others:
                target = slots.get(alias)
                if target is None or target.tensor is source.tensor:
                    continue
                store = target.owner.module._parameters if target.kind == "parameter" else target.owner.module._buffers
                store[target.attr] = source.tensor
        tree = walk(model)
        slots = {s.name: s for s in tree.tensors}
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            expected = {s.name for s in tree.tensors if not any(s.name in v for v in aliases.values())}
            missing = sorted(expected - keys)
            if strict and missing:
                raise InitSpecError("checkpoint", f"{path} lacks {len(missing)} tensor(s): {', '.join(missing[:5])}",
                                    "save it from the same model configuration")
            for key in sorted(keys):
                if key not in slots:
                    if strict:
                        raise InitSpecError("checkpoint", f"{path} holds {key!r}, which the model does not have",
                                            "load it into the model it was saved from, or strict=False")
                    continue
                _copy_into(slots[key].tensor, f, key)
    return model


def _copy_into(tensor: torch.Tensor, handle: Any, key: str) -> None:
    """Copy a file tensor into a (possibly sharded) model tensor, reading only the local rows."""
    from .execute import region_of
    region = region_of(tensor)
    if tuple(handle.get_slice(key).get_shape()) != region.global_shape:
        raise InitSpecError("checkpoint", f"{key!r} has shape {handle.get_slice(key).get_shape()} in the file but "
                            f"{list(region.global_shape)} in the model", "load into the same model configuration")
    part = handle.get_slice(key)[region.slices()] if region.global_shape else handle.get_tensor(key)
    region.local.copy_(part.reshape(region.local.shape))

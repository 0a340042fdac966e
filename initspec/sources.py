"""Checkpoint sources: copy tensors from safetensors files (or ``torch.load``
with ``weights_only=True``), reading only the rows a process needs."""
from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import torch

from .errors import StepArgError, suggest
from .primitives import Block, Op, Primitive
from .tensor_info import TensorInfo

_TORCH_FILES: dict[str, dict[str, torch.Tensor]] = {}
_LOCK = threading.Lock()


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return "safetensors" if path.suffix == ".safetensors" else "torch"


def _torch_file(path: str) -> dict[str, torch.Tensor]:
    with _LOCK:
        if path not in _TORCH_FILES:
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:
                data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
                raise StepArgError("path", f"{path!r} does not hold a flat mapping of names to tensors",
                                   "save a state_dict (torch.save(model.state_dict(), path))")
            _TORCH_FILES[path] = data
        return _TORCH_FILES[path]


def header(path: str, fmt: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype name) of a checkpoint file, validating that it opens."""
    p = Path(path)
    if not p.is_file():
        raise StepArgError("path", f"checkpoint file {path!r} does not exist", "check the path")
    kind = _format(p, fmt)
    try:
        if kind == "safetensors":
            from safetensors import safe_open
            out = {}
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    out[key] = (tuple(sl.get_shape()), _dtype_name(sl.get_dtype()))
            size = p.stat().st_size
            _check_safetensors_size(path, size)
            return out
        data = _torch_file(path)
        return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in data.items()}
    except StepArgError:
        raise
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        raise StepArgError("path", f"torch.load(weights_only=True) refuses {path!r}"
                           + (f": {lines[0]}" if lines else " (not a plain tensor pickle)"),
                           "save a state_dict of plain tensors (torch.save(model.state_dict(), path)) or a "
                           "safetensors file; initspec never unpickles arbitrary objects") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fix = ("only safetensors files or plain tensor state_dicts load (torch.load with weights_only=True)"
               if kind == "torch" else "re-save the checkpoint; the file is truncated or corrupted")
        raise StepArgError("path", f"cannot read checkpoint {path!r} ({kind}): {first}", fix) from None


def _check_safetensors_size(path: str, size: int) -> None:
    import json
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise StepArgError("path", f"checkpoint {path!r} is truncated ({size} bytes, header promises {8 + n + end})",
                           "re-save or re-download the file")


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _dtype_name(code: str) -> str:
    return _SAFETENSORS_DTYPES.get(code, code.lower())


def _fill_checkpoint(out: torch.Tensor, op: Op, block: Block) -> None:
    out.copy_(read_rows(op, block.first, block.end).reshape(out.shape))


CHECKPOINT = Primitive("checkpoint", _fill_checkpoint)   # bounds unknown: staged and checked


def checkpoint_op(t: TensorInfo, path: str, key: str, missing: str, fmt: str) -> Op | None:
    """Plan-time check of a checkpoint step for one tensor: the op, or None for an absent key
    with ``missing: init`` (the rule's other steps fill it)."""
    keys = header(path, fmt)
    label = f"checkpoint({Path(path).name}[{key!r}])"
    if key not in keys:
        if missing == "init":
            return None
        raise StepArgError("key", f"key {key!r} (for {t.name!r}) is not in {path!r}.{suggest(key, keys)}",
                           "fix the key template, or set missing: init to fall back to the rule's other steps")
    shape, dtype = keys[key]
    if shape != tuple(t.shape):
        raise StepArgError("key", f"{key!r} in {path!r} has shape {list(shape)}, but {t.name!r} has {list(t.shape)}",
                           "point the key at a tensor of the same shape")
    want = str(t.dtype).removeprefix("torch.")
    if dtype != want:
        raise StepArgError("key", f"{key!r} in {path!r} has dtype {dtype}, but {t.name!r} is {want}",
                           "convert the checkpoint or the model to one dtype")
    return CHECKPOINT.op(label=label, path=path, key=key, format=fmt)


def read_rows(o: Op, r0: int, r1: int) -> torch.Tensor:
    """Rows [r0, r1) of the op's tensor (slice reads for safetensors)."""
    path, key = o["path"], o["key"]
    if _format(Path(path), o["format"]) == "safetensors":
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            sl = f.get_slice(key)
            if len(sl.get_shape()) == 0:
                return f.get_tensor(key).reshape(1)
            return sl[r0:r1]
    tensor = _torch_file(path)[key]
    return tensor.reshape(1) if tensor.dim() == 0 else tensor[r0:r1]


def clear_cache() -> None:
    with _LOCK:
        _TORCH_FILES.clear()

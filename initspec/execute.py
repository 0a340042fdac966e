"""Execution: make the plan true, all or nothing.

Phase A (reversible): materialize meta tensors, run ``reset_parameters()``
of modules the plan resets (under a forked RNG), and compute every *staged*
pipeline (transforms of existing values, checkpoints, custom callables,
anything that could overflow) into temporaries that are checked for inf/NaN.
If anything fails, the model is put back exactly as it was.

Phase B: tie, fill every other tensor in place from its streams (chunks run
on a thread pool), copy the staged temporaries in. Pipelines filled here are
proven finite at plan time, so this phase has nothing left to fail on.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .errors import InitSpecError, Problem
from .kernels import RNG_LOCK, rows_exact, run_block, run_rows, run_whole
from .ops import RANDOM_CHUNKED, needs_whole, reads_existing, starts_custom
from .plan import Entry, Layout, Plan
from .spec import ROOT
from .streams import Stream, chunk_ranges, generation_dtype, stream_seed
from .ties import tie, untie
from .tree import TensorSlot, is_dtensor, is_meta, local_tensor

SMALL_TASK = 1 << 20  # tasks below this many elements are batched together


@dataclass(frozen=True)
class Region:
    """The part of a parameter this process holds, in global coordinates."""

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
        return (all(o == 0 for o in self.offset[1:])
                and tuple(self.local.shape[1:]) == self.global_shape[1:])

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.local.shape))


def region_of(tensor: torch.Tensor, cache: dict | None = None) -> Region:
    """``cache``: a dict kept for the duration of one call over tensors that stay alive (its
    keys hold mesh ids): equal shapes on one mesh and placements are computed once."""
    if is_dtensor(tensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
        local = local_tensor(tensor)
        mesh, placements = tensor.device_mesh, tensor.placements
        key = (tuple(tensor.shape), id(mesh), tuple(placements))
        cache = {} if cache is None else cache
        found = cache.get(key)
        if found is None:
            found = cache[key] = compute_local_shape_and_global_offset(tensor.shape, mesh, placements)
        shape, offset = found
        if tuple(local.shape) != tuple(shape):  # padded shard storage
            local = local[tuple(slice(0, n) for n in shape)]
        return Region(local, tuple(offset), tuple(tensor.shape))
    return Region(tensor, (0,) * tensor.dim(), tuple(tensor.shape))


def live_tensor(slot: TensorSlot) -> torch.Tensor:
    module = slot.owner.module
    store = module._parameters if slot.kind == "parameter" else module._buffers
    return store[slot.attr]


def execute(model: nn.Module, plan: Plan, layout: Layout, *, device: Any = None,
            progress: Callable[[int, int], None] | None = None,
            threads: int | None = None) -> None:
    """Apply ``plan`` to ``model``; on failure the model is left as it was."""
    entries = [e for e in plan.entries]
    threads = threads or default_threads()
    undo_materialize: list = []
    undo_resets: list = []
    try:
        _check_sharded_ties(plan, layout)
        fresh = {e.name for e in entries if is_meta(layout.tensors[e.name])}
        undo_materialize = _materialize(layout, entries, device)
        undo_resets = _resets(plan, layout)
        regions: dict = {}
        staged = _stage(plan, layout, entries, threads, fresh, regions)
    except BaseException as exc:
        _restore(undo_resets)
        _restore(undo_materialize)
        if isinstance(exc, InitSpecError):
            raise
        raise
    undo_ties: list = []
    try:
        for group in plan.ties:
            undo_ties += tie(model, layout.tree, group)
        tasks: list[tuple[int, Callable[[], None]]] = []
        with torch.no_grad():
            for entry in entries:
                if entry.action != "fill":
                    continue
                tensor = _current(layout, entry)
                region = region_of(tensor, regions)
                if entry.staged:
                    tasks.append((region.local.numel(), _copier(region.local, staged[entry.name])))
                else:
                    tasks += fill_tasks(entry, region, plan)
            run_tasks(tasks, threads, progress)
    except BaseException:
        untie(undo_ties)
        if undo_materialize:
            _restore(undo_materialize)
        raise


def _check_sharded_ties(plan: Plan, layout: Layout) -> None:
    """A tie FSDP2 does not already know cannot be made after ``fully_shard``: each side is
    its own FSDP2 parameter, re-registered (untied) on every unshard."""
    if not plan.ties or not layout.tree.fsdp_modules():
        return
    problems = []
    for group in plan.ties:
        for target, source in group.tensor_map(layout.tree).items():
            new, old = layout.tree.by_tensor_name[source].tensor, layout.tree.by_tensor_name[target].tensor
            if old is not new and (is_dtensor(old) or is_dtensor(new)):
                problems.append(Problem(f"{ROOT}.ties.{group.name}",
                                        f"{target!r} and {source!r} were sharded by fully_shard as two parameters; "
                                        "tying them now would be undone by FSDP2 on every forward",
                                        "tie before sharding: initspec.distributed.tie(model, spec) on the meta "
                                        "model, then fully_shard (keep the tied modules in one fully_shard group)"))
                break
    if problems:
        raise InitSpecError(problems)


def default_threads() -> int:
    """Threads for chunk filling: torch's intra-op setting (torchrun sets OMP_NUM_THREADS)."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _current(layout: Layout, entry: Entry) -> torch.Tensor:
    for slot in layout.slots[entry.name]:
        if slot.name == entry.name:
            return live_tensor(slot)
    return live_tensor(layout.slots[entry.name][0])


def _copier(dst: torch.Tensor, src: torch.Tensor) -> Callable[[], None]:
    def copy() -> None:
        dst.copy_(src)
    return copy


def stream_of(plan: Plan, entry: Entry, device: torch.device) -> Stream:
    gen_device = torch.device("cpu") if plan.streams == "portable" else device
    return Stream(plan.seed, entry.name, gen_device)


def fill_tasks(entry: Entry, region: Region, plan: Plan, fresh: bool = False) -> list[tuple[int, Callable[[], None]]]:
    """Tasks that write ``entry``'s values into ``region.local``.

    ``fresh``: the tensor had no values before this apply (materialized from meta), so a
    custom function first starts from zeros of the global shape, sharded or not.
    """
    target = region.local
    if target.numel() == 0:
        return []
    stream = stream_of(plan, entry, target.device)
    dtype = generation_dtype(target.dtype)
    shape = region.global_shape or (1,)
    if needs_whole(entry.ops):
        def whole() -> None:
            if starts_custom(entry.ops) and fresh:
                full = torch.zeros(shape, dtype=dtype, device=stream.device)
            elif reads_existing(entry.ops) or starts_custom(entry.ops):
                if not region.full:
                    raise InitSpecError(entry.ops[0].origin or ROOT,
                                        f"{entry.name!r} is sharded, and a whole-tensor pipeline that reads the "
                                        "current values cannot run on a shard",
                                        "start the pipeline with a sampler, or build the model on the meta device "
                                        "(a custom function then starts from zeros)")
                full = target.detach().to(stream.device, dtype, copy=True)
            else:
                full = torch.empty(shape, dtype=dtype, device=stream.device)
            run_whole(entry.ops, full, stream)
            part = full.reshape(region.global_shape)[region.slices()] if region.global_shape else full.reshape(())
            target.copy_(part)
        return [(target.numel(), whole)]
    view = target.view(1) if target.dim() == 0 else target
    r0, r1 = region.rows
    direct_ok = (region.full_width() and view.is_contiguous() and view.dtype == dtype
                 and view.device == stream.device)
    tasks = []
    for chunk, c0, c1 in chunk_ranges(shape, r0, r1):
        if direct_ok and c0 >= r0 and c1 <= r1:
            tasks.append(((c1 - c0), _direct(entry, view[c0 - r0:c1 - r0], chunk, c0, stream)))
        elif direct_ok and rows_exact(entry.ops, dtype, stream.device):   # a chunk the shard cuts
            lo, hi = max(c0, r0), min(c1, r1)
            tasks.append(((hi - lo), _rows(entry, view[lo - r0:hi - r0], chunk, c0, c1, lo, stream)))
        else:
            tasks.append(((c1 - c0), _via_block(entry, view, region, chunk, c0, c1, stream, dtype)))
    row = max(1, view[0].numel()) if view.dim() else 1
    return [(n * row, fn) for n, fn in tasks]


def _direct(entry: Entry, buf: torch.Tensor, chunk: int, row0: int, stream: Stream) -> Callable[[], None]:
    def fill() -> None:
        run_block(entry.ops, buf, chunk, row0, stream)
    return fill


def _rows(entry: Entry, buf: torch.Tensor, chunk: int, c0: int, c1: int, lo: int,
          stream: Stream) -> Callable[[], None]:
    def fill() -> None:
        run_rows(entry.ops, buf, chunk, c0, c1, lo, stream)
    return fill


def _via_block(entry: Entry, view: torch.Tensor, region: Region, chunk: int, c0: int, c1: int,
               stream: Stream, dtype: torch.dtype) -> Callable[[], None]:
    def fill() -> None:
        shape = (region.global_shape or (1,))
        r0, r1 = region.rows
        lo, hi = max(c0, r0), min(c1, r1)
        # random ops need the whole chunk's draws; the others are row-wise: only the shard's rows
        # (a checkpoint then reads just those rows)
        b0, b1 = (c0, c1) if any(o.kind in RANDOM_CHUNKED for o in entry.ops) else (lo, hi)
        block = torch.empty((b1 - b0, *shape[1:]), dtype=dtype, device=stream.device)
        inner = (slice(lo - b0, hi - b0),) + tuple(slice(o, o + n) for o, n in zip(region.offset[1:], view.shape[1:]))
        if reads_existing(entry.ops):
            block[inner].copy_(view[lo - r0:hi - r0])
        run_block(entry.ops, block, chunk, b0, stream)
        view[lo - r0:hi - r0].copy_(block[inner])
    return fill


def run_tasks(tasks: list[tuple[int, Callable[[], None]]], threads: int,
              progress: Callable[[int, int], None] | None = None) -> None:
    """Run fill tasks, small ones batched, on ``threads`` threads (values never depend on it).

    ``progress(done, total)`` is called with element counts after each batch.
    """
    batches: list[tuple[int, list[Callable[[], None]]]] = []
    pending: list[Callable[[], None]] = []
    size = 0
    for numel, fn in tasks:
        if numel >= SMALL_TASK:
            batches.append((numel, [fn]))
            continue
        pending.append(fn)
        size += numel
        if size >= SMALL_TASK:
            batches.append((size, pending))
            pending, size = [], 0
    if pending:
        batches.append((size, pending))
    total = sum(n for n, _ in batches)
    done = 0

    def run(batch: list[Callable[[], None]]) -> None:
        with torch.no_grad():
            for fn in batch:
                fn()

    if threads <= 1 or len(batches) <= 1:
        for numel, batch in batches:
            run(batch)
            if progress is not None:
                done += numel
                progress(done, total)
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(batches))) as pool:
        futures = [(numel, pool.submit(run, b)) for numel, b in batches]
        for numel, future in futures:
            future.result()
            if progress is not None:
                done += numel
                progress(done, total)


# ------------------------------------------------------------------ phase A

def _materialize(layout: Layout, entries: list[Entry], device: Any) -> list:
    """Give every meta tensor storage on ``device``, once per unique tensor (ties kept)."""
    meta = [e for e in entries if is_meta(layout.tensors[e.name])]
    if not meta:
        return []
    if device is None:
        raise InitSpecError("device", f"{len(meta)} tensor(s) are on the meta device (e.g. {meta[0].name!r}) "
                            "and no device was given", "pass device='cpu' (or 'cuda') to apply()")
    return materialize([(e.name, layout.tensors[e.name], layout.slots[e.name]) for e in meta], device, layout.tree)


def materialize(items: list[tuple[str, torch.Tensor, list[TensorSlot]]], device: Any, tree: Any) -> list:
    """Give each meta tensor of ``items`` (name, tensor, every slot holding it) storage on
    ``device``, once, keeping every slot on one object; returns undo records for ``_restore``.

    Meta DTensor parameters are filled in place (``swap_tensors``); other tensors are
    replaced by new ones in every slot that held them.
    """
    device = torch.device(device)
    undo: list = []
    fsdp_params: dict[int, Any] | None = None
    try:
        with torch.no_grad():
            for name, old, slots in items:
                if is_dtensor(old) and isinstance(old, nn.Parameter):
                    if not undo or not isinstance(undo[0], _FsdpRefresh):
                        undo.insert(0, _FsdpRefresh(tree))   # restored last: after the swaps are undone
                    if fsdp_params is None:
                        fsdp_params = _fsdp_params(tree)
                    undo += _swap_in(name, old, device, fsdp_params.get(id(old)))
                    continue
                new = (torch.empty_like(old, device=device) if is_dtensor(old)
                       else torch.empty(old.shape, dtype=old.dtype, device=device))
                if isinstance(old, nn.Parameter):
                    new = nn.Parameter(new, requires_grad=old.requires_grad)
                for slot in slots:
                    if live_tensor(slot) is old:
                        undo.append((slot, old))
                        _set(slot, new)
            if undo and isinstance(undo[0], _FsdpRefresh):
                _refresh_fsdp(tree)
    except BaseException:
        _restore(undo)
        raise
    return undo


@dataclass(frozen=True)
class _Swap:
    """Undo record: ``tensor`` holds what ``other`` held before (swap back to undo)."""

    tensor: torch.Tensor
    other: torch.Tensor


@dataclass(frozen=True)
class _FsdpRefresh:
    """Undo record: let FSDP2 re-read its parameters after the swaps are undone."""

    tree: Any


@dataclass(frozen=True)
class _ShardData:
    """Undo record: the ``_sharded_param_data`` an FSDP2 parameter had before."""

    fsdp_param: Any
    data: torch.Tensor


def _swap_in(name: str, old: nn.Parameter, device: torch.device, fsdp_param: Any = None) -> list:
    """Give a meta DTensor parameter local storage on ``device`` *in place* (``swap_tensors``,
    as ``Module.to_empty`` does for DTensors): the object stays the same, so ties, FSDP2's
    bookkeeping and optimizers that already hold it stay valid. Returns undo records.

    For an FSDP2 ``Shard(0)`` parameter (``fsdp_param``) the storage is allocated padded, as
    FSDP2 keeps it (its all-gather input): the local tensor is a view of the real rows and
    FSDP2's ``_sharded_param_data`` the whole padded storage, so ``reset_sharded_param()``
    finds its own layout and copies nothing (for an unevenly sharded parameter it would
    otherwise allocate a zeroed padded copy of the shard and copy the shard into it).
    """
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
                            "drop other references to the meta parameter (e.g. an autograd graph) before apply") from None
    undo: list = [_Swap(old, new)]
    if padded is not None:
        undo.append(_ShardData(fsdp_param, fsdp_param._sharded_param_data))
        fsdp_param._sharded_param_data = padded.view(-1)
    return undo


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


def _fsdp_params(tree: Any) -> dict[int, Any]:
    """id(sharded parameter) -> its FSDP2 ``FSDPParam``, over every ``fully_shard`` module."""
    return {id(fsdp_param.sharded_param): fsdp_param for fsdp_param in _each_fsdp_param(tree)}


def _each_fsdp_param(tree: Any) -> Iterator[Any]:
    """Every FSDP2 ``FSDPParam`` of the ``fully_shard`` modules in ``tree``."""
    for module in tree.fsdp_modules():
        for group in getattr(module._get_fsdp_state(), "_fsdp_param_groups", ()):
            yield from group.fsdp_params


def _refresh_fsdp(tree: Any) -> None:
    """FSDP2 keeps a padded copy of each shard; after materializing, re-register the shards
    (what FSDP2's own ``Module._apply`` hook does after ``to_empty``). Shards materialized
    into FSDP2's padded layout (``_swap_in``) are recognized as such and not copied."""
    for fsdp_param in _each_fsdp_param(tree):
        fsdp_param.reset_sharded_param()


def _set(slot: TensorSlot, tensor: torch.Tensor) -> None:
    module = slot.owner.module
    if slot.kind == "parameter":
        module._parameters[slot.attr] = tensor
    else:
        module._buffers[slot.attr] = tensor


def _restore(undo: list) -> None:
    for record in reversed(undo):
        if isinstance(record, _Swap):
            torch.utils.swap_tensors(record.tensor, record.other)
            continue
        if isinstance(record, _FsdpRefresh):
            _refresh_fsdp(record.tree)
            continue
        if isinstance(record, _ShardData):
            record.fsdp_param._sharded_param_data = record.data
            continue
        slot, old = record
        if isinstance(slot, TensorSlot):
            _set(slot, old)
        elif isinstance(slot, dict):  # (a module's _parameters/_buffers, its saved entries)
            slot.clear()
            slot.update(old)
        else:  # (tensor, saved values)
            with torch.no_grad():
                slot.copy_(old)


def _resets(plan: Plan, layout: Layout) -> list:
    """Run reset_parameters() of the plan's modules under a forked, seeded RNG."""
    undo: list = []
    for name, module in zip(layout.reset_names, layout.reset_modules):
        # reset_parameters() may also assign new Parameter objects: keep the registered ones too
        undo += [(store, dict(store)) for store in (module._parameters, module._buffers)]
        with torch.no_grad():
            for tensor in [*module._parameters.values(), *module._buffers.values()]:
                if tensor is not None and not is_meta(tensor):
                    undo.append((tensor, tensor.detach().clone()))
        try:
            with RNG_LOCK, torch.random.fork_rng(devices=[]):
                torch.manual_seed(stream_seed(plan.seed, f"reset:{name}", 0, 0) % (2 ** 63))
                module.reset_parameters()
        except Exception as exc:
            _restore(undo)
            raise InitSpecError(f"{ROOT}.default", f"reset_parameters() of {name or 'the root module'!r} "
                                f"({type(module).__name__}) failed: {exc!r}", "add rules for its parameters") from exc
    return undo


def _stage(plan: Plan, layout: Layout, entries: list[Entry], threads: int,
           fresh: set[str] = frozenset(), regions: dict | None = None) -> dict[str, torch.Tensor]:
    """Compute staged pipelines into temporaries and check them.

    A pipeline that starts from the current values gets a copy of them; a
    custom function first gets the current values, or zeros for a tensor that
    had none (materialized from meta in this apply).
    """
    staged: dict[str, torch.Tensor] = {}
    problems: list[Problem] = []
    for entry in entries:
        if entry.action != "fill" or not entry.staged:
            continue
        tensor = _current(layout, entry)
        region = region_of(tensor, regions)
        if reads_existing(entry.ops) or (starts_custom(entry.ops) and entry.name not in fresh):
            temp = region.local.detach().clone()
        elif starts_custom(entry.ops):
            temp = torch.zeros_like(region.local)
        else:
            temp = torch.empty_like(region.local)
        temp_region = Region(temp, region.offset, region.global_shape)
        try:
            run_tasks(fill_tasks(entry, temp_region, plan, fresh=entry.name in fresh), threads)
        except InitSpecError:
            raise
        except Exception as exc:
            origin = next((o.origin for o in entry.ops if o.kind in ("custom", "checkpoint")), entry.ops[0].origin)
            raise InitSpecError(origin or ROOT, f"computing {entry.name!r} failed: {type(exc).__name__}: {exc}",
                                "fix the step (a custom function must fill the tensor in place)") from exc
        if temp.is_floating_point() and not bool(torch.isfinite(temp).all()):
            bad = "NaN" if bool(torch.isnan(temp).any()) else "inf"
            problems.append(Problem(entry.ops[-1].origin or ROOT,
                                    f"pipeline of rule {entry.rule!r} produced {bad} values for {entry.name!r} "
                                    f"({entry.steps})", "check its scale/add arguments and custom functions"))
        staged[entry.name] = temp
    if problems:
        raise InitSpecError(problems)
    return staged

"""Execution: make the plan true, all or nothing.

Phase A (reversible, every change recorded in an :class:`~initspec.slots.Undo`):
materialize meta tensors, run ``reset_parameters()`` of modules the plan resets
(under a forked RNG), and compute every *staged* pipeline (transforms of
existing values, checkpoints, custom callables, anything that could overflow)
into temporaries that are checked for inf/NaN. If anything fails, the model is
put back exactly as it was.

Phase B: tie, fill every other tensor in place from its streams (chunks run on
a thread pool), copy the staged temporaries in. Pipelines filled here are
proven finite at plan time, so this phase has nothing left to fail on but the
machine (out of memory, an interrupt); then too the ties and materialized
tensors are undone, though values already written stay written.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from .errors import InitSpecError, Problem
from .fill import StepFailed, Task, fill_tasks, run_tasks
from .parts import part_region
from .primitives import RNG_LOCK, DataPass, DataTarget, Op, Primitive, fill_ops, reads_values, starts_custom
from .results import Entry, Layout, Plan
from .sharding import LocalShapes, Region, ShardedMaterializer, fsdp_modules, is_dtensor, is_meta, region_of
from .slots import Undo, keep_registrations, keep_values, live, put
from .spec import ROOT
from .streams import Stream, stream_seed
from .tree import TensorSlot, Tree


def execute(model: nn.Module, plan: Plan, layout: Layout, *, device: Any = None,
            progress: Callable[[int, int], None] | None = None, threads: int | None = None,
            data: Any = None) -> list[dict[str, Any]]:
    """Apply ``plan`` to ``model``; on failure the model is left as it was.

    ``data`` is the batch of data-dependent steps (``lsuv``); returns what their data passes report.
    """
    threads = threads or default_threads()
    undo = Undo()
    shapes = LocalShapes()
    try:
        _check_sharded_ties(plan, layout)
        fresh = {e.name for e in plan.entries if is_meta(layout.tensors[e.name])}
        _materialize(layout, plan.entries, device, undo)
        _resets(plan, layout, undo)
        staged = _stage(plan, layout, threads, fresh, shapes)
        targets = data_targets(plan, layout)
        if targets:   # a data pass can still fail after the fill: keep what the fill overwrites
            for entry in plan.entries:
                if entry.action == "fill" and entry.name not in fresh:
                    keep_values(live(layout.head(entry.name)), undo)
        for group in plan.ties:
            group.make(layout.tree, undo)
        waves: list[list[Task]] = []   # wave 0: whole tensors; wave k: the k-th part of each tensor
        for fill in fills(plan, layout, shapes, fresh):
            while len(waves) <= fill.wave:
                waves.append([])
            if fill.staged:
                waves[fill.wave].append((fill.region.local.numel(),
                                         functools.partial(fill.region.local.copy_, staged[fill.key])))
            else:
                waves[fill.wave] += fill_tasks(fill.ops, fill.region, fill.stream, origin=fill.ops[0].origin,
                                               name=fill.name)
        with torch.no_grad():
            run_waves(waves, threads, progress)
        return run_data_passes(model, plan, targets, data)
    except BaseException:
        undo.rollback()
        raise


def data_targets(plan: Plan, layout: Layout) -> dict[Primitive, list[DataTarget]]:
    """The tensors whose pipeline ends with a data-dependent op, by its primitive."""
    out: dict[Primitive, list[DataTarget]] = {}
    for entry in plan.entries:
        if entry.action == "fill" and entry.ops and entry.ops[-1].primitive.data_pass is not None:
            slot = layout.head(entry.name)
            out.setdefault(entry.ops[-1].primitive, []).append(
                DataTarget(entry.name, entry.ops[-1], slot.owner.module, slot.owner.name, slot.attr))
    return out


def run_data_passes(model: nn.Module, plan: Plan, targets: dict[Primitive, list[DataTarget]],
                    batch: Any) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for primitive, found in targets.items():
        results += primitive.data_pass(DataPass(model, batch, tuple(found), plan.seed))
    return results


class Fill(NamedTuple):
    """One pipeline to run on the region of a tensor this process holds (a whole tensor or a part)."""

    key: tuple[str, int]        # (entry name, -1 for the whole tensor or the part's index)
    wave: int                   # 0 for whole tensors; parts run after, in their order
    name: str                   # for messages
    rule: str | None
    ops: tuple[Op, ...]
    staged: bool
    region: Region
    stream: Stream
    fresh: bool


def fills(plan: Plan, layout: Layout, shapes: LocalShapes, fresh: set[str]) -> Iterator[Fill]:
    """Every pipeline the plan runs, with the region this process holds of what it fills."""
    for entry in plan.entries:
        if entry.action != "fill" and not entry.parts:
            continue
        region = region_of(live(layout.head(entry.name)), shapes)
        is_fresh = entry.name in fresh
        if entry.action == "fill" and fill_ops(entry.ops):
            yield Fill((entry.name, -1), 0, entry.name, entry.rule, fill_ops(entry.ops), entry.staged, region,
                       stream_of(plan, entry.name, region.local.device), is_fresh)
        for index, part_fill in enumerate(entry.parts):
            piece = part_region(region, part_fill.part)
            if piece is not None:
                name = part_fill.part.stream_name(entry.name)
                yield Fill((entry.name, index), index + 1, f"{entry.name}{part_fill.part.label}", part_fill.rule,
                           part_fill.ops,
                           part_fill.staged, piece, stream_of(plan, name, region.local.device), is_fresh)


def run_waves(waves: list[list[Task]], threads: int, progress: Callable[[int, int], None] | None) -> None:
    """Run each wave's tasks after the one before (a part overwrites what filled the whole tensor)."""
    total = sum(n for wave in waves for n, _ in wave)
    done = 0
    for wave in waves:
        report = None if progress is None else (lambda d, t, base=done: progress(base + d, total))
        run_tasks(wave, threads, report)
        done += sum(n for n, _ in wave)


def default_threads() -> int:
    """Threads for chunk filling: torch's intra-op setting (torchrun sets OMP_NUM_THREADS)."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def stream_of(plan: Plan, name: str, device: torch.device) -> Stream:
    """The random stream named ``name`` (an entry, or an entry's part): on the tensor's
    device (``fast``) or on the CPU (``portable``)."""
    gen_device = torch.device("cpu") if plan.streams == "portable" else device
    return Stream(plan.seed, name, gen_device)


def _check_sharded_ties(plan: Plan, layout: Layout) -> None:
    """A tie FSDP2 does not already know cannot be made after ``fully_shard``: each side is
    its own FSDP2 parameter, re-registered (untied) on every unshard."""
    if not plan.ties or not fsdp_modules(m.module for m in layout.tree.modules):
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


# ------------------------------------------------------------------ phase A

def _materialize(layout: Layout, entries: tuple[Entry, ...], device: Any, undo: Undo) -> None:
    """Give every meta tensor storage on ``device``, once per unique tensor (ties kept)."""
    meta = [e for e in entries if is_meta(layout.tensors[e.name])]
    if not meta:
        return
    if device is None:
        raise InitSpecError("device", f"{len(meta)} tensor(s) are on the meta device (e.g. {meta[0].name!r}) "
                            "and no device was given", "pass device='cpu' (or 'cuda') to apply()")
    materialize([(e.name, layout.tensors[e.name], layout.slots(e.name)) for e in meta], device, layout.tree, undo)


def materialize(items: list[tuple[str, torch.Tensor, list[TensorSlot]]], device: Any, tree: Tree,
                undo: Undo) -> None:
    """Give each meta tensor of ``items`` (name, tensor, every slot holding it) storage on
    ``device``, once, keeping every slot on one object.

    Meta DTensor parameters are filled in place (``swap_tensors``); other tensors are
    replaced by new ones in every slot that held them.
    """
    device = torch.device(device)
    sharded = ShardedMaterializer([m.module for m in tree.modules], undo)
    with torch.no_grad():
        for name, old, slots in items:
            if is_dtensor(old) and isinstance(old, nn.Parameter):
                sharded.swap_in(name, old, device)
                continue
            new = (torch.empty_like(old, device=device) if is_dtensor(old)
                   else torch.empty(old.shape, dtype=old.dtype, device=device))
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            for slot in slots:
                if live(slot) is old:
                    put(slot, new, undo)
        sharded.finish()


def _resets(plan: Plan, layout: Layout, undo: Undo) -> None:
    """Run reset_parameters() of the plan's modules under a forked, seeded RNG."""
    for name, module in zip(layout.reset_names, layout.reset_modules):
        keep_registrations(module, undo)
        for tensor in [*module._parameters.values(), *module._buffers.values()]:
            if tensor is not None and not is_meta(tensor):
                keep_values(tensor, undo)
        try:
            with RNG_LOCK, torch.random.fork_rng(devices=[]):
                torch.manual_seed(stream_seed(plan.seed, f"reset:{name}", 0, 0) % (2 ** 63))
                module.reset_parameters()
        except Exception as exc:
            raise InitSpecError(f"{ROOT}.default", f"reset_parameters() of {name or 'the root module'!r} "
                                f"({type(module).__name__}) failed: {exc!r}", "add rules for its parameters") from exc


def _stage(plan: Plan, layout: Layout, threads: int, fresh: set[str],
           shapes: LocalShapes) -> dict[tuple[str, int], torch.Tensor]:
    """Compute staged pipelines into temporaries and check them.

    A pipeline that starts from the current values gets a copy of them; a custom
    function first gets the current values, or zeros for a tensor that had none
    (materialized from meta in this apply).
    """
    staged: dict[tuple[str, int], torch.Tensor] = {}
    problems: list[Problem] = []
    for fill in fills(plan, layout, shapes, fresh):
        if not fill.staged:
            continue
        local = fill.region.local
        if reads_values(fill.ops) or (starts_custom(fill.ops) and not fill.fresh):
            temp = local.detach().clone()
        elif starts_custom(fill.ops):
            temp = torch.zeros_like(local)
        else:
            temp = torch.empty_like(local)
        temp_region = Region(temp, fill.region.offset, fill.region.global_shape)
        try:
            run_tasks(fill_tasks(fill.ops, temp_region, fill.stream, fresh=fill.fresh, origin=fill.ops[0].origin,
                                 name=fill.name), threads)
        except StepFailed as exc:
            raise InitSpecError(exc.op.origin or ROOT, f"computing {fill.name!r} failed: {exc}",
                                "fix the step (a custom function must fill the tensor in place)") from exc.error
        if temp.is_floating_point() and not bool(torch.isfinite(temp).all()):
            bad = "NaN" if bool(torch.isnan(temp).any()) else "inf"
            steps = " -> ".join(str(o) for o in fill.ops)
            problems.append(Problem(fill.ops[-1].origin or ROOT,
                                    f"pipeline of rule {fill.rule!r} produced {bad} values for {fill.name!r} ({steps})",
                                    "check its scale/add arguments and custom functions"))
        staged[fill.key] = temp
    if problems:
        raise InitSpecError(problems)
    return staged

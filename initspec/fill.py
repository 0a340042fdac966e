"""Filling: run a pipeline of ops on the region of a tensor this process holds.

A row primitive runs on blocks of whole rows, one stream chunk each, so a
block's values do not depend on who computes it or where; a whole primitive
computes the full tensor from its stream and the region keeps its slice.
:func:`fill_tasks` turns one entry into tasks (closures over disjoint blocks),
:func:`run_tasks` runs them on a thread pool; values never depend on the
number of threads.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from .errors import InitSpecError
from .primitives import Block, Op, Primitive, needs_whole, reads_values, starts_custom
from .sharding import Region
from .streams import Stream, chunk_ranges, generation_dtype

SMALL_TASK = 1 << 20  # tasks below this many elements are batched together
Task = tuple[int, Callable[[], None]]   # (elements written, what writes them)


class StepFailed(Exception):
    """A primitive raised while filling; ``op.origin`` is the config path of its step."""

    def __init__(self, op: Op, error: Exception):
        super().__init__(f"{type(error).__name__}: {error}")
        self.op, self.error = op, error


def _run(o: Op, out: torch.Tensor, block: Block) -> None:
    try:
        o.primitive.fill(out, o, block)
    except (InitSpecError, StepFailed):
        raise
    except Exception as exc:
        raise StepFailed(o, exc) from exc


def run_block(ops: tuple[Op, ...], buf: torch.Tensor, chunk: int, first: int, stream: Stream) -> None:
    """Apply row ``ops`` in order to ``buf`` = rows [first, first + len) = chunk ``chunk``."""
    end = first + (buf.shape[0] if buf.dim() else 1)
    for step, o in enumerate(ops):
        _run(o, buf, Block(first, end, stream, step, chunk))


def run_whole(ops: tuple[Op, ...], full: torch.Tensor, stream: Stream) -> None:
    """Apply ``ops`` to the full tensor: row ops chunk by chunk, whole ops at once."""
    view = full.view(1) if full.dim() == 0 else full
    with torch.no_grad():
        for step, o in enumerate(ops):
            if o.primitive.whole:
                _run(o, view, Block(0, view.shape[0], stream, step, -1))
                continue
            for chunk, r0, r1 in chunk_ranges(tuple(view.shape)):
                _run(o, view[r0:r1], Block(r0, r1, stream, step, chunk))


# ------------------------------------------------------- rows of a cut chunk

def run_rows(ops: tuple[Op, ...], buf: torch.Tensor, chunk: int, c0: int, c1: int, lo: int,
             stream: Stream) -> None:
    """Apply row ``ops`` to ``buf`` = rows [lo, lo + len) of chunk ``chunk`` (rows [c0, c1)),
    drawing only what those rows need, yet bitwise what :func:`run_block` gives for the whole
    chunk (a shard that cuts a chunk pays for its own rows, not the chunk's).

    A ``per_value`` primitive skips the draws of the rows before ``lo`` (cheaply, as raw
    32-bit draws) and stops after the last row; ``normal_`` transforms uniforms in blocks of
    16 and redraws its last 16 values when the size is no multiple of 16, so its window is
    widened to that structure. Use only where :func:`rows_exact` holds.
    """
    row = max(1, buf[0].numel()) if buf.dim() > 1 else 1
    n, a = (c1 - c0) * row, (lo - c0) * row
    b = a + buf.numel()
    flat = buf.view(-1)
    per = 2 if buf.dtype == torch.float64 else 1   # 32-bit draws per value
    end = lo + buf.shape[0]
    for step, o in enumerate(ops):
        draws = o.primitive.draws if o.primitive.random else None
        if draws is None:
            _run(o, buf, Block(lo, end, stream, step, chunk))
            continue
        gen = stream.generator(step, chunk)
        if draws == "normal":
            s, e = _normal_window(a, b, n)
            _skip(gen, s * per)
            if (s, e) == (a, b):   # rows of a multiple of 16 values: draw in place
                _run(o, flat, Block(lo, end, stream, step, chunk, drawn=gen))
                continue
            tmp = _scratch("normal", e - s, buf.dtype)
            _run(o, tmp, Block(lo, end, stream, step, chunk, drawn=gen))
            flat.copy_(tmp[a - s:b - s])
        else:   # per_value
            _skip(gen, a * per)
            _run(o, buf, Block(lo, end, stream, step, chunk, drawn=gen))


def _normal_window(a: int, b: int, n: int) -> tuple[int, int]:
    """The part [s, e) of an n-value normal_ draw to redo so that values [a, b) come out the same."""
    s, e = a - a % 16, b + (-b) % 16
    if e >= n or (n % 16 and e > n - 16):   # the tail: redrawn over [n - 16, n) after the rest
        e = n
        s = min(s, max(0, (n - 16) // 16 * 16))
    return s, e


def _skip(gen: torch.Generator, draws: int) -> None:
    """Advance a CPU generator by ``draws`` 32-bit draws (an int64 random_ takes two per value)."""
    while draws >= 2:
        pairs = min(draws // 2, 1 << 19)
        _scratch("skip", pairs, torch.int64).random_(generator=gen)
        draws -= 2 * pairs
    if draws:
        _scratch("skip1", 1, torch.int32).random_(generator=gen)


_SCRATCH = threading.local()


def _scratch(key: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A per-thread reusable buffer (fresh 4 MB allocations would page-fault on every chunk)."""
    have = getattr(_SCRATCH, key, None)
    if have is None or have.dtype != dtype or have.numel() < numel:
        have = torch.empty(max(numel, 1 << 16), dtype=dtype)
        setattr(_SCRATCH, key, have)
    return have[:numel]


def rows_exact(ops: tuple[Op, ...], dtype: torch.dtype, device: torch.device) -> bool:
    """True when :func:`run_rows` gives exactly :func:`run_block`'s values for ``ops``."""
    return device.type == "cpu" and all(
        not o.primitive.whole and (not o.primitive.random or _draws_exact(o.primitive, dtype)) for o in ops)


@functools.lru_cache(maxsize=None)
def _draws_exact(primitive: Primitive, dtype: torch.dtype) -> bool:
    """Checked once per process on this torch build: partial draws equal whole-chunk draws."""
    if primitive.draws not in ("normal", "per_value"):
        return False
    ops = (primitive.op(**primitive.example),)
    stream = Stream(0, "initspec/partial-draw-check")
    for rows, width in ((45, 7), (37, 16), (40, 1), (3, 5), (9, 1)):
        full = torch.empty(rows, width, dtype=dtype)
        run_block(ops, full, 3, 0, stream)
        for lo, hi in ((0, 1), (0, rows // 2), (rows // 2, rows), (rows - 1, rows), (1, rows - 1),
                       (rows // 3, 2 * rows // 3 + 1)):
            part = torch.empty(hi - lo, width, dtype=dtype)
            run_rows(ops, part, 3, 0, rows, lo, stream)
            if not torch.equal(part, full[lo:hi]):
                return False
    return True


# ------------------------------------------------------------------------ tasks

def fill_tasks(ops: tuple[Op, ...], region: Region, stream: Stream, *, fresh: bool = False,
               origin: str = "", name: str = "") -> list[Task]:
    """Tasks that write the values of ``ops`` into ``region.local``.

    ``fresh``: the tensor had no values before this apply (materialized from meta), so a
    custom function first starts from zeros of the global shape, sharded or not.
    """
    target = region.local
    if target.numel() == 0:
        return []
    dtype = generation_dtype(target.dtype)
    shape = region.global_shape or (1,)
    if needs_whole(ops):
        return [(target.numel(), functools.partial(_fill_whole, ops, region, stream, fresh, origin, name))]
    view = target.view(1) if target.dim() == 0 else target
    r0, r1 = region.rows
    direct = region.full_width() and view.is_contiguous() and view.dtype == dtype and view.device == stream.device
    row = max(1, view[0].numel()) if view.dim() else 1
    tasks: list[Task] = []
    for chunk, c0, c1 in chunk_ranges(shape, r0, r1):
        lo, hi = max(c0, r0), min(c1, r1)
        if direct and (lo, hi) == (c0, c1):
            task = functools.partial(run_block, ops, view[c0 - r0:c1 - r0], chunk, c0, stream)
        elif direct and rows_exact(ops, dtype, stream.device):   # a chunk the shard cuts
            task = functools.partial(run_rows, ops, view[lo - r0:hi - r0], chunk, c0, c1, lo, stream)
        else:
            task = functools.partial(_fill_via_block, ops, view, region, chunk, c0, c1, stream, dtype)
        tasks.append(((hi - lo) * row, task))
    return tasks


def _fill_whole(ops: tuple[Op, ...], region: Region, stream: Stream, fresh: bool, origin: str, name: str) -> None:
    """Compute the full tensor on this process, then keep this region's slice."""
    target, shape = region.local, region.global_shape or (1,)
    dtype = generation_dtype(target.dtype)
    if starts_custom(ops) and fresh:
        full = torch.zeros(shape, dtype=dtype, device=stream.device)
    elif reads_values(ops) or starts_custom(ops):
        if not region.full:
            raise InitSpecError(origin or "initspec", f"{name!r} is sharded, and a whole-tensor pipeline that "
                                "reads the current values cannot run on a shard",
                                "start the pipeline with a sampler, or build the model on the meta device "
                                "(a custom function then starts from zeros)")
        full = target.detach().to(stream.device, dtype, copy=True)
    else:
        full = torch.empty(shape, dtype=dtype, device=stream.device)
    run_whole(ops, full, stream)
    part = full.reshape(region.global_shape)[region.slices()] if region.global_shape else full.reshape(())
    target.copy_(part)


def _fill_via_block(ops: tuple[Op, ...], view: torch.Tensor, region: Region, chunk: int, c0: int, c1: int,
                    stream: Stream, dtype: torch.dtype) -> None:
    """A chunk computed in a temporary block (another dtype, device or column range), then copied in.

    Random ops need the whole chunk's draws; the others are row-wise, so they compute only
    the rows this region holds (a checkpoint then reads just those rows).
    """
    shape = region.global_shape or (1,)
    r0, r1 = region.rows
    lo, hi = max(c0, r0), min(c1, r1)
    b0, b1 = (c0, c1) if any(o.primitive.random for o in ops) else (lo, hi)
    block = torch.empty((b1 - b0, *shape[1:]), dtype=dtype, device=stream.device)
    inner = (slice(lo - b0, hi - b0),) + tuple(slice(o, o + n) for o, n in zip(region.offset[1:], view.shape[1:]))
    if reads_values(ops):
        block[inner].copy_(view[lo - r0:hi - r0])
    run_block(ops, block, chunk, b0, stream)
    view[lo - r0:hi - r0].copy_(block[inner])


def run_tasks(tasks: list[Task], threads: int, progress: Callable[[int, int], None] | None = None) -> None:
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

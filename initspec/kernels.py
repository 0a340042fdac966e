"""Run primitive ops on blocks of rows or on whole tensors.

A block holds rows ``[row0, row1)`` of the global tensor with every trailing
dimension, and is exactly one stream chunk for random ops, so a block's values
do not depend on who computes it or where.
"""
from __future__ import annotations

import functools
import math
import threading
import torch

from .custom import accepts_generator
from .ops import CHUNKED, RANDOM_CHUNKED, WHOLE, Op, op
from .sources import read_rows
from .streams import Stream, chunk_ranges, stream_seed

RNG_LOCK = threading.RLock()  # guards the global RNG while legacy code runs under fork_rng


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def run_block(ops: tuple[Op, ...], buf: torch.Tensor, chunk: int, row0: int, stream: Stream) -> None:
    """Apply chunkable ``ops`` in order to ``buf`` = rows [row0, row0 + len) = chunk ``chunk``."""
    for step, o in enumerate(ops):
        k = o.kind
        if k == "normal":
            buf.normal_(o["mean"], o["std"], generator=stream.generator(step, chunk))
        elif k == "uniform":
            buf.uniform_(o["a"], o["b"], generator=stream.generator(step, chunk))
        elif k == "trunc_normal":
            lo, hi = _norm_cdf(o["a"]), _norm_cdf(o["b"])
            buf.uniform_(2 * lo - 1, 2 * hi - 1, generator=stream.generator(step, chunk))
            buf.erfinv_().mul_(o["std"] * math.sqrt(2.0)).add_(o["mean"])
            buf.clamp_(o["mean"] + o["a"] * o["std"], o["mean"] + o["b"] * o["std"])
        elif k == "constant":
            buf.fill_(o["value"])
        elif k == "scale":
            buf.mul_(o["by"])
        elif k == "add":
            buf.add_(o["value"])
        elif k == "clamp":
            buf.clamp_(o["min"], o["max"])
        elif k == "zero_below":
            buf.masked_fill_(buf.abs() < o["threshold"], 0.0)
        elif k == "padding_zero":
            index = o["index"]
            if index is not None and row0 <= index < row0 + buf.shape[0]:
                buf[index - row0].zero_()
        elif k == "checkpoint":
            buf.copy_(read_rows(o, row0, row0 + buf.shape[0]).reshape(buf.shape))
        else:  # pragma: no cover - planner never sends whole ops here
            raise AssertionError(f"not a chunked op: {k}")


def run_rows(ops: tuple[Op, ...], buf: torch.Tensor, chunk: int, c0: int, c1: int, lo: int,
             stream: Stream) -> None:
    """Apply chunkable ``ops`` to ``buf`` = rows [lo, lo + len) of chunk ``chunk`` (rows [c0, c1)),
    drawing only what those rows need, yet bitwise what :func:`run_block` gives for the whole
    chunk (a shard that cuts a chunk pays for its own rows, not the chunk's).

    Random ops skip the draws of the rows before ``lo`` (cheaply, as raw 32-bit draws) and
    stop after the last row; ``normal_`` transforms uniforms in blocks of 16 and redraws its
    last 16 values when the size is no multiple of 16, so its window is widened to that
    structure. Use only where :func:`rows_exact` holds (it checks this on the running torch).
    """
    row = max(1, buf[0].numel()) if buf.dim() > 1 else 1
    n, a = (c1 - c0) * row, (lo - c0) * row
    b = a + buf.numel()
    flat = buf.view(-1)
    per = 2 if buf.dtype == torch.float64 else 1   # 32-bit draws per value
    for step, o in enumerate(ops):
        if o.kind == "normal":
            s, e = _normal_window(a, b, n)
            gen = stream.generator(step, chunk)
            _skip(gen, s * per)
            if (s, e) == (a, b):   # rows of a multiple of 16 values: draw in place
                flat.normal_(o["mean"], o["std"], generator=gen)
                continue
            tmp = _scratch("normal", e - s, buf.dtype)
            tmp.normal_(o["mean"], o["std"], generator=gen)
            flat.copy_(tmp[a - s:b - s])
        elif o.kind in RANDOM_CHUNKED:   # uniform draws, one value at a time
            gen = stream.generator(step, chunk)
            _skip(gen, a * per)
            run_block((o,), buf, chunk, lo, _Drawn(gen))
        else:
            run_block((o,), buf, chunk, lo, stream)


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


class _Drawn:
    """A stream whose generator has already been advanced to the rows in hand."""

    def __init__(self, gen: torch.Generator):
        self.gen = gen

    def generator(self, step: int, chunk: int) -> torch.Generator:
        return self.gen


def rows_exact(ops: tuple[Op, ...], dtype: torch.dtype, device: torch.device) -> bool:
    """True when :func:`run_rows` gives exactly :func:`run_block`'s values for ``ops``."""
    return device.type == "cpu" and all(o.kind in CHUNKED and (o.kind not in RANDOM_CHUNKED or _draws_exact(o.kind, dtype))
                                        for o in ops)


@functools.lru_cache(maxsize=None)
def _draws_exact(kind: str, dtype: torch.dtype) -> bool:
    """Checked once per process on this torch build: partial draws equal whole-chunk draws."""
    args = {"normal": {"mean": 0.5, "std": 2.0}, "uniform": {"a": -1.0, "b": 3.0},
            "trunc_normal": {"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0}}[kind]
    ops = (op(kind, **args),)
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


def run_whole(ops: tuple[Op, ...], full: torch.Tensor, stream: Stream) -> None:
    """Apply ``ops`` to the full tensor: chunked ops chunk by chunk, whole ops at once."""
    view = full.view(1) if full.dim() == 0 else full
    for step, o in enumerate(ops):
        if o.kind not in WHOLE:
            for chunk, r0, r1 in chunk_ranges(tuple(view.shape)):
                run_block((o,), view[r0:r1], chunk, r0, _StepStream(stream, step))
            continue
        with torch.no_grad():
            _whole_op(o, view, stream, step)


def _whole_op(o: Op, full: torch.Tensor, stream: Stream, step: int) -> None:
    k = o.kind
    if k == "orthogonal":
        torch.nn.init.orthogonal_(full, o["gain"], generator=stream.whole(step))
    elif k == "sparse":
        gen = stream.whole(step)
        rows, cols = full.shape
        full.normal_(0.0, o["std"], generator=gen)
        zeros = math.ceil(o["sparsity"] * rows)
        if zeros:
            order = torch.rand((rows, cols), generator=gen, device=full.device).argsort(dim=0)[:zeros]
            full.scatter_(0, order, 0.0)
    elif k == "eye":
        torch.nn.init.eye_(full)
    elif k == "dirac":
        torch.nn.init.dirac_(full, o["groups"])
    elif k == "custom":
        kwargs = dict(o["kwargs"])
        if accepts_generator(o.fn):
            o.fn(full, **kwargs, generator=stream.whole(step))
        else:
            with RNG_LOCK, torch.random.fork_rng(devices=[]):
                torch.manual_seed(stream_seed(stream.seed, stream.name, step, -1))
                o.fn(full, **kwargs)
    else:  # pragma: no cover
        raise AssertionError(k)


class _StepStream:
    """A stream seen from one step: run_block's step 0 is the pipeline's step ``step``."""

    def __init__(self, stream: Stream, step: int):
        self.stream, self.step = stream, step

    def generator(self, _step: int, chunk: int) -> torch.Generator:
        return self.stream.generator(self.step, chunk)

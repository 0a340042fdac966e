"""Run primitive ops on blocks of rows or on whole tensors.

A block holds rows ``[row0, row1)`` of the global tensor with every trailing
dimension, and is exactly one stream chunk for random ops, so a block's values
do not depend on who computes it or where.
"""
from __future__ import annotations

import math
import threading
import torch

from .custom import accepts_generator
from .ops import Op, WHOLE
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

"""Shared pieces of the benchmarks: paired timing, result rows, the hand-written GPT-2 loop."""
from __future__ import annotations

import gc
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

REPEATS = 5
MARK = "BENCHMARK-ROW "   # a child process prints each row as MARK + json
# glibc raises its mmap threshold (up to 32 MiB) after a large block is freed, so a process that
# builds a model a second time gets the first one's pages back without page faults, and which
# side of a comparison that favours depends on block sizes and on when cycles are collected
# (measured: a plain GPT-2 small apply faulted 38k pages, an FSDP2 one 121k). A training start
# initializes once, on fresh pages: a fixed threshold gives every repetition of every side that.
FRESH_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class Row:
    """One target: a ratio measured side by side, its threshold, and absolute times for context."""

    target: str
    ratio: float | None          # None: informational row without a threshold
    threshold: float | None      # PASS when ratio <= threshold (and every extra check holds)
    context: str                 # absolute times and what was compared
    ok: bool = True              # extra checks (bitwise equality, < 1 s) that must also hold

    @property
    def verdict(self) -> str:
        if self.threshold is None:
            return "info"
        return "PASS" if self.ok and self.ratio is not None and self.ratio <= self.threshold else "MISS"


def emit(rows: list[Row]) -> None:
    for row in rows:
        print(MARK + json.dumps(asdict(row)), flush=True)


def main(run: Callable[[], list[Row]], module: str) -> None:
    """Run a benchmark module as ``python -m``: in a process started with :data:`FRESH_MEMORY`
    (re-executed with it when needed; glibc reads it at start-up), then print its rows."""
    if any(os.environ.get(k) != v for k, v in FRESH_MEMORY.items()):
        os.execve(sys.executable, [sys.executable, "-m", module], {**os.environ, **FRESH_MEMORY})
    emit(run())


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes; its result is freed after the clock stops (freeing a 100k-entry
    plan or a 124M-parameter model is the caller's later business, not the work measured)."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int = REPEATS,
           setup: Callable[[], object] | None = None) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately (a, b, b, a, ...) ``repeats`` times each; lists of seconds."""
    ta, tb = [], []
    for i in range(repeats):
        for fn, sink in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            if setup is not None:
                setup()
            sink.append(timed(fn))
    return ta, tb


def paired_ratio(ta: list[float], tb: list[float]) -> float:
    """Median over pairs of a/b (each pair ran back to back, so load changes cancel)."""
    return statistics.median(x / y for x, y in zip(ta, tb))


def med(times: list[float]) -> float:
    return statistics.median(times)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def hand_init_gpt2(model, n_layer: int, std: float = 0.02) -> None:
    """What a user writes by hand for GPT-2 (HF ``_init_weights``), each unique tensor filled once."""
    import torch
    from torch import nn
    residual = std / math.sqrt(2 * n_layer)
    seen: set[int] = set()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name:
                nn.init.ones_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, residual)
            else:
                nn.init.normal_(p, 0.0, std)

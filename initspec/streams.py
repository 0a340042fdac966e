"""Per-parameter random streams, generated in fixed-size chunks along dim 0.

Every random op of a parameter draws from generators keyed by
(seed, canonical name, step index, chunk index); chunk ``c`` covers rows
``[c * rows_per_chunk, (c + 1) * rows_per_chunk)``. A process that holds
rows ``[r0, r1)`` of a parameter (an FSDP2 ``Shard(0)`` shard) generates only
the chunks it overlaps and gets bitwise the values a single process would.
Values never depend on the global RNG, the thread count, module
construction order or other parameters.

This layout is part of initspec's reproducibility contract (STREAM_VERSION):
changing CHUNK_NUMEL or the key derivation changes every value.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

STREAM_VERSION = 2
CHUNK_NUMEL = 1 << 17  # elements per chunk (rounded to whole rows); version 1 had 1 << 20
# (A Shard(0) rank whose rows start inside a chunk first skips the draws before them at ~5 ns
# each: for GPT-2 small on 2 ranks 18M draws, ~90 ms, with 2^20; 2M, ~10 ms, with 2^17. The
# price: 987 chunks instead of 146, ~15 us of Python each; a 2-thread apply of GPT-2 small
# measured 4-11% slower side by side.)


def rows_per_chunk(shape: tuple[int, ...]) -> int:
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    return max(1, CHUNK_NUMEL // max(row, 1))


def chunk_ranges(shape: tuple[int, ...], r0: int = 0, r1: int | None = None) -> list[tuple[int, int, int]]:
    """(chunk index, first row, end row) of every chunk overlapping rows [r0, r1)."""
    rows = shape[0] if shape else 1
    r1 = rows if r1 is None else r1
    if r1 <= r0:
        return []
    step = rows_per_chunk(shape)
    return [(c, c * step, min((c + 1) * step, rows)) for c in range(r0 // step, (r1 - 1) // step + 1)]


def stream_seed(seed: int, name: str, step: int, chunk: int) -> int:
    """64-bit seed of one chunk of one step of one parameter."""
    key = f"initspec/{STREAM_VERSION}/{seed}/{name}/{step}/{chunk}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


@dataclass(frozen=True)
class Stream:
    """The random source of one parameter."""

    seed: int
    name: str
    device: torch.device = torch.device("cpu")

    def generator(self, step: int, chunk: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(stream_seed(self.seed, self.name, step, chunk))
        return gen

    def whole(self, step: int) -> torch.Generator:
        """Generator for a whole-tensor op (orthogonal, sparse, custom): chunk index -1."""
        return self.generator(step, -1)


def generation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Random values are drawn in float32 (float64 for float64) and then cast."""
    return torch.float64 if dtype == torch.float64 else torch.float32

"""Per-parameter streams: determinism, independence from order/threads/global RNG, chunked slices."""
import math

import pytest
import torch
from torch import nn

import initspec
from initspec.streams import CHUNK_NUMEL, chunk_ranges, rows_per_chunk
from conftest import assert_same_values, fill_region, values

SPEC = {"seed": 11, "rules": {
    "w": {"match": "*.weight", "init": {"name": "normal", "std": "1 / sqrt(fan_in)"}},
    "b": {"match": "*.bias", "init": {"name": "uniform", "a": -0.1, "b": 0.1}},
}}


def test_same_seed_same_values_different_seed_differs():
    a, b = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    initspec.apply(a, SPEC)
    initspec.apply(b, SPEC)
    assert_same_values(values(b), values(a))
    initspec.apply(b, SPEC, seed=12)
    assert not torch.equal(values(a)["0.weight"], values(b)["0.weight"])


def test_independent_of_construction_order_and_global_rng():
    torch.manual_seed(0)
    a = nn.ModuleDict({"x": nn.Linear(5, 5), "y": nn.Linear(5, 3)})
    torch.manual_seed(123)
    b = nn.ModuleDict()
    b["y"] = nn.Linear(5, 3)
    b["x"] = nn.Linear(5, 5)
    state = torch.get_rng_state()
    initspec.apply(a, SPEC)
    initspec.apply(b, SPEC)
    assert torch.equal(torch.get_rng_state(), state)  # neither used nor advanced
    assert_same_values(values(b), values(a))


def test_independent_of_rule_order_and_of_extra_layers():
    reordered = {"seed": 11, "rules": {"b": SPEC["rules"]["b"], "w": SPEC["rules"]["w"]}}
    a = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    b = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2), nn.Linear(2, 2))
    initspec.apply(a, SPEC)
    initspec.apply(b, reordered)
    va, vb = values(a), values(b)
    assert_same_values({k: vb[k] for k in va}, va)          # b's extra layer changes none of a's values


def test_values_do_not_depend_on_thread_count():
    big = nn.Sequential(nn.Linear(1500, 2048), nn.Embedding(3000, 700))
    assert big[0].weight.numel() > 2 * CHUNK_NUMEL
    results = []
    for threads in (1, 2, 4):
        initspec.apply(big, SPEC, threads=threads)
        results.append(values(big))
    for other in results[1:]:
        assert_same_values(other, results[0])
    w = results[0]["0.weight"]
    assert abs(float(w.std()) * math.sqrt(1500) - 1) < 0.01


def test_chunk_layout():
    assert rows_per_chunk((4096, 1024)) == CHUNK_NUMEL // 1024
    assert rows_per_chunk((10,)) == CHUNK_NUMEL
    assert rows_per_chunk((3, CHUNK_NUMEL * 2)) == 1
    ranges = chunk_ranges((5000, 512), 1000, 3000)
    step = CHUNK_NUMEL // 512
    first = 1000 // step
    assert ranges[0] == (first, first * step, (first + 1) * step) and ranges[-1][2] >= 3000 and ranges[-1][1] < 3000
    assert [c for c, _, _ in ranges] == list(range(first, ranges[-1][0] + 1))


@pytest.mark.parametrize("r0,r1", [(0, 3000), (1000, 2100), (2047, 2049), (4000, 5000)])
def test_any_row_range_equals_the_slice_of_the_full_tensor(r0, r1):
    """What a Shard(0) rank holding rows [r0, r1) computes is the slice of the single-process tensor."""
    shape = (5000, 512)
    holder = nn.Module()
    holder.w = nn.Parameter(torch.empty(shape))
    for step in ({"name": "normal", "std": 0.02}, {"name": "trunc_normal", "std": 1.0, "cutoff": 2},
                 [{"name": "uniform", "a": -1, "b": 1}, {"name": "zero_below", "threshold": 0.5}],
                 {"name": "orthogonal"}):
        spec = {"seed": 5, "rules": {"w": {"match": "w", "init": step}}}
        report = initspec.apply(holder, spec)
        full = holder.w.detach().clone()
        part = torch.empty(r1 - r0, 512)
        fill_region(report.plan, "w", part, (r0, 0), shape, threads=2)
        assert torch.equal(part, full[r0:r1]), step
        cols = torch.empty(5000, 100)   # a Shard(1) piece: columns [200, 300)
        fill_region(report.plan, "w", cols, (0, 200), shape, threads=2)
        assert torch.equal(cols, full[:, 200:300]), step


def test_low_precision_values_are_rounded_float32_values():
    a = nn.Sequential(nn.Linear(64, 64))
    b = nn.Sequential(nn.Linear(64, 64)).to(torch.bfloat16)
    initspec.apply(a, SPEC)
    initspec.apply(b, SPEC)
    assert torch.equal(a[0].weight.detach().to(torch.bfloat16), b[0].weight.detach())


def test_scalar_and_empty_parameters():
    holder = nn.Module()
    holder.s = nn.Parameter(torch.tensor(0.0))
    holder.e = nn.Parameter(torch.empty(0, 3))
    initspec.apply(holder, {"rules": {"s": {"match": "s", "init": {"name": "constant", "value": 2}},
                                      "e": {"match": "e", "init": "zeros"}}})
    assert float(holder.s.detach()) == 2.0 and holder.e.shape == (0, 3)


def test_stream_version_2_values_are_pinned():
    """The reproducibility contract: (seed, name, step, chunk) -> blake2b seed -> one CPU generator per
    2^17-value chunk of whole rows. Changing any of it changes these numbers: bump STREAM_VERSION."""
    from initspec.streams import STREAM_VERSION, stream_seed
    assert STREAM_VERSION == 2 and CHUNK_NUMEL == 1 << 17
    holder = nn.Module()
    holder.w = nn.Parameter(torch.empty(300, 1000))   # 131 rows per chunk: chunks at rows 0, 131, 262
    initspec.apply(holder, {"seed": 7, "rules": {"w": {"match": "w", "init": {"name": "normal", "std": 1.0}}}})
    w = holder.w.detach()
    assert w[0, :3].tolist() == [-0.3930511474609375, -0.8380818963050842, -0.03178077191114426]
    assert w[131, :3].tolist() == [1.544177770614624, 2.5606374740600586, -1.5025029182434082]
    assert w[299, -2:].tolist() == [0.6715748906135559, 0.3044459819793701]
    for chunk, (r0, r1) in enumerate([(0, 131), (131, 262), (262, 300)]):   # each chunk from its own generator
        block = torch.empty(r1 - r0, 1000).normal_(0.0, 1.0, generator=torch.Generator().manual_seed(
            stream_seed(7, "w", 0, chunk)))
        assert torch.equal(block, w[r0:r1])

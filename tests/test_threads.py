"""Two applies at once in two threads give the values they give one after the other.

The specs include the two paths that touch torch's global RNG (``default: reset``
and a custom function without a ``generator`` keyword); both run under
``kernels.RNG_LOCK`` inside a forked, seeded RNG, so neither the other thread nor
the caller's RNG state can change the values. (Code outside initspec that draws
from or reseeds the global RNG while such a step runs is not under that lock:
the models are built before the threads start.)
"""
from __future__ import annotations

import functools
import threading

import torch
from torch import nn

import initspec
from conftest import assert_same_values, run_threads, values

ME = __name__


def global_rng_fill(tensor, scale=1.0):
    """A legacy-style initializer: draws from the global RNG (no generator keyword)."""
    with torch.no_grad():
        for _ in range(20):  # several draws, so a concurrent reseed would show up
            tensor.copy_(torch.randn(tensor.shape, dtype=tensor.dtype) * scale)


class Net(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(4))
        self.norm = nn.LayerNorm(width)
        self.extra = nn.Linear(width, width)     # no rule: default reset (global RNG, forked)
        self.head = nn.Linear(width, 8)


SPEC_A = {
    "seed": 1,
    "default": "reset",
    "rules": {
        "layers": {"match": "layers.*.weight", "init": {"name": "trunc_normal", "std": "1 / sqrt(fan_in)"}},
        "biases": {"match": "layers.*.bias", "init": {"name": "uniform", "a": -0.1, "b": 0.1}},
        "head": {"match": "head.weight", "init": {"fn": f"{ME}.global_rng_fill", "scale": 0.5}},
    },
}
SPEC_B = {
    "seed": 2,
    "default": "reset",
    "rules": {
        "layers": {"match": "layers.*.weight", "init": {"name": "orthogonal", "gain": 2.0}},
        "head": {"match": "head.*", "init": [{"fn": f"{ME}.global_rng_fill"}, {"name": "scale", "by": 0.1}]},
        "norm": {"match": "norm.weight", "init": {"name": "normal", "mean": 1, "std": 0.02}},
    },
    "ties": {"first_two": ["layers.0", "layers.1"]},
}
JOBS = [(SPEC_A, 48), (SPEC_B, 32)]


def fresh(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # different starting values: only `keep` tensors would show them
    return Net(width)


def run(spec: dict, width: int, start_seed: int, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    model = fresh(width, start_seed) if model is None else model
    initspec.apply(model, spec, allow_fn=[ME], threads=2)
    return values(model, buffers=True)


def test_concurrent_applies_equal_sequential_ones():
    expected = [run(spec, width, 0) for spec, width in JOBS]
    for round_ in range(4):
        results: list = [None] * len(JOBS)
        barrier = threading.Barrier(len(JOBS), timeout=60)
        # Built before the threads start: building draws from the global RNG, outside initspec's lock.
        models = [fresh(width, round_) for _, width in JOBS]
        torch.manual_seed(round_)

        def work(i: int) -> None:
            barrier.wait()
            spec, width = JOBS[i]
            results[i] = run(spec, width, round_, models[i])

        run_threads(*(functools.partial(work, i) for i in range(len(JOBS))))
        for got, want in zip(results, expected):
            assert_same_values(got, want)


def test_the_same_spec_in_two_threads_gives_identical_models():
    results: list = [None, None]
    barrier = threading.Barrier(2, timeout=60)
    models = [fresh(48, i) for i in range(2)]

    def work(i: int) -> None:
        barrier.wait()
        results[i] = run(SPEC_A, 48, i, models[i])

    run_threads(functools.partial(work, 0), functools.partial(work, 1))
    assert_same_values(results[0], results[1])


def test_the_callers_global_rng_is_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    model = fresh(32, 0)
    torch.set_rng_state(state)
    initspec.apply(model, SPEC_B, allow_fn=[ME])
    assert torch.equal(torch.get_rng_state(), state)


def test_values_do_not_depend_on_the_global_rng_state():
    expected = run(SPEC_A, 48, 0)
    torch.manual_seed(999)
    torch.rand(1000)
    model = fresh(48, 0)
    torch.manual_seed(31337)
    initspec.apply(model, SPEC_A, allow_fn=[ME])
    assert_same_values(values(model, buffers=True), expected)

"""A step written outside the package (examples/custom_steps.py, as the README shows) works
like a built-in: validated arguments, expressions, plan, stats, shards, determinism."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import initspec
from conftest import fill_region

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_steps.py"


@pytest.fixture
def custom_steps():
    spec = importlib.util.spec_from_file_location("custom_steps", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["custom_steps"] = module
    spec.loader.exec_module(module)
    yield module
    for name in ("rademacher", "small_init"):
        initspec.unregister_step(name)
    del sys.modules["custom_steps"]


def test_a_new_primitive_fills_like_a_builtin(custom_steps):
    model = nn.Linear(300, 200)
    spec = {"rules": {"w": {"match": "weight", "init": {"name": "rademacher", "scale": "1 / sqrt(fan_in)"}},
                      "b": {"match": "bias", "init": "small_init"}},
            "strict": False}
    with pytest.raises(initspec.InitSpecError) as err:      # small_init needs fans: a 1-D bias has none
        initspec.apply(model, spec)
    assert err.value.paths == ("initspec.rules.b.init",) and "'bias'" in str(err.value)

    spec["rules"]["b"] = None
    report = initspec.apply(model, spec)
    scale = 1 / 300 ** 0.5
    w = model.weight.detach()
    assert torch.allclose(w.abs(), torch.full_like(w, scale))              # every value is +-scale
    assert 0.45 < float((w > 0).float().mean()) < 0.55
    entry = report.plan.entry("weight")
    assert entry.expected_std == pytest.approx(scale) and not entry.staged   # bounds proved it finite
    again = nn.Linear(300, 200)
    initspec.apply(again, spec)
    assert torch.equal(again.weight, model.weight)                           # its own stream, deterministic


def test_a_shard_of_a_new_primitive_is_its_slice_of_the_whole(custom_steps):
    model = nn.Module()
    model.w = nn.Parameter(torch.empty(3000, 100))
    plan = initspec.plan(model, {"rules": {"w": {"match": "w", "init": {"name": "rademacher", "scale": 2}}}})
    whole = fill_region(plan, "w", torch.empty(3000, 100), (0, 0), (3000, 100))
    part = fill_region(plan, "w", torch.empty(1000, 100), (1700, 0), (3000, 100), threads=2)
    assert torch.equal(part, whole[1700:2700])


def test_a_step_on_an_existing_primitive_is_its_formula(custom_steps):
    model = nn.Linear(512, 512, bias=False)
    report = initspec.apply(model, {"rules": {"w": {"match": "weight", "init": "small_init"}}})
    assert report.plan.entry("weight").expected_std == pytest.approx((2 / (5 * 512)) ** 0.5)
    assert float(model.weight.detach().std()) == pytest.approx((2 / (5 * 512)) ** 0.5, rel=0.02)


def test_its_arguments_are_checked_before_planning(custom_steps):
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.load_spec({"rules": {"w": {"match": "*", "init": {"name": "rademacher", "scale": -1}}}})
    assert err.value.paths == ("initspec.rules.w.init.scale",) and "> 0" in str(err.value)


def test_the_readme_example_runs_as_written():
    """The README's "Adding a step" block, executed as it stands, registers working steps."""
    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    section = readme[readme.index("## Adding a step"):]
    block = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]
    try:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_steps"})
        model = nn.Linear(64, 64)
        initspec.apply(model, {"rules": {"w": {"match": "weight", "init": {"name": "rademacher", "scale": 0.5}},
                                         "b": {"match": "bias", "init": "zeros"}}})
        assert torch.equal(model.weight.detach().abs(), torch.full((64, 64), 0.5))
        assert all(line in EXAMPLE.read_text() for line in block.strip().splitlines())   # the same code as the file
    finally:
        for name in ("rademacher", "small_init"):
            initspec.unregister_step(name)

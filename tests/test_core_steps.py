"""The step catalog: every step's formula, measured."""
import math

import pytest
import torch
from torch import nn

import initspec
from initspec import InitSpecError


def fill(shape, step, *, seed=0, transposed=False, module=None):
    """Apply one step to a single parameter of the given shape; return the tensor and the entry."""
    holder = module or nn.Module()
    if module is None:
        holder.w = nn.Parameter(torch.empty(shape))
    name = next(n for n, _ in holder.named_parameters())
    report = initspec.apply(holder, {"seed": seed, "rules": {"r": {"match": name, "init": step,
                                                                     "transposed": transposed}}})
    return dict(holder.named_parameters())[name].detach(), report.plan.entry(name)


def test_normal():
    w, e = fill((512, 512), {"name": "normal", "mean": 0.5, "std": 0.02})
    assert abs(float(w.mean()) - 0.5) < 1e-3 and abs(float(w.std()) - 0.02) < 4e-4
    assert e.expected_std == 0.02


def test_uniform_and_equal_bounds_is_constant():
    w, e = fill((512, 512), {"name": "uniform", "a": -2, "b": 3})
    assert float(w.min()) >= -2 and float(w.max()) < 3 and abs(float(w.mean()) - 0.5) < 0.02
    assert math.isclose(e.expected_std, 5 / math.sqrt(12))
    w, _ = fill((7,), {"name": "uniform", "a": 1.5, "b": 1.5})
    assert torch.equal(w, torch.full((7,), 1.5))


@pytest.mark.parametrize("args,lo,hi", [({"cutoff": 2}, -2, 2), ({}, -2, 2), ({"a": -1, "b": 3}, -1, 3),
                                        ({"cutoff": 3}, -3, 3)])
def test_trunc_normal_cutoffs_in_std_units(args, lo, hi):
    w, e = fill((512, 512), {"name": "trunc_normal", "mean": 1.0, "std": 0.1, **args})
    assert float(w.min()) >= 1.0 + lo * 0.1 - 1e-6 and float(w.max()) <= 1.0 + hi * 0.1 + 1e-6
    assert float(w.min()) < 1.0 + lo * 0.1 + 0.01 and float(w.max()) > 1.0 + hi * 0.1 - 0.01
    assert abs(float(w.std()) - e.expected_std) / e.expected_std < 0.02


def test_trunc_normal_expected_std_matches_theory():
    _, e = fill((4, 4), {"name": "trunc_normal", "std": 1.0, "cutoff": 2})
    assert abs(e.expected_std - 0.87962566103423978) < 1e-9


@pytest.mark.parametrize("step,value", [("zeros", 0.0), ("ones", 1.0), ({"name": "constant", "value": -3.5}, -3.5),
                                        ({"name": "bias_prob", "prior": 0.01}, -math.log(99))])
def test_constants(step, value):
    w, e = fill((5, 3), step)
    assert torch.equal(w, torch.full((5, 3), value, dtype=torch.float32))
    assert e.expected_std == 0.0


def test_xavier_and_kaiming_follow_torch_formulas():
    shape = (256, 128, 3)  # fan_in = 384, fan_out = 768
    w, e = fill(shape, {"name": "xavier_uniform", "gain": 2.0})
    bound = 2.0 * math.sqrt(6 / (384 + 768))
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    w, e = fill(shape, {"name": "xavier_normal"})
    assert abs(float(w.std()) / math.sqrt(2 / (384 + 768)) - 1) < 0.02
    w, e = fill(shape, {"name": "kaiming_normal", "mode": "fan_out", "nonlinearity": "relu"})
    assert math.isclose(e.expected_std, math.sqrt(2) / math.sqrt(768))
    assert abs(float(w.std()) / e.expected_std - 1) < 0.02
    w, e = fill(shape, {"name": "kaiming_uniform", "a": math.sqrt(5)})   # nn.Linear's default
    bound = math.sqrt(2 / (1 + 5)) * math.sqrt(3 / 384)
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    assert "U(±" in e.steps


def test_transposed_swaps_fans():
    _, e = fill((64, 256), {"name": "normal", "std": "1 / sqrt(fan_in)"}, transposed=True)
    assert math.isclose(e.expected_std, 1 / 8)


def test_lecun_normal_and_variance_scaling():
    w, e = fill((400, 300), "lecun_normal")
    std = math.sqrt(1 / 300) / 0.87962566103423978
    assert math.isclose(e.ops[0]["std"], std) and float(w.abs().max()) <= 2 * std + 1e-6
    assert abs(float(w.std()) * math.sqrt(300) - 1) < 0.02
    w, e = fill((400, 300), {"name": "variance_scaling", "scale": 2, "mode": "fan_avg", "distribution": "uniform"})
    bound = math.sqrt(3 * 2 / 350)
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound


def test_orthogonal():
    w, e = fill((64, 128), {"name": "orthogonal", "gain": 2.0})
    assert torch.allclose(w @ w.T, 4 * torch.eye(64), atol=1e-4)
    w, _ = fill((16, 4, 2, 2), "orthogonal")
    flat = w.reshape(16, 16)
    assert torch.allclose(flat @ flat.T, torch.eye(16), atol=1e-4)


def test_sparse_zero_count_per_column():
    w, e = fill((100, 50), {"name": "sparse", "sparsity": 0.3, "std": 0.5})
    assert ((w == 0).sum(0) == 30).all()
    nz = w[w != 0]
    assert abs(float(nz.std()) - 0.5) < 0.05


def test_eye_and_dirac_equal_torch():
    w, _ = fill((3, 5), "eye")
    assert torch.equal(w, torch.eye(3, 5))
    w, _ = fill((6, 3, 3, 3), {"name": "dirac", "groups": 2})
    expected = torch.empty(6, 3, 3, 3)
    nn.init.dirac_(expected, groups=2)
    assert torch.equal(w, expected)


def test_transforms_pipeline():
    w, e = fill((64, 64), [{"name": "uniform", "a": -1, "b": 1}, {"name": "scale", "by": 4},
                           {"name": "add", "value": 1}, {"name": "clamp", "min": -1, "max": 2},
                           {"name": "zero_below", "threshold": 0.5}])
    assert float(w.min()) >= -1 and float(w.max()) <= 2
    assert bool(((w == 0) | (w.abs() >= 0.5)).all())
    assert (w == 2).any() and (w == -1).any()
    assert [o.kind for o in e.ops] == ["uniform", "scale", "add", "clamp", "zero_below"]


def test_transform_first_pipeline_reads_current_values():
    lin = nn.Linear(4, 4)
    before = lin.weight.detach().clone()
    initspec.apply(lin, {"rules": {"s": {"match": "weight", "init": {"name": "scale", "by": 0.5}}}})
    assert torch.equal(lin.weight.detach(), before * 0.5)


def test_padding_zero_uses_owner_padding_idx():
    emb = nn.Sequential(nn.Embedding(10, 4, padding_idx=3), nn.Embedding(5, 4))
    initspec.apply(emb, {"rules": {"e": {"match": "*.weight", "init": [{"name": "normal", "std": 1}, "padding_zero"]}}})
    assert torch.count_nonzero(emb[0].weight[3]) == 0
    assert torch.count_nonzero(emb[0].weight) == 36 and torch.count_nonzero(emb[1].weight) == 20


def test_custom_fn_with_generator_literal_strings_and_expr():
    lin = nn.Linear(100, 50)
    spec = {"rules": {"w": {"match": "weight", "init": {"fn": "torch.nn.init.kaiming_normal_", "mode": "fan_out",
                                                         "a": {"expr": "sqrt(4)"}}}}}
    state = torch.get_rng_state()
    initspec.apply(lin, spec)
    assert torch.equal(torch.get_rng_state(), state)
    expected = torch.empty(50, 100)
    from initspec.streams import stream_seed
    gen = torch.Generator().manual_seed(stream_seed(0, "weight", 0, -1))
    nn.init.kaiming_normal_(expected, a=2.0, mode="fan_out", generator=gen)
    assert torch.equal(lin.weight.detach(), expected)


def test_register_step_follows_the_builtin_contract():
    """A registered step gets the tensor's facts and evaluated args, and returns ops, like a built-in."""
    from initspec.primitives import CONSTANT
    seen = []

    @initspec.register_step("const_by_fan", args={"times": initspec.Arg("number", 1.0),
                                                 "label": initspec.Arg("str", "")})
    def const_by_fan(t, times, label):
        """w = times · fan_in."""
        seen.append((t.name, t.shape, label))
        return CONSTANT.op(label=f"const_by_fan = {times * t.fan_in:g}", value=times * t.fan_in)

    try:
        lin = nn.Linear(3, 4)
        report = initspec.apply(lin, {"rules": {"w": {"match": "weight", "init": {
            "name": "const_by_fan", "times": "1 / fan_in * 2", "label": "1 / fan_in"}}}})
        assert seen == [("weight", (4, 3), "1 / fan_in")]          # str args pass literally, numbers evaluate
        assert torch.equal(lin.weight.detach(), torch.full((4, 3), 2.0))
        assert report.plan.entry("weight").expected_std == 0.0     # the primitive's std, as for built-ins
        with pytest.raises(InitSpecError) as err:                  # its args are checked like a built-in's
            initspec.plan(lin, {"rules": {"w": {"match": "weight", "init": {"name": "const_by_fan", "tims": 2}}}})
        assert err.value.paths == ("initspec.rules.w.init.tims",) and "times" in str(err.value)
        with pytest.raises(ValueError):
            initspec.register_step("normal")(const_by_fan)
        with pytest.raises(TypeError):
            initspec.register_step("bad_args", args={"x": 1.0})
    finally:
        initspec.unregister_step("const_by_fan")
    assert "const_by_fan" not in initspec.STEPS


def test_a_step_that_returns_no_op_is_a_planning_problem():
    initspec.register_step("broken", args={})(lambda t: 42)
    try:
        with pytest.raises(InitSpecError) as err:
            initspec.plan(nn.Linear(2, 2), {"rules": {"w": {"match": "weight", "init": "broken"}}})
        assert err.value.paths == ("initspec.rules.w.init",) and "returned int" in str(err.value)
    finally:
        initspec.unregister_step("broken")


def test_fan_on_1d_names_the_parameter():
    with pytest.raises(InitSpecError) as err:
        initspec.plan(nn.Linear(3, 3), {"rules": {"b": {"match": "bias", "init": {"name": "normal",
                                                                                    "std": "1 / sqrt(fan_in)"}}}})
    assert err.value.paths == ("initspec.rules.b.init.std",)
    assert "'bias'" in str(err.value) and "1-D" in str(err.value)


def test_every_catalog_step_has_a_formula_docstring():
    for name, step in initspec.STEPS.items():
        if step.builtin:
            assert step.doc, name

"""Loading and validation: inputs, paths in errors, Hydra-friendly forms, expressions."""
import time

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import initspec
from initspec import InitSpecError
from initspec.expr import ExprError, evaluate
from conftest import assert_unchanged, snapshot

SPEC = {"seed": 3, "rules": {"w": {"match": "*.weight", "init": {"name": "normal", "std": 0.5}}}}


def test_load_spec_accepts_path_dict_dictconfig_preset_and_spec(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(SPEC)))
    loaded = [initspec.load_spec(x) for x in (str(path), path, SPEC, OmegaConf.create(SPEC))]
    assert all(s == loaded[0] for s in loaded)
    assert initspec.load_spec(loaded[0]) is loaded[0]
    assert initspec.load_spec("seed_normal").rules["weights"].init[0].args == {"mean": 0, "std": 0.01}


@pytest.mark.parametrize("as_", ["path", "dict", "dictconfig", "spec"])
def test_plan_and_apply_accept_every_form(as_, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(SPEC)))
    spec = {"path": str(path), "dict": SPEC, "dictconfig": OmegaConf.create(SPEC),
            "spec": initspec.load_spec(SPEC)}[as_]
    model = nn.Sequential(nn.Linear(3, 3))
    assert initspec.plan(model, spec).entry("0.weight").rule == "w"
    initspec.apply(model, spec)
    reference = nn.Sequential(nn.Linear(3, 3))
    initspec.apply(reference, SPEC)
    assert torch.equal(model[0].weight, reference[0].weight)


def test_seed_argument_overrides_spec_seed():
    a, b = nn.Sequential(nn.Linear(3, 3)), nn.Sequential(nn.Linear(3, 3))
    initspec.apply(a, SPEC, seed=9)
    initspec.apply(b, {**SPEC, "seed": 9})
    assert torch.equal(a[0].weight, b[0].weight)


def test_plan_never_changes_the_model():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    snap = snapshot(model)
    plan = initspec.plan(model, {**SPEC, "ties": {"t": ["0", "1"]}})
    assert plan.ties[0].targets == ("1",)
    assert_unchanged(model, snap)


def test_null_rule_is_disabled_and_single_step_paths():
    spec = initspec.load_spec({"rules": {"a": None, "b": {"match": "*", "init": "zeros"}}})
    assert list(spec.rules) == ["b"]
    with pytest.raises(InitSpecError) as err:
        initspec.load_spec({"rules": {"linear": {"match": "*", "init": {"name": "normal", "std": -1}}}})
    assert err.value.paths == ("initspec.rules.linear.init.std",)
    assert "must be > 0 (got -1)" in str(err.value)
    with pytest.raises(InitSpecError) as err:   # a relation between arguments: checked at plan time
        initspec.plan(nn.Sequential(nn.Linear(2, 2)),
                      {"rules": {"linear": {"match": "*", "init": ["zeros", {"name": "uniform", "a": 2, "b": 1}]}}})
    assert err.value.paths == ("initspec.rules.linear.init.1.a",)


def test_every_problem_is_reported_at_once():
    with pytest.raises(InitSpecError) as err:
        initspec.load_spec({"rules": {"a": {"match": "*", "init": {"name": "normall"}},
                                      "b": {"match": "*", "init": {"name": "normal", "stdd": 1}},
                                      "c": {"mach": "*", "init": "zeros"}}})
    paths = set(err.value.paths)
    assert {"initspec.rules.a.init.name", "initspec.rules.b.init.stdd", "initspec.rules.c.mach"} <= paths
    text = str(err.value)
    assert "Did you mean 'normal'" in text and "Did you mean 'std'" in text and "Did you mean 'match'" in text


def test_vars_interpolation_resolves_against_the_parent_config():
    cfg = OmegaConf.create({"model": {"n_layer": 8},
                            "initspec": {"vars": {"n_layer": "${model.n_layer}"},
                                         "rules": {"p": {"match": "*.weight",
                                                         "init": {"name": "normal", "std": "0.02 / sqrt(2 * n_layer)"}}}}})
    plan = initspec.plan(nn.Sequential(nn.Linear(2, 2)), cfg.initspec)
    assert abs(plan.entry("0.weight").expected_std - 0.005) < 1e-12
    detached = {"vars": {"n_layer": "${model.n_layer}"}, "rules": {}}
    with pytest.raises(InitSpecError) as err:
        initspec.load_spec(detached)
    assert err.value.paths == ("initspec.vars.n_layer",) and "vars=" in str(err.value)
    assert initspec.load_spec(detached, vars={"n_layer": 4}).vars == {"n_layer": 4}


def test_expressions_evaluate_with_tensor_names_and_vars():
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    plan = initspec.plan(model, {"vars": {"d": 2.0}, "rules": {"w": {"match": "*.weight", "init": {
        "name": "normal", "std": "1 / sqrt(fan_in * d * (layer + 2)) + 0 * numel * ndim * shape[0] * fan_out"}}}})
    assert abs(plan.entry("0.weight").expected_std - 1 / (16 * 2 * 2) ** 0.5) < 1e-12
    assert abs(plan.entry("1.weight").expected_std - 1 / (8 * 2 * 3) ** 0.5) < 1e-12
    assert "0.125" in plan.explain()   # evaluated numbers are shown


@pytest.mark.parametrize("text", ["__import__('os')", "x.__class__", "(lambda: 1)()", "[i for i in (1, 2)]",
                                  "open('/etc/passwd')", "'a' * 3", "10**10**10", "9**999", "(((((1)))))" * 100])
def test_evaluator_refuses_quickly(text):
    start = time.perf_counter()
    with pytest.raises(ExprError):
        evaluate(text, {"x": 1})
    assert time.perf_counter() - start < 0.5


def test_evaluator_arithmetic():
    assert evaluate("0.02 / sqrt(2 * n)", {"n": 2}) == 0.01
    assert evaluate("max(1, min(4, 3)) ** 2 - 10 // 3 % 2", {}) == 8
    assert evaluate("shape[-1] if ndim > 1 else 0", {"shape": (3, 5), "ndim": 2}) == 5


def test_yaml_boolean_rule_names(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("rules:\n  off:\n    match: '*'\n    init: zeros\n  no:\n    match: '*'\n    init: ones\n")
    with pytest.raises(InitSpecError) as err:
        initspec.load_spec(path)
    assert "initspec.rules.off" in err.value.paths and "initspec.rules.no" in err.value.paths
    assert "quote it" in str(err.value)

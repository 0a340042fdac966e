"""Tie groups: parameter- and module-level, globs, the source's rule, gradients, errors."""
import pytest
import torch
from torch import nn

import initspec
from initspec import InitSpecError
from conftest import assert_unchanged, snapshot


def test_parameter_tie_source_rule_initializes_the_group():
    model = nn.ModuleDict({"emb": nn.Embedding(10, 4), "out": nn.Linear(4, 10, bias=False)})
    spec = {"rules": {"emb": {"match": "emb.weight", "init": {"name": "normal", "std": 0.02}},
                      "out": {"match": "out.weight", "init": "zeros"}},
            "ties": {"tied": ["emb.weight", "out.weight"]}}
    report = initspec.apply(model, spec)
    assert model["out"].weight is model["emb"].weight
    entry = report.plan.entry("emb.weight")
    assert entry.rule == "emb" and entry.aliases == ("out.weight",) and entry.tie == "tied"
    assert "out (tie)" in entry.shadowed
    assert float(model["emb"].weight.detach().std()) > 0.01      # not zeros: the source's rule won
    assert [n for n, _ in model.named_parameters()] == ["emb.weight"]


def test_module_tie_glob_albert_style():
    model = nn.ModuleDict({"layers": nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
                                                     for _ in range(3)])})
    spec = {"rules": {"w": {"match": "*.weight", "init": {"name": "normal", "std": 0.1}},
                      "b": {"match": "*.bias", "init": "zeros"}},
            "ties": {"albert": ["layers.0", "layers.*"]}}
    report = initspec.apply(model, spec)
    layers = model["layers"]
    assert layers[0] is layers[1] is layers[2]
    assert len(list(model.parameters())) == 4
    group = report.plan.ties[0]
    assert group.kind == "module" and group.source == "layers.0" and group.targets == ("layers.1", "layers.2")
    assert report.plan.tie_groups == {"albert": ["layers.0", "layers.1", "layers.2"]}


def test_tie_already_shared_is_a_noop():
    lin = nn.Linear(2, 2)
    model = nn.Sequential(lin, lin)
    initspec.apply(model, {"rules": {"w": {"match": "*", "init": "ones"}}, "ties": {"t": ["0", "1"]}})
    assert model[0] is model[1] and torch.equal(lin.weight.detach(), torch.ones(2, 2))


@pytest.mark.parametrize("model,ties,fragment,path", [
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3)), {"t": ["0.weight", "1.weight"]}, "shape",
     "initspec.ties.t.1"),
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double()), {"t": ["0.weight", "1.weight"]}, "dtype",
     "initspec.ties.t.1"),
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), {"t": ["0", "1"]}, "classes differ", "initspec.ties.t.1"),
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3)), {"t": ["0", "1"]}, "differs", "initspec.ties.t.1"),
    (lambda: nn.Sequential(nn.Sequential(nn.Linear(2, 2))), {"t": ["0", "0.0"]}, "ancestor", "initspec.ties.t.1"),
    (lambda: nn.Sequential(nn.Linear(2, 2)), {"t": ["0", "7"]}, "not a module or parameter", "initspec.ties.t.1"),
    (lambda: nn.Sequential(nn.Linear(2, 2)), {"t": ["9", "0"]}, "not a module or parameter", "initspec.ties.t.0"),
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)),
     {"a": ["0", "1"], "b": ["2.weight", "1.weight"]}, "two tie groups", "initspec.ties.b"),
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), {"t": ["0", "1.weight"]}, "parameter but the source",
     "initspec.ties.t.1"),
    (lambda: nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm1d(2)), {"t": ["0.running_mean", "1.running_mean"]},
     "buffer", "initspec.ties.t.0"),
    # one shared LayerNorm: 1.bias is 0.bias, so t0 and t1 would each tie both of its tensors
    (lambda: nn.Sequential(*[nn.LayerNorm(1)] * 2), {"t0": ["0.weight", "1.bias"], "t1": ["0.bias", "1.weight"]},
     "two tie groups", "initspec.ties.t1"),
])
def test_tie_errors_leave_model_unchanged(model, ties, fragment, path):
    m = model()
    snap = snapshot(m)
    with pytest.raises(InitSpecError) as err:
        initspec.apply(m, {"rules": {"all": {"match": "*", "init": "zeros", "optional": True}}, "ties": ties})
    assert fragment in str(err.value)
    assert path in err.value.paths
    assert_unchanged(m, snap)


def test_tie_glob_matching_nothing_is_strict_error_unless_optional():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(InitSpecError, match="matches no module"):
        initspec.plan(model, {"ties": {"t": ["0", "x.*"]}})
    initspec.plan(model, {"ties": {"t": {"members": ["0", "x.*"], "optional": True}}})

"""Every cell of the seed notebook (../shared/seed/000_f009ace5029e2e52.txt), through specs."""
from pathlib import Path

import pytest
import torch
from torch import nn

import initspec
from initspec.models.seed import MyModel, mlp, shared_net

REPO = Path(__file__).resolve().parents[1]


def test_cell1_names_and_shapes():
    net = mlp()
    plan = initspec.plan(net, "seed_normal")
    assert [(e.name, e.shape) for e in plan.entries] == [
        ("0.weight", (3, 4)), ("0.bias", (3,)), ("2.weight", (1, 3)), ("2.bias", (1,))]
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear"]


def test_cell1_mymodel_lists_only_weight1_and_warns_about_weight2():
    model = MyModel()
    assert [n for n, _ in model.named_parameters()] == ["weight1"]
    report = initspec.apply(model, {"rules": {"w": {"match": "weight*", "init": "zeros"}}})
    assert [e.name for e in report.plan.entries] == ["weight1"]
    assert len(report.warnings) == 1 and "weight2" in report.warnings[0]
    assert "not a registered parameter" in report.warnings[0]
    assert "weight2" in report.explain()
    assert torch.count_nonzero(model.weight1) == 0
    assert torch.count_nonzero(model.weight2) > 0  # a plain tensor attribute: initspec cannot see it


def test_cell2_weights_normal_001_biases_zero():
    net = mlp()
    report = initspec.apply(net, str(REPO / "configs" / "initspec" / "seed_normal.yaml"), seed=0)
    for name, p in net.named_parameters():
        if "bias" in name:
            assert torch.equal(p, torch.zeros_like(p))
        else:
            assert p.abs().max() < 0.06 and p.abs().sum() > 0
    assert report.plan.entry("0.weight").expected_std == 0.01
    # the same recipe on a large layer: the distribution is N(0, 0.01)
    big = nn.Sequential(nn.Linear(1000, 1000))
    initspec.apply(big, "seed_normal")
    w = big[0].weight.detach()
    assert abs(float(w.std()) - 0.01) < 0.0002 and abs(float(w.mean())) < 0.0001
    assert torch.count_nonzero(big[0].bias) == 0


def test_cell3_custom_init():
    net = mlp()
    initspec.apply(net, "seed_custom", seed=0)
    for name, p in net.named_parameters():
        if "weight" in name:
            a = p.detach().abs()
            assert bool(((a == 0) | ((a >= 5) & (a <= 10))).all()), name
        else:
            assert torch.equal(p.detach(), torch.ones_like(p))
    big = nn.Sequential(nn.Linear(500, 400))
    initspec.apply(big, "seed_custom")
    w = big[0].weight.detach()
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.01      # |U(-10, 10)| < 5 half the time
    assert float(w.abs().max()) <= 10 and float(w[w != 0].abs().min()) >= 5


def test_cell4_shared_layer():
    net = shared_net()
    assert net[0] is not net[1]
    initspec.apply(net, "seed_shared")
    assert net[0] is net[1] and net[0].weight is net[1].weight
    assert [n for n, _ in net.named_parameters()] == ["0.weight"]
    assert float(net[0].weight) == 3.0


@pytest.mark.parametrize("preset", ["seed_normal", "seed_custom", "seed_shared"])
def test_seed_presets_load(preset):
    spec = initspec.load_spec(preset)
    assert spec.rules and spec.seed == 0

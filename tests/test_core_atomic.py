"""All or nothing: a failed apply leaves the model bitwise unchanged and untied."""
import pytest
import torch
from torch import nn

import initspec
from initspec import InitSpecError
from conftest import FN, assert_unchanged, snapshot


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.LayerNorm(4))


GOOD = {"w": {"match": "*.weight", "init": "zeros"}}


@pytest.mark.parametrize("bad_rule,path,says", [
    ({"match": "0.bias", "init": {"fn": f"{FN}.boom"}}, "initspec.rules.bad.init", "RuntimeError: boom"),
    ({"match": "0.bias", "init": {"fn": f"{FN}.nan_fill"}}, "initspec.rules.bad.init", "NaN"),
    ({"match": "0.bias", "init": [{"name": "normal", "std": 1}, {"name": "scale", "by": 1e38},
                                  {"name": "scale", "by": 1e38}]}, "initspec.rules.bad.init.2", "inf"),
    ({"match": "0.bias", "init": {"name": "normal", "std": "1 / sqrt(fan_in)"}}, "initspec.rules.bad.init.std",
     "1-D"),
])
def test_failure_after_ties_were_planned_leaves_everything(bad_rule, path, says):
    m = model()
    snap = snapshot(m)
    spec = {"rules": {**GOOD, "bad": bad_rule}, "ties": {"t": ["0", "1"]}}
    with pytest.raises(InitSpecError) as err:
        initspec.apply(m, spec, allow_fn=[FN])
    assert any(p.startswith(path) for p in err.value.paths), err.value.paths
    assert says in str(err.value), str(err.value)     # the step ran and failed (not: its fn: did not import)
    assert_unchanged(m, snap)
    assert m[0] is not m[1]


def test_meta_model_goes_back_to_meta_on_failure():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    params = list(m.parameters())
    with pytest.raises(InitSpecError, match="RuntimeError: boom"):
        initspec.apply(m, {"rules": {"w": {"match": "*.weight", "init": "zeros"},
                                     "b": {"match": "*.bias", "init": {"fn": f"{FN}.boom"}}}},
                       device="cpu", allow_fn=[FN])
    assert list(m.parameters()) == params and all(p.is_meta for p in m.parameters())


def test_meta_model_materialized_once_with_ties_and_resets():
    with torch.device("meta"):
        lin = nn.Linear(4, 4)
        m = nn.Sequential(lin, lin, nn.LayerNorm(4))
    report = initspec.apply(m, {"rules": {"w": {"match": "*.weight", "ndim": 2, "init": "ones"}}}, device="cpu")
    assert m[0] is m[1] and not m[0].weight.is_meta
    assert torch.equal(m[0].weight.detach(), torch.ones(4, 4))
    assert torch.equal(m[2].weight.detach(), torch.ones(4)) and torch.equal(m[2].bias.detach(), torch.zeros(4))
    assert report.plan.entry("0.bias").action == "reset"      # no rule: the module's own reset, seeded
    with pytest.raises(InitSpecError, match="no device was given"):
        with torch.device("meta"):
            initspec.apply(nn.Linear(2, 2), {"rules": {}})


def test_meta_buffer_without_rule_or_reset_is_named():
    class Rotary(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("freqs", torch.arange(4.0))

    with torch.device("meta"):
        m = nn.Sequential(Rotary())
    with pytest.raises(InitSpecError) as err:
        initspec.apply(m, {"rules": {}}, device="cpu")
    assert "0.freqs" in str(err.value) and "buffers: true" in str(err.value)
    initspec.apply(m, {"rules": {"f": {"match": "*.freqs", "buffers": True, "init": "ones"}}}, device="cpu")
    assert torch.equal(m[0].freqs, torch.ones(4))

"""The lsuv step: layer-sequential unit variance from a batch, through the public API."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import initspec
from initspec import InitSpecError
from conftest import assert_unchanged, shard, snapshot, spawn_ranks

TOL = 0.02
SPEC = {"rules": {
    "hidden": {"match": "*.weight", "module": "Linear",
               "init": ["orthogonal", {"name": "lsuv", "target_std": 1.0, "tol": TOL, "max_iter": 10}]},
    "biases": {"match": "*.bias", "init": {"name": "uniform", "a": -0.5, "b": 0.5}}}}


def mlp(activation: type[nn.Module], depth: int = 20, width: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), activation()]
    return nn.Sequential(*layers)


def output_stds(model: nn.Module, batch: torch.Tensor) -> list[float]:
    """Every Linear's output std on the batch, measured independently with forward hooks."""
    stds: list[float] = []
    hooks = [m.register_forward_hook(lambda m, i, o: stds.append(float(o.double().std(unbiased=False))))
             for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    return stds


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_every_layer_of_a_deep_mlp_gets_unit_output_std(activation):
    model = mlp(activation)
    batch = torch.randn(512, 64, generator=torch.Generator().manual_seed(0))
    report = initspec.apply(model, SPEC, data=batch)
    stds = output_stds(model, batch)
    assert len(stds) == 20 and all(abs(s - 1) <= TOL for s in stds), stds
    assert all(float(m.bias.abs().max()) == 0 for m in model.modules() if isinstance(m, nn.Linear))  # zeroed first
    rows = report.data_results
    assert [r["layer"] for r in rows] == [str(2 * i) for i in range(20)]                           # forward order
    assert all(r["converged"] and abs(r["std_after"] - 1) <= TOL for r in rows)
    assert any(r["iterations"] > 0 for r in rows) and "data-dependent steps" in report.explain()


def test_same_seed_and_batch_give_the_same_values_and_a_meta_build_works():
    batch = torch.randn(128, 64, generator=torch.Generator().manual_seed(1))
    first = mlp(nn.Tanh, depth=5)
    initspec.apply(first, SPEC, data=batch)
    model, _ = initspec.build(lambda: mlp(nn.Tanh, depth=5), SPEC, data=batch)
    assert all(not p.is_meta for p in model.parameters())
    for a, b in zip(first.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_the_global_rng_and_training_flag_are_left_alone():
    model = mlp(nn.ReLU, depth=3)
    model.insert(1, nn.Dropout(0.1))
    batch = torch.randn(64, 64)
    state = torch.get_rng_state()
    initspec.apply(model, SPEC, data=batch)
    assert torch.equal(torch.get_rng_state(), state) and model.training


def test_no_batch_is_an_error_naming_the_rule_before_any_change():
    model = mlp(nn.Tanh, depth=2)
    before = snapshot(model)
    with pytest.raises(InitSpecError) as err:
        initspec.apply(model, SPEC)
    assert err.value.paths == ("initspec.rules.hidden.init.1",) and "data=" in str(err.value)
    assert_unchanged(model, before)


def test_a_layer_with_zero_output_std_is_an_error_and_the_model_is_unchanged():
    model = mlp(nn.Tanh, depth=3)
    before = snapshot(model)
    with pytest.raises(InitSpecError) as err:
        initspec.apply(model, SPEC, data=torch.zeros(16, 64))   # zero inputs, zeroed biases: std 0
    assert err.value.paths == ("initspec.rules.hidden.init.1",)
    assert "layer '0'" in str(err.value) and "std 0" in str(err.value)
    assert_unchanged(model, before)


def test_batchnorm_running_statistics_are_put_back_after_the_passes_and_on_error():
    def net():
        return nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8))   # training mode
    model = net()
    initspec.apply(model, SPEC, data=torch.randn(32, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1)
    assert int(model[1].num_batches_tracked) == 0 and float(model[1].running_mean.abs().max()) == 0
    assert torch.equal(model[1].running_var, torch.ones(8))
    model = net()
    before = snapshot(model)
    with pytest.raises(InitSpecError, match="std 0"):
        initspec.apply(model, SPEC, data=torch.zeros(32, 8))
    assert_unchanged(model, before)                            # buffers too


def test_lsuv_must_end_its_pipeline_and_cannot_run_on_a_part():
    model = mlp(nn.Tanh, depth=1)
    with pytest.raises(InitSpecError) as err:
        initspec.plan(model, {"rules": {"w": {"match": "*.weight", "init": ["lsuv", "orthogonal"]}}, "strict": False})
    assert err.value.paths == ("initspec.rules.w.init.0",) and "last step" in str(err.value)
    with pytest.raises(InitSpecError) as err:
        initspec.plan(model, {"strict": False, "rules": {
            "w": {"match": "*.weight", "init": "orthogonal"},
            "p": {"match": "*.weight", "part": {"of": 2}, "init": ["orthogonal", "lsuv"]}}})
    assert "not on a part" in str(err.value)


# ------------------------------------------------------------------- FSDP2, 2 ranks

def _lsuv_on_fsdp2(rank: int, world: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (world,))
    out = {}
    for case, seed in (("own", 100 + rank), ("same", 100)):   # each rank its own batch; every rank the same one
        with torch.device("meta"):
            model = mlp(nn.Tanh, depth=4)
        shard(model, mesh, *(layer for layer in model if isinstance(layer, nn.Linear)))
        batch = torch.randn(64, 64, generator=torch.Generator().manual_seed(seed))
        report = initspec.apply(model, SPEC, device="cpu", data=batch)
        out[case] = {"results": report.data_results,
                     "weights": {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}}
    return out


@pytest.mark.multiprocess
def test_two_fsdp2_ranks_apply_the_same_scales(tmp_path):
    both = spawn_ranks(_lsuv_on_fsdp2, 2, tmp_path, timeout=90)
    ranks = [r["own"] for r in both]
    assert ranks[0]["results"] == ranks[1]["results"]          # the same pooled stds, so the same scales
    assert all(r["converged"] for r in ranks[0]["results"]) and len(ranks[0]["results"]) == 4
    for name, w in ranks[0]["weights"].items():
        assert torch.equal(w, ranks[1]["weights"][name]), name
    pooled = torch.cat([torch.randn(64, 64, generator=torch.Generator().manual_seed(100 + r)) for r in range(2)])
    model = mlp(nn.Tanh, depth=4)
    model.load_state_dict(ranks[0]["weights"])
    assert all(abs(s - 1) <= TOL for s in output_stds(model, pooled))   # unit std over both ranks' batches
    single = mlp(nn.Tanh, depth=4)                             # the same batch on every rank: one process's values
    report = initspec.apply(single, SPEC, data=torch.randn(64, 64, generator=torch.Generator().manual_seed(100)))
    assert both[0]["same"]["results"] == report.data_results
    for name, p in single.named_parameters():
        assert torch.equal(both[0]["same"]["weights"][name], p.detach()), name

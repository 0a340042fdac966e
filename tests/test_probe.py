"""initspec.probe and the `initspec probe` command: per-module statistics on a batch, the model left as it was."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import initspec
from initspec import InitSpecError
from initspec.probe_data import NextTokenLoss, RandomLabelLoss, random_images, random_tokens
from conftest import assert_unchanged, snapshot, cli


class SmallNet(nn.Module):
    """Conv, BatchNorm, one ReLU module called twice, dropout, a tuple-returning block, a frozen layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 10)
        self.frozen = nn.Linear(10, 10)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        x = self.relu(self.drop(self.fc1(x)))
        return self.frozen(self.fc2(x))


def batch() -> torch.Tensor:
    return random_images(16, 3, 8, seed=3)


def independent(model: nn.Module, x: torch.Tensor, loss) -> tuple[list, dict, float]:
    """Every module's outputs (all calls, in float64) by forward hooks, and each parameter's gradient by
    loss.backward() on a copy, under the same dropout seed."""
    model = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    outputs: dict[nn.Module, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.setdefault(m, []).append(o.detach().double().reshape(-1)))
             for m in names]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        value = loss(model(x), x)
        value.backward()
    for h in hooks:
        h.remove()
    rows = []
    for m, calls in outputs.items():
        v = torch.cat(calls)
        rows.append((names[m], type(m).__name__, len(calls), float(v.mean()), float(v.std(unbiased=False)),
                     float(v.square().mean().sqrt()), float((v == 0).double().mean())))
    grads = {n: (None if p.grad is None else float(p.grad.double().std(unbiased=False)),
                 None if p.grad is None or not p.detach().any() else float(p.grad.double().norm() / p.detach().double().norm()))
             for n, p in model.named_parameters()}
    return rows, grads, float(value.detach())


def close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-4,
                                                                                          abs_tol=1e-7))


@pytest.mark.parametrize("training", [True, False])
def test_probe_numbers_equal_an_independent_hook_computation(training):
    model = SmallNet().train(training)
    loss = RandomLabelLoss(seed=1)
    result = initspec.probe(model, batch(), loss=loss)
    rows, grads, value = independent(model, batch(), loss)
    assert [(m.name, m.type, m.calls) for m in result.modules] == [r[:3] for r in rows]   # forward order, calls
    assert result.module("relu").calls == 2 and result.module("").type == "SmallNet"
    for m, (name, _, _, mean, std, rms, zeros) in zip(result.modules, rows):
        assert close(m.mean, mean) and close(m.std, std) and close(m.rms, rms), name
        assert m.zero_fraction == pytest.approx(zeros, abs=1e-9), name
    assert result.module("relu").zero_fraction > 0.2                                     # dead ReLU outputs
    assert [p.name for p in result.params] == list(grads)
    for p in result.params:
        assert close(p.grad_std, grads[p.name][0]) and close(p.grad_to_weight, grads[p.name][1]), p.name
    assert result.param("frozen.weight").grad_std is None and result.param("unused.weight").grad_std is None
    assert result.loss == pytest.approx(value, rel=1e-6)


def test_without_a_loss_no_gradients_and_no_graph():
    model = SmallNet().eval()
    seen = []
    model.fc2.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    result = initspec.probe(model, batch())
    assert result.params == () and result.loss is None and seen == [False]               # under no_grad


def test_the_model_is_left_as_it_was():
    model = SmallNet()
    for p in (model.conv.weight, model.fc1.bias):
        p.grad = torch.full_like(p, 7.0)
    grads = {n: p.grad for n, p in model.named_parameters()}
    before, rng = snapshot(model), torch.get_rng_state()
    initspec.probe(model, batch(), loss=RandomLabelLoss())
    assert_unchanged(model, before)                  # parameters and buffers: BatchNorm's running stats too
    assert int(model.bn.num_batches_tracked) == 0 and model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in model.named_parameters():
        assert p.grad is grads[n], n                 # .grad untouched (None stays None)
    assert float(model.conv.weight.grad.unique()) == 7.0
    model.eval()
    initspec.probe(model, batch(), loss=RandomLabelLoss())
    assert not model.training


def test_dropout_draws_from_the_seed():
    model = SmallNet()
    x = batch()
    assert initspec.probe(model, x, seed=5) == initspec.probe(model, x, seed=5)
    assert initspec.probe(model, x, seed=5).module("drop") != initspec.probe(model, x, seed=6).module("drop")


class Failing(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.fc(self.bn(x))
        raise RuntimeError("forward failed")


def hooks_of(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_and_buffers_restored_when_forward_raises():
    model, x = Failing(), torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    before, rng = snapshot(model), torch.get_rng_state()
    with pytest.raises(RuntimeError, match="forward failed"):
        initspec.probe(model, x, loss=RandomLabelLoss())
    assert hooks_of(model) == 0
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_loss_that_is_not_a_number_is_an_error_and_hooks_are_removed():
    model = SmallNet()
    with pytest.raises(InitSpecError) as err:
        initspec.probe(model, batch(), loss=lambda out, b: out)
    assert err.value.paths == ("loss",) and "shape [16, 10]" in str(err.value)
    assert hooks_of(model) == 0
    with pytest.raises(InitSpecError, match="does not depend on any parameter"):
        initspec.probe(model, batch(), loss=lambda out, b: torch.tensor(1.0))


def test_a_gpt_with_tuple_inputs_dicts_and_a_tied_head():
    from initspec.models.gpt import gpt_tiny
    model = gpt_tiny()
    initspec.apply(model, "gpt2", vars={"n_layer": 2})
    tokens = random_tokens(4, 16, 128, seed=0)
    result = initspec.probe(model, tokens, loss=NextTokenLoss())
    again = initspec.probe(model, {"idx": tokens}, loss=NextTokenLoss())
    assert result == again
    assert result.loss == pytest.approx(math.log(128), rel=0.05)                 # near-uniform logits at init
    assert "lm_head.weight" not in [p.name for p in result.params]              # tied: reported once, as wte
    assert result.module("transformer.h.0.ln_1").std == pytest.approx(1, abs=0.01)
    data = json.loads(result.to_json())
    assert data["modules"][0]["name"] == "transformer.wte" and data["parameters"][0]["name"] == "transformer.wte.weight"
    text = result.table()
    assert "initspec probe (23 modules in forward order" in text and "transformer.h.1.mlp.c_fc" in text


# ------------------------------------------------------------------ the command

@pytest.mark.parametrize("model, preset, probe, first", [
    ("gpt_tiny", "gpt2", "tokens", "transformer.wte"),
    ("gpt2_small", "gpt2", "tokens", "transformer.wte"),
    ("resnet_small", "kaiming_resnet", "images", "conv1"),
    ("vit_tiny", "vit_jax", "images", "patch_embed.proj"),
    ("mup_mlp", "mup", "features", "input"),
])
def test_the_command_with_every_shipped_probe_config(capsys, model, preset, probe, first):
    code, out, err = cli(capsys, "probe", f"model={model}", f"initspec={preset}", f"probe={probe}", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["modules"][0]["name"] == first and data["modules"][-1]["name"] == ""
    assert math.isfinite(data["loss"]) and all(p["grad_std"] is not None for p in data["parameters"])


def test_the_command_prints_a_table_and_writes_a_plot(capsys, tmp_path):
    png = tmp_path / "probe.png"
    code, out, err = cli(capsys, "probe", "model=resnet_small", "initspec=kaiming_resnet", "probe=images",
                         "--plot", str(png))
    assert code == 0, err
    assert "initspec probe (" in out and "│ layer1.0.relu " in out and f"plot: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_builds_with_the_batch_so_lsuv_works(capsys, tmp_path):
    (tmp_path / "initspec").mkdir()
    (tmp_path / "initspec" / "lsuv_mlp.yaml").write_text(
        "rules:\n"
        "  weights: {match: '*.weight', init: [orthogonal, {name: lsuv, target_std: 1.0, tol: 0.01}]}\n"
        "  biases: {match: '*.bias', init: zeros}\n")
    (tmp_path / "app.yaml").write_text("defaults:\n  - model: mup_mlp\n  - initspec: lsuv_mlp\n  - probe: features\n"
                                       "  - _self_\n")
    code, out, err = cli(capsys, "probe", "--config-dir", str(tmp_path), "--config-name", "app", "--format", "json")
    assert code == 0, err
    stds = {m["name"]: m["std"] for m in json.loads(out)["modules"]}
    assert all(abs(stds[n] - 1) <= 0.01 for n in ("input", "hidden.0", "hidden.1", "readout")), stds


@pytest.mark.parametrize("args, path, what", [
    (["model=gpt_tiny", "initspec=gpt2"], "probe", "has no probe.data"),
    (["model=resnet_small", "initspec=kaiming_resnet", "probe=tokens"], "probe.data", "cannot instantiate"),
    (["model=gpt_tiny", "initspec=gpt2", "probe=images"], "probe.data", "cannot run on the batch"),
    (["model=gpt_tiny", "initspec=gpt2", "probe=tokens", "probe.data.batch_size=0"], "probe.data.batch_size",
     "positive integer"),
    (["model=gpt_tiny", "initspec=gpt2", "probe=tokens", "--lr", "0.1"], "--lr", "coordinate check"),
])
def test_command_mistakes_exit_2_naming_the_config_path(capsys, args, path, what):
    code, out, err = cli(capsys, "probe", *args)
    assert code == 2 and out == "", err
    assert f"  {path}: " in err and what in err, err

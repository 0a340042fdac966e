"""initspec.infer / ``initspec infer``: from an initialized model to the spec that reproduces it.

Detection is tested on tensors whose names say nothing (or lie) about their values; formulas
on layers whose fans differ, so that no literal explains them all; the acceptance test is the
round trip: infer, apply the spec to a fresh model filled with junk, and ``initspec.diff``
against the original reports every tensor ``identical``, ``same constant`` or ``same distribution``.
The round trip applies the spec with another seed than the original's, so agreement is in
distribution, not by replaying the same streams.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import initspec
from initspec.models.gpt import gpt_tiny
from initspec.models.llama import llama_tiny
from initspec.models.megatron import megatron_tiny
from initspec.models.mup import MuMLP
from initspec.models.olmo import olmo_tiny
from initspec.models.resnet import ResNet, resnet
from initspec.models.seed import mlp, shared_net
from initspec.models.vit import vit_tiny
from conftest import cli

diff = initspec.diff
GEN = 20240


def generator(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(GEN + offset)


class Holder(nn.Module):
    """Parameters under the given names, nothing else (names that say nothing about the values)."""

    def __init__(self, **tensors: torch.Tensor):
        super().__init__()
        for name, value in tensors.items():
            self.register_parameter(name, nn.Parameter(value))


def init_of(inferred: initspec.Inferred, model: nn.Module, name: str):
    """The init the inferred spec gives ``name`` (None: no rule, the tensor is kept)."""
    entry = initspec.plan(model, inferred.data).entry(name)
    return inferred.data["rules"][entry.rule]["init"] if entry.action == "fill" else None


def junk(model: nn.Module) -> nn.Module:
    """Every parameter overwritten with U(-3, 3) noise, so nothing of the constructor's init survives."""
    g = generator(99)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.empty(p.shape).uniform_(-3, 3, generator=g))
    return model


def round_trip(build, original: nn.Module, max_rules: int) -> initspec.Inferred:
    inferred = initspec.infer(original)
    assert inferred.unexplained == (), inferred.yaml
    fresh = junk(build())
    initspec.apply(fresh, inferred.data, seed=7)
    report = diff(original, fresh)
    assert report.ok, report.explain() + "\n" + inferred.yaml
    assert inferred.rules <= max_rules, inferred.yaml
    return inferred


def seeded(build, seed: int = 0):
    """``build()`` with the global RNG seeded in a fork (the model's own init), restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def trunc(shape, std, cutoff, offset):
    t = torch.empty(shape)
    return nn.init.trunc_normal_(t, 0.0, std, -cutoff * std, cutoff * std, generator=generator(offset))


# ------------------------------------------------------------- families from values

def test_each_family_is_detected_from_values_whatever_the_names():
    model = Holder(
        bias=torch.empty(256, 256).uniform_(-0.3, 0.3, generator=generator(1)),     # names lie on purpose
        weight=trunc((256, 256), 0.05, 2, 2),
        gamma=trunc((512, 128), 0.1, 3, 3),
        ones_=torch.empty(128, 256).normal_(0, 0.02, generator=generator(4)),
        normal=torch.full((7,), 0.5),
        uniform=torch.zeros(12),
        trunc_normal=torch.ones(3, 4),
        rows=torch.empty(3000).uniform_(0, 1, generator=generator(5)),
    )
    inferred = initspec.infer(model)
    assert init_of(inferred, model, "bias") == {"name": "uniform", "a": -0.3, "b": 0.3}
    assert init_of(inferred, model, "weight") == {"name": "trunc_normal", "mean": 0, "std": 0.05, "cutoff": 2.0}
    assert init_of(inferred, model, "gamma") == {"name": "trunc_normal", "mean": 0, "std": 0.1, "cutoff": 3.0}
    assert init_of(inferred, model, "ones_") == {"name": "normal", "mean": 0, "std": 0.02}
    assert init_of(inferred, model, "normal") == {"name": "constant", "value": 0.5}
    assert init_of(inferred, model, "uniform") == "zeros"
    assert init_of(inferred, model, "trunc_normal") == "ones"
    assert init_of(inferred, model, "rows") == {"name": "uniform", "a": 0.0, "b": 1.0}


def test_structured_inits_orthogonal_with_gain_eye_and_dirac():
    wide, tall, rows = torch.empty(64, 128), torch.empty(96, 3, 4, 4), torch.empty(8, 4, 3, 3)
    nn.init.orthogonal_(wide, gain=2.0, generator=generator(1))
    nn.init.orthogonal_(tall, gain=math.sqrt(2), generator=generator(2))    # 96 x 48: W^T W = 2 I
    nn.init.dirac_(rows, groups=2)
    model = Holder(a=wide, b=tall, c=torch.eye(16, 24), d=rows)
    inferred = initspec.infer(model)
    assert init_of(inferred, model, "a") == {"name": "orthogonal", "gain": 2.0}
    assert init_of(inferred, model, "b") == {"name": "orthogonal", "gain": "sqrt(2)"}
    assert init_of(inferred, model, "c") == "eye"
    assert init_of(inferred, model, "d") == {"name": "dirac", "groups": 2}
    fresh = junk(Holder(a=torch.empty(64, 128), b=torch.empty(96, 3, 4, 4), c=torch.empty(16, 24),
                        d=torch.empty(8, 4, 3, 3)))
    initspec.apply(fresh, inferred.data, seed=3)
    assert diff(model, fresh).ok


def test_a_random_matrix_with_equal_row_norms_is_not_orthogonal():
    w = torch.empty(32, 4096).normal_(generator=generator(6))
    w = w / w.norm(dim=1, keepdim=True)                     # equal norms, rows not orthogonal
    inferred = initspec.infer(Holder(w=w))
    assert "orthogonal" not in inferred.yaml


class Table(nn.Module):
    def __init__(self, padding_idx):
        super().__init__()
        self.emb = nn.Embedding(500, 32, padding_idx=padding_idx)
        self.other = nn.Embedding(400, 32)


def test_padding_row_is_a_padding_zero_step_confirmed_by_padding_idx():
    model = Table(padding_idx=3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=generator(7))
        model.emb.weight[3] = 0
    inferred = initspec.infer(model)
    assert init_of(inferred, model, "emb.weight") == [{"name": "normal", "mean": 0, "std": 0.02}, "padding_zero"]
    fresh = junk(Table(padding_idx=3))
    initspec.apply(fresh, inferred.data, seed=5)
    assert torch.all(fresh.emb.weight[3] == 0) and diff(model, fresh).ok


def test_a_zero_row_without_padding_idx_is_reported_not_reproduced():
    model = Table(padding_idx=None)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=generator(8))
        model.emb.weight[3] = 0
    inferred = initspec.infer(model)
    assert "padding_zero" not in str(inferred.data["rules"])
    assert "emb.weight: row 3 is all zero, but the owner has no padding_idx" in inferred.yaml


# ------------------------------------------------------------------------ formulas

SHAPES = [(64, 256), (256, 64), (128, 512), (96, 96)]     # fans differ: no literal explains them all


def linears(fill, offset: int) -> nn.Sequential:
    model = nn.Sequential(*(nn.Linear(i, o, bias=False) for o, i in SHAPES))
    for k, layer in enumerate(model):
        fill(layer.weight, k + offset)
    return model


@pytest.mark.parametrize("fill, expected", [
    (lambda w, k: nn.init.xavier_normal_(w, generator=generator(k)), "xavier_normal"),
    (lambda w, k: nn.init.xavier_uniform_(w, generator=generator(k)), "xavier_uniform"),
    (lambda w, k: nn.init.xavier_uniform_(w, gain=math.sqrt(2), generator=generator(k)),
     {"name": "xavier_uniform", "gain": "sqrt(2)"}),
    (lambda w, k: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=generator(k)),
     {"name": "kaiming_normal", "mode": "fan_out", "nonlinearity": "relu"}),
    (lambda w, k: nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=generator(k)),
     {"name": "kaiming_uniform", "nonlinearity": "relu"}),
    (lambda w, k: nn.init.kaiming_normal_(w, nonlinearity="tanh", generator=generator(k)),
     {"name": "kaiming_normal", "nonlinearity": "tanh"}),
    (lambda w, k: nn.init.normal_(w, 0, 1 / math.sqrt(w.shape[1]), generator=generator(k)),
     {"name": "normal", "mean": 0, "std": "1 / sqrt(fan_in)"}),
    (lambda w, k: nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator(k)),   # nn.Linear's default
     {"name": "uniform", "a": "-1 / sqrt(fan_in)", "b": "1 / sqrt(fan_in)"}),
], ids=["xavier_normal", "xavier_uniform", "xavier_gain", "kaiming_fan_out_relu", "kaiming_uniform_relu",
        "kaiming_tanh", "one_over_sqrt_fan_in", "torch_default"])
def test_fan_formulas_are_recovered(fill, expected):
    model = linears(fill, 10)
    inferred = initspec.infer(model)
    assert inferred.rules == 1 and init_of(inferred, model, "0.weight") == expected, inferred.yaml
    fresh = junk(linears(lambda w, k: None, 0))
    initspec.apply(fresh, inferred.data, seed=1)
    assert diff(model, fresh).ok


def test_gpt2_residual_projections_are_002_over_sqrt_2_n_layer():
    model = gpt_tiny(n_layer=3)
    initspec.apply(model, "gpt2", vars={"n_layer": 3})
    inferred = initspec.infer(model)
    assert inferred.data["vars"] == {"n_layer": 3}
    assert init_of(inferred, model, "transformer.h.2.mlp.c_proj.weight") == \
        {"name": "normal", "mean": 0, "std": "0.02 / sqrt(2 * n_layer)"}
    assert init_of(inferred, model, "transformer.h.0.attn.c_attn.weight") == {"name": "normal", "mean": 0, "std": 0.02}
    rule = next(r for r in inferred.data["rules"].values() if r["match"] == "*.c_proj.weight")
    assert rule["priority"] == 1                              # an override of the "*.weight" catch-all
    assert "(fit 0.02/sqrt(2*3))" in inferred.yaml


def test_llama_depth_init_is_002_over_sqrt_2_layer_plus_1():
    model = llama_tiny()
    initspec.apply(model, "llama_depth", vars={"dim": 256})
    inferred = initspec.infer(model)
    assert init_of(inferred, model, "layers.3.feed_forward.w2.weight") == \
        {"name": "normal", "mean": 0, "std": "0.02 / sqrt(2 * (layer + 1))"}
    assert init_of(inferred, model, "output.weight") == \
        {"name": "trunc_normal", "mean": 0, "std": "1 / sqrt(fan_in)", "cutoff": 3.0}


# ------------------------------------------------------------- grouping and ties

def test_rules_use_short_globs_module_filters_and_priorities_only_where_needed():
    model = gpt_tiny(n_layer=3)
    initspec.apply(model, "gpt2", vars={"n_layer": 3})
    rules = initspec.infer(model).data["rules"]
    assert len(rules) == 4
    assert {"match": "*.weight", "module": "LayerNorm", "init": "ones"} in rules.values()
    assert {"match": "*.bias", "init": "zeros"} in rules.values()
    assert [r for r in rules.values() if "priority" in r] == [r for r in rules.values() if r["match"] == "*.c_proj.weight"]


def test_shared_parameters_become_tie_groups():
    model = gpt_tiny()
    initspec.apply(model, "gpt2", vars={"n_layer": 2})
    assert initspec.infer(model).data["ties"] == {"lm_head": ["transformer.wte.weight", "lm_head.weight"]}
    net = shared_net()
    initspec.apply(net, "seed_shared")                      # net[1] becomes net[0]
    inferred = initspec.infer(net)
    assert inferred.data["ties"] == {"tie_of_1": ["0.weight", "1.weight"]}
    fresh = junk(shared_net())
    initspec.apply(fresh, inferred.data)
    assert fresh[0].weight is fresh[1].weight and diff(net, fresh).ok


def test_unexplained_tensors_are_listed_in_the_header_and_left_alone():
    two_bumps = torch.cat([torch.empty(2000).normal_(-1, 0.01, generator=generator(1)),
                           torch.empty(2000).normal_(1, 0.01, generator=generator(2))])
    model = Holder(odd=two_bumps, fine=torch.empty(64, 64).normal_(0, 0.02, generator=generator(3)))
    inferred = initspec.infer(model)
    assert inferred.unexplained == ("odd",)
    header = inferred.yaml.split("\nseed:")[0]
    assert "Unexplained (1;" in header and "#   odd [4000]: 4000 values, mean" in header and "no family fits" in header
    assert init_of(inferred, model, "odd") is None and inferred.data["default"] == "keep"


def test_yaml_text_loads_as_the_same_spec(tmp_path):
    model = vit_tiny(reg_tokens=1)
    initspec.apply(model, "vit_jax")
    inferred = initspec.infer(model)
    path = tmp_path / "spec.yaml"
    path.write_text(inferred.yaml)
    assert initspec.load_spec(path).to_data() == initspec.load_spec(inferred.data).to_data()
    assert str(inferred) == inferred.yaml and "# 1 tensor, 9.2k values, truncated normal" in inferred.yaml


# --------------------------------------------------------------------- round trips

MODELS = {   # name -> (build, preset, vars, most rules)
    "gpt_tiny": (lambda: gpt_tiny(n_layer=3), "gpt2", {"n_layer": 3}, 4),
    "llama_tiny": (llama_tiny, "llama_depth", {"dim": 256}, 5),
    "megatron_tiny": (megatron_tiny, "megatron", {"num_layers": 4}, 4),
    "olmo_tiny": (lambda: olmo_tiny(include_bias=True, rope=False), "olmo_mitchell", {"d_model": 256}, 4),
    "vit_tiny": (lambda: vit_tiny(reg_tokens=1), "vit_jax", {"head_bias": -math.log(10)}, 7),
    "mup": (lambda: MuMLP(width=512), "mup", {"width": 512, "readout_zero_init": 0}, 4),
    "resnet": (lambda: ResNet(layers=(2, 2, 2, 2), width=32), "kaiming_resnet", {"zero_init_residual": 1}, 5),
    "resnet50": (lambda: resnet(50, width=8, num_classes=10), "kaiming_resnet", {"zero_init_residual": 1}, 6),
    "seed_mlp": (mlp, "seed_normal", {}, 2),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_of_every_example_model_with_its_preset(name):
    build, preset, vars, most = MODELS[name]
    original = build()
    initspec.apply(original, preset, vars=vars or None)
    round_trip(build, original, most)


@pytest.mark.parametrize("build, most", [
    (lambda: nn.LSTM(32, 64, num_layers=2), 1),
    (lambda: nn.LSTM(20, 48, bidirectional=True), 1),
    (lambda: ResNet(layers=(1, 1, 1, 1), width=16), 4),
    (lambda: resnet(18, width=16, num_classes=10), 4),
], ids=["lstm", "lstm_bidirectional", "resnet_small", "resnet18"])
def test_round_trip_of_pytorch_default_inits(build, most):
    inferred = round_trip(build, seeded(build), most)
    if isinstance(build(), nn.LSTM):                         # U(±1/sqrt(hidden)) on every tensor
        assert list(inferred.data["rules"].values())[0]["match"] == "*"


@pytest.mark.parametrize("which, most", [("gpt2", 4), ("bert", 3), ("llama", 2)])
def test_round_trip_of_transformers_own_init(which, most):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    builds = {
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=1000, n_embd=256, n_layer=3, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0)),
        "bert": lambda: transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
            max_position_embeddings=128)),
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)),
    }
    inferred = round_trip(builds[which], seeded(builds[which]), most)
    if which == "gpt2":
        assert "0.02 / sqrt(2 * n_layer)" in inferred.yaml and inferred.data["ties"]
    if which == "bert":
        assert "padding_zero" in inferred.yaml


# --------------------------------------------------------------------- bad input

def test_mistakes_name_the_input_and_say_how_to_fix_it(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("not a tensor file")
    with pytest.raises(initspec.InitSpecError, match=r"model_or_path: .*is not a safetensors file"):
        initspec.infer(text, model=gpt_tiny)
    with pytest.raises(initspec.InitSpecError, match=r"no file"):
        initspec.infer(tmp_path / "missing.safetensors", model=gpt_tiny)
    with pytest.raises(initspec.InitSpecError, match=r"needs the model's structure"):
        initspec.infer(text)
    with pytest.raises(initspec.InitSpecError, match=r"Module has no parameters"):
        initspec.infer(nn.Module())
    with pytest.raises(initspec.InitSpecError, match=r"expected an nn.Module or a safetensors path"):
        initspec.infer(42)
    with torch.device("meta"):
        meta = gpt_tiny()
    with pytest.raises(initspec.InitSpecError, match=r"meta device"):
        initspec.infer(meta)


def test_a_file_and_a_model_with_different_tensor_names(tmp_path):
    path = tmp_path / "gpt.safetensors"
    model = gpt_tiny()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}, str(path))
    llama = {"_target_": "initspec.models.llama.llama_tiny"}
    with pytest.raises(initspec.InitSpecError, match=r"different tensor names: the file lacks \d+ of the model's "
                                                     r"parameters \(tok_embeddings.weight.*the model lacks"):
        initspec.infer(path, model=llama)
    small = {"_target_": "initspec.models.gpt.gpt_tiny", "n_embd": 32}
    with pytest.raises(initspec.InitSpecError, match=r"'transformer.wte.weight' has shape \[128, 64\]"):
        initspec.infer(path, model=small)


def test_values_from_a_file_into_a_meta_structure(tmp_path):
    path = tmp_path / "gpt.safetensors"
    model = gpt_tiny(n_layer=3)
    initspec.apply(model, "gpt2", vars={"n_layer": 3})
    initspec.save_checkpoint(model, path)
    inferred = initspec.infer(path, model={"_target_": "initspec.models.gpt.gpt_tiny", "n_layer": 3})
    assert inferred.data["rules"] == initspec.infer(model).data["rules"]
    assert inferred.data["ties"] == {"lm_head": ["transformer.wte.weight", "lm_head.weight"]}


# --------------------------------------------------------------------------- CLI

def test_cli_writes_the_spec_to_stdout_or_out(capsys, tmp_path):
    code, out, err = cli(capsys, "infer", "model=gpt_tiny")
    assert code == 0, err
    assert out.startswith("# Inferred by initspec infer from GPT:") and "\nrules:\n" in out
    spec_path = tmp_path / "spec.yaml"
    code, out, err = cli(capsys, "infer", "--out", str(spec_path), "model=gpt_tiny")
    assert code == 0, err
    assert out.startswith(f"wrote {spec_path}: 5 rule(s), 1 tie group(s)")
    model = junk(gpt_tiny())
    initspec.apply(model, spec_path)                         # the model's own init: Linear U(±1/sqrt(64)) ...
    reference = seeded(gpt_tiny)
    assert diff(reference, model).ok


def test_cli_from_a_seed_checkpoint(capsys, tmp_path):
    seed_file, spec_path = tmp_path / "init.safetensors", tmp_path / "spec.yaml"
    assert cli(capsys, "apply", "--out", str(seed_file), "model=gpt_tiny", "initspec=gpt2")[0] == 0
    code, out, err = cli(capsys, "infer", "--from", str(seed_file), "--out", str(spec_path), "model=gpt_tiny")
    assert code == 0, err
    model = junk(gpt_tiny())
    initspec.apply(model, spec_path, seed=3)
    assert diff(seed_file, model).ok


def test_cli_mistakes_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("{}")
    code, out, err = cli(capsys, "infer", "--from", str(bad), "model=gpt_tiny")
    assert code == 2 and "--from: " in err and "is not a safetensors file" in err
    code, out, err = cli(capsys, "infer", "extra", "model=gpt_tiny")
    assert code == 2 and "infer takes no positional words" in err


@pytest.mark.slow
def test_console_script_in_a_user_app_with_its_own_model_config(tmp_path):
    """``initspec infer`` through the installed console script, composing the user's config dir."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "app.yaml").write_text("defaults:\n  - model: mine\n  - _self_\n")
    (tmp_path / "conf" / "model" / "mine.yaml").write_text(
        "_target_: torch.nn.Sequential\n_args_:\n"
        "  - {_target_: torch.nn.Linear, in_features: 64, out_features: 32}\n"
        "  - {_target_: torch.nn.Tanh}\n"
        "  - {_target_: torch.nn.Linear, in_features: 32, out_features: 8}\n")
    script = Path(sys.executable).parent / "initspec"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "initspec.cli"]
    proc = subprocess.run([*command, "infer", "--config-dir", "conf", "--config-name", "app", "--out", "spec.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote spec.yaml: 2 rule(s)")
    inferred = initspec.load_spec(tmp_path / "spec.yaml")
    assert inferred.rules["weights"].init[0].args == {"a": "-1 / sqrt(fan_in)", "b": "1 / sqrt(fan_in)"}
    assert not (tmp_path / "outputs").exists()                # compose API: no Hydra run directory

"""Formula presets against their sources' formulas, on models with the sources' parameter names.

Every expected std below is written from the source (cited in each preset's
header), not read back from initspec's plan. Tolerance on a measured std: 1%
plus 5 standard errors of a sample std (se = std / sqrt(2 n)): about 2% on the
65k-value matrices, looser only on tiny tensors. A truncated normal's expected
std is the truncated std (scipy.stats.truncnorm); its cutoff is checked both
ways: no value beyond c sigma, and (on >= 100k values, c <= 4) some value
beyond 0.95 c sigma, so a cutoff that is too wide or too narrow fails.
"""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import initspec
from initspec.load import preset_description, preset_dir
from initspec.models.gpt import gpt_tiny
from initspec.models.llama import llama_tiny
from initspec.models.megatron import megatron_tiny
from initspec.models.mup import MuMLP
from initspec.models.olmo import olmo_tiny
from initspec.models.resnet import ResNet
from initspec.models.vit import vit_tiny

truncnorm = pytest.importorskip("scipy.stats").truncnorm

PRESETS = ["gpt2", "bert", "hf_llama", "megatron", "llama_depth", "olmo_mitchell", "fan_in",
           "kaiming_resnet", "vit_jax", "mup"]


def assert_std(name: str, t: torch.Tensor, expected: float) -> None:
    n = t.numel()
    measured = t.detach().double().std().item()
    tol = 0.01 + 5 / math.sqrt(2 * n)
    assert abs(measured / expected - 1) < tol, f"{name}: std {measured:.6g}, formula {expected:.6g} (tol {tol:.3f})"


def assert_trunc(name: str, t: torch.Tensor, sigma: float, cutoff: float) -> None:
    """N(0, sigma) cut at +-cutoff sigma: truncated std, no value beyond, the tail reached."""
    assert_std(name, t, sigma * truncnorm.std(-cutoff, cutoff))
    top = t.detach().abs().max().item()
    assert top <= cutoff * sigma * (1 + 1e-6), f"{name}: |w| = {top:.4g} > {cutoff} sigma = {cutoff * sigma:.4g}"
    if t.numel() >= 100_000 and cutoff <= 4:  # a wider cut is a plain normal in effect: no tail to reach
        assert top > 0.95 * cutoff * sigma, f"{name}: max |w| {top:.4g} far inside the {cutoff} sigma cutoff"


def assert_const(name: str, t: torch.Tensor, value: float) -> None:
    assert torch.all(t.detach() == value), f"{name}: expected all {value}"


def fan_in(t: torch.Tensor) -> int:
    return t.shape[1] * math.prod(t.shape[2:])


def fan_out(t: torch.Tensor) -> int:
    return t.shape[0] * math.prod(t.shape[2:])


def layer_of(name: str) -> int:
    return int(next(part for part in name.split(".") if part.isdigit()))


def every_parameter_filled(model, preset, **vars) -> None:
    plan = initspec.plan(model, preset, vars=vars or None)
    missed = [e.name for e in plan.entries if e.kind == "parameter" and e.action != "fill"]
    assert not missed, f"{preset} leaves {missed}"


# -------------------------------------------------------------- megatron

def check_megatron(model, sigma: float, num_layers: int) -> None:
    for name, p in model.named_parameters():
        if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
            assert_std(name, p, sigma / math.sqrt(2 * num_layers))        # scaled_init_method_normal
        elif p.dim() == 2:
            assert_std(name, p, sigma)                                     # init_method_normal
        elif name.endswith(("layernorm.weight", "layer_norm_weight")):
            assert_const(name, p, 1.0)
        else:
            assert name.endswith(("bias", "layer_norm_bias")), name
            assert_const(name, p, 0.0)


@pytest.mark.parametrize("shared", [True, False])
def test_megatron_sigma_and_scaled_output_layers(shared):
    model = megatron_tiny(share_embeddings_and_output_weights=shared)
    initspec.apply(model, "megatron", vars={"num_layers": 4})
    check_megatron(model, 0.02, 4)
    assert (model.output_layer is None) is shared
    every_parameter_filled(model, "megatron", num_layers=4)


class TELayerNormLinear(nn.Linear):
    """Transformer Engine's LayerNormLinear: the pre-norm lives in the linear."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        self.layer_norm_weight = nn.Parameter(torch.rand(linear.in_features))
        self.layer_norm_bias = nn.Parameter(torch.rand(linear.in_features))


def test_megatron_fits_transformer_engine_fused_norm_names():
    model = megatron_tiny()
    for layer in model.decoder.layers:
        layer.self_attention.linear_qkv = TELayerNormLinear(layer.self_attention.linear_qkv)
        layer.mlp.linear_fc1 = TELayerNormLinear(layer.mlp.linear_fc1)
        layer.input_layernorm = layer.pre_mlp_layernorm = nn.Identity()
    initspec.apply(model, "megatron", vars={"num_layers": 4, "init_method_std": 0.01})
    check_megatron(model, 0.01, 4)


# ----------------------------------------------------------- llama_depth

def test_llama_depth_follows_torchtitan_llama3():
    model = llama_tiny()
    freqs = model.freqs_cis.clone()
    initspec.apply(model, "llama_depth", vars={"dim": 256})
    for name, p in model.named_parameters():
        if name == "tok_embeddings.weight":
            assert_std(name, p, 1.0)
        elif name == "output.weight":
            assert_trunc(name, p, 256 ** -0.5, 3)
        elif name.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight")):
            assert_trunc(name, p, 0.02, 2 / 0.02)                          # absolute bounds +-2
        elif name.endswith(("wo.weight", "w2.weight", "w3.weight")):
            std = 0.02 / (2 * (layer_of(name) + 1)) ** 0.5                 # depth_init
            assert_trunc(name, p, std, 2 / std)
        else:
            assert name.endswith("norm.weight"), name
            assert_const(name, p, 1.0)
    assert torch.equal(model.freqs_cis, freqs)  # complex buffer: never touched
    assert model(torch.randint(0, 1000, (1, 8))).isfinite().all()


# --------------------------------------------------------- olmo_mitchell

@pytest.mark.parametrize("variant", [dict(), dict(rope=False, include_bias=True), dict(weight_tying=True)])
def test_olmo_mitchell_follows_olmo(variant):
    model = olmo_tiny(**variant)
    initspec.apply(model, "olmo_mitchell", vars={"d_model": 256})
    d = 256
    for name, p in model.named_parameters():
        if name.endswith("attn_out.weight"):
            assert_trunc(name, p, 1 / math.sqrt(2 * d * (layer_of(name) + 1)), 3)
        elif name.startswith("transformer.blocks.") and name.endswith("ff_out.weight"):
            d_ff = p.shape[1]
            assert d_ff == 512  # ff_out.in_features != d_model: the formula's d_ff is not d_model
            assert_trunc(name, p, 1 / math.sqrt(2 * d_ff * (layer_of(name) + 1)), 3)
        elif p.dim() == 2:   # wte, wpe, att_proj, ff_proj, the output ff_out
            assert_trunc(name, p, 1 / math.sqrt(d), 3)
        elif name.endswith("norm.weight") or name == "transformer.ln_f.weight":
            assert_const(name, p, 1.0)
        else:
            assert name.endswith("bias"), name
            assert_const(name, p, 0.0)
    every_parameter_filled(model, "olmo_mitchell", d_model=256)


# ------------------------------------------------------------------ fan_in

@pytest.mark.parametrize("build", [olmo_tiny, gpt_tiny, ResNet], ids=["olmo", "gpt", "resnet"])
def test_fan_in_is_one_over_sqrt_fan_in(build):
    model = build()
    initspec.apply(model, "fan_in")
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            assert_std(name, p, 1 / math.sqrt(fan_in(p)))
        elif name.endswith("weight"):
            assert_const(name, p, 1.0)
        else:
            assert_const(name, p, 0.0)
    every_parameter_filled(model, "fan_in")


# ---------------------------------------------------------- kaiming_resnet

def check_resnet(model, last_gamma: float) -> None:
    for name, p in model.named_parameters():
        if p.dim() == 4:
            assert_std(name, p, math.sqrt(2 / fan_out(p)))                 # kaiming_normal fan_out relu
        elif name.startswith("fc."):
            bound = 1 / math.sqrt(model.fc.in_features)                    # nn.Linear default
            assert p.detach().abs().max() <= bound
            assert_std(name, p, bound / math.sqrt(3))
        elif name.endswith("bias"):
            assert_const(name, p, 0.0)
        elif ".bn2." in name or ".bn3." in name:
            assert_const(name, p, last_gamma)
        else:
            assert_const(name, p, 1.0)


@pytest.mark.parametrize("zero", [0, 1])
def test_kaiming_resnet_follows_torchvision(zero):
    model = ResNet(layers=(2, 2, 2, 2), width=32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
    initspec.apply(model, "kaiming_resnet", vars={"zero_init_residual": zero})
    check_resnet(model, 1.0 - zero)
    assert model.bn1.weight.sum() == model.bn1.weight.numel()  # the stem's BN is never zeroed
    assert all(torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
               for m in model.modules() if isinstance(m, nn.BatchNorm2d))


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        for i in (1, 2, 3):
            setattr(self, f"conv{i}", nn.Conv2d(c, c, 3 if i == 2 else 1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(c))


class BottleneckNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 7, bias=False), nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(Bottleneck(16), Bottleneck(16))
        self.fc = nn.Linear(16, 10)


def test_kaiming_resnet_bottleneck_override_zeroes_bn3_only():
    """Hydra: initspec.vars.zero_init_residual=1 initspec.rules.last_bn.match='layer*.*.bn3.weight'."""
    cfg = OmegaConf.merge(OmegaConf.load(preset_dir() / "kaiming_resnet.yaml"),
                          OmegaConf.from_dotlist(["vars.zero_init_residual=1", "rules.last_bn.match=layer*.*.bn3.weight"]))
    model = BottleneckNet()
    initspec.apply(model, cfg)
    for block in model.layer1:
        assert_const("bn3", block.bn3.weight, 0.0)
        assert_const("bn2", block.bn2.weight, 1.0)


# ----------------------------------------------------------------- vit_jax

@pytest.mark.parametrize("head_bias", [0.0, -math.log(10)])
def test_vit_jax_follows_timm(head_bias):
    model = vit_tiny(reg_tokens=1)
    initspec.apply(model, "vit_jax", vars={"head_bias": head_bias})
    for name, p in model.named_parameters():
        if name == "head.weight":
            assert_const(name, p, 0.0)
        elif name == "head.bias":
            assert torch.allclose(p, torch.full_like(p, head_bias))
        elif name == "patch_embed.proj.weight":                            # lecun_normal: TN cut at 2
            assert_trunc(name, p, 1 / math.sqrt(fan_in(p)) / truncnorm.std(-2, 2), 2)
        elif name == "pos_embed":
            assert_std(name, p, 0.02)
        elif name in ("cls_token", "reg_token"):
            assert_std(name, p, 1e-6)
        elif p.dim() == 2:                                                 # xavier_uniform
            bound = math.sqrt(6 / (fan_in(p) + fan_out(p)))
            assert p.detach().abs().max() <= bound
            assert_std(name, p, bound / math.sqrt(3))
        elif ".mlp." in name:
            assert_std(name, p, 1e-6)
        elif name.endswith("bias"):
            assert_const(name, p, 0.0)
        else:
            assert_const(name, p, 1.0)
    every_parameter_filled(model, "vit_jax")


# --------------------------------------------------------------------- mup

@pytest.mark.parametrize("width", [256, 1024])
@pytest.mark.parametrize("zero", [1, 0])
def test_mup_scales_from_the_base_width(width, zero):
    model = MuMLP(width=width)
    initspec.apply(model, "mup", vars={"width": width, "readout_zero_init": zero})
    mult = width / 256
    assert_std("input.weight", model.input.weight, 0.02)                   # one infinite dim: constant
    for i, layer in enumerate(model.hidden):
        assert_std(f"hidden.{i}.weight", layer.weight, 0.02 / math.sqrt(mult))
    if zero:
        assert_const("readout.weight", model.readout.weight, 0.0)
    else:
        assert_std("readout.weight", model.readout.weight, 0.02 / mult)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert_const(name, p, 0.0)


def test_mup_fits_gpt2_names_with_a_tied_readout():
    model = gpt_tiny(n_embd=128, vocab_size=1000, n_positions=1000)
    initspec.apply(model, "mup", vars={"width": 128, "base_width": 32})
    assert model.lm_head.weight is model.transformer.wte.weight
    assert_std("wte", model.transformer.wte.weight, 0.02)                  # input rule wins over readout
    assert_std("c_fc", model.transformer.h[0].mlp.c_fc.weight, 0.02 / 2)
    every_parameter_filled(model, "mup", width=128, base_width=32)


# -------------------------------------------------------------- all presets

@pytest.mark.parametrize("name", PRESETS)
def test_preset_header_describes_and_cites(name):
    text = (preset_dir() / f"{name}.yaml").read_text()
    assert name in initspec.preset_names()
    assert len(preset_description(name)) > 20
    assert "Source:" in text.split("\nseed:")[0]


MODEL_CONFIGS = {   # preset -> (model builder, model config as a Hydra `model` node would hold it)
    "gpt2": (gpt_tiny, dict(n_layer=3)),
    "megatron": (megatron_tiny, dict(num_layers=3)),
    "llama_depth": (llama_tiny, dict(dim=128, n_heads=2)),
    "olmo_mitchell": (olmo_tiny, dict(d_model=128)),
    "mup": (MuMLP, dict(width=512)),
}


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_preset_vars_interpolate_from_the_model_config(name):
    """Composed as Hydra does (root: model + initspec), ${model.x} resolves; alone it names the var."""
    build, model_cfg = MODEL_CONFIGS[name]
    root = OmegaConf.create({"model": model_cfg, "initspec": OmegaConf.load(preset_dir() / f"{name}.yaml")})
    spec = initspec.load_spec(root.initspec)
    for key, value in model_cfg.items():
        if key in spec.vars:
            assert spec.vars[key] == value
    initspec.apply(build(**model_cfg), root.initspec)
    with pytest.raises(initspec.InitSpecError, match=r"initspec\.vars\."):
        initspec.load_spec(name)

"""Parts of a tensor (``part:``) and structural selection (``within:``), through the public API."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import initspec
from initspec import InitSpecError
from initspec.models.resnet import BasicBlock, Bottleneck, resnet
from conftest import assert_unchanged, snapshot

H, IN = 16, 32


def gates(t: torch.Tensor, n: int) -> list[torch.Tensor]:
    return list(t.detach().chunk(n, dim=0))


def assert_orthonormal_rows(block: torch.Tensor, tol: float = 1e-5) -> None:
    eye = torch.eye(block.shape[0], dtype=block.dtype)
    assert torch.allclose(block @ block.T, eye, atol=tol), float((block @ block.T - eye).abs().max())


# ----------------------------------------------------------------- the presets

def test_keras_lstm_forget_gate_is_one_and_every_other_bias_zero():
    lstm = nn.LSTM(IN, H, num_layers=2, bidirectional=True)
    initspec.apply(lstm, "keras_lstm")
    for name, p in lstm.named_parameters():
        p = p.detach()
        if name.startswith("bias_ih"):
            i, f, g, o = gates(p, 4)
            assert torch.equal(f, torch.ones(H)), name
            assert torch.equal(torch.cat([i, g, o]), torch.zeros(3 * H)), name
        elif name.startswith("bias_hh"):
            assert torch.equal(p, torch.zeros(4 * H)), name
        elif name.startswith("weight_hh"):   # Keras's recurrent kernel (H, 4H) has orthonormal rows
            assert_orthonormal_rows(p.T)
        else:                                # glorot_uniform with fans (in, 4H)
            bound = (6 / (p.shape[1] + 4 * H)) ** 0.5
            assert float(p.abs().max()) <= bound and float(p.abs().max()) > 0.9 * bound, name


def test_block_orthogonal_makes_each_gate_block_orthogonal():
    lstm = nn.LSTM(IN, H, num_layers=2)
    initspec.apply(lstm, "block_orthogonal")
    for name, p in lstm.named_parameters():
        if name.startswith("weight"):
            for block in gates(p, 4):        # (H, in) or (H, H): H <= in, so rows are orthonormal
                assert_orthonormal_rows(block)
            assert not torch.allclose(p.detach() @ p.detach().T, torch.eye(4 * H), atol=1e-3)  # not one 4H block
    assert torch.equal(gates(lstm.bias_hh_l0, 4)[1], torch.ones(H))
    assert torch.equal(torch.cat([b for i, b in enumerate(gates(lstm.bias_hh_l0, 4)) if i != 1]), torch.zeros(3 * H))
    assert torch.equal(lstm.bias_ih_l1.detach(), torch.zeros(4 * H))


def test_block_orthogonal_on_a_gru_uses_its_three_gates():
    gru = nn.GRU(IN, H)
    initspec.apply(gru, "block_orthogonal")
    for block in gates(gru.weight_hh_l0, 3) + gates(gru.weight_ih_l0, 3):
        assert_orthonormal_rows(block)
    assert torch.equal(gru.bias_hh_l0.detach(), torch.zeros(3 * H))


# ------------------------------------------------------------ fused projections

def test_gpt2_c_attn_query_columns_zero_and_key_value_at_002():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32)
    model = transformers.GPT2Model(config)
    spec = initspec.load_spec("gpt2", vars={"n_layer": 2}).to_data()
    spec["rules"]["q_zero"] = {"match": "*.attn.c_attn.weight", "part": {"dim": 1, "of": 3, "index": 0},
                               "init": "zeros"}
    report = initspec.apply(model, spec)
    for block in model.h:
        w = block.attn.c_attn.weight.detach()                     # Conv1D: (in, 3 * out)
        q, k, v = w.split(64, dim=1)
        assert torch.equal(q, torch.zeros(64, 64))
        for kv in (k, v):
            assert abs(float(kv.std()) / 0.02 - 1) < 0.08
    assert "h.0.attn.c_attn.weight [:, 0:64]" in report.plan.explain()


class FusedQKV(nn.Module):
    """torchtitan-style grouped-query attention with one fused projection."""

    def __init__(self, dim: int = 64, n_heads: int = 8, n_kv_heads: int = 2):
        super().__init__()
        head_dim = dim // n_heads
        self.wqkv = nn.Linear(dim, (n_heads + 2 * n_kv_heads) * head_dim, bias=False)


GQA = {"n_heads": 8, "n_kv_heads": 2, "head_dim": 8}
GQA_SIZES = ["n_heads * head_dim", "n_kv_heads * head_dim", "n_kv_heads * head_dim"]


def test_grouped_query_sizes_come_from_expressions():
    model = FusedQKV()
    spec = {"vars": GQA, "rules": {
        "q": {"match": "wqkv.weight", "init": {"name": "normal", "std": 0.5}},
        "kv": {"match": "wqkv.weight", "part": {"sizes": GQA_SIZES, "index": [1, 2]},
               "init": {"name": "normal", "std": 0.02}}}}
    report = initspec.apply(model, spec)
    w = model.wqkv.weight.detach()
    q, k, v = w[:64], w[64:80], w[80:96]
    assert abs(float(q.std()) / 0.5 - 1) < 0.1
    assert all(abs(float(t.std()) / 0.02 - 1) < 0.15 for t in (k, v))
    parts = report.plan.entry("wqkv.weight").parts
    assert [(f.part.start, f.part.stop) for f in parts] == [(64, 80), (80, 96)]
    assert report.stats["wqkv.weight[64:80]"].std == pytest.approx(float(k.std()), rel=1e-4)


# --------------------------------------------------------------- the guarantees

def lstm_spec(seed: int, with_part: bool) -> dict:
    rules = {"w": {"match": "*", "init": {"name": "normal", "std": 0.1}}}
    if with_part:
        rules["gate"] = {"match": ["weight_hh_l0", "bias_ih_l0"], "part": {"of": 4, "index": 2},
                         "init": {"name": "uniform", "a": -3, "b": 3}}
        rules["cols"] = {"match": "weight_ih_l0", "part": {"dim": 1, "sizes": [5, 27], "index": 0},
                         "init": "orthogonal"}
    return {"seed": seed, "rules": rules}


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_a_part_rule_changes_no_value_outside_its_part(seed):
    plain, parted = nn.LSTM(IN, H), nn.LSTM(IN, H)
    initspec.apply(plain, lstm_spec(seed, False))
    initspec.apply(parted, lstm_spec(seed, True))
    a, b = dict(plain.named_parameters()), dict(parted.named_parameters())
    inside = {"weight_hh_l0": (slice(2 * H, 3 * H),), "bias_ih_l0": (slice(2 * H, 3 * H),),
              "weight_ih_l0": (slice(None), slice(0, 5))}
    for name in a:
        outside = torch.ones(a[name].shape, dtype=torch.bool)
        if name in inside:
            outside[inside[name]] = False
            assert not torch.equal(a[name].detach()[inside[name]], b[name].detach()[inside[name]]), name
        assert torch.equal(a[name].detach()[outside], b[name].detach()[outside]), name


def test_a_part_is_filled_as_if_it_were_the_tensor():
    """Fans come from the part's shape: kaiming on a (16, 32) gate block of a (64, 32) weight."""
    lstm = nn.LSTM(IN, H)
    report = initspec.apply(lstm, {"rules": {"g": {"match": "weight_ih_l0", "part": {"of": 4},
                                                   "init": {"name": "xavier_normal"}}}, "strict": False})
    expected = (2 / (IN + H)) ** 0.5
    assert all(f.expected_std == pytest.approx(expected) for f in report.plan.entry("weight_ih_l0").parts)


def test_meta_threads_and_streams_give_the_same_values():
    spec = lstm_spec(3, True)
    reference = nn.LSTM(IN, H)
    initspec.apply(reference, spec, threads=1)
    with torch.device("meta"):
        meta = nn.LSTM(IN, H)
    initspec.apply(meta, spec, device="cpu", threads=2)
    portable = nn.LSTM(IN, H)
    initspec.apply(portable, {**spec, "streams": "portable"}, threads=2)
    for name, p in reference.named_parameters():
        assert torch.equal(p, dict(meta.named_parameters())[name]), name
        assert torch.equal(p, dict(portable.named_parameters())[name]), name


def test_a_part_can_come_from_a_checkpoint_key(tmp_path):
    gate = torch.randn(H, H)
    save_file({"forget": gate}, str(tmp_path / "gates.safetensors"))
    lstm = nn.LSTM(IN, H)
    initspec.apply(lstm, {"rules": {
        "w": {"match": "*", "init": "zeros"},
        "f": {"match": "weight_hh_l0", "part": {"of": 4, "index": 1},
              "init": {"name": "checkpoint", "path": str(tmp_path / "gates.safetensors"), "key": "forget"}}}})
    assert torch.equal(lstm.weight_hh_l0.detach()[H:2 * H], gate)
    assert torch.equal(lstm.weight_hh_l0.detach()[:H], torch.zeros(H, H))


def test_a_tied_tensor_gets_its_parts_once():
    model = nn.ModuleDict({"enc": nn.Linear(8, 12, bias=False), "dec": nn.Linear(8, 12, bias=False)})
    initspec.apply(model, {"ties": {"t": ["enc.weight", "dec.weight"]}, "rules": {
        "w": {"match": "enc.weight", "init": "zeros"},
        "p": {"match": "enc.weight", "part": {"of": 3, "index": 2}, "init": "ones"}}})
    assert model["enc"].weight is model["dec"].weight
    assert torch.equal(model["dec"].weight.detach()[8:], torch.ones(4, 8))
    assert torch.equal(model["dec"].weight.detach()[:8], torch.zeros(8, 8))


def test_precedence_is_per_region():
    lin = nn.Linear(4, 8, bias=False)
    report = initspec.apply(lin, {"rules": {
        "low_part": {"match": "weight", "part": {"of": 2, "index": 0}, "priority": -1, "init": "ones"},  # below: shadowed
        "whole": {"match": "weight", "init": "zeros"},
        "a": {"match": "weight", "part": {"of": 4, "index": [1, 2]}, "init": {"name": "constant", "value": 2}},
        "b": {"match": "weight", "part": {"of": 2, "index": 1}, "init": {"name": "constant", "value": 3}}}})
    assert lin.weight.detach()[:, 0].tolist() == [0, 0, 2, 2, 3, 3, 3, 3]   # b is later than a: wins on [4:6]
    entry = report.plan.entry("weight")
    assert "low_part" in entry.shadowed and [f.rule for f in entry.parts] == ["a", "a", "b"]


def test_explain_and_report_show_each_region():
    lstm = nn.LSTM(IN, H)
    report = initspec.apply(lstm, "keras_lstm")
    text = report.explain(width=200)
    assert "bias_ih_l0 [16:32]" in text and "forget_gate" in text
    assert report.stats["bias_ih_l0[16:32]"].mean == 1.0
    assert report.stats["bias_ih_l0"].mean == 0.0 and report.stats["bias_ih_l0"].numel == 3 * H   # outside the part
    parts = report.to_dict()["entries"][2]["parts"]
    assert parts == [{"dim": 0, "start": 16, "stop": 32, "rule": "forget_gate", "steps": ["ones"],
                      "expected_std": 0.0, "stats": parts[0]["stats"]}] and parts[0]["stats"]["mean"] == 1.0


def test_coverage_is_per_region():
    spec = {"default": "error", "strict": False, "rules": {
        "forget": {"match": "bias_ih_l0", "part": {"of": 4, "index": 1}, "init": "ones"},
        "rest": {"match": ["weight*", "bias_hh_l0"], "init": "zeros"}}}
    with pytest.raises(InitSpecError) as err:          # three quarters of bias_ih_l0 have no rule
        initspec.plan(nn.LSTM(IN, H), spec)
    assert err.value.paths == ("initspec.default",) and "bias_ih_l0" in str(err.value)
    spec["rules"]["gates"] = {"match": "bias_ih_l0", "part": {"of": 4, "index": [0, 2, 3]}, "init": "zeros"}
    with torch.device("meta"):                          # parts that cover it all need no other rule, even on meta
        lstm = nn.LSTM(IN, H)
    initspec.apply(lstm, spec, device="cpu")
    assert lstm.bias_ih_l0.detach().tolist() == [0.0] * H + [1.0] * H + [0.0] * 2 * H


# ------------------------------------------------------------------- bad parts

BAD_PARTS = [
    ({"sizes": [60, 4, 4]}, "initspec.rules.p.part.sizes", "sum to 68, but dim 0 of shape [64, 32] is 64"),
    ({"of": 5}, "initspec.rules.p.part.of", "of: 5 does not divide dim 0 of shape [64, 32] (64)"),
    ({"of": 4, "index": 4}, "initspec.rules.p.part.index", "index 4 is out of range: the part has 4 pieces"),
    ({"of": 4, "sizes": [32, 32]}, "initspec.rules.p.part", "give exactly one of of: (equal pieces) or sizes:"),
    ({"index": 1}, "initspec.rules.p.part", "give exactly one of of: (equal pieces) or sizes:"),
    ({"dim": 2, "of": 2}, "initspec.rules.p.part.dim", "dim 2 is beyond a tensor of shape [64, 32] (2 dimensions)"),
    ({"sizes": ["n_heads * head_dim / 3", 32]}, "initspec.rules.p.part.sizes.0", "not a whole number"),
    ({"sizes": ["n_head * head_dim", 32]}, "initspec.rules.p.part.sizes.0", "unknown name 'n_head'"),
]


@pytest.mark.parametrize("part,path,what", BAD_PARTS, ids=[p[1].rsplit(".", 1)[-1] + str(i) for i, p in enumerate(BAD_PARTS)])
def test_a_bad_part_is_an_error_with_its_path_and_a_fix(part, path, what):
    lstm = nn.LSTM(IN, H)
    before = snapshot(lstm)
    spec = {"vars": GQA, "rules": {"all": {"match": "*", "init": "zeros"},
                                   "p": {"match": "weight_ih_l0", "part": part, "init": "ones"}}}
    with pytest.raises(InitSpecError) as err:
        initspec.apply(lstm, spec)
    assert err.value.paths == (path,), str(err.value)
    assert what in str(err.value) and all(p.fix for p in err.value.problems), str(err.value)
    assert_unchanged(lstm, before)


def test_a_part_that_transforms_values_cannot_start_on_meta():
    with torch.device("meta"):
        lin = nn.Linear(4, 8)
    with pytest.raises(InitSpecError) as err:
        initspec.apply(lin, {"rules": {"w": {"match": "*", "init": "zeros"},
                                       "p": {"match": "weight", "part": {"of": 2}, "init": {"name": "scale", "by": 2}}}},
                       device="cpu")
    assert err.value.paths == ("initspec.rules.p.init",) and "transforms existing values" in str(err.value)
    assert lin.weight.is_meta


# ---------------------------------------------------------------------- within

def torchvision_zero_init_residual(model: nn.Module) -> set[str]:
    """The BN weights torchvision's ResNet(zero_init_residual=True) zeroes (resnet.py, written out)."""
    zeroed = set()
    for name, m in model.named_modules():
        if isinstance(m, Bottleneck):
            zeroed.add(f"{name}.bn3.weight")
        elif isinstance(m, BasicBlock):
            zeroed.add(f"{name}.bn2.weight")
    return zeroed


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_zero_init_residual_matches_torchvision_on_both_block_types(depth):
    """Checked against initspec.models.resnet (torchvision's class and parameter names): torchvision
    itself does not import beside this project's CPU torch build."""
    model = resnet(depth, width=4, num_classes=10)
    initspec.apply(model, "kaiming_resnet", vars={"zero_init_residual": 1})
    bn_weights = {n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 1}
    zero = {n for n, p in bn_weights.items() if bool((p == 0).all())}
    assert zero == torchvision_zero_init_residual(model)
    assert all(bool((p == 1).all()) for n, p in bn_weights.items() if n not in zero)
    initspec.apply(model, "kaiming_resnet")                 # zero_init_residual=0 (torchvision's default)
    assert all(bool((p == 1).all()) for p in bn_weights.values())


def test_zero_init_residual_against_torchvision_itself():
    models = pytest.importorskip("torchvision.models")
    for depth in (18, 50):
        ours = getattr(models, f"resnet{depth}")(zero_init_residual=False)
        theirs = getattr(models, f"resnet{depth}")(zero_init_residual=True)
        initspec.apply(ours, "kaiming_resnet", vars={"zero_init_residual": 1})
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
            if a.dim() == 1 and name.endswith("weight"):
                assert torch.equal(a, b), name


def test_within_takes_subclasses_and_lists_and_skips_other_ancestors():
    class Custom(BasicBlock):
        pass

    model = nn.Sequential(Custom(4, 4), BasicBlock(4, 4), nn.Sequential(nn.BatchNorm2d(4)))
    spec = {"strict": False, "rules": {"z": {"match": "*.weight", "module": "BatchNorm2d",
                                             "within": ["BasicBlock", "NotThere"], "init": "zeros"}}}
    report = initspec.apply(model, spec)
    filled = {e.name for e in report.plan.entries if e.rule == "z"}
    assert filled == {"0.bn1.weight", "0.bn2.weight", "1.bn1.weight", "1.bn2.weight"}


def test_padding_zero_in_a_part_zeroes_the_tensors_padding_row():
    """The padding row in the part's own coordinates; a part without it is left alone."""
    emb = nn.Embedding(10, 3, padding_idx=7)
    initspec.apply(emb, {"rules": {"all": {"match": "weight", "init": "ones"},
                                   "new": {"match": "weight", "part": {"sizes": [6, 4], "index": 1},
                                           "init": [{"name": "normal"}, "padding_zero"]},
                                   "old": {"match": "weight", "part": {"sizes": [6, 4], "index": 0}, "priority": 1,
                                           "init": [{"name": "constant", "value": 2}, "padding_zero"]}}})
    w = emb.weight.detach()
    assert torch.equal(w[7], torch.zeros(3)) and bool((w[[6, 8, 9]] != 0).all())
    assert torch.equal(w[:6], torch.full((6, 3), 2.0))

"""Meta-device flow: build on meta, optionally fully_shard (world 1, in process), apply.

Every unique tensor is materialized and filled once, ties survive, buffers a
meta build left empty are covered or named, and a failed apply puts the
model back on meta with the same Parameter objects.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import initspec
import initspec.streams as streams
from initspec import InitSpecError
from initspec.models.gpt import gpt_tiny
from initspec.models.llama import llama_tiny
from conftest import assert_same_values, assert_unchanged, shard, snapshot, spy, values

SPEC = {"seed": 4, "rules": {
    "w": {"match": "*.weight", "ndim": 2, "init": {"name": "normal", "std": 0.02}},
    "b": {"match": "*.bias", "init": {"name": "uniform", "a": -0.1, "b": 0.1}},
    "ln": {"match": "*.ln_*.weight", "init": "ones"},
}}
LLAMA_VARS = {"dim": 64}


@pytest.fixture(scope="module")
def mesh():
    """A one-rank gloo process group in this process (no network), and its CPU mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def recorded_draws():
    """Every (name, step, chunk) a generator is made for during the block."""
    return spy(streams.Stream, "generator", lambda self, step, chunk: (self.name, step, chunk))


def test_meta_gpt_is_filled_once_per_tensor_with_ties_kept():
    with torch.device("meta"):
        model = gpt_tiny()
    with recorded_draws() as drawn:
        initspec.apply(model, SPEC, device="cpu")
    assert not any(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert len(drawn) == len(set(drawn))              # no chunk drawn twice
    names = {n for n, _, _ in drawn}
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names
    random_rules = {n for n, _ in model.named_parameters() if not n.endswith("ln_1.weight")
                    and not n.endswith("ln_2.weight") and not n.endswith("ln_f.weight")}
    assert names == random_rules
    real = gpt_tiny()   # built for real (torch's default init first): the same values after apply
    initspec.apply(real, SPEC)
    assert_same_values(values(model), values(real))


def test_fully_sharded_meta_model_keeps_parameter_objects_and_trains(mesh):
    with torch.device("meta"):
        model = gpt_tiny()
    shard(model, mesh, *model.transformer.h)
    before = {n: p for n, p in model.named_parameters()}
    initspec.apply(model, SPEC, device="cpu")
    assert all(p is before[n] and not p.is_meta for n, p in model.named_parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.device("meta"):
        single = gpt_tiny()
    initspec.apply(single, SPEC, device="cpu")
    assert_same_values(values(model), values(single))
    loss = model(torch.randint(0, 128, (2, 8))).float().pow(2).mean()
    loss.backward()                                   # FSDP2 all-gathers the materialized shards
    assert model.transformer.wte.weight.grad is not None


def test_failed_apply_returns_a_sharded_model_to_meta(mesh):
    with torch.device("meta"):
        model = gpt_tiny()
    shard(model, mesh, *model.transformer.h)
    snap = snapshot(model)
    bad = {"seed": 4, "rules": {**SPEC["rules"], "boom": {
        "match": "transformer.h.1.mlp.c_fc.weight", "priority": 5,
        "init": [{"name": "normal"}, {"name": "scale", "by": 1e39}]}}}
    with pytest.raises(InitSpecError, match=r"rules\.boom\.init\.1.*inf"):
        initspec.apply(model, bad, device="cpu")
    assert_unchanged(model, snap)
    assert all(p.is_meta for p in model.parameters())
    initspec.apply(model, SPEC, device="cpu")          # and it can still be initialized
    assert not any(p.is_meta for p in model.parameters())


def test_meta_parameters_with_real_buffers_then_fully_shard(mesh):
    """initspec.meta_parameters(): parameters on meta, computed buffers (rotary table) real."""
    with initspec.meta_parameters():
        model = llama_tiny()
    table = model.freqs_cis.clone()
    assert not model.freqs_cis.is_meta and model.layers["0"].attention.wq.weight.is_meta
    shard(model, mesh, *model.layers.values())
    initspec.apply(model, "llama_depth", device="cpu", vars=LLAMA_VARS)
    assert torch.equal(model.freqs_cis, table)
    assert torch.equal(table, llama_tiny().freqs_cis)
    single, _ = initspec.build(llama_tiny, "llama_depth", vars=LLAMA_VARS)
    assert_same_values(values(model), values(single))


def test_meta_buffers_reset_covered_or_named_under_fsdp(mesh):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.bn = nn.BatchNorm2d(8)
            self.register_buffer("scale", torch.full((8,), 2.0))

    with torch.device("meta"):
        net = shard(Net(), mesh)
    with pytest.raises(InitSpecError) as err:
        initspec.apply(net, {"rules": {"c": {"match": "conv.*", "init": "zeros"}}}, device="cpu")
    assert "'scale'" in str(err.value) and "buffers: true" in str(err.value)
    assert all(t.is_meta for t in [*net.parameters(), *net.buffers()])
    initspec.apply(net, {"rules": {"c": {"match": "conv.*", "init": "zeros"},
                                   "s": {"match": "scale", "buffers": True, "init": {"name": "constant", "value": 3}}}},
                   device="cpu")
    assert torch.equal(net.scale, torch.full((8,), 3.0))
    assert torch.equal(net.bn.weight.full_tensor(), torch.ones(8))       # BatchNorm's own reset_parameters()
    assert torch.equal(net.bn.running_var, torch.ones(8)) and torch.equal(net.bn.running_mean, torch.zeros(8))
    assert int(net.bn.num_batches_tracked) == 0


def test_spec_ties_must_be_made_before_fully_shard(mesh):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

        def forward(self, x):
            return self.b(self.a(x))

    def make():
        with torch.device("meta"):
            return Two()

    spec = {"seed": 1, "rules": {"all": {"match": "*", "init": "normal"}}, "ties": {"shared": ["a.weight", "b.weight"]}}
    late = shard(make(), mesh)
    snap = snapshot(late)
    with pytest.raises(InitSpecError, match=r"ties\.shared.*initspec\.distributed\.tie"):
        initspec.apply(late, spec, device="cpu")
    assert_unchanged(late, snap)
    assert all(p.is_meta for p in late.parameters())

    early = make()
    assert initspec.distributed.tie(early, spec) == {"shared": ["a.weight", "b.weight"]}
    assert early.a.weight is early.b.weight and early.a.weight.is_meta   # tied, still empty
    shard(early, mesh)
    initspec.apply(early, spec, device="cpu")
    assert early.a.weight is early.b.weight
    single = make()
    initspec.apply(single, spec, device="cpu")
    assert_same_values(values(early), values(single))
    early(torch.ones(2, 6)).sum().backward()
    assert early.a.weight.grad is not None


def test_load_checkpoint_into_meta_models(tmp_path):
    source = gpt_tiny()
    report = initspec.apply(source, SPEC)
    path = tmp_path / "seed.safetensors"
    initspec.save_checkpoint(source, path, report.plan)

    with torch.device("meta"):
        model = gpt_tiny(tie_embeddings=False)
    snap = snapshot(model)
    with pytest.raises(InitSpecError, match="no device was given"):
        initspec.load_checkpoint(model, path)
    assert_unchanged(model, snap)                      # ties made for the load are undone too

    with torch.device("meta"):
        wrong = gpt_tiny(n_embd=32, tie_embeddings=False)
    snap = snapshot(wrong)
    with pytest.raises(InitSpecError, match="shape"):
        initspec.load_checkpoint(wrong, path, device="cpu")
    assert_unchanged(wrong, snap)
    assert all(p.is_meta for p in wrong.parameters())

    initspec.load_checkpoint(model, path, device="cpu")
    assert model.lm_head.weight is model.transformer.wte.weight
    assert_same_values(values(model), values(source))


def test_save_checkpoint_refuses_meta_tensors(tmp_path):
    with torch.device("meta"):
        model = gpt_tiny()
    with pytest.raises(InitSpecError, match="meta device"):
        initspec.save_checkpoint(model, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_meta_complex_buffer_points_to_meta_parameters():
    """A computed complex buffer (llama's rotary table) cannot be filled by any rule: say how to build."""
    with torch.device("meta"):
        model = llama_tiny()
    with pytest.raises(InitSpecError) as err:
        initspec.apply(model, "llama_depth", vars=LLAMA_VARS, device="cpu")
    message = str(err.value)
    assert "'freqs_cis' (complex64)" in message and "initspec.meta_parameters()" in message
    assert "buffers: true" not in message
    assert model.freqs_cis.is_meta and all(p.is_meta for p in model.parameters())

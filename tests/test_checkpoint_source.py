"""The checkpoint step, functional side: key templates, missing: init, slice reads of a shard.

(Bad files, missing keys and mismatches are in test_errors_catalog.py; the
weights_only=True guarantee in test_trust.py; real sharded reads on gloo
ranks in test_sharded.py.)
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import initspec
import initspec.sources as sources
from initspec.streams import rows_per_chunk
from conftest import assert_unchanged, fill_region, snapshot, spy


class Net(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"fc": nn.Linear(6, 5, dtype=dtype),
                                                   "out": nn.Linear(5, 6, dtype=dtype)}) for _ in range(3))
        self.head = nn.Linear(6, 4, dtype=dtype)


def hf_names(net: Net, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The net's tensors under another naming scheme (blocks.{i}.mlp.{fc|out}.{weight|bias}), random values."""
    g = torch.Generator().manual_seed(9)
    out = {}
    for name, p in net.named_parameters():
        parts = name.split(".")
        if parts[0] == "layers":
            key = f"blocks.{parts[1]}.mlp.{parts[2]}.{parts[3]}"
            if key not in skip:
                out[key] = torch.randn(p.shape, generator=g).to(p.dtype)
    return out


def test_key_template_with_glob_captures_maps_other_names(tmp_path):
    net = Net()
    file = hf_names(net)
    path = tmp_path / "hf.safetensors"
    save_file(file, str(path))
    spec = {"rules": {"from_hf": {"match": "layers.*.*.*",
                                  "init": {"name": "checkpoint", "path": str(path), "key": "blocks.{0}.mlp.{1}.{2}"}},
                      "head": {"match": "head.*", "init": "zeros"}}}
    initspec.apply(net, spec)
    for i in range(3):
        for part in ("fc", "out"):
            for attr in ("weight", "bias"):
                got = getattr(net.layers[i][part], attr)
                assert torch.equal(got, file[f"blocks.{i}.mlp.{part}.{attr}"])


def test_name_template_uses_canonical_names_through_wrappers(tmp_path):
    source = Net()
    initspec.apply(source, {"rules": {"all": {"match": "*", "init": "normal"}}})
    path = tmp_path / "plain.pt"
    torch.save(source.state_dict(), path)            # torch format, read with weights_only=True
    wrapped = torch.compile(Net())                   # names gain _orig_mod.; {name} stays canonical
    assert next(iter(dict(wrapped.named_parameters()))).startswith("_orig_mod.")
    initspec.apply(wrapped, {"rules": {"all": {"match": "*", "init": {"name": "checkpoint", "path": str(path)}}}})
    want = dict(source.named_parameters())
    for name, p in wrapped.named_parameters():
        assert torch.equal(p, want[name.removeprefix("_orig_mod.")])


def test_missing_init_takes_present_keys_and_falls_back_elsewhere(tmp_path):
    net = Net()
    absent = ("blocks.1.mlp.fc.weight", "blocks.2.mlp.out.bias")
    file = hf_names(net, skip=absent)
    path = tmp_path / "partial.safetensors"
    save_file(file, str(path))
    steps = [{"name": "checkpoint", "path": str(path), "key": "blocks.{0}.mlp.{1}.{2}", "missing": "init"},
             {"name": "normal", "std": 0.5}, {"name": "scale", "by": 2.0}]
    spec = {"seed": 3, "rules": {"w": {"match": "layers.*.*.*", "init": steps},
                                 "head": {"match": "head.*", "init": "zeros"}}}
    report = initspec.apply(net, spec)
    random_only = Net()
    initspec.apply(random_only, {"seed": 3, "rules": {"w": {"match": "layers.*.*.*", "init": steps[1:]},
                                                      "head": {"match": "head.*", "init": "zeros"}}})
    fallback = dict(random_only.named_parameters())
    for name, p in net.named_parameters():
        if not name.startswith("layers."):
            continue
        _, i, part, attr = name.split(".")
        key = f"blocks.{i}.mlp.{part}.{attr}"
        entry = report.plan.entry(name)
        if key in file:   # the checkpoint replaces the whole pipeline (no scale applied to it)
            assert torch.equal(p, file[key]) and [o.kind for o in entry.ops] == ["checkpoint"]
        else:             # the rule's other steps, exactly what they give without the checkpoint
            assert torch.equal(p, fallback[name]) and [o.kind for o in entry.ops] == ["normal", "scale"]
            assert p.abs().max() > 0
    assert {n for n in absent} == {f"blocks.{n.split('.')[1]}.mlp.{n.split('.')[2]}.{n.split('.')[3]}"
                                   for n, _ in net.named_parameters()
                                   if n.startswith("layers.") and report.plan.entry(n).ops[0].kind == "normal"}


def test_missing_error_names_the_rule_and_suggests_missing_init(tmp_path):
    net = Net()
    file = hf_names(net, skip=("blocks.0.mlp.out.weight",))
    path = tmp_path / "partial.safetensors"
    save_file(file, str(path))
    snap = snapshot(net)
    spec = {"rules": {"w": {"match": "layers.*.*.*", "init": {"name": "checkpoint", "path": str(path),
                                                              "key": "blocks.{0}.mlp.{1}.{2}"}},
                      "head": {"match": "head.*", "init": "zeros"}}}
    with pytest.raises(initspec.InitSpecError) as err:
        initspec.apply(net, spec)
    message = str(err.value)
    assert "initspec.rules.w.init.key" in message and "blocks.0.mlp.out.weight" in message
    assert "missing: init" in message
    assert_unchanged(net, snap)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,lo,hi", [(77, 39, 77), (77, 0, 20), (3000, 1400, 2900)])
def test_a_row_shard_reads_only_its_rows(tmp_path, dtype, rows, lo, hi):
    width = 700            # 3000 x 700 spans several chunks: shards cut them
    full = torch.randn(rows, width, generator=torch.Generator().manual_seed(1)).to(dtype)
    path = tmp_path / "w.safetensors"
    save_file({"w": full}, str(path))
    model = nn.Module()
    model.w = nn.Parameter(torch.empty(rows, width, dtype=dtype))
    plan = initspec.plan(model, {"rules": {"w": {"match": "w", "init": [
        {"name": "checkpoint", "path": str(path), "key": "w"}, {"name": "scale", "by": 0.5}]}}})
    local = torch.zeros(hi - lo, width, dtype=dtype)
    with spy(sources, "read_rows", lambda o, r0, r1: (r0, r1)) as reads:
        fill_region(plan, "w", local, (lo, 0), (rows, width), threads=2)
    assert reads and all(lo <= a < b <= hi for a, b in reads), reads
    assert sum(b - a for a, b in reads) == hi - lo      # every row once
    assert torch.equal(local, (full[lo:hi].float() * 0.5).to(dtype))
    if rows > rows_per_chunk((rows, width)):
        assert len(reads) > 1                            # one read per chunk it overlaps, never the whole tensor


def test_a_column_shard_gets_its_columns(tmp_path):
    full = torch.randn(50, 1001, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "w.safetensors"
    save_file({"w": full}, str(path))
    model = nn.Module()
    model.w = nn.Parameter(torch.empty(50, 1001))
    plan = initspec.plan(model, {"rules": {"w": {"match": "w", "init": {"name": "checkpoint", "path": str(path),
                                                                          "key": "w"}}}})
    local = torch.zeros(50, 250)
    fill_region(plan, "w", local, (0, 501), (50, 1001))
    assert torch.equal(local, full[:, 501:751])

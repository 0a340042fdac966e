"""Part rules on real process groups (gloo, CPU): FSDP2 Shard(0) and DTensor Shard(1)/Replicate.

Each rank fills only its rows (or columns) of each part; the gathered ``full_tensor()``
must be bitwise what one process gets with the same spec and seed, for 2 and 4 ranks.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import initspec
from conftest import spawn_ranks

pytestmark = pytest.mark.multiprocess
TIMEOUT = {2: 90, 4: 120}   # seconds per spawn


class Gated(nn.Module):
    """An LSTM (gates along dim 0), a fused GQA projection (sizes along dim 0) and a Conv1D-style
    (in, 3 * out) weight (parts along dim 1), sized so that shards cut parts and stream chunks."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 36)                                   # weight_hh (144, 36): 4 gates of 36 rows
        self.wqkv = nn.Linear(64, (8 + 2 * 2) * 8, bias=False)        # (96, 64): q 64, k 16, v 16
        self.c_attn = nn.Parameter(torch.empty(3001, 3 * 50))         # (in, 3 * out): chunks of 873 rows


SPEC = {"seed": 9, "vars": {"n_heads": 8, "n_kv_heads": 2, "head_dim": 8}, "rules": {
    "all": {"match": "*", "init": {"name": "normal", "std": 0.1}},
    "recurrent": {"match": "lstm.weight_hh_l0", "part": {"of": 4}, "init": "orthogonal"},
    "forget": {"match": "lstm.bias_ih_l0", "part": {"of": 4, "index": 1}, "init": "ones"},
    "kv": {"match": "wqkv.weight", "part": {"sizes": ["n_heads * head_dim", "n_kv_heads * head_dim",
                                                      "n_kv_heads * head_dim"], "index": [1, 2]},
           "init": [{"name": "uniform", "a": -1, "b": 1}, {"name": "scale", "by": 2}]},
    "q_zero": {"match": "c_attn", "part": {"dim": 1, "of": 3, "index": 0}, "init": "zeros"},
    "v": {"match": "c_attn", "part": {"dim": 1, "of": 3, "index": 2}, "init": {"name": "trunc_normal", "std": 0.02}},
}}
TP_PLACEMENTS = {"lstm.weight_hh_l0": "S1", "lstm.bias_ih_l0": "R", "wqkv.weight": "S1", "c_attn": "S0"}


def _scenarios(rank: int, world: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (world,))
    result = {}
    with torch.device("meta"):
        model = Gated()
    fully_shard(model, mesh=mesh)
    initspec.apply(model, SPEC, device="cpu")
    result["fsdp"] = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
    result["fsdp_local_rows"] = {n: p.to_local().shape[0] for n, p in model.named_parameters()}
    tp = Gated()
    for name, param in list(tp.named_parameters()):
        placement = {"S0": Shard(0), "S1": Shard(1), "R": Replicate()}[TP_PLACEMENTS.get(name, "R")]
        owner, _, attr = name.rpartition(".")
        module = tp.get_submodule(owner) if owner else tp
        setattr(module, attr, nn.Parameter(distribute_tensor(param.detach(), mesh, [placement])))
    initspec.apply(tp, SPEC)
    result["tp"] = {n: p.full_tensor().detach().clone() for n, p in tp.named_parameters()}
    return result


@pytest.mark.parametrize("world", [2, 4])
def test_part_rules_on_shards_equal_one_process(world, tmp_path):
    reference = Gated()
    initspec.apply(reference, SPEC)
    want = {n: p.detach() for n, p in reference.named_parameters()}
    assert torch.equal(want["c_attn"][:, :50], torch.zeros(3001, 50))        # the parts really applied
    assert torch.equal(want["lstm.bias_ih_l0"][36:72], torch.ones(36))
    ranks = spawn_ranks(_scenarios, world, tmp_path, timeout=TIMEOUT[world])
    for what in ("fsdp", "tp"):
        got = ranks[0][what]
        bad = [n for n in want if not torch.equal(got[n], want[n])]
        assert not bad, f"{what} on {world} ranks: {bad} differ from single-process init"
    rows = [r["fsdp_local_rows"]["lstm.weight_hh_l0"] for r in ranks]
    assert sum(rows) == 144 and max(rows) < 144                             # every rank held only its rows

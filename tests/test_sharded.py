"""Sharded init on real process groups (gloo, CPU): FSDP2 Shard(0), Replicate, Shard(1).

One spawn per world size runs every scenario on every rank; rank 0 saves the
gathered ``full_tensor()`` of each parameter and every rank saves what it drew
and read. The parent compares against single-process init with the same spec
and seed, bitwise. World size 1 runs the same code in a spawned process too.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import initspec
from initspec.models.gpt import gpt_tiny
from initspec.streams import rows_per_chunk
from conftest import assert_same_values, free_port, shard, spawn_ranks, spy, values

TIMEOUT = {1: 60, 2: 90, 4: 120}   # seconds per spawn (imports dominate: ~5 s of CPU per rank)
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ models and specs

class Wide(nn.Module):
    """Tensors larger than one stream chunk with uneven rows, and one per whole-tensor step."""

    def __init__(self):
        super().__init__()
        self.big = nn.Linear(2100, 1000)                 # 2.1M values: 499 rows per chunk
        self.vec = nn.Parameter(torch.empty(2_500_000))  # 1-D: 2**20 values per chunk
        self.emb = nn.Embedding(1001, 24, padding_idx=3)
        self.orth = nn.Linear(48, 48)
        self.eye = nn.Linear(40, 30)
        self.sparse = nn.Linear(20, 50)
        self.conv = nn.Conv2d(6, 9, 3)
        self.custom = nn.Linear(16, 33)
        self.legacy = nn.Linear(12, 35)
        self.ckpt = nn.Linear(64, 77)
        self.maybe = nn.Linear(8, 21)


def plain_fill(tensor: torch.Tensor, value: float = 0.5) -> None:
    """A custom initializer without a ``generator`` argument (runs on a seeded, forked global RNG)."""
    with torch.no_grad():
        tensor.add_(torch.rand(tensor.shape, dtype=tensor.dtype) * value)


def wide_spec(ckpt: str) -> dict:
    return {"seed": 11, "rules": {
        "weights": {"match": "*.weight", "init": {"name": "kaiming_uniform", "a": 5 ** 0.5}},
        "biases": {"match": "*.bias", "init": {"name": "uniform", "a": -0.1, "b": 0.1}},
        "big": {"match": "big.weight", "init": {"name": "trunc_normal", "std": 0.02}},
        "vec": {"match": "vec", "init": [{"name": "normal", "std": 1.0}, {"name": "scale", "by": 0.5},
                                         {"name": "add", "value": 0.1}]},
        "emb": {"match": "emb.weight", "init": [{"name": "normal"}, "padding_zero"]},
        "orth": {"match": "orth.weight", "init": {"name": "orthogonal", "gain": 2.0}},
        "eye": {"match": "eye.weight", "init": "eye"},
        "sparse": {"match": "sparse.weight", "init": {"name": "sparse", "sparsity": 0.3, "std": 0.1}},
        "dirac": {"match": "conv.weight", "init": {"name": "dirac", "groups": 3}},
        "custom": {"match": "custom.weight", "init": {"fn": "torch.nn.init.kaiming_normal_", "mode": "fan_out"}},
        "legacy": {"match": "legacy.weight", "init": {"fn": "test_sharded.plain_fill", "value": 0.25}},
        "ckpt": {"match": "*.weight", "priority": 1, "exclude": ["big.weight", "vec", "emb.weight", "orth.weight",
                                                                 "eye.weight", "sparse.weight", "conv.weight",
                                                                 "custom.weight", "legacy.weight"],
                 "init": [{"name": "checkpoint", "path": ckpt, "key": "src.{name}", "missing": "init"},
                          {"name": "normal", "std": 3.0}]},
    }}


class TP(nn.Module):
    """Layers for tensor-parallel layouts: Shard(1) (uneven columns, over a chunk), Replicate, Shard(0)."""

    def __init__(self):
        super().__init__()
        self.col = nn.Linear(1001, 300)     # weight Shard(1): 1001 columns over 2 or 4 ranks
        self.wide = nn.Linear(2100, 1000)   # weight Shard(1), larger than a chunk
        self.rep = nn.Linear(64, 64)        # Replicate
        self.row = nn.Linear(70, 999)       # weight Shard(0)
        self.orth = nn.Linear(60, 60)       # whole-tensor step on Shard(1)


TP_SPEC = {"seed": 5, "rules": {
    "w": {"match": "*.weight", "init": {"name": "normal", "std": "1 / sqrt(fan_in)"}},
    "b": {"match": "*.bias", "init": {"name": "uniform", "a": -1, "b": 1}},
    "orth": {"match": "orth.weight", "init": {"name": "orthogonal"}},
}}
TP_PLACEMENTS = {"col.weight": "S1", "wide.weight": "S1", "rep.weight": "R", "rep.bias": "R",
                 "row.weight": "S0", "row.bias": "S0", "orth.weight": "S1"}   # others: Replicate

GPT_SPEC = {"seed": 7, "rules": {
    "w": {"match": "*.weight", "ndim": 2, "init": {"name": "normal", "std": 0.02}},
    "proj": {"match": "transformer.h.*.c_proj.weight", "init": {"name": "normal", "std": "0.02 / sqrt(4)"}},
    "b": {"match": "*.bias", "init": "zeros"},
    "ln": {"match": "*.ln_*.weight", "init": "ones"},
}}
FLAW_SHAPE = (1000, 64)


# ------------------------------------------------------------------ rank side

def _fsdp_params(model: nn.Module) -> dict[str, object]:
    """Parameter name -> its FSDP2 ``FSDPParam``."""
    names = {id(p): n for n, p in model.named_parameters()}
    found = {}
    for module in model.modules():
        state = getattr(module, "_get_fsdp_state", None)
        if state is not None:
            for group in state()._fsdp_param_groups:
                for fsdp_param in group.fsdp_params:
                    found[names[id(fsdp_param.sharded_param)]] = fsdp_param
    return found


@contextlib.contextmanager
def _fsdp_resets():
    """Records every FSDP2 ``reset_sharded_param()`` on materialized storage as (shard data kept,
    local tensor kept): FSDP2 replaces both when it pads a shard into a copy of its own."""
    from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam
    calls: list[tuple[bool, bool]] = []
    original = FSDPParam.reset_sharded_param

    def reset(self):
        data, local = self._sharded_param_data, self.sharded_param._local_tensor
        original(self)
        if not local.is_meta:
            calls.append((self._sharded_param_data is data, self.sharded_param._local_tensor is local))

    FSDPParam.reset_sharded_param = reset
    try:
        yield calls
    finally:
        FSDPParam.reset_sharded_param = original


def _shard_storage(model: nn.Module) -> dict[str, tuple]:
    """Per FSDP2 parameter: (local rows, padded rows, FSDP2's all-gather input is the very storage
    of the parameter's local tensor and nothing more, its padding rows are zero)."""
    out = {}
    for name, fsdp_param in _fsdp_params(model).items():
        local, data = fsdp_param.sharded_param._local_tensor, fsdp_param._sharded_param_data
        padded = tuple(fsdp_param.padded_sharded_param_size)
        storage = local.untyped_storage()
        shared = (type(data) is torch.Tensor and data.untyped_storage().data_ptr() == storage.data_ptr() > 0
                  and data.storage_offset() == local.storage_offset() == 0 and data.numel() == math.prod(padded)
                  and storage.nbytes() == data.numel() * data.element_size())
        pad = data.view(padded)[local.shape[0]:]
        out[name] = (local.shape[0], padded[0], shared, bool((pad == 0).all()))
    return out


def _apply_recorded(model: nn.Module, out: dict, key: str) -> None:
    """Apply GPT_SPEC to a sharded meta model; record FSDP2's resets, the shard storage and the gathered values."""
    with _fsdp_resets() as resets:
        initspec.apply(model, GPT_SPEC, device="cpu")
    out[key + "_resets"], out[key + "_storage"], out[key] = resets, _shard_storage(model), values(model)


def _scenarios(rank: int, world: int, files: dict) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    import initspec.sources as sources
    import initspec.streams as streams

    mesh = init_device_mesh("cpu", (world,))
    out: dict = {"rank": rank}

    # FSDP2 Shard(0) on a meta build: record every chunk drawn and every checkpoint row read
    with torch.device("meta"):
        wide = Wide()
    shard(wide, mesh, wide.big)
    ids = {n: id(p) for n, p in wide.named_parameters()}
    with spy(streams.Stream, "generator", lambda self, step, chunk: (self.name, step, chunk)) as drawn, \
            spy(sources, "read_rows", lambda o, r0, r1: (o["key"], r0, r1)) as reads, _fsdp_resets() as resets:
        initspec.apply(wide, wide_spec(files["src"]), device="cpu", allow_fn=["test_sharded"])
    out["wide_resets"] = resets
    out["wide_same_objects"] = all(id(p) == ids[n] for n, p in wide.named_parameters())
    out["wide_local_rows"] = {n: (p.to_local().shape[0], p.shape[0]) for n, p in wide.named_parameters()}
    out["drawn"], out["reads"] = drawn, reads
    out["wide_storage"] = _shard_storage(wide)
    initspec.save_checkpoint(wide, files["saved"])   # gathers on every rank, rank 0 writes
    out["wide"] = values(wide)

    # Tensor parallel: Shard(1) / Replicate / Shard(0), built on meta and built for real
    for label, device in (("tp_meta", "meta"), ("tp_live", "cpu")):
        torch.manual_seed(rank)   # a live build starts from different values on every rank
        with torch.device(device):
            tp = TP()
        for name, param in list(tp.named_parameters()):
            layout = TP_PLACEMENTS.get(name, "R")
            placement = {"S0": Shard(0), "S1": Shard(1), "R": Replicate()}[layout]
            module_name, _, attr = name.rpartition(".")
            setattr(tp.get_submodule(module_name), attr, nn.Parameter(distribute_tensor(param, mesh, [placement])))
        initspec.apply(tp, TP_SPEC, device="cpu" if device == "meta" else None)
        out[label] = values(tp)
        out[label + "_local"] = {n: tuple(p.to_local().shape) for n, p in tp.named_parameters()}

    # The CPU-mesh flaw: every rank seeded alike (as launchers do); a DTensor's own normal_() gives every
    # shard the same values there, initspec each shard its part of the one-process tensor
    holder = nn.Module()
    with torch.device("meta"):
        holder.w = nn.Parameter(torch.empty(FLAW_SHAPE))
    shard(holder, mesh)
    torch.manual_seed(0)
    initspec.apply(holder, {"seed": 0, "rules": {"w": {"match": "w", "init": "normal"}}}, device="cpu")
    out["flaw_initspec"] = holder.w.full_tensor()

    # Tied embedding / output under FSDP2: one object after apply, and it trains
    with torch.device("meta"):
        gpt = gpt_tiny(vocab_size=1001)
    shard(gpt, mesh, *gpt.transformer.h)   # wte and lm_head share the root group
    _apply_recorded(gpt, out, "gpt")
    out["gpt_tied_after_apply"] = gpt.lm_head.weight is gpt.transformer.wte.weight
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    data = torch.randint(0, 1001, (4, 17), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(6):
        logits = gpt(data[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    out["gpt_losses"] = losses
    out["gpt_tied_after_training"] = gpt.lm_head.weight is gpt.transformer.wte.weight
    out["gpt_names"] = [n for n, _ in gpt.named_parameters()]
    out["gpt_trained"] = values(gpt)
    out["gpt_storage_trained"] = _shard_storage(gpt)

    # A failed apply (after the shards were materialized) leaves FSDP2 as it was; a retry works
    with torch.device("meta"):
        retry = gpt_tiny(vocab_size=1001)
    shard(retry, mesh, *retry.transformer.h)
    before = {n: (f.sharded_param, f._sharded_param_data) for n, f in _fsdp_params(retry).items()}
    bad = {"seed": 7, "rules": {**GPT_SPEC["rules"], "boom": {
        "match": "transformer.h.1.mlp.c_fc.weight", "priority": 5,
        "init": [{"name": "normal"}, {"name": "scale", "by": 1e39}]}}}
    try:
        initspec.apply(retry, bad, device="cpu")
        out["retry_error"] = None
    except initspec.InitSpecError as exc:
        out["retry_error"] = str(exc)
    after = _fsdp_params(retry)
    out["retry_meta"] = all(p.is_meta for p in retry.parameters())
    out["retry_restored"] = (after.keys() == before.keys()
                             and all(f.sharded_param is before[n][0] and f._sharded_param_data is before[n][1]
                                     for n, f in after.items()))
    _apply_recorded(retry, out, "retry")

    # Seed checkpoint (written by `initspec apply --out`): ties from its metadata, then shard, then load
    with torch.device("meta"):
        seeded = gpt_tiny(tie_embeddings=False)
    groups = initspec.distributed.tie(seeded, files["seed"])
    shard(seeded, mesh, *seeded.transformer.h)
    initspec.load_checkpoint(seeded, files["seed"], device="cpu")
    out["seed_groups"] = groups
    out["seed_tied"] = seeded.lm_head.weight is seeded.transformer.wte.weight
    out["seed"] = values(seeded)

    # ... and sharded before tying: a clear error, the model still on meta
    with torch.device("meta"):
        late = gpt_tiny(tie_embeddings=False)
    shard(late, mesh)
    try:
        initspec.load_checkpoint(late, files["seed"], device="cpu")
        out["late_error"] = None
    except initspec.InitSpecError as exc:
        out["late_error"] = str(exc)
    out["late_meta"] = all(p.is_meta for p in late.parameters())
    out["late_untied"] = late.lm_head.weight is not late.transformer.wte.weight
    return out


# ------------------------------------------------------------------ parent side

def _files(tmp: Path) -> dict:
    src = tmp / "src.safetensors"
    g = torch.Generator().manual_seed(3)
    save_file({"src.ckpt.weight": torch.randn(77, 64, generator=g),    # present; maybe.weight is not
               "src.other": torch.randn(3, generator=g)}, str(src))
    seed = tmp / "seed.safetensors"
    from initspec.cli import main
    assert main(["apply", "--out", str(seed), "model=gpt_tiny", "initspec=gpt2", "--seed", "5"]) == 0
    return {"src": str(src), "seed": str(seed), "saved": str(tmp / "saved.safetensors")}


def _reference_wide(files: dict) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = Wide()
    initspec.apply(model, wide_spec(files["src"]), device="cpu", allow_fn=["test_sharded"])
    return values(model)


def _reference(model: nn.Module, spec: dict) -> dict[str, torch.Tensor]:
    initspec.apply(model, spec, device="cpu")
    return values(model)


def _shards(full: torch.Tensor, world: int, dim: int = 0) -> list[torch.Tensor]:
    return list(torch.chunk(full, world, dim=dim))


# every test that reads `run` is marked multiprocess through these params (world 1 is one spawned rank)
@pytest.fixture(scope="module", params=[pytest.param(w, marks=pytest.mark.multiprocess) for w in (1, 2, 4)],
                ids=lambda w: f"world{w}")
def run(request, tmp_path_factory):
    world = request.param
    tmp = tmp_path_factory.mktemp(f"world{world}")
    files = _files(tmp)
    results = spawn_ranks(_scenarios, world, tmp, files, timeout=TIMEOUT[world])
    return {"world": world, "files": files, "ranks": results}


def test_fsdp2_shard0_equals_single_process(run):
    world, rank0 = run["world"], run["ranks"][0]
    want = _reference_wide(run["files"])
    assert_same_values(rank0["wide"], want, "FSDP2 Wide vs single-process init")
    for r in run["ranks"]:
        assert r["wide_same_objects"], "materialization replaced Parameter objects"
        local, rows = r["wide_local_rows"]["big.weight"]
        assert rows == 1000 and local == len(torch.arange(1000).chunk(world)[r["rank"]])


def test_each_rank_draws_only_the_chunks_its_rows_overlap(run):
    world = run["world"]
    for name, shape in (("big.weight", (1000, 2100)), ("vec", (2_500_000,))):
        step = rows_per_chunk(shape)
        for r in run["ranks"]:
            rows = torch.arange(shape[0]).chunk(world)[r["rank"]]
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            want = set(range(lo // step, (hi - 1) // step + 1))
            got = {c for n, s, c in r["drawn"] if n == name}
            assert got == want, (name, r["rank"], got, want)
    if world > 1:   # the chunks straddle shard boundaries: some are drawn (in part) by two ranks
        counts = [c for r in run["ranks"] for n, _, c in r["drawn"] if n == "big.weight"]
        assert len(counts) > len(set(counts))


def test_checkpoint_source_reads_only_local_rows(run):
    world = run["world"]
    want = _reference_wide(run["files"])
    from safetensors import safe_open
    with safe_open(run["files"]["src"], framework="pt") as f:
        assert torch.equal(want["ckpt.weight"], f.get_tensor("src.ckpt.weight"))
    assert not torch.equal(want["maybe.weight"], torch.zeros(21, 8))   # missing: init fell back to normal
    assert abs(float(want["maybe.weight"].std()) - 3.0) < 1.0
    covered = set()
    for r in run["ranks"]:
        rows = torch.arange(77).chunk(world)[r["rank"]]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        reads = [(a, b) for key, a, b in r["reads"] if key == "src.ckpt.weight"]
        assert reads and all(lo <= a < b <= hi for a, b in reads), (r["rank"], reads, lo, hi)
        covered |= {i for a, b in reads for i in range(a, b)}
        assert all(key == "src.ckpt.weight" for key, _, _ in r["reads"])   # the absent key is never read
    assert covered == set(range(77))


def test_tensor_parallel_shard1_and_replicate_equal_single_process(run):
    world, rank0 = run["world"], run["ranks"][0]
    want = _reference(TP(), TP_SPEC)
    assert_same_values(rank0["tp_meta"], want, "TP built on meta vs single-process init")
    assert_same_values(rank0["tp_live"], want, "TP built for real vs single-process init")
    for r in run["ranks"]:
        cols = torch.arange(1001).chunk(world)[r["rank"]]
        assert r["tp_meta_local"]["col.weight"] == (300, len(cols))
        assert r["tp_meta_local"]["rep.weight"] == (64, 64)
        assert r["tp_meta_local"]["row.weight"][0] == len(torch.arange(999).chunk(world)[r["rank"]])


def test_cpu_mesh_flaw_of_plain_normal_is_fixed(run):
    """Ranks seeded alike (a DTensor's own normal_() on a CPU mesh then repeats one shard on every rank):
    initspec gives each rank its part of the one-process tensor."""
    world, rank0 = run["world"], run["ranks"][0]
    with torch.device("meta"):
        holder = nn.Module()
        holder.w = nn.Parameter(torch.empty(FLAW_SHAPE))
    want = _reference(holder, {"seed": 0, "rules": {"w": {"match": "w", "init": "normal"}}})["w"]
    assert torch.equal(rank0["flaw_initspec"], want)
    ours = _shards(rank0["flaw_initspec"], world)
    for i in range(1, world):
        assert not torch.equal(ours[i][:10], ours[0][:10])


def test_tied_embedding_stays_one_parameter_and_trains(run):
    with torch.device("meta"):
        model = gpt_tiny(vocab_size=1001)
    want = _reference(model, GPT_SPEC)
    for r in run["ranks"]:
        assert r["gpt_tied_after_apply"] and r["gpt_tied_after_training"]
        assert "lm_head.weight" not in r["gpt_names"] and "transformer.wte.weight" in r["gpt_names"]
        losses = r["gpt_losses"]
        assert losses[-1] < losses[0] - 0.05, losses
        assert r["gpt_losses"] == run["ranks"][0]["gpt_losses"]   # one model, seen from every rank
    assert_same_values(run["ranks"][0]["gpt"], want, "FSDP2 GPT vs single-process init")
    trained = run["ranks"][0]["gpt_trained"]["transformer.wte.weight"]
    assert not torch.equal(trained, want["transformer.wte.weight"])


def test_uneven_shards_are_materialized_in_fsdp2s_padded_storage(run):
    """FSDP2 all-gathers its padded ``_sharded_param_data``; apply allocates it directly (the
    local tensor is a view of its real rows), so FSDP2 makes no padded copy of a shard."""
    world = run["world"]
    with torch.device("meta"):
        model = gpt_tiny(vocab_size=1001)
    want = _reference(model, GPT_SPEC)
    uneven = set()
    for r in run["ranks"]:
        for key, params in (("wide_resets", "wide_storage"), ("gpt_resets", "gpt_storage"),
                            ("retry_resets", "retry_storage")):
            calls = r[key]   # one reset per FSDP2 parameter, each keeping the shard it found
            assert len(calls) == len(r[params]), key
            assert all(data and local for data, local in calls), (key, r["rank"], calls)
        for key in ("wide_storage", "gpt_storage", "gpt_storage_trained", "retry_storage"):
            storage = r[key]
            assert storage, key
            for name, (rows, padded, shared, zero) in storage.items():
                assert shared and zero, (key, name, r["rank"], rows, padded)
                if rows < padded:
                    uneven.add((key, name))
    if world > 1:   # 1001 rows over 2 or 4 ranks: the last rank's shard is padded
        assert ("gpt_storage", "transformer.wte.weight") in uneven
        assert ("wide_storage", "emb.weight") in uneven
    for r in run["ranks"]:   # the failed apply put back FSDP2's own (meta) shard data
        assert r["retry_error"] and "rules.boom" in r["retry_error"], r["retry_error"]
        assert r["retry_meta"] and r["retry_restored"]
    assert_same_values(run["ranks"][0]["retry"], want, "FSDP2 GPT after a failed apply vs single-process init")


def test_seed_checkpoint_from_cli_loads_sharded_with_ties(run):
    from safetensors import safe_open
    rank0 = run["ranks"][0]
    assert rank0["seed_groups"] == {"transformer.wte.weight": ["lm_head.weight"]}
    with safe_open(run["files"]["seed"], framework="pt") as f:
        file = {k: f.get_tensor(k) for k in f.keys()}
    for r in run["ranks"]:
        assert r["seed_tied"]
    file["lm_head.weight"] = file["transformer.wte.weight"]
    got = rank0["seed"]
    assert set(got) | {"lm_head.weight"} == set(file)
    assert all(torch.equal(got[k], file[k]) for k in got)
    for r in run["ranks"]:   # sharded before the ties were made: refused, the model left on meta
        assert r["late_error"] and "initspec.distributed.tie" in r["late_error"], r["late_error"]
        assert r["late_meta"] and r["late_untied"]


def test_save_checkpoint_gathers_sharded_model(run):
    from safetensors import safe_open
    want = _reference_wide(run["files"])
    with safe_open(run["files"]["saved"], framework="pt") as f:
        assert set(f.keys()) == set(want)
        assert all(torch.equal(f.get_tensor(k), want[k]) for k in want)


# ------------------------------------------------------------------ the example launcher

@pytest.mark.multiprocess
def test_fsdp_train_example_under_torchrun(tmp_path):
    seed = tmp_path / "init.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(REPO / "examples" / "fsdp_train.py"), "--steps", "5",
           "--save", str(seed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("lm_head tied to wte: True") == 2
    assert len(re.findall(r"initialized (\d+)/\1 values", proc.stdout)) == 0   # each rank holds a part only
    losses = [float(x) for x in re.findall(r"step \d+ loss ([\d.]+)", proc.stdout)]
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.1, losses
    with torch.device("meta"):
        single = gpt_tiny()
    initspec.apply(single, "gpt2", vars={"n_layer": single.n_layer}, seed=0, device="cpu")
    from safetensors import safe_open
    with safe_open(str(seed), framework="pt") as f:
        for name, p in single.named_parameters():
            assert torch.equal(f.get_tensor(name), p.detach()), name


# ------------------------------------------------------------------ stream modes (single process)

def _wide_values(streams: str, threads: int) -> dict[str, torch.Tensor]:
    spec = {**wide_spec("unused"), "streams": streams}
    spec["rules"] = {k: v for k, v in spec["rules"].items() if k != "ckpt"}
    spec["rules"]["rest"] = {"match": ["ckpt.weight", "maybe.weight"], "init": "xavier_normal"}
    with torch.device("meta"):
        model = Wide()
    initspec.apply(model, spec, device="cpu", allow_fn=["test_sharded"], threads=threads)
    return {n: p.detach() for n, p in model.named_parameters()}


def test_portable_equals_fast_on_cpu_and_neither_depends_on_threads():
    fast = _wide_values("fast", 1)
    for streams, threads in (("fast", 3), ("portable", 1), ("portable", 3)):
        other = _wide_values(streams, threads)
        assert all(torch.equal(fast[k], other[k]) for k in fast), (streams, threads)


def test_portable_draws_on_the_cpu_for_any_device():
    from initspec.execute import stream_of
    model = nn.Linear(3, 3)
    for streams, want in (("fast", "cuda"), ("portable", "cpu")):
        plan = initspec.plan(model, {"streams": streams, "rules": {"w": {"match": "*", "init": "normal"}}})
        assert stream_of(plan, "weight", torch.device("cuda")).device.type == want

"""The planner, the walk and the pattern matcher against plain reference versions.

* ``initspec.plan`` picks, for every tensor, the rule an independent oracle picks
  (fnmatch over every rule; ``conftest.expected_winner``) on fixed cases
  with ties, shared modules, per-layer expressions, step problems and meta tensors;
* ``walk`` equals a plain recursive walk;
* ``PatternSet`` (templates, prefix/suffix ranges) equals the naive loop on names
  full of digits, ``#``, non-ASCII digits, classes and regex alternatives.
"""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import initspec
from initspec import InitSpecError
from initspec.models.gpt import gpt_tiny
from initspec.tree import MODULE_KEYS, WRAPPER_CHILDREN, walk
from conftest import assert_patterns_agree, expected_winner, fill_region


def oracle_agrees(model: nn.Module, spec) -> int:
    """Plan ``spec``; every entry outside a tie group has the oracle's winning rule. Returns the entries checked."""
    plan = initspec.plan(model, spec)
    if isinstance(spec, initspec.Spec):   # as the user would write it: no empty filters
        spec = {"rules": {name: {k: v for k, v in rule.items() if v not in ([], None)}
                          for name, rule in spec.model_dump()["rules"].items()}}
    checked = 0
    for entry in plan.entries:
        if entry.tie is None:
            assert entry.rule == expected_winner(spec, model, (entry.name, *entry.aliases)), entry
            checked += 1
    return checked


class Deep(nn.Module):
    def __init__(self, n: int = 6):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(n))
        self.shared = self.layers[2]                # one module under two names
        self.head = nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4))


DEPTH_SPEC = {
    "rules": {
        "w": {"match": "layers.*.weight", "ndim": 2, "init": {"name": "normal", "std": "0.02 / sqrt(layer + 1)"}},
        "b": {"match": "*.bias", "init": "zeros"},
        "ln": {"match": "*.1.weight", "module": "LayerNorm", "init": "ones"},
        "scale": {"match": "scale", "buffers": True, "init": {"name": "constant", "value": 2}},
        "late": {"match": "re:layers\\.[3-5]\\..*", "priority": 1, "init": {"name": "uniform", "a": -1, "b": 1}},
    },
    "default": "keep", "strict": False,
}


@pytest.mark.parametrize("case", [
    (gpt_tiny, {"rules": {}, "default": "keep", "strict": False}),
    (gpt_tiny, "gpt2"),
    (Deep, DEPTH_SPEC),
    (Deep, {**DEPTH_SPEC, "ties": {"albert": ["layers.0", "layers.*"]}}),
    (Deep, {**DEPTH_SPEC, "ties": {"heads": ["head.weight", "layers.0.0.weight"]}}),
    (Deep, {"rules": {"x": {"match": "*", "init": {"name": "normal", "std": "1 / sqrt(fan_in)"}}}}),  # step problems
    (Deep, {"rules": {"x": {"match": "*weight", "init": {"name": "scale", "by": 2}}}}),            # reads a meta tensor
])
@pytest.mark.parametrize("meta", [False, True])
def test_planner_picks_the_oracles_rule_on_fixed_cases(case, meta):
    make, spec = case
    if spec == "gpt2":
        spec = initspec.load_spec("gpt2", vars={"n_layer": 2})
    with torch.device("meta" if meta else "cpu"):
        model = make()
    try:
        assert oracle_agrees(model, spec)
    except InitSpecError as err:   # step problems and meta reads are refused, with their config paths
        assert spec["rules"].keys() == {"x"}, err
        assert any(p.path.startswith("initspec.rules.x.init") for p in err.problems), err


def reference_walk(model: nn.Module):
    """walk, written plainly: (canonical name, real name, kind) of every tensor slot, and loose tensors."""
    tensors, loose = [], []

    def visit(module, name, path, depth):
        prefix, real = (name + "." if name else ""), (path + "." if path else "")
        for kind, store in (("parameter", module._parameters), ("buffer", module._buffers)):
            tensors.extend((prefix + a, real + a, kind, t) for a, t in store.items() if t is not None)
        loose.extend(sorted(f"{prefix}{a} ({type(module).__name__}.{a})" for a, v in vars(module).items()
                            if a not in MODULE_KEYS and a[0] != "_" and isinstance(v, torch.Tensor)))
        if depth >= 256:
            return
        dp = isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel))
        for a, child in module._modules.items():
            if child is not None:
                hidden = a in WRAPPER_CHILDREN or (dp and a == "module")
                visit(child, name if hidden else prefix + a, real + a, depth + 1)

    visit(model, "", "", 0)
    return tensors, loose


class Compiled(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self._orig_mod = inner
        self.mask = torch.zeros(3)      # a loose tensor attribute


class Loose(nn.Module):
    """Instances of one class whose attribute layouts differ (walk caches the layout per class and count)."""

    def __init__(self, variant: int):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.x, self.z = (3, 4) if variant == 0 else (torch.zeros(1), torch.ones(1))
        if variant == 2:   # same class and attribute count as variant 0, another attribute
            del self.z
            self.q = torch.zeros(2)


def loose_layouts() -> nn.Module:
    return nn.Sequential(Loose(0), Loose(1), Loose(0), Loose(2), Loose(0))


@pytest.mark.parametrize("make", [gpt_tiny, Deep, lambda: Compiled(Deep()), loose_layouts,
                                  lambda: nn.DataParallel(nn.Sequential(nn.Linear(2, 2), Compiled(nn.BatchNorm1d(2))))])
def test_walk_equals_reference(make):
    model = make()
    tree = walk(model)
    tensors, loose = reference_walk(model)
    assert [(s.name, s.path, s.kind, s.tensor) for s in tree.tensors] == tensors
    assert sorted(tree.unregistered) == sorted(loose)
    assert all(tree.by_tensor_name[s.name] is next(t for t in tree.tensors if t.name == s.name) for s in tree.tensors)


PIECES = ["h", "layers", "0", "1", "12", "3", "007", "٣", "#", "w2", "ln_1", "a#1", "x", "weight", "bias", "10",
          "w1", "w12", "ln_2", "1a", "b-3", "1#2", "fc٣1"]
PATTERNS = ["*", "*.weight", "h.*.w2.*", "h.1*", "h.?.*", "h.??.*", "*.[01].*", "*[!0-9].weight", "*#*", "*.#.*",
            "h.1?.x", "*٣*", "layers.*.ln_1.*", "*.0.*.bias", "re:h\\.\\d+\\..*", "re:(?:h|layers)\\.1.*",
            "re:.*(?i:WEIGHT)", "re:.*\\.(0|12)\\.w2.*", "re:h\\.[0-9]{2}\\..*", "re:[^.]*\\.1\\..*", "re:a#1.*",
            "re:.*0\\Z", "h.[0-9]*", "*.0?.*", "*[#]*", "layers.00*",
            "*.w2.*", "*w1*", "*ln_[12]*", "*ln_[!1]*", "*.1a*", "*a#1*", "*-3*", "*[.a]1*", "*w[0-9]*", "*.w1?.*",
            "*[!.]1.*", "*1#*", "*a?1*", "re:.*w1\\..*", "re:.*ln_\\d.*"]


@pytest.mark.parametrize("seed", range(6))
def test_patternset_equals_naive_on_digit_heavy_names(seed):
    rng = random.Random(seed)
    names = sorted({".".join(rng.choice(PIECES) for _ in range(rng.randint(1, 5))) for _ in range(600)})
    names += names[:5]                                  # repeated names too
    texts = PATTERNS + [rng.choice(names) for _ in range(10)] + \
        [".".join("*" if rng.random() < 0.3 else p for p in rng.choice(names).split(".")) for _ in range(20)]
    assert_patterns_agree(texts, names)


# ------------------------------------------------- shards that cut a stream chunk

from initspec.fill import rows_exact, run_block, run_rows   # noqa: E402
from initspec.primitives import CONSTANT, NORMAL, PADDING_ZERO, SCALE, TRUNC_NORMAL, UNIFORM, ZERO_BELOW   # noqa: E402
from initspec.streams import Stream, rows_per_chunk   # noqa: E402

PIPELINES = [
    (NORMAL.op(mean=0.0, std=0.02),),
    (NORMAL.op(mean=1.0, std=2.0), SCALE.op(by=3.0)),
    (UNIFORM.op(a=-10.0, b=10.0), ZERO_BELOW.op(threshold=5.0)),
    (TRUNC_NORMAL.op(mean=0.0, std=1.0, a=-2.0, b=2.0),),
    (CONSTANT.op(value=2.0), PADDING_ZERO.op(index=3)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_partial_draws_are_exact_on_this_torch(dtype):
    for primitive in (NORMAL, UNIFORM, TRUNC_NORMAL):
        assert rows_exact((primitive.op(**primitive.example),), dtype, torch.device("cpu")), primitive.name


@pytest.mark.parametrize("ops", PIPELINES, ids=lambda ops: "+".join(o.kind for o in ops))
@pytest.mark.parametrize("rows,width", [(1365, 768), (341, 3072), (1024, 768), (45, 7), (33, 1)])
def test_rows_of_a_chunk_equal_the_whole_chunk(ops, rows, width):
    stream = Stream(3, "blocks.0.w")
    full = torch.empty(rows, width)
    run_block(ops, full, 2, 100, stream)
    for lo, hi in [(0, rows // 2), (rows // 2, rows), (rows // 3, rows // 3 + 1), (1, rows - 1), (rows - 1, rows)]:
        part = torch.empty(max(hi - lo, 0), width)
        run_rows(ops, part, 2, 100, 100 + rows, 100 + lo, stream)
        assert torch.equal(part, full[lo:hi]), (lo, hi)


@pytest.mark.parametrize("shape", [(3072, 768), (50, 21000), (100_001,), (7, 3, 5)])
@pytest.mark.parametrize("ranks", [2, 3])
def test_row_shards_equal_slices_of_the_whole_fill(shape, ranks):
    """What each FSDP2 Shard(0) rank fills (here without processes) is its slice of the whole."""
    holder = nn.Module()
    holder.w = nn.Parameter(torch.empty(shape, device="meta"))
    plan = initspec.plan(holder, {"seed": 1, "streams": "portable", "rules": {"w": {"match": "w", "init": [
        {"name": "normal", "mean": 1.0, "std": 2.0}, {"name": "scale", "by": 3.0}]}}})
    ops = plan.entry("w").ops
    assert [(o.kind, o.args) for o in ops] == [(o.kind, o.args) for o in PIPELINES[1]]
    whole = fill_region(plan, "w", torch.empty(shape), (0,) * len(shape), shape)
    step = -(-shape[0] // ranks)
    assert rows_per_chunk(shape) % step and step % rows_per_chunk(shape), "the shards must cut chunks"
    for r0 in range(0, shape[0], step):
        local = torch.empty((min(step, shape[0] - r0), *shape[1:]))
        fill_region(plan, "w", local, (r0,) + (0,) * (len(shape) - 1), shape, threads=2)
        assert torch.equal(local, whole[r0:r0 + step])
    assert rows_exact(ops, torch.float32, torch.device("cpu"))


def test_planning_leaves_no_reference_cycles():
    """Planning objects are freed by reference counting: a 100k-tensor plan left in cycles would
    cost a full garbage collection to free."""
    import gc
    model = Deep()
    spec = {"rules": {"w": {"match": "layers.*.weight", "init": {"name": "normal", "std": "0.02 / (layer + 1)"}},
                      "r": {"match": "re:(layers|head)\\.[0-2]?.*", "priority": 2, "init": "zeros"},
                      "ln": {"match": "*.1.weight", "module": "LayerNorm", "priority": 3, "init": "ones"}},
            "ties": {"heads": ["head", "layers.0.0"]}}
    spec = initspec.load_spec(spec)    # (loading goes through OmegaConf, whose configs are cyclic)
    initspec.plan(model, spec)
    for _ in range(10):     # garbage earlier tests left: freeing one generation of it can leave more
        if gc.collect() == 0:
            break
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        initspec.plan(model, spec)
        assert gc.collect() == 0, sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()

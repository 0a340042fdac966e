"""Property tests: random module trees x random specs from the whole language.

Either apply succeeds and the result satisfies the invariants (each tensor
filled by the rule an independent re-implementation of the selection rules
(conftest.expected_winner) picks, values consistent with its pipeline, ties are one object, everything
finite, the same seed gives bitwise the same values on a fresh copy), or it
raises InitSpecError and the model is bitwise unchanged. No other outcome.
"""
from __future__ import annotations

import os
import re

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn

import initspec
from initspec import InitSpecError
from initspec.steps import REQUIRED, STEPS
from initspec.primitives import value_bounds
from conftest import assert_unchanged, expected_winner, snapshot, tensors_of

EXAMPLES = int(os.environ.get("INITSPEC_PROPERTY_EXAMPLES", "100"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    derandomize=not os.environ.get("INITSPEC_PROPERTY_RANDOM"),
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------- module trees

dims = st.integers(1, 4)
leaves = st.one_of(
    st.tuples(st.just("linear"), dims, dims, st.booleans()),
    st.tuples(st.just("conv1d"), dims, dims, st.integers(1, 3)),
    st.tuples(st.just("conv2d"), dims, dims, st.integers(1, 2)),
    st.tuples(st.just("embedding"), st.integers(2, 5), dims, st.sampled_from([None, 0, 1])),
    st.tuples(st.just("layernorm"), dims),
    st.tuples(st.just("batchnorm"), dims),
)
trees = st.recursive(leaves, lambda kids: st.one_of(
    st.tuples(st.just("seq"), st.lists(kids, min_size=1, max_size=3)),
    st.tuples(st.just("dict"), st.lists(kids, min_size=1, max_size=3)),
    st.tuples(st.just("shared"), kids),          # one module object under two names
), max_leaves=5)
KEYS = ("enc", "dec", "h")


def build(blueprint, meta: bool = False) -> nn.Module:
    """The module a blueprint describes, with deterministic starting values (or none, on meta)."""
    torch.manual_seed(0)
    with torch.device("meta" if meta else "cpu"):
        return _build(blueprint if blueprint[0] in ("seq", "dict", "shared") else ("seq", [blueprint]))


def _build(bp) -> nn.Module:
    kind = bp[0]
    if kind == "seq":
        return nn.Sequential(*[_build(k) for k in bp[1]])
    if kind == "dict":
        return nn.ModuleDict({KEYS[i]: _build(k) for i, k in enumerate(bp[1])})
    if kind == "shared":
        shared = _build(bp[1])
        return nn.Sequential(shared, shared)
    if kind == "linear":
        return nn.Linear(bp[1], bp[2], bias=bp[3])
    if kind == "conv1d":
        return nn.Conv1d(bp[1], bp[2], bp[3])
    if kind == "conv2d":
        return nn.Conv2d(bp[1], bp[2], bp[3])
    if kind == "embedding":
        return nn.Embedding(bp[1], bp[2], padding_idx=bp[3])
    if kind == "layernorm":
        return nn.LayerNorm(bp[1])
    model = nn.BatchNorm1d(bp[1])
    with torch.no_grad():
        model.running_mean.uniform_(-1, 1)
    return model


# ------------------------------------------------------------------- specs

def sometimes(odds: int) -> st.SearchStrategy[bool]:
    """True about once in ``odds + 1`` draws (st.integers favours its bounds, sampled_from does not)."""
    return st.sampled_from([False] * odds + [True])


def mostly(valid, invalid, odds: int = 12):
    """``valid`` about ``odds`` times in ``odds + 1``, else ``invalid``: most cases apply, some fail."""
    return sometimes(odds).flatmap(lambda bad: invalid if bad else valid)


NUMBERS = [0.5, 1.0, 0.02, 2.0, 1e-3, "1 / sqrt(fan_in)", "0.02 / sqrt(2 * n)", "0.1 * (layer + 1)",
           "numel ** 0.5"]
BAD_NUMBERS = [0.0, -1.0, 1e39, "1 / n", "fan_inn", "1 / 0", "__import__('os')", "10**10**10"]
GLOBS = ["*", "*.weight", "*.bias", "*.0.*", "*running_*", "re:.*\\.weight", "re:.*bias", "?.*",
         "[0-9].*"]
BAD_GLOBS = ["*.wieght", "re:(", "[abc", "nothing.here", "re:(.*)*x"]
FNS = ["torch.nn.init.ones_", "torch.nn.init.zeros_", "torch.nn.init.normal_", "torch.nn.init.eye_"]
BAD_FNS = ["os.system", "torch.nn.init.torch.save", "builtins.eval", "torch.nn.init.nope_"]
STEP_NAMES = sorted(n for n, d in STEPS.items() if d.builtin and n != "checkpoint")


def arg_values(arg):
    if arg.kind == "number":
        return mostly(st.sampled_from(NUMBERS), st.sampled_from(BAD_NUMBERS))
    if arg.kind == "int":
        return mostly(st.sampled_from([1, 2]), st.sampled_from([0, 3]))
    if arg.kind == "choice":
        return mostly(st.sampled_from(arg.choices), st.just("bogus"))
    return st.sampled_from(["x", 1])


@st.composite
def steps(draw):
    kind = draw(mostly(st.just("name"), st.sampled_from(["fn", "bad_fn", "unknown"]), odds=6))
    if kind == "fn":
        return {"fn": draw(st.sampled_from(FNS))}
    if kind == "bad_fn":
        return {"fn": draw(st.sampled_from(BAD_FNS))}
    if kind == "unknown":
        return draw(st.sampled_from(["normall", {"name": "normal", "sdt": 1}]))
    name = draw(st.sampled_from(STEP_NAMES))
    step = {"name": name}
    for key, arg in STEPS[name].args.items():
        if arg.default is REQUIRED or draw(sometimes(2)):   # else keep the default
            step[key] = draw(arg_values(arg))
    return step if len(step) > 1 or draw(st.booleans()) else name


def patterns(names):
    from_names = st.sampled_from(names).map(lambda n: re.sub(r"\d+", "*", n, count=1))
    valid = st.one_of(st.sampled_from(names), st.sampled_from(GLOBS), from_names)
    return mostly(valid, st.sampled_from(BAD_GLOBS))


def pipelines():
    """One step, or a sampler followed by transforms (the common shape), or any steps."""
    transforms = st.sampled_from([{"name": "scale", "by": 0.5}, {"name": "add", "value": 1.0},
                                  {"name": "clamp", "min": -0.1, "max": 0.1}, {"name": "zero_below", "threshold": 0.01},
                                  "padding_zero", {"name": "scale", "by": 1e39}])
    return st.one_of(steps(), st.tuples(steps(), st.lists(transforms, max_size=2)).map(lambda t: [t[0], *t[1]]),
                     st.lists(steps(), min_size=1, max_size=3))


@st.composite
def cases(draw):
    blueprint = draw(trees)
    model = build(blueprint)
    params = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    buffers = [n for n, b in model.named_buffers(remove_duplicate=False) if b.is_floating_point()]
    modules = [n for n, _ in model.named_modules(remove_duplicate=False) if n]
    names = params + buffers or ["nothing"]
    rules = {}
    for i in range(draw(st.sampled_from([1, 2, 3, 0, 4]))):
        rule = {"match": draw(st.one_of(patterns(names), st.lists(patterns(names), min_size=1, max_size=2))),
                "init": draw(pipelines())}
        if draw(sometimes(3)):
            rule["exclude"] = draw(patterns(names))
        if draw(sometimes(3)):
            rule["module"] = draw(st.sampled_from(["Linear", "Conv1d", "_ConvNd", "LayerNorm", "Embedding",
                                                   "torch.nn.Linear", "NoSuchModule"]))
        if draw(sometimes(3)):
            rule["ndim"] = draw(st.sampled_from([1, 2, [2, 3], [3, 4]]))
        if draw(st.booleans()):
            rule["priority"] = draw(st.integers(-1, 2))
        for flag in ("buffers", "optional", "transposed"):
            if draw(sometimes(3)):
                rule[flag] = True
        rules[f"r{i}"] = None if draw(sometimes(14)) else rule
    spec = {"seed": draw(st.integers(0, 3)),
            "default": draw(mostly(st.sampled_from(["keep", "reset"]), st.just("error"), odds=4)),
            "strict": draw(sometimes(2)), "vars": {"n": draw(mostly(st.sampled_from([2, 12]), st.just(0)))},
            "rules": rules}
    if modules and draw(sometimes(2)):
        pairs = tie_pairs(model)
        anything = st.lists(st.sampled_from(modules + params + ["missing.module"]), min_size=2, max_size=3)
        spec["ties"] = {"t": draw(mostly(st.sampled_from(pairs), anything, odds=3) if pairs else anything)}
    return blueprint, spec, draw(sometimes(4))


def tie_pairs(model: nn.Module) -> list[list[str]]:
    """[source, target] pairs that can be tied: same-shape parameters, same-class sibling modules."""
    params = list(model.named_parameters(remove_duplicate=False))
    pairs = [[a, b] for a, x in params for b, y in params
             if a < b and x.shape == y.shape and x is not y]
    modules = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if n]

    def layout(m):
        return [(k, t.shape) for k, t in [*m.named_parameters(), *m.named_buffers()]]

    pairs += [[a, b] for a, x in modules for b, y in modules
              if a < b and not b.startswith(a + ".") and not a.startswith(b + ".") and type(x) is type(y)
              and x is not y and layout(x) == layout(y)]
    return pairs


# ------------------------------------------------------------- the checks

def tied_names(model: nn.Module, plan: initspec.Plan) -> set[str]:
    """Every tensor name a tie of ``plan`` replaced (read on the tied model). A tie sets one attribute of the
    target's parent module, so every name that reaches that module object sees the change: a parameter tie
    the parameter under each such name, a module tie every tensor below each."""
    modules = dict(model.named_modules(remove_duplicate=False))
    names = tensors_of(model)
    out = set()
    for group in plan.ties:
        for target in group.targets:
            parent, _, attr = target.rpartition(".")
            reach = {f"{n}.{attr}" if n else attr for n, m in modules.items() if m is modules[parent]}
            if group.kind == "parameter":
                out |= reach - {group.source}
            else:
                out |= {n for n in names for r in reach if n.startswith(r + ".")}
    return out


def check_values(entry, tensor: torch.Tensor) -> None:
    """Values consistent with the entry's pipeline: constants exact, samplers within bounds."""
    t = tensor.detach().double()
    ops = entry.ops
    kinds = [o.kind for o in ops]
    if kinds == ["constant"]:
        assert torch.equal(tensor.detach(), torch.full_like(tensor, ops[0]["value"])), entry.name
    elif kinds == ["eye"]:
        assert torch.equal(tensor.detach(), torch.eye(*tensor.shape, dtype=tensor.dtype)), entry.name
    elif kinds == ["dirac"]:
        expected = torch.zeros_like(tensor)
        torch.nn.init.dirac_(expected, ops[0]["groups"])
        assert torch.equal(tensor.detach(), expected), entry.name
    bounds = value_bounds(ops)
    if bounds is not None and t.numel():
        lo, hi = bounds
        slack = 1e-5 * max(abs(lo), abs(hi), 1e-30)
        assert float(t.min()) >= lo - slack and float(t.max()) <= hi + slack, (entry.name, entry.steps, bounds)
    if kinds and kinds[-1] == "zero_below":
        nonzero = t[t != 0].abs()
        assert bool((nonzero >= ops[-1]["threshold"] * (1 - 1e-6)).all()), entry.name


# --------------------------------------------------------------- the property

@SETTINGS
@given(cases())
def test_apply_either_satisfies_the_plan_or_changes_nothing(case):
    blueprint, spec, meta = case
    model = build(blueprint, meta)
    before = snapshot(model)
    try:
        report = initspec.apply(model, spec, device="cpu")
    except InitSpecError as err:
        assert err.problems and all(p.path and p.what for p in err.problems)
        assert_unchanged(model, before)
        return
    plan = report.plan
    live = tensors_of(model)

    for group in plan.ties:                     # ties are one object
        for target in group.targets:
            if group.kind == "module":
                assert model.get_submodule(target) is model.get_submodule(group.source)
            else:
                assert live[target] is live[group.source]

    tied = tied_names(model, plan)
    for entry in plan.entries:
        tensor = live[entry.name]
        assert not tensor.is_meta, f"{entry.name} left on the meta device"
        if tensor.is_floating_point():
            assert bool(torch.isfinite(tensor).all()), entry.name
        if entry.tie is None and not (set(entry.aliases) & tied):
            assert entry.rule == expected_winner(spec, model, (entry.name, *entry.aliases)), entry
        if entry.action == "fill":
            check_values(entry, tensor)
        elif entry.action == "keep" and entry.tie is None:
            assert torch.equal(tensor.detach(), before["tensors"][entry.name][1]), entry.name

    again = build(blueprint, meta)              # same seed => bitwise the same values
    initspec.apply(again, spec, device="cpu")
    for name, tensor in tensors_of(again).items():
        assert torch.equal(tensor.detach(), live[name].detach()), name


@SETTINGS
@given(cases())
def test_plan_never_touches_the_model(case):
    blueprint, spec, meta = case
    model = build(blueprint, meta)
    before = snapshot(model)
    try:
        initspec.plan(model, spec)
    except InitSpecError:
        pass
    assert_unchanged(model, before)


def test_the_generator_reaches_both_outcomes():
    """The strategy is not degenerate: some cases apply, some are refused."""
    outcomes = set()

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(cases())
    def probe(case):
        blueprint, spec, meta = case
        try:
            initspec.plan(build(blueprint, meta), spec)
            outcomes.add("ok")
        except InitSpecError:
            outcomes.add("error")

    probe()
    assert outcomes == {"ok", "error"}


# ------------------------------------------- regressions these properties found

def test_parameter_tie_on_a_meta_model_ties_the_materialized_tensor():
    with torch.device("meta"):
        model = nn.Sequential(nn.LayerNorm(2))
    initspec.apply(model, {"rules": {"a": {"match": "0.bias", "init": "ones"}},
                           "ties": {"t": ["0.bias", "0.weight"]}}, device="cpu")
    assert model[0].weight is model[0].bias and not model[0].weight.is_meta
    assert torch.equal(model[0].weight.detach(), torch.ones(2))


def test_tie_through_a_shared_module_is_planned_for_every_alias():
    block = nn.Sequential(nn.Linear(1, 1, bias=False), nn.LayerNorm(1))
    model = nn.Sequential(block, block)
    report = initspec.apply(model, {"ties": {"t": ["0.1.weight", "1.1.bias"]}})
    entry = report.plan.entry("0.1.bias")
    assert entry.name == "0.1.weight" and entry.tie == "t"
    assert model[0][1].bias is model[0][1].weight


def test_reset_module_buffers_are_planned_as_reset():
    model = nn.Sequential(nn.BatchNorm1d(2))
    report = initspec.apply(model, {"default": "reset"})
    assert {e.name: e.action for e in report.plan.entries}["0.running_mean"] == "reset"

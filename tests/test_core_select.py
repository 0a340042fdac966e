"""Selection semantics: canonical names, globs, regexes, filters, priority, strict, defaults, buffers."""
import pytest
import torch
from torch import nn

import initspec
from initspec import InitSpecError
from conftest import rules


def nested():
    return nn.ModuleDict({
        "encoder": nn.ModuleDict({"layers": nn.ModuleList([nn.ModuleDict({"fc": nn.Linear(4, 4)}) for _ in range(4)])}),
        "head": nn.Linear(4, 2),
        "norm": nn.LayerNorm(4),
        "emb": nn.Embedding(10, 4),
    })


def const(v):
    return {"name": "constant", "value": v}


def test_star_crosses_dots_and_matches_whole_name():
    plan = initspec.plan(nested(), rules(w={"match": "*.weight", "init": "zeros"}))
    filled = {e.name for e in plan.entries if e.rule == "w"}
    assert "encoder.layers.3.fc.weight" in filled and "head.weight" in filled and "norm.weight" in filled
    assert not any(n.endswith("bias") for n in filled)
    # whole-name: 'head' alone does not match 'head.weight'
    with pytest.raises(InitSpecError, match="matches no parameter"):
        initspec.plan(nested(), rules(w={"match": "head", "init": "zeros"}))


def test_question_mark_brackets_regex_lists_exclude():
    plan = initspec.plan(nested(), rules(
        a={"match": "encoder.layers.[02].fc.weight", "init": "zeros"},
        b={"match": "re:encoder\\.layers\\.(1|3)\\.fc\\.bias", "init": "ones"},
        c={"match": ["head.?ias", "emb.weight"], "init": "zeros"},
        d={"match": "*.fc.weight", "exclude": ["*.0.*", "encoder.layers.2.*"], "init": "ones", "priority": -1}))
    by = {e.name: e.rule for e in plan.entries}
    assert by["encoder.layers.0.fc.weight"] == "a" and by["encoder.layers.2.fc.weight"] == "a"
    assert by["encoder.layers.1.fc.weight"] == "d" and by["encoder.layers.3.fc.weight"] == "d"
    assert by["encoder.layers.1.fc.bias"] == "b" and by["encoder.layers.0.fc.bias"] is None
    assert by["head.bias"] == "c" and by["emb.weight"] == "c"


def test_regex_must_match_whole_name():
    with pytest.raises(InitSpecError, match="matches no parameter"):
        initspec.plan(nested(), rules(r={"match": "re:head", "init": "zeros"}))


def test_module_filter_subclasses_and_dotted_paths():
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(2, 2), MyLinear(2, 2), nn.LayerNorm(2))
    plan = initspec.plan(model, rules(lin={"match": "*", "module": "Linear", "init": "zeros"}))
    assert {e.name for e in plan.entries if e.rule == "lin"} == {"0.weight", "0.bias", "1.weight", "1.bias"}
    plan = initspec.plan(model, rules(ln={"match": "*", "module": ["torch.nn.LayerNorm"], "init": "ones"}))
    assert {e.name for e in plan.entries if e.rule == "ln"} == {"2.weight", "2.bias"}


def test_ndim_filter():
    plan = initspec.plan(nested(), rules(m={"match": "*", "ndim": 2, "init": "zeros"},
                                          v={"match": "*", "ndim": [1], "init": "ones"}))
    for e in plan.entries:
        assert e.rule == ("m" if len(e.shape) == 2 else "v")


def test_priority_then_declaration_order_and_shadowing():
    spec = rules(
        all={"match": "*", "init": const(1)},
        weights={"match": "*.weight", "init": const(2)},
        head={"match": "head.weight", "init": const(3), "priority": -1},
        late={"match": "*.bias", "init": const(4)},
        never={"match": "head.bias", "init": const(5), "priority": -5},
    )
    model = nested()
    report = initspec.apply(model, spec)
    plan = report.plan
    assert plan.entry("head.weight").rule == "weights"
    assert set(plan.entry("head.weight").shadowed) == {"all", "head"}
    assert plan.entry("head.bias").rule == "late"
    assert plan.entry("emb.weight").rule == "weights"
    assert float(model["head"].weight[0, 0]) == 2 and float(model["head"].bias[0]) == 4
    summary = {r.name: r for r in plan.rules}
    assert summary["head"].fully_shadowed and summary["never"].fully_shadowed
    assert not summary["weights"].fully_shadowed
    text = plan.explain()
    assert "fully shadowed" in text and "head" in text


def test_strict_suggests_near_names_optional_and_strict_false():
    model = nested()
    with pytest.raises(InitSpecError) as err:
        initspec.plan(model, rules(x={"match": "head.wieght", "init": "zeros"}))
    assert err.value.paths == ("initspec.rules.x.match",)
    assert "head.weight" in str(err.value)
    initspec.plan(model, rules(x={"match": "head.wieght", "init": "zeros", "optional": True}))
    initspec.plan(model, {"strict": False, "rules": {"x": {"match": "nothing", "init": "zeros"}}})


def test_default_error_lists_all_uncovered():
    with pytest.raises(InitSpecError) as err:
        initspec.plan(nested(), {"default": "error", "rules": {"w": {"match": "*.weight", "init": "zeros"}}})
    message = str(err.value)
    assert err.value.paths == ("initspec.default",)
    for name in ["encoder.layers.0.fc.bias", "encoder.layers.3.fc.bias", "head.bias", "norm.bias"]:
        assert name in message


def test_default_keep_leaves_values_and_reset_is_deterministic():
    torch.manual_seed(0)
    a = nested()
    kept = a["head"].bias.detach().clone()
    initspec.apply(a, {"rules": {"w": {"match": "*.weight", "init": "zeros"}}})
    assert torch.equal(a["head"].bias, kept)

    torch.manual_seed(1)
    b = nested()
    torch.manual_seed(2)
    c = nested()
    state = torch.get_rng_state()
    spec = {"default": "reset", "seed": 7, "rules": {"w": {"match": "*.weight", "init": "zeros"}}}
    rb, rc = initspec.apply(b, spec), initspec.apply(c, spec)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(b["head"].bias, c["head"].bias)
    assert not torch.equal(b["head"].bias, torch.zeros(2))
    assert torch.count_nonzero(b["head"].weight) == 0  # the rule fills after the reset
    assert rb.plan.entry("head.bias").action == "reset" and "head" in rb.plan.resets


def test_buffers_selectable_only_with_buffers_true_and_never_integers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(InitSpecError):
        initspec.plan(model, rules(rs={"match": "1.running_*", "init": const(5)}))
    report = initspec.apply(model, rules(rs={"match": "1.*", "buffers": True, "init": const(5)}))
    assert torch.equal(model[1].running_mean, torch.full((2,), 5.0))
    assert torch.equal(model[1].running_var, torch.full((2,), 5.0))
    assert int(model[1].num_batches_tracked) == 0           # integer buffer never touched
    assert report.plan.entry("1.num_batches_tracked").action == "keep"


def test_canonical_names_strip_wrappers():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    inner = nn.Sequential(nn.Linear(2, 2), checkpoint_wrapper(nn.Linear(2, 2)))
    compiled = torch.compile(inner)
    wrapped = nn.DataParallel(compiled)
    names = [n for n, _ in wrapped.named_parameters()]
    assert names[0].startswith("module._orig_mod.") and "_checkpoint_wrapped_module" in names[2]
    plan = initspec.plan(wrapped, rules(w={"match": "*.weight", "init": "zeros"}))
    assert [e.name for e in plan.entries] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    initspec.apply(wrapped, rules(w={"match": "1.weight", "init": const(2)}))
    assert torch.equal(inner[1]._checkpoint_wrapped_module.weight, torch.full((2, 2), 2.0))


def test_module_prefix_kept_for_a_real_submodule_named_module():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    plan = initspec.plan(Holder(), rules(w={"match": "module.weight", "init": "zeros"}))
    assert plan.entry("module.weight").rule == "w"


def test_fsdp1_style_wrapper_child_is_hidden():
    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self._fsdp_wrapped_module = m

    model = nn.Sequential(Wrapper(nn.Linear(2, 2)))
    plan = initspec.plan(model, rules(w={"match": "0.weight", "init": "zeros"}))
    assert plan.entry("0.weight").rule == "w"


def test_shared_tensor_is_one_parameter_with_winner_over_all_names():
    lin = nn.Linear(3, 3)
    model = nn.ModuleDict({"a": lin, "b": lin})
    plan = initspec.plan(model, rules(x={"match": "a.weight", "init": const(1)},
                                      y={"match": "b.weight", "init": const(2), "priority": 1}))
    entry = plan.entry("a.weight")
    assert entry.aliases == ("b.weight",) and entry.rule == "y" and entry.shadowed == ("x",)
    assert len([e for e in plan.entries if e.name.endswith("weight")]) == 1

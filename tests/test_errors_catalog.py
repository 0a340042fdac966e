"""The bad-input catalog: every mistake is one InitSpecError naming its config path,
and the model is bitwise unchanged (values, Parameter objects, modules: no ties made).

Each case is (id, spec, expected path fragment); options name a model, apply()
keyword arguments, phrases the message must contain, a time bound for inputs
built to exhaust resources, and ``late=True`` for failures that planning cannot
see (they happen in phase A of execution, after the plan succeeded).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

import initspec
from initspec import InitSpecError
from conftest import FN, assert_unchanged, rules, snapshot

ME = __name__  # allow_fn prefix for NOT_CALLABLE
NOT_CALLABLE = 3


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4, padding_idx=0)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.conv = nn.Conv1d(4, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 2)
        self.wide = nn.Linear(4, 4, dtype=torch.float64)


class FailingReset(nn.Linear):
    """reset_parameters() writes new values, assigns a new Parameter, then raises."""

    def reset_parameters(self) -> None:
        if getattr(self, "armed", False):
            with torch.no_grad():
                self.bias.fill_(7.0)
            self.weight = nn.Parameter(torch.zeros_like(self.weight))
            raise RuntimeError("reset failed")
        super().reset_parameters()


def net() -> nn.Module:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
    return model


def resetting_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), FailingReset(4, 4))
    model[1].armed = True
    return model


def meta_net() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))


def half_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4)).half()


def w(init: Any, match: str = "body.*.weight", **extra: Any) -> dict:
    """A spec with one rule 'w'."""
    return rules(w={"match": match, "init": init, **extra})


@dataclass(frozen=True)
class Case:
    id: str
    spec: Any                       # a spec, or f(files) -> spec for cases that need files
    path: str                       # must appear in one of err.paths and in str(err)
    model: Callable[[], nn.Module] = net
    kwargs: dict = field(default_factory=dict)
    says: tuple[str, ...] = ()      # further phrases the message must contain
    seconds: float | None = None    # refused within this time (resource bombs)
    late: bool = False              # planning succeeds; execution fails in phase A


BOMB = 0.5  # seconds: a safety bound, not a benchmark

CASES = [
    # ---------------------------------------------------------------- load
    Case("yaml_does_not_parse", lambda f: f["tab.yaml"], "tab.yaml:4", says=("does not parse",)),
    Case("yaml_unclosed_bracket", lambda f: f["bracket.yaml"], "bracket.yaml:5"),
    Case("yaml_not_utf8", lambda f: f["binary.yaml"], "binary.yaml", says=("UTF-8",)),
    Case("yaml_alias_bomb", lambda f: f["laughs.yaml"], "laughs.yaml", says=("expands to more than",),
         seconds=BOMB),
    Case("yaml_alias_cycle", lambda f: f["cycle.yaml"], "cycle.yaml:1", says=("cycle",), seconds=BOMB),
    Case("yaml_python_tag", lambda f: f["pytag.yaml"], "pytag.yaml:1", says=("python/object/apply",)),
    Case("yaml_rule_named_off", lambda f: f["off.yaml"], "initspec.rules.off", says=("boolean", "quote")),
    Case("yaml_rule_named_no", lambda f: f["no.yaml"], "initspec.rules.no", says=("boolean",)),
    Case("dict_rule_name_became_bool", {"rules": {False: {"match": "*", "init": "zeros"}}},
         "initspec.rules.False", says=("YAML 1.1",)),
    Case("file_holds_a_list", lambda f: f["list.yaml"], "list.yaml", says=("list, not a mapping",)),
    Case("no_such_preset", "seed_custm", "initspec", says=("Did you mean 'seed_custom'",)),
    Case("interpolation_missing", lambda f: f["interp.yaml"], "initspec.vars.n_layer",
         says=("model.n_layer",)),
    Case("vars_interpolation_missing", lambda f: f["vars_interp"], "initspec.vars", says=("model.dims",)),
    # -------------------------------------------------------- keys and types
    Case("misspelled_top_key", {"rule": {}}, "initspec.rule", says=("Did you mean 'rules'",)),
    Case("misspelled_rule_key", rules(w={"mtach": "*.weight", "init": "zeros"}), "initspec.rules.w.mtach",
         says=("Did you mean 'match'",)),
    Case("misspelled_step_arg", w({"name": "normal", "sdt": 0.1}), "initspec.rules.w.init.sdt",
         says=("Did you mean 'std'",)),
    Case("misspelled_tie_key", {"ties": {"t": {"memebrs": ["body.0", "body.1"]}}}, "initspec.ties.t.memebrs",
         says=("Did you mean 'members'",)),
    Case("priority_wrong_type", w("zeros", priority="high"), "initspec.rules.w.priority"),
    Case("std_wrong_type", w({"name": "normal", "std": [1]}), "initspec.rules.w.init.std"),
    Case("seed_wrong_type", {"seed": "abc"}, "initspec.seed"),
    Case("ndim_boolean", w("zeros", ndim=True), "initspec.rules.w.ndim"),
    Case("rules_as_list", {"rules": [{"match": "*", "init": "zeros"}]}, "initspec.rules",
         says=("mapping keyed by name",)),
    Case("vars_not_numbers", {"vars": {"n": "twelve"}}, "initspec.vars.n"),
    Case("missing_match", rules(w={"init": "zeros"}), "initspec.rules.w.match", says=("missing",)),
    Case("missing_init", rules(w={"match": "*.weight"}), "initspec.rules.w.init", says=("missing",)),
    Case("missing_step_arg", w({"name": "checkpoint"}), "initspec.rules.w.init.path", says=("needs argument",)),
    Case("override_from_hydra", lambda f: f["hydra_override"], "initspec.rules.w.init.std", says=("> 0",)),
    # ------------------------------------------------------ argument values
    Case("std_zero", w({"name": "normal", "std": 0}), "initspec.rules.w.init.std", says=("> 0",)),
    Case("std_negative_in_pipeline", w([{"name": "normal", "std": -1}, {"name": "scale", "by": 2}]),
         "initspec.rules.w.init.0.std"),
    Case("uniform_a_gt_b", w({"name": "uniform", "a": 1, "b": -1}), "initspec.rules.w.init.a",
         says=("a must be <= b",)),
    Case("trunc_cutoff_zero", w({"name": "trunc_normal", "cutoff": 0}), "initspec.rules.w.init.cutoff"),
    Case("sparsity_one", w({"name": "sparse", "sparsity": 1.0}), "initspec.rules.w.init.sparsity",
         says=("[0, 1)",)),
    Case("sparsity_negative", w({"name": "sparse", "sparsity": -0.1}), "initspec.rules.w.init.sparsity"),
    Case("bias_prob_outside", w({"name": "bias_prob", "prior": 1}), "initspec.rules.w.init.prior"),
    Case("choice_misspelled", w({"name": "kaiming_normal", "mode": "fan_inn"}), "initspec.rules.w.init.mode",
         says=("Did you mean 'fan_in'",)),
    Case("unknown_step", w({"name": "normall", "std": 1}), "initspec.rules.w.init.name",
         says=("Did you mean 'normal'",)),
    Case("unknown_step_in_pipeline", w(["zeros", "xavier_unifrom"]), "initspec.rules.w.init.1.name",
         says=("Did you mean 'xavier_uniform'",)),
    # -------------------------------------------------- patterns, coverage
    Case("invalid_glob", w("zeros", match="[body.*"), "initspec.rules.w.match", says=("invalid glob",)),
    Case("invalid_regex", w("zeros", match="re:(body"), "initspec.rules.w.match", says=("invalid regex",)),
    Case("regex_nested_repetition", w("zeros", match="re:(.*)*x"), "initspec.rules.w.match",
         says=("backtrack",), seconds=BOMB),
    Case("regex_too_many_stars", w("zeros", exclude="re:" + ".*" * 12 + "x"), "initspec.rules.w.exclude",
         says=("unbounded repetitions",), seconds=BOMB),
    Case("invalid_exclude_regex", w("zeros", exclude="re:[a-"), "initspec.rules.w.exclude"),
    Case("strict_rule_matches_nothing", w("zeros", match="*.wieght"), "initspec.rules.w.match",
         says=("matches no parameter", "nearest names")),
    Case("default_error_lists_all", {"default": "error", "rules": {"w": {"match": "*.weight", "init": "zeros"}}},
         "initspec.default", says=("7 parameter(s)", "body.0.bias", "body.1.bias", "conv.bias", "norm.bias",
                                   "bn.bias", "head.bias", "wide.bias")),
    # ----------------------------------------------------------------- ties
    Case("tie_target_missing", {"ties": {"t": ["body.0", "body.7"]}}, "initspec.ties.t.1",
         says=("not a module or parameter",)),
    Case("tie_source_missing", {"ties": {"t": ["bodyy.0", "body.1"]}}, "initspec.ties.t.0"),
    Case("tie_shapes_differ", {"ties": {"t": ["body.0.weight", "head.weight"]}}, "initspec.ties.t.1",
         says=("shape",)),
    Case("tie_dtypes_differ", {"ties": {"t": ["body.0.weight", "wide.weight"]}}, "initspec.ties.t.1",
         says=("dtypes differ",)),
    Case("tie_classes_differ", {"ties": {"t": ["norm", "bn"]}}, "initspec.ties.t.1", says=("classes differ",)),
    Case("tie_param_in_two_groups", {"ties": {"t": ["body.0.bias", "body.1.bias"],
                                              "u": ["norm.bias", "body.1.bias"]}},
         "initspec.ties.u", says=("two tie groups",)),
    Case("tie_module_to_own_ancestor", {"ties": {"t": ["body", "body.0"]}}, "initspec.ties.t.1",
         says=("ancestor",)),
    Case("tie_glob_matches_nothing", {"ties": {"t": ["body.0", "layers.*"]}}, "initspec.ties.t.1"),
    # ---------------------------------------------------------- expressions
    Case("expr_unknown_name", w({"name": "normal", "std": "1 / sqrt(fan_inn)"}), "initspec.rules.w.init.std",
         says=("Did you mean 'fan_in'",)),
    Case("expr_division_by_zero", w({"name": "normal", "std": "1 / (fan_in - fan_in)"}),
         "initspec.rules.w.init.std", says=("division by zero",)),
    Case("expr_import", w({"name": "normal", "std": "__import__('os').system('true')"}),
         "initspec.rules.w.init.std", seconds=BOMB),
    Case("expr_attribute", w({"name": "normal", "std": "fan_in.__class__"}), "initspec.rules.w.init.std",
         says=("attribute access",), seconds=BOMB),
    Case("expr_lambda", w({"name": "normal", "std": "(lambda: 1)()"}), "initspec.rules.w.init.std",
         seconds=BOMB),
    Case("expr_comprehension", w({"name": "normal", "std": "[x for x in shape][0]"}),
         "initspec.rules.w.init.std", says=("comprehensions",), seconds=BOMB),
    Case("expr_power_tower", w({"name": "normal", "std": "10**10**10"}), "initspec.rules.w.init.std",
         says=("too large",), seconds=BOMB),
    Case("expr_huge_repeat", w({"name": "normal", "std": "'9' * 10**9"}), "initspec.rules.w.init.std",
         seconds=BOMB),
    Case("expr_deep_nesting", w({"name": "normal", "std": "-" * 450 + "1"}), "initspec.rules.w.init.std",
         says=("syntax nodes",), seconds=BOMB),
    Case("expr_too_long", w({"name": "normal", "std": "+".join(["1"] * 2000)}), "initspec.rules.w.init.std",
         says=("characters long",), seconds=BOMB),
    Case("expr_fan_in_of_1d", w({"name": "normal", "std": "1 / sqrt(fan_in)"}, match="body.*.bias"),
         "initspec.rules.w.init.std", says=("body.0.bias", "1-D")),
    # ------------------------------------------------------- custom callables
    Case("fn_not_importable", w({"fn": "initspec_no_such_pkg.inits.f"}), "initspec.rules.w.init.fn",
         kwargs={"allow_fn": ["initspec_no_such_pkg"]}, says=("cannot import",)),
    Case("fn_module_fails_on_import", w({"fn": "initspec_catalog_broken.f"}), "initspec.rules.w.init.fn",
         kwargs={"allow_fn": ["initspec_catalog_broken"]}, says=("broken at import",)),
    Case("fn_missing_attribute", w({"fn": "torch.nn.init.no_such_init_"}), "initspec.rules.w.init.fn",
         says=("has no attribute",)),
    Case("fn_outside_prefixes", w({"fn": "os.system", "command": "true"}), "initspec.rules.w.init.fn",
         says=("outside the allowed prefixes",)),
    Case("fn_builtins_eval", w({"fn": "builtins.eval"}), "initspec.rules.w.init.fn"),
    Case("fn_escapes_through_import", lambda f: w({"fn": "torch.nn.init.torch.save", "f": f["owned.pt"]}),
         "initspec.rules.w.init.fn", says=("leaves the allowed prefixes",)),
    Case("fn_not_callable", w({"fn": f"{ME}.NOT_CALLABLE"}), "initspec.rules.w.init.fn",
         kwargs={"allow_fn": [ME]}, says=("not a function",)),
    Case("fn_raising", w({"fn": f"{FN}.boom"}), "initspec.rules.w.init", kwargs={"allow_fn": [FN]},
         says=("RuntimeError: boom",), late=True),
    Case("fn_writes_nan", w({"fn": f"{FN}.nan_fill"}), "initspec.rules.w.init", kwargs={"allow_fn": [FN]},
         says=("NaN",), late=True),
    Case("fn_torch_init_on_wrong_shape", w({"fn": "torch.nn.init.dirac_"}), "initspec.rules.w.init",
         says=("3, 4, or 5 dimensions",), late=True),
    # --------------------------------------------------- whole-tensor steps
    Case("xavier_on_1d", w("xavier_uniform", match="body.*"), "initspec.rules.w.init",
         says=("body.0.bias", "1-D")),
    Case("orthogonal_on_1d", w({"name": "orthogonal", "gain": 1}, match="norm.*"), "initspec.rules.w.init",
         says=(">= 2 dimensions",)),
    Case("dirac_on_linear", w("dirac"), "initspec.rules.w.init", says=("3-, 4- or 5-D",)),
    Case("eye_on_conv", w("eye", match="conv.weight"), "initspec.rules.w.init", says=("2-D",)),
    Case("dirac_groups_do_not_divide", w({"name": "dirac", "groups": 3}, match="conv.weight"),
         "initspec.rules.w.init.groups"),
    # ---------------------------------------------------------- checkpoints
    Case("ckpt_missing_file", lambda f: w({"name": "checkpoint", "path": f["dir"] + "/nope.safetensors"}),
         "initspec.rules.w.init.path", says=("does not exist",)),
    Case("ckpt_truncated", lambda f: w({"name": "checkpoint", "path": f["trunc.safetensors"]}),
         "initspec.rules.w.init.path"),
    Case("ckpt_corrupted", lambda f: w({"name": "checkpoint", "path": f["garbage.safetensors"]}),
         "initspec.rules.w.init.path"),
    Case("ckpt_truncated_torch", lambda f: w({"name": "checkpoint", "path": f["trunc.pt"]}),
         "initspec.rules.w.init.path"),
    Case("ckpt_missing_key", lambda f: w({"name": "checkpoint", "path": f["good.safetensors"],
                                          "key": "model.{name}"}),
         "initspec.rules.w.init.key", says=("Did you mean 'body.0.weight'",)),
    Case("ckpt_shape_mismatch", lambda f: w({"name": "checkpoint", "path": f["good.safetensors"],
                                             "key": "head.weight"}),
         "initspec.rules.w.init.key", says=("shape",)),
    Case("ckpt_dtype_mismatch", lambda f: w({"name": "checkpoint", "path": f["f64.pt"]}),
         "initspec.rules.w.init.key", says=("dtype float64",)),
    Case("ckpt_pickle_refused", lambda f: w({"name": "checkpoint", "path": f["evil.pt"]}),
         "initspec.rules.w.init.path", says=("weights_only=True",)),
    # ------------------------------------------------------ NaN and infinity
    Case("scale_overflows_float32", w(["ones", {"name": "scale", "by": 1e39}]), "initspec.rules.w.init.1",
         says=("inf",), late=True),
    Case("zero_times_overflowing_scale", w(["zeros", {"name": "scale", "by": 1e39}]), "initspec.rules.w.init.1",
         says=("NaN",), late=True),
    Case("add_overflows_float16", w([{"name": "constant", "value": 60000}, {"name": "add", "value": 60000}],
                                    match="0.weight"),
         "initspec.rules.w.init.1", model=half_net, says=("inf",), late=True),
    Case("expr_overflows", w({"name": "normal", "std": "1e308 * 10"}), "initspec.rules.w.init.std",
         says=("finite",)),
    Case("uniform_range_too_wide", w({"name": "uniform", "a": -3e38, "b": 3e38}), "initspec.rules.w.init",
         says=("float32",)),
    # ----------------------------------------------------- late: execution
    Case("reset_raises", {"default": "reset", "rules": {"w": {"match": "0.*", "init": "zeros"}}},
         "initspec.default", model=resetting_net, says=("reset failed",), late=True),
    Case("nan_after_ties_planned", {"ties": {"t": ["body.0", "body.1"]},
                                    "rules": {"w": {"match": "body.0.bias", "init": ["ones", {"name": "scale",
                                                                                            "by": 1e39}]}}},
         "initspec.rules.w.init.1", late=True),
    Case("nan_after_materializing_meta", rules(a={"match": "*.bias", "init": "zeros"},
                                               w={"match": "*.weight", "init": ["ones", {"name": "scale",
                                                                                         "by": 1e39}]}),
         "initspec.rules.w.init.1", model=meta_net, kwargs={"device": "cpu"}, late=True),
    # ----------------------------------------------------------- arguments
    Case("seed_argument_not_int", w("zeros"), "seed", kwargs={"seed": "abc"}),
    Case("vars_argument_not_mapping", w("zeros"), "vars", kwargs={"vars": 5}),
]


def test_catalog_is_large_and_distinct():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Any]:
    """Every file a case refers to, and the module that fails on import."""
    d = tmp_path_factory.mktemp("catalog")
    out: dict[str, Any] = {"dir": str(d)}

    def put(name: str, content: str | bytes) -> None:
        path = d / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        out[name] = str(path)

    put("tab.yaml", "rules:\n  w:\n    match: '*.weight'\n\tinit: zeros\n")
    put("bracket.yaml", "rules:\n  w:\n    match: '*.weight'\n    init: [zeros\n  b: {match: x}\n")
    put("binary.yaml", b"\xff\xfe\x00rules: {}\n")
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    put("laughs.yaml", "\n".join(laughs) + "\n")
    put("cycle.yaml", "rules: &r {w: *r}\n")
    put("pytag.yaml", "rules: !!python/object/apply:os.system ['touch pwned']\n")
    put("off.yaml", "rules:\n  off:\n    match: '*.bias'\n    init: zeros\n")
    put("no.yaml", "rules:\n  no: {match: '*.bias', init: zeros}\n")
    put("list.yaml", "- rules\n- ties\n")
    put("interp.yaml", "vars:\n  n_layer: ${model.n_layer}\nrules:\n  w: {match: '*.weight', init: zeros}\n")
    cfg = OmegaConf.create({"model": {"n_layer": 2}, "initspec": {
        "vars": {"n_layer": "${model.n_layer}"},
        "rules": {"w": {"match": "body.*.weight", "init": {"name": "normal", "std": "0.02 / n_layer"}}}}})
    out["vars_interp"] = OmegaConf.create({"model": {}, "initspec": {"vars": "${model.dims}"}}).initspec
    out["hydra_override"] = OmegaConf.merge(cfg, OmegaConf.from_dotlist(["initspec.rules.w.init.std=-1"])).initspec

    state = {k: v.detach().clone() for k, v in net().state_dict().items() if v.is_floating_point()}
    put("good.safetensors", b"")
    save_file(state, out["good.safetensors"])
    raw = Path(out["good.safetensors"]).read_bytes()
    put("trunc.safetensors", raw[: len(raw) - 16])
    put("garbage.safetensors", b"garbage!" * 16)
    put("good.pt", b"")
    torch.save(state, out["good.pt"])
    raw = Path(out["good.pt"]).read_bytes()
    put("trunc.pt", raw[: len(raw) // 2])
    put("f64.pt", b"")
    torch.save({k: v.double() for k, v in state.items()}, out["f64.pt"])
    put("evil.pt", b"")
    torch.save({"body.0.weight": _Evil(str(d / "pwned"))}, out["evil.pt"])
    out["pwned"] = d / "pwned"
    out["owned.pt"] = str(d / "owned.pt")       # where torch.save would write if an fn: path escaped

    put("initspec_catalog_broken.py", "raise RuntimeError('broken at import')\n")
    sys.path.insert(0, str(d))
    yield out
    sys.path.remove(str(d))
    sys.modules.pop("initspec_catalog_broken", None)


class _Evil:
    """Unpickling it would create a file: torch.load(weights_only=True) must refuse."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module", autouse=True)
def warm():
    """First-use imports (DTensor checks, generators) happen here, not inside a timed case."""
    initspec.apply(net(), w({"name": "normal", "std": 0.1}))
    initspec.sources.clear_cache()


# ------------------------------------------------------------- the catalog

@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, files):
    spec = case.spec(files) if callable(case.spec) else case.spec
    model = case.model()
    before = snapshot(model)
    if case.late:
        initspec.plan(model, spec, **{k: v for k, v in case.kwargs.items() if k != "device"})
    start = time.perf_counter()
    with pytest.raises(Exception) as caught:
        initspec.apply(model, spec, **case.kwargs)
    elapsed = time.perf_counter() - start
    err = caught.value
    assert type(err) is InitSpecError, f"{type(err).__name__} escaped: {err}"
    assert any(case.path in p for p in err.paths), (case.path, err.paths)
    message = str(err)
    assert case.path in message
    for phrase in case.says:
        assert phrase in message, (phrase, message)
    assert_unchanged(model, before)
    if case.seconds is not None:
        assert elapsed < case.seconds, f"took {elapsed:.3f} s"


def test_refused_pickle_ran_nothing(files):
    with pytest.raises(InitSpecError):
        initspec.apply(net(), w({"name": "checkpoint", "path": files["evil.pt"]}))
    assert not files["pwned"].exists()
    assert not os.path.exists(files["owned.pt"])     # nor did fn_escapes_through_import's torch.save


# ------------------------------------------------------- the near misses

def test_quoted_off_is_a_valid_rule_name(tmp_path):
    path = tmp_path / "quoted.yaml"
    path.write_text("rules:\n  'off':\n    match: 'body.*.bias'\n    init: zeros\n")
    model = net()
    initspec.apply(model, str(path))
    assert all(torch.equal(layer.bias, torch.zeros(4)) for layer in model.body)


def test_every_problem_is_reported_at_once():
    spec = rules(a={"match": "*.weight", "init": {"name": "normal", "std": -1}},
                 b={"match": "*.bias", "init": {"name": "normall"}},
                 c={"mtach": "x", "init": "zeros"})
    with pytest.raises(InitSpecError) as caught:
        initspec.apply(net(), spec)
    paths = caught.value.paths
    for expected in ("initspec.rules.a.init.std", "initspec.rules.b.init.name", "initspec.rules.c.mtach"):
        assert expected in paths, paths


def test_readme_error_messages_are_real():
    """The README's "Errors and trust" messages are str(err) of catalog cases, verbatim."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Errors and trust", 1)[1]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    shown = [line for line in block.splitlines() if line.strip()]
    by_id = {c.id: c for c in CASES}
    actual = set()
    for case_id in ("misspelled_rule_key", "expr_unknown_name", "fn_outside_prefixes"):
        case = by_id[case_id]
        with pytest.raises(InitSpecError) as caught:
            initspec.apply(case.model(), case.spec, **case.kwargs)
        actual.add(str(caught.value))
    assert len(shown) == 3 and set(shown) == actual

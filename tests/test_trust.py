"""The trust model: a spec cannot choose what code runs.

* ``fn:`` paths resolve only under prefixes the caller passes (``torch.nn.init``
  always); no spec key and no command-line override widens them, and a path
  cannot walk out of a prefix through a module it imports.
* Expressions are walked by initspec's evaluator: never ``eval``/``exec``,
  never compiled to code.
* Checkpoints load with safetensors or ``torch.load(weights_only=True)``.
* A spec without ``fn:`` entries runs no user code.
"""
from __future__ import annotations

import ast
import builtins
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

import initspec
from initspec import InitSpecError
from conftest import spy

REPO = Path(__file__).resolve().parents[1]
USER_MODULE = """
import os
from os import system
CALLS = []

def fill(tensor, **kwargs):
    CALLS.append("fill")
    tensor.fill_(0.5)

def reset(self):
    CALLS.append("reset")
"""


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    """A user package ``trust_user_inits`` (importable, with a function and an imported os.system)."""
    (tmp_path / "trust_user_inits.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("trust_user_inits", None)
    yield tmp_path / "trust_user_inits.py"
    sys.modules.pop("trust_user_inits", None)


@pytest.fixture
def no_processes(monkeypatch):
    """os.system and subprocess fail the test if anything calls them."""
    def forbidden(*args, **kwargs):
        pytest.fail(f"a process was started: {args}")
    for target, name in ((os, "system"), (subprocess, "Popen"), (subprocess, "run"), (os, "popen")):
        monkeypatch.setattr(target, name, forbidden)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))


def fn_spec(path: str, **kwargs) -> dict:
    return {"rules": {"w": {"match": "0.weight", "init": {"fn": path, **kwargs}}}}


# ------------------------------------------------------------ fn: prefixes

@pytest.mark.parametrize("path", [
    "os.system", "builtins.eval", "builtins.exec", "subprocess.run", "subprocess.Popen", "importlib.import_module",
    "torch.nn.init.torch.save", "torch.nn.init.torch.load", "torch.nn.init.warnings.warn", "torch.nn.init.math.sqrt",
    "torch.nn.init.normal_.__globals__", "torch.nn.init.__builtins__",
])
def test_dangerous_paths_are_refused(path, no_processes, tmp_path):
    m = model()
    before = m[0].weight.detach().clone()
    with pytest.raises(InitSpecError) as caught:
        initspec.apply(m, fn_spec(path, f=str(tmp_path / "written.pt"), command="true"))
    assert "initspec.rules.w.init.fn" in caught.value.paths
    assert torch.equal(m[0].weight, before)
    assert not (tmp_path / "written.pt").exists()


def test_a_callers_prefix_does_not_reach_what_its_module_imports(user_pkg, no_processes):
    allow = ["trust_user_inits"]
    initspec.apply(model(), fn_spec("trust_user_inits.fill"), allow_fn=allow)  # the package's own function: fine
    for path in ("trust_user_inits.system", "trust_user_inits.os.system"):
        with pytest.raises(InitSpecError, match="outside the allowed prefixes|leaves the allowed prefixes"):
            initspec.apply(model(), fn_spec(path, command="true"), allow_fn=allow)


@pytest.mark.parametrize("where", [
    {"allow_fn": ["os"]},                                   # top level
    {"allowed_prefixes": ["os"]},
    {"rules": {"w": {"match": "0.weight", "allow_fn": ["os"], "init": {"fn": "os.system"}}}},
    {"rules": {"w": {"match": "0.weight", "init": {"fn": "os.system", "allow_fn": ["os"]}}}},
    {"vars": {"allow_fn": 1}, "rules": {"w": {"match": "0.weight", "init": {"fn": "os.system"}}}},
])
def test_no_spec_key_widens_the_prefixes(where, no_processes):
    spec = {**fn_spec("os.system", command="true"), **where}
    with pytest.raises(InitSpecError) as caught:
        initspec.apply(model(), spec)
    assert all(p.startswith("initspec.") for p in caught.value.paths)


def test_a_hydra_override_cannot_widen_the_prefixes(no_processes):
    overrides = ["+initspec=seed_custom", "+initspec.allow_fn=[os]", "~initspec.rules.weights.init",
                 "+initspec.rules.weights.init={fn: os.system, command: 'touch pwned'}"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(overrides=overrides)
    assert cfg.initspec.rules.weights.init.fn == "os.system"   # the override did land in the config
    with pytest.raises(InitSpecError) as caught:
        initspec.apply(model(), cfg.initspec)
    assert "initspec.allow_fn" in caught.value.paths
    without_key = OmegaConf.masked_copy(cfg.initspec, [k for k in cfg.initspec if k != "allow_fn"])
    with pytest.raises(InitSpecError, match="outside the allowed prefixes"):
        initspec.apply(model(), without_key)


def test_only_the_caller_widens_the_prefixes(user_pkg):
    with pytest.raises(InitSpecError, match="outside the allowed prefixes"):
        initspec.apply(model(), fn_spec("trust_user_inits.fill"))
    m = model()
    initspec.apply(m, fn_spec("trust_user_inits.fill"), allow_fn="trust_user_inits")  # one string: one prefix
    assert torch.equal(m[0].weight.detach(), torch.full((3, 3), 0.5))


# ------------------------------------------------------------- expressions

EXPRESSION_SPEC = {
    "vars": {"n_layer": 4},
    "rules": {
        "w": {"match": "0.weight", "init": [{"name": "normal", "std": "0.02 / sqrt(2 * n_layer)"},
                                             {"name": "scale", "by": "min(1, fan_in / fan_out) if ndim == 2 else 2"},
                                             {"name": "clamp", "max": "shape[0] ** 0.5 * log(e)"}]},
        "b": {"match": "*.bias", "init": {"name": "constant", "value": "numel / 10 + (layer + 1) * pi / pi"}},
    },
}


def test_expressions_never_reach_eval_exec_or_code_objects(monkeypatch):
    real_compile = builtins.compile

    def ast_only(source, filename, mode, flags=0, *args, **kwargs):
        if not flags & ast.PyCF_ONLY_AST:
            pytest.fail(f"code compiled from {source!r}")
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", lambda *a, **k: pytest.fail("eval called"))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: pytest.fail("exec called"))
    monkeypatch.setattr(builtins, "compile", ast_only)
    m = model()
    initspec.apply(m, EXPRESSION_SPEC)
    assert torch.equal(m[0].bias.detach(), torch.full((3,), 0.3 + 1.0))
    assert torch.equal(m[1].bias.detach(), torch.full((3,), 0.3 + 2.0))


# -------------------------------------------------------------- checkpoints

def test_torch_load_is_always_weights_only(tmp_path):
    state = {k: v.detach().clone() for k, v in model().state_dict().items()}
    torch.save(state, tmp_path / "state.pt")
    initspec.sources.clear_cache()
    m = model()
    with torch.no_grad():
        m[0].weight.zero_()
    with spy(torch, "load", lambda *args, **kwargs: kwargs) as calls:
        initspec.apply(m, {"rules": {"w": {"match": "*", "init": {
            "name": "checkpoint", "path": str(tmp_path / "state.pt"), "format": "torch"}}}})
    assert calls and all(c.get("weights_only") is True for c in calls)
    assert torch.equal(m[0].weight.detach(), state["0.weight"])
    initspec.sources.clear_cache()


def test_every_torch_load_call_in_the_source_passes_weights_only_true():
    """Static guard: a new torch.load call without weights_only=True fails here."""
    found = 0
    for path in (REPO / "initspec").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill")
                        and any(a.name in ("load", "loads", "Unpickler") for a in node.names)), \
                f"{path.name}:{node.lineno} imports a loader under another name"
            assert not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id in ("pickle", "dill")
                        and node.func.attr in ("load", "loads", "Unpickler")), f"{path.name}:{node.lineno} unpickles"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                found += 1
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{path.name}:{node.lineno}"
    assert found


# ------------------------------------------------- no fn: means no user code

FULL_SPEC_WITHOUT_FN = {
    "default": "reset",
    "rules": {
        "weights": {"match": "*.weight", "ndim": 2,
                    "init": [{"name": "xavier_uniform"}, {"name": "scale", "by": "1 / sqrt(fan_in)"}]},
        "conv": {"match": "conv.weight", "init": [{"name": "dirac"}, {"name": "add", "value": 0.1}]},
        "ortho": {"match": "deep.0.weight", "priority": 1, "init": {"name": "orthogonal", "gain": 2}},
        "sparse": {"match": "deep.1.weight", "priority": 1, "init": {"name": "sparse", "sparsity": 0.5}},
        "norm": {"match": "norm.*", "init": ["ones", {"name": "clamp", "max": 0.5}]},
        "emb": {"match": "emb.weight", "init": [{"name": "trunc_normal", "std": 0.02}, "padding_zero"]},
        "bias": {"match": "deep.*.bias", "init": {"name": "bias_prob", "prior": 0.1}},
    },
    "ties": {"shared": ["deep.0", "deep.2"]},
}


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3, padding_idx=0)
        self.conv = nn.Conv1d(3, 3, 3)
        self.deep = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
        self.norm = nn.LayerNorm(3)


def _calls_into(path: Path, run) -> list[str]:
    """Names of functions defined in ``path`` that were called while ``run()`` ran (all threads)."""
    target = str(path)
    seen: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == target:
            seen.append(frame.f_code.co_name)

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return seen


def test_a_spec_without_fn_runs_no_user_code(user_pkg, tmp_path):
    torch.save({"deep.1.bias": torch.zeros(3)}, tmp_path / "ck.pt")
    spec = {**FULL_SPEC_WITHOUT_FN, "rules": {**FULL_SPEC_WITHOUT_FN["rules"], "ck": {
        "match": "deep.1.bias", "priority": 2, "init": {"name": "checkpoint", "path": str(tmp_path / "ck.pt")}}}}
    allow = ["trust_user_inits"]  # the caller allows user code; the spec does not name any
    import trust_user_inits
    assert _calls_into(user_pkg, lambda: initspec.apply(UserNet(), spec, allow_fn=allow, threads=2)) == []
    assert trust_user_inits.CALLS == []
    # the detector works: the same spec with one fn: entry does call into the user module
    with_fn = {**spec, "rules": {**spec["rules"], "norm": {"match": "norm.weight",
                                                           "init": {"fn": "trust_user_inits.fill"}}}}
    assert "fill" in _calls_into(user_pkg, lambda: initspec.apply(UserNet(), with_fn, allow_fn=allow))

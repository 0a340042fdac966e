"""The initspec command: exit codes and output.

Two tests run the installed console script as a subprocess (the no-argument
default, and a failing check); the others call ``initspec.cli.main`` in-process,
which is the same code path minus the ~3 s torch import per run.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from initspec import preset_names
from initspec.cli import Progress
from conftest import table_row as row, cli

TIMEOUT = 180


def command() -> list[str]:
    script = Path(sys.executable).parent / "initspec"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "initspec.cli"]


def run(*args, cwd=None):
    proc = subprocess.run([*command(), *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


# ------------------------------------------------------------------ as a subprocess

@pytest.mark.slow
def test_no_arguments_runs_the_seed_default(tmp_path):
    code, out, err = run(cwd=tmp_path)
    assert code == 0, err
    assert "uniform(a=-10, b=10) -> zero_below(threshold=5)" in row(out, "0.weight")
    assert "zeros -> add(value=1)" in row(out, "2.bias")
    assert "initspec report" in out and "statistics per rule" in out and "expected std" in out
    assert re.search(r"│ biases\s*│ 2\s*│ 4\s*│ 0\s*│ 0\s*│ 1\s*│ 1\s*│ 1\s*│", out)   # bias = 0 + 1, measured
    assert list(tmp_path.iterdir()) == []   # compose API: no outputs/ directory


@pytest.mark.slow
def test_check_exits_2_with_every_problem_and_its_path():
    code, out, err = run("check", "initspec.rules.weights.init.0.a=nan", "initspec.rules.biases.init.1.value=inf",
                         "initspec.default=sometimes")
    assert code == 2 and out == ""
    for path in ("initspec.rules.weights.init.0.a", "initspec.rules.biases.init.1.value", "initspec.default"):
        assert re.search(rf"^  {re.escape(path)}: .* Fix: ", err, re.M), err
    assert "Traceback" not in err


# ------------------------------------------------------------------ in-process

def test_check_ok_and_problems_found_while_planning(capsys):
    code, out, _ = cli(capsys, "check", "model=gpt_tiny", "initspec=gpt2")
    assert code == 0 and out.startswith("ok: ")
    code, _, err = cli(capsys, "check", "initspec.rules.weights.init.0.a=20")
    assert code == 2 and "initspec.rules.weights.init.0.a: a must be <= b" in err
    code, _, err = cli(capsys, "check", "+initspec.rules.x={match: nothing, init: zeros}")
    assert code == 2 and "initspec.rules.x.match" in err and "matches no parameter" in err


def test_explain_table_and_json(capsys):
    code, out, _ = cli(capsys, "explain", "model=gpt_tiny", "initspec=gpt2")
    assert code == 0
    assert "std=0.01)" in row(out, "transformer.h.1.mlp.c_proj.weight")   # 0.02 / sqrt(2 * n_layer=2)
    assert "lm_head.weight" in row(out, "transformer.wte.weight (= lm_head.weight)")
    code, out, _ = cli(capsys, "explain", "--format", "json", "model=seed_shared", "initspec=seed_shared")
    data = json.loads(out)
    assert data["ties"] == [{"name": "shared", "kind": "module", "source": "0", "targets": ["1"]}]
    assert data["entries"][0]["aliases"] == ["1.weight"]


def test_model_config_values_reach_spec_expressions(capsys):
    code, out, _ = cli(capsys, "explain", "model=gpt_tiny", "initspec=gpt2", "model.n_layer=8")
    assert code == 0 and "std=0.005)" in row(out, "transformer.h.7.attn.c_proj.weight")   # 0.02 / sqrt(16)


def test_overrides_reach_the_spec(capsys):
    code, out, _ = cli(capsys, "explain", "initspec=seed_normal", "initspec.rules.weights.init.std=0.5",
                       "initspec.rules.biases=null")
    assert code == 0 and "std=0.5" in row(out, "0.weight") and "reset_parameters()" in row(out, "0.bias")
    # assigning a dict merges into the old step; delete it first to replace it (DESIGN section 3)
    code, _, err = cli(capsys, "check", "initspec=seed_normal", "initspec.rules.weights.init={name: zeros}")
    assert code == 2 and "unknown argument 'std' for step 'zeros'" in err
    code, out, _ = cli(capsys, "explain", "initspec=seed_normal", "~initspec.rules.weights.init",
                       "+initspec.rules.weights.init={name: zeros}")
    assert code == 0 and re.search(r"│\s*weights\s*│\s*zeros\s*│", row(out, "0.weight"))


def test_apply_writes_a_seed_checkpoint_with_ties(capsys, tmp_path):
    out_file = tmp_path / "seed.safetensors"
    code, out, err = cli(capsys, "apply", "--out", str(out_file), "model=gpt_tiny", "initspec=gpt2")
    assert code == 0, err
    assert out.startswith(f"wrote {out_file}")
    with safe_open(str(out_file), "pt") as f:
        meta = f.metadata()
        assert "lm_head.weight" not in f.keys()
        ln = f.get_tensor("transformer.h.0.ln_1.weight")
        wte = f.get_tensor("transformer.wte.weight")
    assert json.loads(meta["initspec.aliases"]) == {"transformer.wte.weight": ["lm_head.weight"]}
    assert json.loads(meta["initspec.tie_groups"]) == {"lm_head": ["transformer.wte.weight", "lm_head.weight"]}
    assert bool((ln == 1).all()) and abs(float(wte.std()) - 0.02) < 0.002

    import initspec
    from initspec.models.gpt import gpt_tiny
    fresh = gpt_tiny(tie_embeddings=False)
    initspec.load_checkpoint(fresh, out_file)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    assert (fresh.transformer.wte.weight.detach() == wte).all()


def test_stats_and_plot(capsys, tmp_path):
    png = tmp_path / "h.png"
    code, out, _ = cli(capsys, "stats", "--plot", str(png), "model=gpt_tiny", "initspec=gpt2")
    assert code == 0
    residual = row(out, "residual").split("│")
    assert residual[4].strip() == "0.01" and abs(float(residual[5]) - 0.01) < 0.001   # expected std, measured std
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    height, width, _ = matplotlib.image.imread(str(png)).shape
    assert width > 1000 and height > 500   # 4 rules -> a 3 x 2 grid of panels


def test_presets_lists_every_preset_with_its_first_comment_line(capsys):
    code, out, _ = cli(capsys, "presets")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == preset_names()
    assert {"gpt2", "bert", "megatron", "seed_custom", "seed_normal", "seed_shared"} <= set(preset_names())
    seed_custom = next(line for line in lines if line.startswith("seed_custom "))
    assert seed_custom.split(None, 1)[1] == "Seed notebook cell 3: weights ~ U(-10, 10) with |w| < 5 zeroed; biases = 0 + 1."


def test_user_config_dir_finds_presets_through_the_plugin(capsys, tmp_path):
    (tmp_path / "app.yaml").write_text("defaults:\n  - model: seed_mlp\n  - initspec: seed_normal\n  - _self_\n")
    code, out, err = cli(capsys, "explain", "--config-dir", str(tmp_path), "--config-name", "app")
    assert code == 0, err
    assert "normal(mean=0, std=0.01)" in row(out, "0.weight")


def test_allow_fn_option(capsys, tmp_path, monkeypatch):
    (tmp_path / "cli_user_inits.py").write_text("def fill(t, value=0.0):\n    t.fill_(value)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cli_user_inits", raising=False)
    spec = "+initspec.rules.w={match: '*.weight', init: {fn: cli_user_inits.fill, value: 2.0}, priority: 5}"
    code, _, err = cli(capsys, "check", spec)
    assert code == 2 and "initspec.rules.w.init" in err and "allowed prefixes" in err
    code, out, err = cli(capsys, "stats", "--allow-fn", "cli_user_inits", spec)
    assert code == 0, err
    assert re.search(r"│ w\s*│ 2\s*│ 15\s*│[^│]*│ 0\s*│ 2\s*│ 2\s*│ 2\s*│", out)   # 2 weights, 15 values, all 2


def test_usage_and_composition_errors_exit_2_without_traceback(capsys, tmp_path):
    cases = [
        (["bogus"], "unknown command"),
        (["check", "model=nonexistent"], "Could not find 'model/nonexistent'"),
        (["check", "initspec.rules.weights.init.std=-1"], "steps in a list are addressed by index"),
        (["apply", "model=gpt_tiny", "initspec=gpt2"], "--out: apply needs --out"),
        (["apply", "--out", str(tmp_path / "missing" / "x.safetensors")], "--out: the directory"),
        (["stats", "--plot", str(tmp_path / "h.nope")], "--plot: cannot write"),
        (["run", "--device", "bogus"], "device: 'bogus' is not a device"),
        (["run", "model.hidden=-3"], "model: cannot instantiate the model"),
    ]
    for args, message in cases:
        code, _, err = cli(capsys, *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


def test_progress_bar_appears_only_after_the_delay():
    bar = Progress(delay=0.2)
    with bar:
        bar(1, 10)
        assert bar.bar is None           # fast fills never show a bar
        bar.start -= 0.3                 # as if 0.3 s had passed
        bar(5, 10)
        assert bar.bar is not None and bar.bar.tasks[0].completed == 5
        bar(10, 10)
        assert bar.bar.tasks[0].finished


def test_histogram_sample_is_bounded_and_proportional():
    import torch
    from initspec.cli import sample_values
    big, small = torch.full((1000, 100), 1.0), torch.full((100, 100), 2.0)
    generator = torch.Generator().manual_seed(0)
    data = sample_values([big, small], 11_000, generator)
    assert data.numel() == 11_000 and int((data == 2).sum()) == 1_000
    assert torch.equal(sample_values([small], 11_000, generator), small.reshape(-1))   # few values: all of them


def test_every_shipped_model_config_checks_with_a_fitting_preset(capsys):
    from initspec.load import preset_dir
    pairs = {"seed_mlp": "seed_custom", "seed_shared": "seed_shared", "gpt_tiny": "gpt2", "gpt2_small": "gpt2",
             "resnet_small": "kaiming_resnet", "vit_tiny": "vit_jax", "mup_mlp": "mup"}
    shipped = sorted(p.stem for p in (preset_dir().parent / "model").glob("*.yaml"))
    assert shipped == sorted(pairs)
    for model, preset in pairs.items():
        code, out, err = cli(capsys, "check", f"model={model}", f"initspec={preset}")
        assert code == 0 and out.startswith("ok: "), (model, err)

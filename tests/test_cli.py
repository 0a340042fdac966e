"""The initspec command, run as a subprocess: exit codes and output."""
import json
import re
import subprocess
import sys

import pytest

ENV_TIMEOUT = 120


def run(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "initspec.cli", *args], capture_output=True, text=True,
                          timeout=ENV_TIMEOUT, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def test_no_arguments_runs_the_seed_default(tmp_path):
    code, out, err = run(cwd=tmp_path)
    assert code == 0, err
    assert "0.weight" in out and "uniform(a=-10, b=10) -> zero_below(threshold=5)" in out
    assert "zeros -> add(value=1)" in out
    assert "statistics per rule" in out and "expected std" in out


def test_explain_table_and_json():
    code, out, _ = run("explain", "model=gpt_tiny", "initspec=gpt2")
    assert code == 0
    assert "transformer.h.1.mlp.c_proj.weight" in out and "std=0.01)" in out   # 0.02 / sqrt(2 * 2)
    assert "lm_head" in out
    code, out, _ = run("explain", "--format", "json", "model=seed_shared", "initspec=seed_shared")
    data = json.loads(out)
    assert data["ties"] == [{"name": "shared", "kind": "module", "source": "0", "targets": ["1"]}]
    assert data["entries"][0]["aliases"] == ["1.weight"]


def test_check_ok_and_every_problem_with_its_path():
    code, out, _ = run("check", "model=gpt_tiny", "initspec=gpt2")
    assert code == 0 and out.startswith("ok:")
    code, out, err = run("check", "initspec.rules.weights.init.0.a=nan", "initspec.rules.biases.init.1.value=inf",
                         "initspec.default=sometimes")
    assert code == 2
    for path in ("initspec.rules.weights.init.0.a", "initspec.rules.biases.init.1.value", "initspec.default"):
        assert path in err
    assert "Traceback" not in err
    code, out, err = run("check", "initspec.rules.weights.init.0.a=20")   # found while planning
    assert code == 2 and "initspec.rules.weights.init.0.a: a must be <= b" in err
    code, _, err = run("check", "+initspec.rules.x={match: nothing, init: zeros}")
    assert code == 2 and "initspec.rules.x.match" in err and "matches no parameter" in err


def test_overrides_reach_the_spec():
    code, out, _ = run("explain", "initspec=seed_normal", "initspec.rules.weights.init.std=0.5",
                       "initspec.rules.biases=null")
    assert code == 0 and "std=0.5" in out and "reset_parameters()" in out
    # assigning a dict merges into the old step; delete it first to replace it (DESIGN section 3)
    code, _, err = run("check", "initspec=seed_normal", "initspec.rules.weights.init={name: zeros}")
    assert code == 2 and "unknown argument 'std' for step 'zeros'" in err
    code, out, _ = run("explain", "initspec=seed_normal", "~initspec.rules.weights.init",
                       "+initspec.rules.weights.init={name: zeros}")
    assert code == 0 and re.search(r"0\.weight\s*│[^│]*│\s*weights\s*│\s*zeros\s*│", out)


def test_apply_writes_a_seed_checkpoint_with_ties(tmp_path):
    out_file = tmp_path / "seed.safetensors"
    code, out, err = run("apply", "--out", str(out_file), "model=gpt_tiny", "initspec=gpt2")
    assert code == 0, err
    from safetensors import safe_open
    with safe_open(str(out_file), "pt") as f:
        meta = f.metadata()
        assert "lm_head.weight" not in f.keys() and "transformer.wte.weight" in f.keys()
    assert json.loads(meta["initspec.aliases"]) == {"transformer.wte.weight": ["lm_head.weight"]}
    code, _, err = run("apply", "model=gpt_tiny", "initspec=gpt2")
    assert code == 2 and "--out" in err


def test_stats_and_plot(tmp_path):
    png = tmp_path / "h.png"
    code, out, _ = run("stats", "--plot", str(png), "model=gpt_tiny", "initspec=gpt2")
    assert code == 0 and "residual" in out and "0.01" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_presets_lists_every_preset_with_a_description():
    from initspec.load import preset_names
    code, out, _ = run("presets")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == preset_names()
    assert all(len(line.split(None, 1)) == 2 for line in lines)
    assert {"gpt2", "bert", "megatron", "seed_custom"} <= set(preset_names())


def test_bad_command_and_bad_config():
    code, _, err = run("bogus")
    assert code == 2 and "unknown command" in err
    code, _, err = run("check", "model=nonexistent")
    assert code == 2 and "cannot compose" in err and "gpt_tiny" in err


def test_user_config_dir_finds_presets_through_the_plugin(tmp_path):
    (tmp_path / "app.yaml").write_text("defaults:\n  - model: seed_mlp\n  - initspec: seed_normal\n  - _self_\n")
    code, out, err = run("explain", "--config-dir", str(tmp_path), "--config-name", "app")
    assert code == 0, err
    assert "normal(mean=0, std=0.01)" in out


def test_allow_fn_option(tmp_path):
    (tmp_path / "myinits.py").write_text("def fill(t, value=0.0):\n    t.fill_(value)\n")
    spec = "+initspec.rules.w={match: '*.weight', init: {fn: myinits.fill, value: 2.0}, priority: 5}"
    code, _, err = run("check", spec, cwd=tmp_path)
    assert code == 2 and "allowed prefixes" in err
    import os
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "initspec.cli", "stats", "--allow-fn", "myinits", spec],
                          capture_output=True, text=True, timeout=ENV_TIMEOUT, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "w " in proc.stdout and " 2 " in proc.stdout


@pytest.mark.slow
def test_progress_bar_when_filling_takes_over_a_second():
    from initspec.cli import Progress
    import time
    bar = Progress(delay=0.05)
    with bar:
        bar(1, 10)
        assert bar.bar is None
        time.sleep(0.06)
        bar(5, 10)
        assert bar.bar is not None
        bar(10, 10)

"""Hydra integration: the training launcher with command-line overrides, and presets from an
installed wheel composed by a user app outside the repo."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "examples" / "train.py"


def train(tmp_path, *overrides, multirun=False):
    args = [sys.executable, str(TRAIN)]
    if multirun:
        args += ["-m", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    else:
        args += [f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run([*args, *overrides], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"│ {name} "))


def losses(out: str) -> list[float]:
    return [float(x) for x in re.findall(r"step \d+ loss ([-\d.e+inf]+)", out)]


def test_default_run_trains(tmp_path):
    out = train(tmp_path)
    assert "normal(mean=0, std=0.01)" in row(out, "0.weight")
    assert len(losses(out)) == 5


def test_overrides(tmp_path):
    out = train(tmp_path, "initspec=seed_custom")
    assert "uniform(a=-10, b=10) -> zero_below(threshold=5)" in row(out, "0.weight")
    out = train(tmp_path, "initspec=seed_custom", "initspec.rules.weights.init.0.a=-5")
    assert "uniform(a=-5, b=10)" in row(out, "0.weight")
    out = train(tmp_path, "initspec=seed_custom", '+initspec.rules.head={match: "2.weight", init: zeros}')
    head = row(out, "2.weight")
    assert " head " in head and "zeros" in head and "100.0%" in head
    assert " weights " in row(out, "0.weight")
    out = train(tmp_path, "initspec=seed_custom", "initspec.rules.biases=null")
    assert "reset_parameters()" in row(out, "0.bias")      # the meta-built bias falls back to PyTorch's default


def test_multirun_over_presets(tmp_path):
    out = train(tmp_path, "initspec=seed_normal,seed_custom", multirun=True)
    assert "initspec=seed_normal" in out and "initspec=seed_custom" in out
    assert out.count("initspec report") == 2 and len(losses(out)) == 10


def test_gpt_preset_interpolates_the_model_config(tmp_path):
    out = train(tmp_path, "model=gpt_tiny", "initspec=gpt2", "model.n_layer=8")
    assert "std=0.005)" in row(out, "transformer.h.7.attn.c_proj.weight")   # 0.02 / sqrt(2 * 8)
    assert all(x == x for x in losses(out))


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_serves_presets_to_a_user_app(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, timeout=300, capture_output=True)
    wheel = next(wheels.glob("initspec-*.whl"))
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "initspec_configs/initspec/gpt2.yaml" in names and "initspec_configs/model/gpt_tiny.yaml" in names
    assert "hydra_plugins/initspec_searchpath/__init__.py" in names
    assert "hydra_plugins/__init__.py" not in names                  # a namespace package
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300,
                   capture_output=True)
    app = tmp_path / "app"
    (app / "conf").mkdir(parents=True)
    (app / "conf" / "config.yaml").write_text("defaults:\n  - model: gpt_tiny\n  - initspec: seed_normal\n  - _self_\n")
    (app / "app.py").write_text(textwrap.dedent("""
        import hydra, initspec, initspec_configs, sys

        @hydra.main(version_base=None, config_path="conf", config_name="config")
        def main(cfg):
            model, report = initspec.build(cfg.model, cfg.initspec)
            entry = report.plan.entry("transformer.h.1.attn.c_proj.weight")
            print("FILES", initspec.__file__, initspec_configs.__file__)
            print("STD", entry.expected_std, "TIED", model.lm_head.weight is model.transformer.wte.weight)

        main()
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(python), "app.py", "initspec=gpt2", "hydra.run.dir=out"], cwd=app, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = next(line for line in proc.stdout.splitlines() if line.startswith("FILES")).split()[1:]
    assert all(str(venv) in f for f in files), files                  # the wheel, not the repo checkout
    assert "STD 0.01 TIED True" in proc.stdout                        # gpt2 preset, n_layer=2 from the model

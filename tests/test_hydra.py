"""Hydra integration: the training launcher with command-line overrides, the search-path
plugin (torch-free), and presets from an installed wheel composed by a user app outside the repo."""
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import table_row

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "examples" / "train.py"

# Runs examples/train.py once per argument list in one fresh interpreter (torch is imported
# once): each run goes through the script's own @hydra.main with sys.argv as a shell gives it.
DRIVER = """
import json, runpy, sys
train, out, runs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
for i, overrides in enumerate(runs):
    sys.argv = [train, f"hydra.run.dir={out}/{i}", *overrides]
    print(f"=== run {i}", flush=True)
    runpy.run_path(train, run_name="__main__")
"""


def train_runs(tmp_path, *runs: list[str]) -> list[str]:
    """stdout of ``python examples/train.py <overrides>`` for each list of overrides."""
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(TRAIN), str(tmp_path / "out"), json.dumps(runs)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = re.split(r"^=== run \d+\n", proc.stdout, flags=re.M)[1:]
    assert len(outputs) == len(runs)
    return outputs


def row(out: str, name: str) -> list[str]:
    """The cells of a parameter's row in the report table."""
    return [cell.strip() for cell in table_row(out, name).strip("│").split("│")]


COLUMNS = ("parameter", "shape", "rule", "steps", "tie", "expected std", "mean", "std", "min", "max", "zeros")


def cell(out: str, name: str, column: str) -> str:
    return row(out, name)[COLUMNS.index(column)]


def losses(out: str) -> list[float]:
    return [float(x) for x in re.findall(r"step \d+ loss (\S+)", out)]


@pytest.mark.slow
def test_launcher_with_the_override_lines(tmp_path):
    default, custom, custom_a, head, no_biases, gpt, resnet = train_runs(
        tmp_path,
        [],
        ["initspec=seed_custom"],
        ["initspec=seed_custom", "initspec.rules.weights.init.0.a=-5"],
        ['+initspec.rules.head={match: "2.weight", init: zeros}'],
        ["initspec.rules.biases=null"],
        ["model=gpt_tiny", "initspec=gpt2", "model.n_layer=8"],
        ["model=resnet_small", "initspec=kaiming_resnet"],
    )
    for out in (default, custom, custom_a, head, no_biases, gpt, resnet):
        assert len(losses(out)) == 5 and all(x == x and abs(x) < float("inf") for x in losses(out))
    assert len(set(map(lambda o: losses(o)[0], (default, custom, custom_a, head, no_biases)))) == 5  # 5 inits

    assert cell(default, "0.weight", "steps") == "normal(mean=0, std=0.01)"        # examples/conf: seed_normal
    assert cell(default, "0.bias", "max") == "0"

    assert cell(custom, "0.weight", "steps") == "uniform(a=-10, b=10) -> zero_below(threshold=5)"
    for column in ("min", "max"):                              # |w| < 5 was zeroed
        value = float(cell(custom, "0.weight", column))
        assert value == 0 or abs(value) >= 5
    assert cell(custom, "0.bias", "mean") == "1"

    assert cell(custom_a, "0.weight", "steps") == "uniform(a=-5, b=10) -> zero_below(threshold=5)"
    assert float(cell(custom_a, "0.weight", "min")) >= 0       # a=-5 and |w| < 5 zeroed: nothing negative left

    assert cell(head, "2.weight", "rule") == "head" and cell(head, "2.weight", "zeros") == "100.0%"
    assert cell(head, "0.weight", "rule") == "weights"

    assert cell(no_biases, "0.bias", "steps") == "reset_parameters()"     # PyTorch's default, once, seeded
    bound = 1 / 4 ** 0.5                                                  # Linear(4, 3): U(-1/sqrt(4), 1/sqrt(4))
    low, high = float(cell(no_biases, "0.bias", "min")), float(cell(no_biases, "0.bias", "max"))
    assert -bound <= low < high <= bound

    c_proj = row(gpt, "transformer.h.7.attn.c_proj.weight")
    assert c_proj[COLUMNS.index("expected std")] == "0.005"               # 0.02 / sqrt(2 * model.n_layer=8)
    assert abs(float(c_proj[COLUMNS.index("std")]) - 0.005) < 0.0005
    assert cell(gpt, "transformer.wte.weight (= lm_head.weight)", "tie") == "lm_head"

    assert cell(resnet, "conv1.weight", "steps").startswith("kaiming_normal(fan_out, relu)")
    assert (cell(resnet, "bn1.running_var", "min"), cell(resnet, "bn1.running_var", "max")) == ("1", "1")
    assert losses(resnet)[-1] < losses(resnet)[0]


@pytest.mark.slow
def test_multirun_over_presets(tmp_path):
    proc = subprocess.run([sys.executable, str(TRAIN), "-m", "initspec=seed_normal,seed_custom",
                           f"hydra.sweep.dir={tmp_path / 'multirun'}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "#0 : initspec=seed_normal" in out and "#1 : initspec=seed_custom" in out
    first, second = out.split("initspec report")[1:]
    assert cell(first, "0.weight", "steps") == "normal(mean=0, std=0.01)"
    assert cell(second, "0.weight", "steps").startswith("uniform(a=-10, b=10)")
    assert len(losses(out)) == 10
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir()) == ["0", "1"]


@pytest.mark.slow
def test_plugin_serves_presets_and_models_without_importing_torch(tmp_path):
    (tmp_path / "app.yaml").write_text("defaults:\n  - model: gpt_tiny\n  - initspec: gpt2\n  - _self_\n")
    script = textwrap.dedent(f"""
        import sys
        from hydra import compose, initialize_config_dir
        from hydra.core.plugins import Plugins
        from hydra.plugins.search_path_plugin import SearchPathPlugin
        from omegaconf import OmegaConf
        with initialize_config_dir(config_dir={str(tmp_path)!r}, version_base=None):
            cfg = compose("app", overrides=["model.n_layer=6"])
        plugins = [p.__name__ for p in Plugins.instance().discover(SearchPathPlugin)]
        print("PLUGINS", plugins)
        print("TARGET", cfg.model._target_, "N_LAYER", cfg.initspec.vars.n_layer)
        print("TORCH", "torch" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "InitspecSearchPathPlugin" in proc.stdout
    assert "TARGET initspec.models.gpt.GPT N_LAYER 6" in proc.stdout   # ${model.n_layer} resolved across groups
    assert "TORCH False" in proc.stdout


def running_site_packages() -> list[str]:
    """The site-packages directories this interpreter imports from: a virtualenv's own (and its base's
    when it sees them), or the base interpreter's, wherever torch and hydra were installed."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_serves_presets_to_a_user_app(tmp_path):
    # build from a clean copy: setuptools writes build/ and *.egg-info into the source tree, and a
    # stale build/lib (a deleted module) would end up in the wheel. No build isolation: torch
    # requires setuptools, so wherever this suite runs a recent setuptools is installed.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "outputs", "multirun"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], check=True, timeout=300, capture_output=True)
    wheel = next(wheels.glob("initspec-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read("initspec-0.1.0.dist-info/entry_points.txt").decode()
    assert "initspec_configs/initspec/gpt2.yaml" in names and "initspec_configs/model/gpt_tiny.yaml" in names
    assert "initspec_configs/initspec_cli.yaml" in names
    assert "hydra_plugins/initspec_searchpath/__init__.py" in names
    assert "hydra_plugins/__init__.py" not in names                  # a namespace package
    assert "[hydra.plugins]\ninitspec_searchpath = hydra_plugins.initspec_searchpath:InitspecSearchPathPlugin" \
        in entry_points                                              # Hydra 1.4 discovers plugins this way

    # A fresh venv of its own (not --system-site-packages: inside a user's virtualenv that would show
    # the base interpreter, not the virtualenv that has torch and hydra) and without its own pip
    # (ensurepip costs ~10 s): this pip installs the wheel alone into it with --python. The packages
    # the wheel depends on come from wherever this suite runs, through a .pth file that lists this
    # interpreter's site-packages: they are added after the venv's own, and their .pth files (the
    # editable install of this checkout) are not run, so the wheel's initspec is the one imported.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, timeout=300, capture_output=True)
    venv_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, timeout=60, capture_output=True, text=True).stdout.strip()
    assert venv_site.startswith(str(venv)), venv_site
    (Path(venv_site) / "initspec_test_dependencies.pth").write_text("\n".join(running_site_packages()) + "\n")

    app = tmp_path / "app"
    (app / "conf").mkdir(parents=True)
    (app / "conf" / "config.yaml").write_text("defaults:\n  - model: gpt_tiny\n  - initspec: seed_normal\n  - _self_\n")
    (app / "app.py").write_text(textwrap.dedent("""
        import hydra, initspec, initspec_configs, hydra_plugins.initspec_searchpath as plugin

        @hydra.main(version_base=None, config_path="conf", config_name="config")
        def main(cfg):
            model, report = initspec.build(cfg.model, cfg.initspec)
            entry = report.plan.entry("transformer.h.1.attn.c_proj.weight")
            print("FILES", initspec.__file__, initspec_configs.__file__, plugin.__file__)
            print("STD", entry.expected_std, "TIED", model.lm_head.weight is model.transformer.wte.weight)

        main()
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(python), "app.py", "initspec=gpt2", "hydra.run.dir=out"], cwd=app, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = next(line for line in proc.stdout.splitlines() if line.startswith("FILES")).split()[1:]
    assert len(files) == 3 and all(f.startswith(str(venv)) for f in files), files   # the wheel, not the checkout
    assert "STD 0.01 TIED True" in proc.stdout                        # gpt2 preset, n_layer=2 from the model

    # The wheel's console script in the same app: the newer commands find the app's config and the
    # shipped presets and probe configs as the others do.
    script = str(venv / "bin" / "initspec")
    app_config = ["--config-dir", "conf", "--config-name", "config"]
    for args, code, expect in (
            (["diff", "spec", "spec", *app_config, "initspec=gpt2"], 0, "28 tensors: 28 identical"),
            (["diff", "spec", "native", *app_config, "initspec=gpt2"], 1, "differs"),
            (["infer", *app_config], 0, "rules:"),
            (["probe", *app_config, "+probe=tokens", "--format", "json"], 0, '"modules"')):
        proc = subprocess.run([script, *args], cwd=app, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == code and expect in proc.stdout, (args, proc.stdout[-2000:], proc.stderr[-2000:])

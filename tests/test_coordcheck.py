"""The µP coordinate check: muP (the mup preset + mup_param_groups) keeps the logits' size as width grows;
standard parametrization (N(0, 1/fan_in), plain Adam at the same learning rate) does not."""
from __future__ import annotations

import json
import math

import pytest
import torch

import initspec
from initspec import InitSpecError
from initspec.coordcheck import coord_check, log_log_slope
from initspec.models.mup import MuMLP, mup_param_groups
from initspec.probe_data import RandomLabelLoss, random_features
from conftest import cli

WIDTHS = (32, 64, 128, 256)
BASE = 32          # the widths here are the base width and up, as muP is used (tune small, scale up)


def check(spec: str, scaled: bool):
    def build(width):
        model, _ = initspec.build(lambda: MuMLP(width=int(width)), spec,
                                  vars={"width": width, "base_width": BASE} if spec == "mup" else None)
        return model, random_features(64, 3072, seed=0)

    groups = (lambda model, lr: mup_param_groups(model, lr, base_width=BASE)) if scaled else None
    return coord_check(build, WIDTHS, RandomLabelLoss(), steps=2, lr=0.01, optimizer="adam", param_groups=groups)


@pytest.fixture(scope="module")
def mup():
    return check("mup", scaled=True)


@pytest.fixture(scope="module")
def standard():
    return check("fan_in", scaled=False)


def test_mup_keeps_every_layer_width_stable_after_adam_steps(mup):
    assert mup.stable, mup.verdict()
    assert mup.slope("readout", 0) == 0.0                               # zero readout: 0 at every width
    assert all(abs(mup.slope("readout", step)) < 0.1 for step in (1, 2))   # the logits after a few steps
    assert mup.verdict().startswith("verdict: width-stable")


def test_standard_parametrization_logits_grow_with_width(standard):
    assert not standard.stable
    assert all(abs(standard.slope(m, 0)) < 0.2 for m in ("input", "hidden.0", "hidden.1", "readout"))  # at init
    assert standard.slope("readout", 1) > 0.5 and standard.slope("readout", 2) > 0.3
    assert standard.verdict().startswith("verdict: NOT width-stable") and "readout" in standard.verdict()


def test_results_as_tables_json_and_per_type(mup):
    data = json.loads(mup.to_json())
    assert data["stable"] and data["widths"] == list(map(float, WIDTHS)) and data["steps"] == [0, 1, 2]
    assert {r["module"] for r in data["rms"]} == {"input", "hidden.0", "hidden.1", "readout"}
    assert len(data["rms"]) == 4 * len(WIDTHS) * 3 and set(data["slopes_by_type"]) == {
        "input (Linear)", "hidden.* (Linear)", "readout (Linear)"}
    text = mup.table()
    assert "slope of log RMS vs log width" in text and "│ readout " in text and mup.verdict() in text


def test_slopes_of_exact_power_laws():
    assert log_log_slope([(w, 3 * w ** 0.5) for w in (16, 32, 64)]) == pytest.approx(0.5)
    assert log_log_slope([(w, 2.0) for w in (16, 32, 64)]) == pytest.approx(0.0)
    assert log_log_slope([(16, 0.0), (32, 0.0)]) == 0.0
    assert log_log_slope([(16, 0.0), (32, 1.0)]) is None and log_log_slope([(16, math.nan), (32, 1.0)]) is None


def test_the_global_rng_is_left_alone_and_settings_are_checked():
    state = torch.get_rng_state()
    build = lambda w: (initspec.build(lambda: MuMLP(width=int(w), in_features=8), "fan_in").model,   # noqa: E731
                       random_features(4, 8))
    coord_check(build, (8, 16), RandomLabelLoss(), steps=1)
    assert torch.equal(torch.get_rng_state(), state)
    for kwargs, path in [({"steps": -1}, "--steps"), ({"lr": 0.0}, "--lr"), ({"optimizer": "lion"}, "--optimizer")]:
        with pytest.raises(InitSpecError) as err:
            coord_check(build, (8, 16), RandomLabelLoss(), **kwargs)
        assert err.value.paths == (path,)
    with pytest.raises(InitSpecError, match="two different positive widths"):
        coord_check(build, (8, 8), RandomLabelLoss())


# ------------------------------------------------------------------ the command

def test_the_command_sweeps_a_config_key_with_mup_learning_rates(capsys, tmp_path):
    png = tmp_path / "coord.png"
    code, out, err = cli(capsys, "probe", "model=mup_mlp", "initspec=mup", "probe=features",
                         f"initspec.vars.base_width={BASE}", "model.in_features=256", "--sweep",
                         "model.width=32,64,128", "--steps", "2", "--lr-scaling", "mup", "--plot", str(png),
                         "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["key"] == "model.width" and data["widths"] == [32.0, 64.0, 128.0] and data["stable"], data["verdict"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = cli(capsys, "probe", "model=mup_mlp", "initspec=fan_in", "probe=features",
                         "model.in_features=256", "--sweep", "model.width=32,64,128", "--steps", "2")
    assert code == 0, err
    assert "coordinate check: slope of log RMS vs log model.width" in out
    assert "verdict: NOT width-stable" in out


@pytest.mark.parametrize("args, path, what", [
    (["--sweep", "model.wdith=32,64"], "--sweep", "no key 'model.wdith'"),
    (["--sweep", "model.width=32,wide"], "--sweep", "'wide' in"),
    (["--sweep", "model.width"], "--sweep", "not KEY=V1,V2"),
    (["--sweep", "model.width=32,64", "~probe.loss"], "probe.loss", "needs a loss"),
    (["--sweep", "model.width=32,64", "--lr-scaling", "mup", "initspec=fan_in"], "--lr-scaling", "vars.width"),
    (["--sweep", "model.width=32,32"], "--sweep", "two different"),
])
def test_sweep_mistakes_exit_2_naming_the_option(capsys, args, path, what):
    code, out, err = cli(capsys, "probe", "model=mup_mlp", "initspec=mup", "probe=features", "model.in_features=16",
                         *args)
    assert code == 2 and out == "", err
    assert f"  {path}: " in err and what in err, err

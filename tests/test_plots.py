"""Plot functions draw on a matplotlib Figure of their own: no pyplot figure is left open and the caller's
backend is never switched (matplotlib.use), so plotting from a notebook or a GUI app changes nothing there."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import pytest
from torch import nn

import initspec
from initspec.coordcheck import coord_check
from initspec.models.mup import MuMLP
from initspec.probe_data import RandomLabelLoss, random_features

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def matplotlib_state(monkeypatch):
    """Fails the test if the plot switched the backend or left a pyplot figure open."""
    switched: list[tuple] = []
    monkeypatch.setattr(matplotlib, "use", lambda *args, **kwargs: switched.append(args))
    yield
    assert switched == [], f"matplotlib.use{switched[0]} changes the caller's backend"
    assert plt.get_fignums() == [], "a pyplot figure was left open"


def test_probe_plot(matplotlib_state, tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    initspec.probe(model, random_features(16, 8), loss=RandomLabelLoss()).plot(str(tmp_path / "probe.png"))
    assert (tmp_path / "probe.png").read_bytes()[:8] == PNG


def test_coordcheck_plot(matplotlib_state, tmp_path):
    build = lambda w: (initspec.build(lambda: MuMLP(width=int(w), in_features=8), "fan_in").model,   # noqa: E731
                       random_features(8, 8))
    check = coord_check(build, (8, 16), RandomLabelLoss(), steps=1)
    check.plot(str(tmp_path / "coord.png"), "adam, lr 0.01")
    assert (tmp_path / "coord.png").read_bytes()[:8] == PNG


def test_stats_histograms(matplotlib_state, tmp_path):
    from initspec.cli import plot_histograms
    from initspec.models.seed import mlp
    plot_histograms(initspec.apply(mlp(), "seed_normal"), str(tmp_path / "hist.png"))
    assert (tmp_path / "hist.png").read_bytes()[:8] == PNG


def test_diff_histograms(matplotlib_state, tmp_path):
    a = nn.Linear(64, 64)
    b = nn.Linear(64, 64)
    nn.init.zeros_(b.bias)
    report = initspec.diff(a, b)
    assert not report.ok
    report.plot(str(tmp_path / "diff.png"))
    assert (tmp_path / "diff.png").read_bytes()[:8] == PNG

"""Readable plans and reports."""
import json

import torch
from torch import nn

import initspec


def test_plan_table_shows_every_column():
    model = nn.ModuleDict({"emb": nn.Embedding(10, 8), "out": nn.Linear(8, 10, bias=False), "ln": nn.LayerNorm(8)})
    spec = {"vars": {"n_layer": 2}, "rules": {
        "all": {"match": "*", "init": "zeros", "priority": -1},
        "emb": {"match": "emb.weight", "init": {"name": "normal", "std": "0.02 / sqrt(2 * n_layer)"}},
        "ln": {"match": "ln.*", "init": "ones"}},
        "ties": {"tied": ["emb.weight", "out.weight"]}}
    text = initspec.plan(model, spec).explain(width=220)
    for column in ("parameter", "shape", "rule", "steps", "tie", "shadowed"):
        assert column in text
    assert "normal(mean=0, std=0.01)" in text          # the evaluated number, not the expression
    assert "emb.weight (= out.weight)" in text and "tied" in text
    assert "10x8" in text and "all" in text            # shadowed rule listed
    assert "tie tied (parameter): emb.weight <- out.weight" in text


def test_report_lists_measured_statistics():
    model = nn.Sequential(nn.Linear(200, 300))
    report = initspec.apply(model, {"rules": {"w": {"match": "*.weight", "init": {"name": "normal", "std": 0.5}},
                                              "b": {"match": "*.bias", "init": "zeros"}}})
    s = report.stats["0.weight"]
    w = model[0].weight.detach().double()
    assert abs(s.std - float(w.std())) < 1e-9 and abs(s.mean - float(w.mean())) < 1e-9
    assert s.min == float(w.min()) and s.max == float(w.max()) and s.zero_fraction == 0.0
    assert report.stats["0.bias"].zero_fraction == 1.0
    text = report.explain(width=220)
    for column in ("expected std", "mean", "std", "min", "max", "zeros"):
        assert column in text
    assert "100.0%" in text and "0.5" in text
    per_rule = report.rule_stats()
    assert per_rule["w"]["expected_std"] == [0.5] and abs(per_rule["w"]["std"] - 0.5) < 0.01


def test_json_round_trip():
    report = initspec.apply(nn.Sequential(nn.Linear(3, 2)), "seed_custom")
    data = json.loads(report.to_json())
    assert [e["name"] for e in data["entries"]] == ["0.weight", "0.bias"]
    assert data["entries"][1]["steps"] == ["zeros", "add(value=1)"]
    assert data["entries"][1]["stats"]["mean"] == 1.0
    assert json.loads(initspec.plan(nn.Sequential(nn.Linear(3, 2)), "seed_custom").to_json())["seed"] == 0


def test_names_with_brackets_are_printed_as_they_are():
    """Tables are plain text, never rich markup: a ModuleDict key '[red]' is not a colour."""
    model = nn.ModuleDict({"[red]": nn.Linear(2, 2)})
    text = initspec.plan(model, {"rules": {"w": {"match": "*", "init": "zeros"}}}).explain()
    assert "[red].weight" in text and "[red].bias" in text

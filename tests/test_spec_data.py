"""A validated spec goes back to the plain data a user writes (Spec.to_data), and loads again unchanged."""
from __future__ import annotations

import pytest
import yaml

import initspec


@pytest.mark.parametrize("preset", initspec.preset_names())
def test_every_preset_round_trips_through_plain_data(preset):
    spec = initspec.load_spec(preset, vars={"n_layer": 2, "width": 64, "base_width": 32, "n_embd": 64, "d_model": 64,
                                           "d_ff": 256, "dim": 64, "initializer_range": 0.02,
                                           "num_layers": 2})
    data = spec.to_data()
    assert yaml.safe_load(yaml.safe_dump(data)) == data          # plain YAML types only
    assert initspec.load_spec(data) == spec


def test_defaults_are_left_out():
    data = initspec.load_spec({"rules": {"r": {"match": "*.bias", "init": "zeros"}}}).to_data()
    assert data["rules"] == {"r": {"match": ["*.bias"], "init": "zeros"}}

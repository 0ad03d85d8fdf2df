"""Every registered model has a config in configs/, and every config is valid."""

from __future__ import annotations

import importlib.resources

import pytest

import models
from stream import config


@pytest.mark.parametrize("name", models.available())
def test_each_model_has_a_valid_config(name):
    path = config.builtin_config(name)
    assert path is not None, f"configs/{name}.yaml is missing"
    cfg = config.resolve({"model": name})
    assert cfg.model == name and cfg.stride > 0


def test_every_config_names_a_registered_model():
    files = [f for f in importlib.resources.files("configs").iterdir() if f.name.endswith(".yaml")]
    assert files
    for f in files:
        assert config.read_yaml(f)["model"] in models.available(), f.name


def test_flags_override_the_yaml(tmp_path):
    cfg = config.resolve({"model": "x3d_m", "stride": 0.75})
    assert cfg.stride == 0.75 and cfg.weights == "kinetics400"
    assert config.resolve({"model": "x3d_m", "weights": "none"}).weights is None

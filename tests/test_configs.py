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


def test_labels_and_a_checkpoint_beside_the_config(tmp_path, monkeypatch):
    """What python -m stream.train writes: config.yaml naming model.pt in its own folder
    and the labels; it works from any working directory."""
    run = tmp_path / "runs" / "kettle"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"")
    (run / "config.yaml").write_text(
        "model: x3d_xs\nweights: model.pt\nlabels: [kettle, nothing]\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = config.resolve({"config": str(run / "config.yaml")})
    assert cfg.labels == ["kettle", "nothing"]
    assert cfg.weights == str(run / "model.pt")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("[a, a]", "more than once"),
        ("[]", "non-empty list"),
        ("[1, 2]", "list of class names"),
        ("kettle", "labels must be list"),
    ],
)
def test_bad_labels_are_one_line(tmp_path, labels, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: x3d_xs\nlabels: {labels}\n")
    with pytest.raises(config.UserError, match=message):
        config.resolve({"config": str(path)})

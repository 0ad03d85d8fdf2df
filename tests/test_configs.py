"""Every registered model has a config in configs/, and every config is valid; the run's
streams come from the --camera flags, else the YAML streams: list, else the run's values."""

from __future__ import annotations

import importlib.resources

import pytest

import models
from stream import config, run


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


# -- streams ---------------------------------------------------------------------------------


def _spec(id_: str, camera: str, **run_level) -> config.StreamSpec:
    values = {"mic": "default", "size": None, "fps": None, "loop": False, "stride": 0.25}
    return config.StreamSpec(id=id_, camera=camera, **{**values, **run_level})


def test_one_camera_is_one_stream_as_before():
    """One --camera (or none) is one stream of the run-level values: camera, mic and
    stream_id are what they always were."""
    assert config.RunConfig().streams == [_spec("cam0", "0")]
    cfg = run.parse_config(["--camera", "synthetic", "--mic", "none", "--stream-id", "door"])
    assert (cfg.camera, cfg.mic, cfg.stream_id) == ("synthetic", "none", "door")
    assert cfg.streams == [_spec("door", "synthetic", mic="none")]
    assert run.parse_config([]).streams == [_spec("cam0", "0")]


def test_each_camera_is_a_stream_with_the_runs_values():
    cfg = run.parse_config(
        ["--camera", "synthetic", "--camera", "b.mp4", "--camera", "1"]
        + ["--mic", "none", "--size", "320x240", "--fps", "15", "--stride", "0.5", "--loop"]
    )
    run_level = {"mic": "none", "size": "320x240", "fps": 15.0, "stride": 0.5, "loop": True}
    assert cfg.streams == [
        _spec("cam0", "synthetic", **run_level),
        _spec("cam1", "b.mp4", **run_level),
        _spec("cam2", "1", **run_level),
    ]
    assert cfg.origin("streams") == "--camera"
    assert cfg.mic == "none"  # --mic none once: the run's, for all


def test_stream_ids_and_mics_follow_the_cameras_in_order():
    cfg = run.parse_config(
        ["--camera", "a.mp4", "--camera", "synthetic", "--camera", "c.mp4"]
        + ["--stream-id", "door", "--stream-id", "yard"]
        + ["--mic", "a.mp4", "--mic", "none", "--mic", "synthetic"]
    )
    assert [(s.id, s.camera, s.mic) for s in cfg.streams] == [
        ("door", "a.mp4", "a.mp4"),
        ("yard", "synthetic", "none"),
        ("cam2", "c.mp4", "synthetic"),  # a camera without --stream-id is camN
    ]
    assert cfg.mic == "default"  # what a stream without a --mic of its own takes
    unnamed = run.parse_config(["--camera", "a.mp4", "--camera", "b.mp4"])
    assert [(s.id, s.mic) for s in unnamed.streams] == [("cam0", "default"), ("cam1", "default")]


SITE = """\
model: x3d_xs
mic: none
stride: 0.5
size: 640x480
streams:
  - {id: door, camera: "rtsp://door/stream", mic: default, stride: 1}
  - {camera: 0, size: 320x240, fps: 15, loop: true}
  - {id: yard, camera: yard.mp4, size: null}
"""


def test_yaml_streams_take_the_runs_value_for_what_they_leave_out(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    cfg = run.parse_config(["--config", str(path), "--fps", "10"])
    assert cfg.streams == [
        config.StreamSpec("door", "rtsp://door/stream", "default", "640x480", 10.0, False, 1),
        config.StreamSpec("cam1", "0", "none", "320x240", 15, True, 0.5),
        config.StreamSpec("yard", "yard.mp4", "none", None, 10.0, False, 0.5),
    ]
    assert cfg.origin("streams") == str(path)


def test_camera_flags_win_over_yaml_streams(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    cfg = run.parse_config(["--config", str(path), "--camera", "a.mp4", "--camera", "b.mp4"])
    assert [(s.id, s.camera, s.mic, s.size) for s in cfg.streams] == [
        ("cam0", "a.mp4", "none", "640x480"),
        ("cam1", "b.mp4", "none", "640x480"),
    ]
    one = run.parse_config(["--config", str(path), "--camera", "a.mp4"])
    assert one.streams == [_spec("cam0", "a.mp4", mic="none", size="640x480", stride=0.5)]


def test_the_batching_and_control_options(tmp_path):
    cfg = run.parse_config(["--max-batch", "2", "--batch-wait", "0", "--control", "none"])
    assert (cfg.max_batch, cfg.batch_wait, cfg.control) == (2, 0.0, None)
    default = config.RunConfig()
    assert (default.max_batch, default.batch_wait) == (None, 0.02)
    assert default.control == "tcp://127.0.0.1:5554"
    # Left out, --max-batch is 1 on the CPU, and on CUDA the number of streams the run
    # starts with, at most 8: a one-camera run builds a batch-1 engine, as before batching.
    one = run.parse_config([])
    two = run.parse_config(["--camera", "a.mp4", "--camera", "b.mp4"])
    many = run.parse_config([arg for i in range(10) for arg in ("--camera", f"{i}.mp4")])
    assert [config.engine_batch(c, cuda=True) for c in (one, two, many)] == [1, 2, 8]
    assert [config.engine_batch(c, cuda=False) for c in (one, two, many)] == [1, 1, 1]
    given = run.parse_config(["--camera", "a.mp4", "--camera", "b.mp4", "--max-batch", "4"])
    assert config.engine_batch(given, cuda=False) == config.engine_batch(given, cuda=True) == 4
    path = tmp_path / "c.yaml"
    path.write_text("control: null\n")
    assert config.resolve({"config": str(path)}).control is None
    remote = run.parse_config(["--control", "tcp://0.0.0.0:5554", "--allow-remote"])
    assert remote.control == "tcp://0.0.0.0:5554"


def test_a_stream_added_while_running_is_checked_like_the_others():
    cfg = config.RunConfig(batch_wait=0.1)
    cfg.check_new_stream(_spec("yard", "synthetic"))
    for spec, line in [
        (_spec("a b", "synthetic"), "stream 'a b': stream id 'a b' must be 1-64 characters"),
        (_spec("yard", "x", size="big"), "stream 'yard' (id yard): --size 'big' is not WIDTHxH"),
        (_spec("yard", "x", fps=0), "stream 'yard' (id yard): --fps 0 must be > 0"),
        (_spec("yard", "x", stride=0.1), "stream 'yard': --stride 0.1 must be more than the run"),
    ]:
        with pytest.raises(config.UserError) as err:
            cfg.check_new_stream(spec)
        assert str(err.value).startswith(line), err.value


def test_a_stride_shorter_than_the_default_batch_wait_waits_for_no_batch():
    """Runs with a stride of 0.02 s or less worked before batching: left out, --batch-wait
    is 0 there; given, it is refused (tests/test_cli_errors.py)."""
    assert run.parse_config(["--stride", "0.01"]).batch_wait == 0
    assert run.parse_config(["--stride", "0.03"]).batch_wait == 0.02

"""The options of `python -m stream.run` are declared once (stream/config.py's RunConfig,
stream/options.py): the flags, the YAML keys and docs/cli.md's tables come from there, and
reading them needs no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from helpers import REPO
from stream import config, options, rules, run
from stream.errors import UserError
from stream.transport.keys import make_keys

OPTIONS = options.options(config.RunConfig)


def test_docs_tables_are_the_declarations():
    """docs/cli.md's tables of run options are what the declarations make, so that the two
    never drift apart."""
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert options.docs_section(text) == options.markdown(config.RunConfig), (
        "docs/cli.md's run options differ from stream/config.py's RunConfig: "
        "run python -m stream.options --update docs/cli.md"
    )


def test_the_parent_reads_its_options_without_torch():
    """The parent process of stream.run parses a typical command line (and the model's
    YAML) without importing torch: only its children need it."""
    script = (
        "import sys\n"
        "from stream import run\n"
        "cfg = run.parse_config(['--camera', 'synthetic', '--mic', 'synthetic', '--model', "
        "'avslowfast_r50', '--engine', 'torch', '--precision', 'fp32', '--stride', '1'])\n"
        "assert cfg.model == 'avslowfast_r50' and cfg.origin('weights').endswith('.yaml')\n"
        "assert 'engines.names' in sys.modules and 'stream.pipeline.supervisor' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def _samples(tmp_path) -> dict:
    """A value other than the default for every option, one that passes the checks."""
    make_keys(tmp_path / "keys", ["subscriber"])
    token = tmp_path / "web.token"
    token.write_text("a-token-of-24-characters\n", encoding="ascii")
    return {
        "camera": "synthetic",
        "mic": "synthetic",
        "model": "x3d_m",
        "weights": "https://example.org/x3d_m.pyth",
        "engine": "torch",
        "device": "cpu",
        "precision": "fp32",
        "compile": False,
        "threads": 1,
        "malloc": "glibc",
        "stride": 0.75,
        "max_batch": 4,
        "batch_wait": 0.05,
        "smoothing": "mean:3",
        "topk": 3,
        "events": [{"name": "knocking", "labels": ["knocking on door"], "on": 0.6, "off": 0.4}],
        "publish": "tcp://127.0.0.1:5999",
        "allow_remote": True,
        "control": "tcp://127.0.0.1:5998",
        "metrics": "127.0.0.1:9108",
        "web": "127.0.0.1:8090",
        "web_token_file": str(token),
        "web_fps": 5.0,
        "web_width": 320,
        "stream_id": "cam1",
        "duration": 2.5,
        "loop": True,
        "preview": True,
        "size": "320x240",
        "fps": 15.0,
        "log_level": "debug",
        "curve_secret_key": str(tmp_path / "keys" / "server.key_secret"),
        "curve_clients": str(tmp_path / "keys" / "clients"),
        "curve_server_key": str(tmp_path / "keys" / "server.key"),
        "labels": ["kettle", "nothing"],
        "num_classes": 2,
        "model_options": {"frames": 4},
        "streams": [{"id": "door", "camera": "synthetic", "stride": 0.5}],
    }


#: What a sample becomes in the RunConfig, where that is not the sample itself.
TAKEN = {
    "events": [rules.Rule("knocking", ("knocking on door",), on=0.6, off=0.4)],
    "streams": [
        config.StreamSpec(
            id="door",
            camera="synthetic",
            mic="default",
            size=None,
            fps=None,
            loop=False,
            stride=0.5,
        )
    ],
}


#: Options whose flag names a YAML file holding `name: value` (--events FILE).
FLAG_FILES = {"events"}


def test_each_option_is_the_same_from_a_flag_and_from_yaml(tmp_path, monkeypatch):
    """Every declared option a flag sets, the YAML key of its name sets to the same value
    (and a YAML-only one is no flag); a new option without a sample here fails."""
    monkeypatch.setenv("DISPLAY", ":99")  # --preview checks that a display is named
    samples = _samples(tmp_path)
    declared = {o.name for o in OPTIONS if o.yaml}
    assert declared == set(samples), "give each declared option a sample value"
    flags = {o.name: o.flag for o in OPTIONS}
    needs = {  # what each is refused without
        "curve_clients": {"curve_secret_key": samples["curve_secret_key"]},
        "curve_server_key": {
            "publish": "connect:tcp://127.0.0.1:5999",
            "curve_secret_key": str(tmp_path / "keys" / "subscriber.key_secret"),
        },
    }
    for name, value in samples.items():
        also = needs.get(name, {})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({name: value, **also}), encoding="utf-8")
        from_yaml = getattr(config.resolve({"config": str(path)}), name)
        taken = TAKEN.get(name, value)
        assert from_yaml == taken != getattr(config.RunConfig(), name), name
        if flags[name] is None:
            with pytest.raises(SystemExit):
                run.parse_config(["--" + name.replace("_", "-"), str(value)])
            continue
        argv = [flags[name]] if isinstance(value, bool) else [flags[name], str(value)]
        if name in FLAG_FILES:  # the flag names a YAML file that holds the value
            (tmp_path / "flag.yaml").write_text(yaml.safe_dump({name: value}), encoding="utf-8")
            argv = [flags[name], str(tmp_path / "flag.yaml")]
        argv += [f"--{k.replace('_', '-')}={v}" for k, v in also.items()]
        assert getattr(run.parse_config(argv), name) == taken, name


def test_flags_given_per_stream_come_from_the_declarations():
    """A flag declared `repeat=True` is argparse's append, and --help and docs/cli.md say
    "repeat per stream"; stream.config.resolve makes streams of exactly these three."""
    repeated = [o for o in OPTIONS if o.repeat]
    assert {o.name for o in repeated} == {"camera", "mic", "stream_id"}
    help_text = " ".join(run.build_parser().format_help().split())
    table = options.markdown(config.RunConfig)
    for o in repeated:
        words = o.help.split("{default}")[-1].split()
        assert f"{' '.join(words)}; {options.REPEAT}" in help_text, o.name
        assert f"| `{o.flag}` ({options.REPEAT}) |" in table, o.name
    assert help_text.count(options.REPEAT) == len(repeated)
    args = run.build_parser().parse_args(["--camera", "a", "--camera", "b", "--stream-id", "x"])
    assert (args.camera, args.stream_id, args.mic) == (["a", "b"], ["x"], None)


def test_help_and_yaml_keys_come_from_the_declarations():
    """--help shows a flag for each declared flag, with its declared words; the unknown-key
    line lists exactly the declared YAML keys."""
    help_text = " ".join(run.build_parser().format_help().split())
    for o in OPTIONS:
        if o.flag is None:
            assert f"--{o.name.replace('_', '-')} " not in help_text
        else:
            words = o.help.split("{default}")[0].split()
            assert o.flag in help_text and " ".join(words) in help_text, o.name
    yaml_keys = sorted(o.name for o in OPTIONS if o.yaml)
    with pytest.raises(UserError) as err:
        options.yaml_value(config.RunConfig, "config file 'x.yaml'", "strde", 1)
    assert str(err.value) == (
        f"config file 'x.yaml': unknown key 'strde' (known keys: {', '.join(yaml_keys)})"
    )
    assert "config" not in yaml_keys and "origins" not in yaml_keys


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        ("stride", "fast", "stride must be int or float, got str 'fast'"),
        ("loop", 1, "loop must be bool, got int 1"),
        ("topk", True, "topk must be int, got bool True"),
        ("camera", 1.5, "camera must be str or int, got float 1.5"),
        ("model", None, "model must be str, got NoneType None"),
    ],
)
def test_a_yaml_value_of_the_wrong_type_is_one_line(key, value, line):
    with pytest.raises(UserError) as err:
        options.yaml_value(config.RunConfig, "config file 'x.yaml'", key, value)
    assert str(err.value) == f"config file 'x.yaml': {line}"


def test_yaml_values_that_are_taken():
    take = options.yaml_value
    assert take(config.RunConfig, "f", "camera", 0) == (
        "camera",
        "0",
    )  # an index, as a flag gives it
    assert take(config.RunConfig, "f", "stream-id", "cam1") == ("stream_id", "cam1")
    assert take(config.RunConfig, "f", "weights", None) == ("weights", None)
    assert take(config.RunConfig, "f", "precision", None) == ("precision", None)  # auto
    assert take(config.RunConfig, "f", "stride", 1) == ("stride", 1)


def test_the_defaults_that_name_what_models_define():
    """The parent cannot import models (it imports torch), so these two defaults are
    written in RunConfig: they must stay names the registry knows."""
    import models
    from models import _weights

    assert config.RunConfig.model in models.available()
    assert config.RunConfig.weights == _weights.ZOO_KEYWORD

"""Fuzzing the CLI and the YAML config (hypothesis): never a traceback, always one clear
`error:` line and a non-zero exit, nothing left behind."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import REPO, free_port, segments_of
from stream import config, options, run
from stream.errors import UserError, error_line

# Every flag the options declare (stream/config.py's RunConfig), so that a new one is fuzzed too.
OPTIONS = options.options(config.RunConfig)
FLAGS = [o.flag for o in OPTIONS if o.flag is not None and o.kind is not bool]
SWITCHES = [o.flag for o in OPTIONS if o.flag is not None and o.kind is bool]
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
values = st.one_of(
    text,
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(["0", "-1", "nan", "inf", "1e309", "ema:2", "mean:0", "640x", "tcp://*:1"]),
)
argv = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(FLAGS), values).map(list),
        st.sampled_from(SWITCHES).map(lambda s: [s]),
        text.map(lambda t: [t]),
    ),
    max_size=5,
)


def _check_one_line(call) -> None:
    """`call` either returns a config or fails as the CLI would: one line, status 2."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            call()
    except UserError as exc:
        line = error_line(exc)  # what the CLI prints
        assert len(line) > len("error: ") and "\n" not in line and "\r" not in line
    except SystemExit as exc:  # argparse
        assert exc.code == 2
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv)
def test_cli_flags_never_traceback(parts):
    _check_one_line(lambda: run.parse_config([x for part in parts for x in part]))


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(text, children, max_size=3)
    ),
    max_leaves=8,
)
yaml_docs = st.one_of(
    st.dictionaries(
        st.sampled_from([o.name for o in OPTIONS] + ["origins", "strde", "x"]),
        yaml_values,
        max_size=5,
    ).map(yaml.safe_dump),
    text,  # anything at all, most of it not YAML of the right shape
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_docs)
def test_yaml_config_never_traceback(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(doc, encoding="utf-8")
    _check_one_line(lambda: config.resolve({"config": str(path)}))


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from(["--camera", "--model", "--weights"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12),
)
@pytest.mark.e2e  # real stream.run runs
def test_bad_sources_in_real_runs(flag, value):
    """Values only the children can judge (a camera, a model name, a weights file), in real
    runs: one line, exit 2, no shared memory left."""
    if flag == "--camera" and value in ("synthetic",):
        return
    args = [
        "--camera",
        "synthetic",
        "--weights",
        "none",
        "--log-level",
        "error",
        flag,
        "no-such-" + value,
    ]
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "stream.run", *args, "--duration", "1"),
            *("--publish", f"tcp://127.0.0.1:{free_port()}", "--control", "none"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert not segments_of(proc.pid)  # stream.run, the owner, made them


PATH_FLAGS = [o.flag for o in OPTIONS if o.path]


@pytest.mark.parametrize("flag", PATH_FLAGS)
def test_nul_in_a_path_is_one_line(flag, tmp_path):
    """A NUL character cannot be in a path the OS is given (the fuzzer's `--config '\\x00'`
    was a ValueError traceback): one line naming the flag, from a flag or from YAML."""
    with pytest.raises(UserError, match=f"^{flag} .* contains a NUL character"):
        run.parse_config([flag, "clip\x00.mp4"])
    if flag not in ("--config", "--events"):  # YAML's events: is the rules, not a file
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump({flag[2:].replace("-", "_"): "a\x00b"}), encoding="utf-8")
        with pytest.raises(UserError, match=f"^{flag} .* contains a NUL character"):
            config.resolve({"config": str(path)})

"""python -m stream.keys: secret keys are created 0600 whatever the umask, public keys
0644, and no key is overwritten; a secret key that other users can read is refused by
stream.run and stream.subscribe with one line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import zmq
import zmq.auth

from helpers import REPO, free_port

MODES = {
    "server.key_secret": 0o600,
    "alice.key_secret": 0o600,
    "bob.key_secret": 0o600,
    "server.key": 0o644,
    "clients/alice.key": 0o644,
    "clients/bob.key": 0o644,
}


def _run(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        umask=umask,
    )


# umask 0 would leave a file opened with the default mode (0666) readable and writable by
# everyone: 0600 under it shows the mode is given when the file is created.
@pytest.mark.parametrize("umask", [0o022, 0o000, 0o077])
def test_keys_are_created_with_their_modes(tmp_path, umask):
    folder = tmp_path / "keys"
    done = _run("stream.keys", str(folder), "--client", "alice", "--client", "bob", umask=umask)
    assert done.returncode == 0, done.stderr
    files = [p for p in folder.rglob("*") if p.is_file()]
    modes = {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files}
    expected = {name: mode & ~umask for name, mode in MODES.items()}  # a umask only takes away
    assert modes == expected
    for name in ("server", "alice", "bob"):
        public, secret = zmq.auth.load_certificate(folder / f"{name}.key_secret")
        assert zmq.curve_public(secret) == public  # a key pair
        where = folder if name == "server" else folder / "clients"
        assert zmq.auth.load_certificate(where / f"{name}.key") == (public, None)
    # the publisher's ZAP handler reads the folder of client keys this way
    assert len(zmq.auth.load_certificates(folder / "clients")) == 2


def test_keys_are_never_overwritten(tmp_path):
    folder = tmp_path / "keys"
    assert _run("stream.keys", str(folder)).returncode == 0
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    again = _run("stream.keys", str(folder))
    assert again.returncode == 2
    assert again.stderr == f"error: {folder / 'server.key_secret'} exists: choose an empty folder\n"
    # a client's key alone is enough to refuse, before any file is written
    other = tmp_path / "other"
    other.mkdir()
    (other / "alice.key_secret").write_text("mine")
    clash = _run("stream.keys", str(other), "--client", "alice")
    assert clash.returncode == 2
    assert clash.stderr == f"error: {other / 'alice.key_secret'} exists: choose an empty folder\n"
    assert sorted(p.name for p in other.iterdir()) == ["alice.key_secret"]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    bad = _run("stream.keys", str(tmp_path / "third"), "--client", "server")
    assert bad.returncode == 2 and bad.stderr.startswith("error: client name 'server'")
    assert bad.stderr.count("\n") == 1


def test_secret_key_readable_by_others_is_refused(tmp_path, capsys):
    from stream import run

    folder = tmp_path / "keys"
    assert _run("stream.keys", str(folder)).returncode == 0
    server, client = folder / "server.key_secret", folder / "subscriber.key_secret"
    for key in (server, client):
        os.chmod(key, 0o644)
    # stream.run checks the key with its options, before any process starts: in process
    code = run.main(
        [
            "--curve-secret-key",
            str(server),
            "--curve-clients",
            str(folder / "clients"),
            "--camera",
            "synthetic",
            "--weights",
            "none",
        ]
    )
    sub_args = (
        "stream.subscribe",
        f"tcp://127.0.0.1:{free_port()}",
        "--timeout",
        "0.5",
        "--curve-server-key",
        str(folder / "server.key"),
        "--curve-client-key",
        str(client),
    )
    sub = _run(*sub_args)
    for (status, stderr), key in (
        ((code, capsys.readouterr().err), server),
        ((sub.returncode, sub.stderr), client),
    ):
        assert status == 2, stderr
        assert stderr == (
            f"error: CURVE secret key {key} is readable by other users (mode 0644): "
            f"run chmod 600 {key}\n"
        )
    os.chmod(client, 0o620)  # writable by the group: as bad
    sub = _run(*sub_args)
    assert sub.returncode == 2
    assert sub.stderr == (
        f"error: CURVE secret key {client} is writable by other users (mode 0620): "
        f"run chmod 600 {client}\n"
    )
    os.chmod(client, 0o600)  # as stream.keys made it: accepted (no publisher there: times out)
    sub = _run(*sub_args)
    assert sub.returncode == 1 and "no message from" in sub.stderr, sub.stderr

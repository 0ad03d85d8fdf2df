"""`python -m stream.mqtt` against a real Mosquitto broker (started here on a free port of
127.0.0.1 with a generated config), fed by a real ZeroMQ publisher, watched by paho
subscribers: events and their ON/OFF states in order, retained state for a subscriber that
comes late, Home Assistant discovery, the broker stopped and started again (what waited is
delivered, the oldest dropped past --queue), a broker restarted empty, the last will of a
killed bridge, and the bad input (a login refused, no broker, one that does not answer,
the flags and files)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
from test_wire import _prediction

from helpers import ProcessLines, free_port, held_port, wait_until
from stream.transport import mqtt, wire
from stream.transport.keys import make_keys
from stream.transport.publish import Publisher

paho = pytest.importorskip("paho.mqtt.client")

MOSQUITTO = shutil.which(
    "mosquitto", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
)
TIMEOUT = 60.0  # bounds a hang only: every wait is for a message or a log line


class Mosquitto:
    """Mosquitto on 127.0.0.1:`port` (a free one), configured by a file in `folder`:
    anonymous or with a password file, persistence off or in `folder`, TLS with `tls`'s
    (CA, certificate, key) files."""

    def __init__(
        self,
        folder: Path,
        *,
        password_file: Path | None = None,
        persist: bool = False,
        tls: tuple[Path, Path, Path] | None = None,
    ):
        self.port = free_port()
        self.conf = folder / f"mosquitto-{self.port}.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Run as whoever runs the tests: as root, mosquitto would otherwise switch to
            # the user `mosquitto`, who cannot read the test's folder.
            f"user {getpass.getuser()}",
            "log_dest stderr",
            f"persistence {'true' if persist else 'false'}",
        ]
        if persist:
            lines.append(f"persistence_location {folder}/")
        if password_file is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        if tls is not None:
            lines += [f"{k} {v}" for k, v in zip(("cafile", "certfile", "keyfile"), tls)]
        self.conf.write_text("\n".join(lines) + "\n")
        self.url = f"{'mqtt' if tls is None else 'mqtts'}://127.0.0.1:{self.port}"
        self.proc: ProcessLines | None = None
        self.start()

    def start(self) -> None:
        self.proc = ProcessLines([MOSQUITTO, "-c", str(self.conf)])
        self.proc.wait_for(r"mosquitto version .* running")

    def stop(self, sig=signal.SIGTERM) -> None:
        self.proc.stop(sig)


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("the Mosquitto broker is needed (apt-get install mosquitto)")
    made: list[Mosquitto] = []

    def make(**kwargs) -> Mosquitto:
        made.append(Mosquitto(tmp_path, **kwargs))
        return made[-1]

    yield make
    for b in made:
        b.proc.kill()


class Watcher:
    """A paho subscriber of the test: every message it gets, in order, as (topic, payload,
    retain)."""

    def __init__(self, port: int, topics=("avstream/#", "homeassistant/#"), **client_options):
        self.messages: list[tuple[str, str, bool]] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        auth = client_options.pop("auth", None)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, **client_options)
        if auth is not None:
            self.client.username_pw_set(*auth)
        # Again on a reconnection to a broker that kept no session (and so no subscription).
        self.client.on_connect = lambda c, u, flags, rc, p: (
            None if flags.session_present else c.subscribe([(t, 1) for t in topics])
        )
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(TIMEOUT), "the test's subscriber did not subscribe"

    def _message(self, client, userdata, msg) -> None:
        with self._changed:
            self.messages.append((msg.topic, msg.payload.decode(), bool(msg.retain)))
            self._changed.notify_all()

    def wait_for(self, ready, what: str):
        """Wait until `ready(messages)` is true; returns its value."""
        with self._changed:
            value = self._changed.wait_for(lambda: ready(self.messages), TIMEOUT)
        assert value, f"{what}: not within {TIMEOUT:g} s; got {self.messages}"
        return value

    def payloads(self, topic: str) -> list[str]:
        with self._changed:
            return [p for t, p, _ in self.messages if t == topic]

    def sees(self, topic: str, payload: str, *, after: int = 0) -> None:
        self.wait_for(
            lambda ms: any(m[:2] == (topic, payload) for m in ms[after:]),
            f"{topic} = {payload}",
        )

    def retained(self) -> dict[str, str]:
        """The latest retained value of each topic received as retained."""
        with self._changed:
            return {t: p for t, p, r in self.messages if r}

    def close(self) -> None:
        self.client.disconnect()  # first: it wakes paho's thread, which loop_stop joins
        self.client.loop_stop()


@pytest.fixture
def watchers():
    made: list[Watcher] = []

    def make(port: int, **kwargs) -> Watcher:
        made.append(Watcher(port, **kwargs))
        return made[-1]

    yield make
    for w in made:
        w.close()


@pytest.fixture
def publisher():
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}")
    yield pub
    pub.close()


def bridge(pub: Publisher, b: Mosquitto, *args: str, env: dict | None = None) -> ProcessLines:
    return ProcessLines(
        [sys.executable, "-m", "stream.mqtt", "--connect", pub.endpoint, "--broker", b.url, *args],
        env=env,
    )


def subscribed(pub: Publisher, topics: int = 1) -> None:
    """Wait until the bridge's subscriptions reached the publisher (ZeroMQ drops what is
    sent before: the slow joiner)."""
    wait_until(lambda: pub.count_subscriptions() >= topics, "the bridge did not subscribe")


def event(name: str, kind: str, *, seq: int, n: int = 0, stream: str = "cam0") -> dict:
    ended = kind == "end"
    now = time.time_ns()
    return wire.event(
        seq=seq,
        id=f"{stream}-{name}-{n}",
        stream=stream,
        name=name,
        labels=[name.replace("_", " ")],
        type=kind,
        start_ns=1_000_000,
        end_ns=2_000_000 if ended else None,
        start_wall_ns=now - 1_000_000,
        end_wall_ns=now if ended else None,
        peak=0.91,
        mean=0.8,
        seq_first=4,
        seq_last=9,
        degraded=False,
        reason="below threshold" if ended else None,
        wall_ns=now,
    )


def send(pub: Publisher, body: dict) -> None:
    assert pub.send(wire.topic(wire.EVENT_TOPIC, body["stream"]), body)


# -- delivery --------------------------------------------------------------------------


def test_events_and_states_arrive_in_order_and_stay_for_a_late_subscriber(
    broker, watchers, publisher
):
    b = broker()
    w = watchers(b.port)
    run = bridge(publisher, b, "--homeassistant", "--top")
    try:
        w.sees("avstream/bridge", "online")
        subscribed(publisher, 2)  # event. and pred.
        prediction = _prediction(stream="cam0", seq=7)
        assert publisher.send(wire.topic(wire.PRED_TOPIC, "cam0"), prediction)
        sent = [
            event("knocking", "start", seq=0),
            event("knocking", "update", seq=1),
            event("knocking", "end", seq=2),
            event("waving", "start", seq=3, n=1),
        ]
        for body in sent:
            send(publisher, body)
        w.sees("avstream/cam0/waving", "ON")
        w.wait_for(lambda ms: any(t == "avstream/cam0/top" for t, _, _ in ms), "the top labels")

        # The event bodies as sent, in order; each start or end followed by its state.
        stream_topics = [
            (t, p) for t, p, _ in w.messages if t.startswith("avstream/cam0/") and t[-4:] != "/top"
        ]
        assert [(t, json.loads(p) if t.endswith("/event") else p) for t, p in stream_topics] == [
            ("avstream/cam0/event", sent[0]),
            ("avstream/cam0/knocking", "ON"),
            ("avstream/cam0/event", sent[1]),  # an update of an ON state adds no state
            ("avstream/cam0/event", sent[2]),
            ("avstream/cam0/knocking", "OFF"),
            ("avstream/cam0/event", sent[3]),
            ("avstream/cam0/waving", "ON"),
        ]
        (top,) = w.payloads("avstream/cam0/top")
        assert json.loads(top) == {
            "stream": "cam0",
            "seq": 7,
            "labels": [{"label": "whistling", "score": 0.5}],
            "degraded": [],
            "wall_ns": prediction["t"]["wall_ns"],
        }

        # Home Assistant: a binary sensor per event, its config before its first state.
        config_topic = "homeassistant/binary_sensor/avstream_cam0/knocking/config"
        topics = [t for t, _, _ in w.messages]
        assert topics.index(config_topic) < topics.index("avstream/cam0/knocking")
        (config,) = w.payloads(config_topic)
        assert json.loads(config) == {
            "name": "knocking",
            "unique_id": "avstream/cam0/knocking",
            "state_topic": "avstream/cam0/knocking",
            "payload_on": "ON",
            "payload_off": "OFF",
            "availability_topic": "avstream/bridge",
            "payload_available": "online",
            "payload_not_available": "offline",
            "qos": 1,
            "device": {
                "identifiers": ["avstream/cam0"],
                "name": "avstream cam0",
                "manufacturer": "avstream",
                "model": "stream.run stream",
            },
            "origin": {"name": "avstream"},
        }

        late = watchers(b.port)
        want = {
            "avstream/bridge": "online",
            "avstream/cam0/knocking": "OFF",
            "avstream/cam0/waving": "ON",
        }
        late.wait_for(lambda ms: len({t for t, _, r in ms if r}) >= 5, "the retained messages")
        retained = late.retained()
        assert {t: retained[t] for t in want} == want
        assert set(retained) == {
            *want,
            config_topic,
            "homeassistant/binary_sensor/avstream_cam0/waving/config",
        }  # event bodies and top labels are not retained
        count = len(w.messages)
    finally:
        code, err = run.stop()
    assert code == 0, err
    assert "error" not in err.lower(), err
    w.sees("avstream/bridge", "offline", after=count)  # said by the bridge as it stops


def test_the_broker_stopped_and_started_again_gets_what_waited_and_the_current_states(
    broker, watchers, publisher
):
    b = broker(persist=True)  # keeps the test's subscriber's session over the restart
    w = watchers(b.port, client_id="watcher", clean_session=False)
    run = bridge(publisher, b, "--queue", "6")
    try:
        w.sees("avstream/bridge", "online")
        subscribed(publisher)
        sent_first = event("a", "start", seq=0)
        send(publisher, sent_first)
        w.sees("avstream/cam0/a", "ON")

        b.stop(signal.SIGTERM)
        run.wait_for(r"lost the broker at mqtt://127\.0\.0\.1:\d+: reconnecting")
        count = len(w.messages)
        # 8 messages (4 events and their states) for a queue of 6: a's end and its OFF,
        # the oldest, are dropped; a's state is published again after the queue.
        outage = [
            event("a", "end", seq=1),
            event("b", "start", seq=2, n=1),
            event("b", "end", seq=3, n=1),
            event("c", "start", seq=4, n=2),
        ]
        for body in outage:
            send(publisher, body)
        run.wait_for(r"6 messages wait for the broker at .*: dropping the oldest")
        run.wait_for(r"no broker at .* yet .*: next try in .*; 6 messages wait, 2 dropped")
        b.start()
        run.wait_for(
            r"the broker at .* is back after .* s: 6 messages that waited go now, 2 dropped"
        )
        w.sees("avstream/cam0/a", "OFF", after=count)

        # Each topic's messages, a message repeated in a row counted once: QoS 1 is at
        # least once (what was in flight when the broker went may come twice), and the
        # bridge publishes every retained state again once back. What a subscription gets
        # on arrival is left out (retained).
        seen = [(t, p) for t, p, r in w.messages if t != "avstream/bridge" and not r]
        runs = {
            topic: [p for i, (t, p) in enumerate(seen) if t == topic and p != prev(seen, i)]
            for topic in dict(seen)
        }
        assert [json.loads(p) for p in runs["avstream/cam0/event"]] == [
            sent_first,
            *outage[1:],  # in order, the oldest dropped
        ]
        assert {t.rpartition("/")[2]: runs[t] for t in runs if t[-6:] != "/event"} == {
            "a": ["ON", "OFF"],  # its OFF was dropped: published again after the queue
            "b": ["ON", "OFF"],
            "c": ["ON"],
        }
        last = {item: i for i, item in enumerate(seen)}
        assert last[("avstream/cam0/a", "OFF")] > last[("avstream/cam0/c", "ON")]

        late = watchers(b.port)
        late.wait_for(lambda ms: len({t for t, _, r in ms if r}) >= 4, "the retained states")
        assert late.retained() == {
            "avstream/bridge": "online",
            "avstream/cam0/a": "OFF",
            "avstream/cam0/b": "OFF",
            "avstream/cam0/c": "ON",
        }
    finally:
        code, err = run.stop()
    assert code == 0, err


def test_a_broker_restarted_empty_gets_the_states_again_and_a_killed_bridge_is_offline(
    broker, watchers, publisher
):
    b = broker()  # no persistence: a restart forgets every retained message
    w = watchers(b.port)
    run = bridge(publisher, b, "--homeassistant")
    try:
        w.sees("avstream/bridge", "online")
        subscribed(publisher)
        send(publisher, event("door", "start", seq=0))
        w.sees("avstream/cam0/door", "ON")

        count = len(w.messages)
        b.stop(signal.SIGKILL)
        run.wait_for(r"lost the broker")
        b.start()
        run.wait_for(r"is back after")
        w.sees("avstream/cam0/door", "ON", after=count)
        # Published again to the empty broker: the state, the discovery config, online.
        late = watchers(b.port)
        late.wait_for(lambda ms: len({t for t, _, r in ms if r}) >= 3, "the retained messages")
        config = "homeassistant/binary_sensor/avstream_cam0/door/config"
        retained = late.retained()
        assert set(retained) == {"avstream/bridge", "avstream/cam0/door", config}
        assert retained["avstream/bridge"] == "online"
        assert retained["avstream/cam0/door"] == "ON"
        assert json.loads(retained[config])["state_topic"] == "avstream/cam0/door"
        count = len(late.messages)
    finally:
        run.kill()  # SIGKILL: no goodbye; the broker publishes the last will
    assert run.proc.returncode == -signal.SIGKILL
    late.sees("avstream/bridge", "offline", after=count)


def prev(messages: list[tuple[str, str]], i: int) -> str | None:
    """The payload of the message before messages[i] on the same topic."""
    topic = messages[i][0]
    return next((p for t, p in reversed(messages[:i]) if t == topic), None)


def test_curve_keys_reach_a_run_that_wants_them_and_a_bridge_without_them_ends(
    broker, watchers, tmp_path
):
    keys = tmp_path / "keys"
    make_keys(keys, ["bridge"])
    context = zmq.Context()  # its own: the publisher's ZAP handler binds an inproc address
    pub = Publisher(
        f"tcp://127.0.0.1:{free_port()}",
        curve_secret_key=str(keys / "server.key_secret"),
        curve_clients=str(keys / "clients"),
        context=context,
    )
    try:
        b = broker()
        w = watchers(b.port)
        run = bridge(
            pub,
            b,
            "--curve-server-key",
            str(keys / "server.key"),
            "--curve-client-key",
            str(keys / "bridge.key_secret"),
        )
        try:
            subscribed(pub)
            send(pub, event("door", "start", seq=0))
            w.sees("avstream/cam0/door", "ON")
        finally:
            code, err = run.stop()
        assert code == 0, err
        w.sees("avstream/bridge", "offline")
        count = len(w.messages)

        keyless = bridge(pub, b)
        code, err = keyless.wait()
        assert code == 2, err
        assert err.splitlines()[-1] == (
            f"error: the publisher at {pub.endpoint} requires CURVE encryption: pass "
            "--curve-server-key server.key and --curve-client-key NAME.key_secret "
            "(python -m stream.keys)"
        )
        w.sees("avstream/bridge", "online", after=count)
        w.sees("avstream/bridge", "offline", after=count + 1)  # it said so as it ended
    finally:
        pub.close()
        context.term()


# -- bad input -------------------------------------------------------------------------


def _one_error_line(run: ProcessLines) -> str:
    code, err = run.wait()
    assert code == 2, err
    assert len(run.lines) == 1 and err.startswith("error: "), err
    return run.lines[0]


def test_a_login_the_broker_refuses_is_one_line_and_the_right_one_connects(
    broker, watchers, publisher, tmp_path
):
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwords), "alice", "s3cret"],
        check=True,
        timeout=TIMEOUT,
        env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/bin:/usr/sbin"},
    )
    b = broker(password_file=passwords)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    refused = bridge(publisher, b, "--username", "alice", "--password-file", str(wrong))
    assert _one_error_line(refused) == (
        f"error: the broker at {b.url} refused the login of user 'alice': check --username "
        "and the password (--password-file or AVSTREAM_MQTT_PASSWORD)"
    )
    anonymous = bridge(publisher, b)
    assert _one_error_line(anonymous).startswith(
        f"error: the broker at {b.url} refused a login without a user name"
    )

    w = watchers(b.port, auth=("alice", "s3cret"))
    run = bridge(publisher, b, "--username", "alice", env={mqtt.PASSWORD_ENV: "s3cret"})
    try:
        w.sees("avstream/bridge", "online")
    finally:
        code, err = run.stop(signal.SIGTERM)
    assert code == 0, err


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a certificate for 127.0.0.1 it signed, and another CA (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2")
    for ca in ("ca", "other_ca"):
        openssl(
            "req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-subj", "/CN=" + ca
        )
    openssl(
        "req", *ec[:-2], "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"
    )
    (folder / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nauthorityKeyIdentifier=keyid\nkeyUsage=digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
    )  # fmt: skip
    return {name: folder / name for name in ("ca.pem", "server.pem", "server.key", "other_ca.pem")}


def test_tls_with_the_brokers_ca_connects_and_a_wrong_ca_or_scheme_is_one_line(
    broker, publisher, tmp_path
):
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the test's certificates (apt-get install openssl)")
    files = _certificates(tmp_path)
    b = broker(tls=(files["ca.pem"], files["server.pem"], files["server.key"]))
    run = bridge(publisher, b, "--ca-file", str(files["ca.pem"]))
    try:
        run.wait_for(rf"connected to {b.url}: ")
    finally:
        code, err = run.stop()
    assert code == 0, err

    untrusted = bridge(publisher, b, "--ca-file", str(files["other_ca.pem"]))
    assert _one_error_line(untrusted).startswith(
        f"error: the TLS certificate of the broker at {b.url} is not trusted ("
    )
    plain = ProcessLines(
        [sys.executable, "-m", "stream.mqtt", "--connect", publisher.endpoint]
        + ["--broker", b.url.replace("mqtts://", "mqtt://")]
    )
    assert _one_error_line(plain) == (
        f"error: the broker at {b.url.replace('mqtts://', 'mqtt://')} hung up before "
        "answering the login: does it want TLS? (mqtts://)"
    )


def test_no_broker_and_a_silent_one_are_one_line(publisher):
    port = free_port()  # nothing listens there
    absent = ProcessLines(
        [sys.executable, "-m", "stream.mqtt", "--connect", publisher.endpoint]
        + ["--broker", f"mqtt://127.0.0.1:{port}"]
    )
    assert _one_error_line(absent) == (
        f"error: no broker at mqtt://127.0.0.1:{port}: the connection was refused (is the "
        "broker running, and is the port right?)"
    )
    with held_port() as port:  # accepts connections (the backlog), never answers
        url = f"mqtt://127.0.0.1:{port}"
        mute = ProcessLines(
            [sys.executable, "-m", "stream.mqtt", "--connect", publisher.endpoint]
            + ["--broker", url, "--connect-timeout", "0.5"]
        )
        assert _one_error_line(mute) == (
            f"error: the broker at {url} does not answer: no MQTT reply to the login in 0.5 s "
            "(is it an MQTT broker?)"
        )


@pytest.fixture
def refused(capsys, tmp_path, monkeypatch):
    """`stream.transport.mqtt.main(argv)` here: exit status 2 and one error line, before
    anything connects."""
    monkeypatch.delenv(mqtt.PASSWORD_ENV, raising=False)

    def call(*argv: str) -> str:
        try:
            code = mqtt.main(["--connect", "tcp://127.0.0.1:1", *argv])
        except SystemExit as exc:  # argparse
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        return lines[0]

    return call


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ("--prefix", "home/+/cams"),
            "error: --prefix 'home/+/cams' holds an MQTT wildcard (+ or #), which a topic to "
            "publish to may not: use letters, digits, '_', '-' and '/' between levels",
        ),
        (("--prefix", "cams/#"), "error: --prefix 'cams/#' holds an MQTT wildcard"),
        (("--prefix", "cams/"), "error: --prefix 'cams/' has an empty topic level"),
        (("--prefix", "$SYS/x"), "error: --prefix '$SYS/x' starts with '$'"),
        (
            ("--homeassistant", "--discovery-prefix", "ha#"),
            "error: --discovery-prefix 'ha#' holds an MQTT wildcard",
        ),
        (
            ("--broker", "http://localhost:1883"),
            "error: --broker 'http://localhost:1883' is not a broker URL like "
            "mqtt://localhost:1883 or mqtts://broker.example:8883",
        ),
        (("--broker", "localhost:1883"), "error: --broker 'localhost:1883' is not a broker URL"),
        (("--broker", "mqtt://"), "error: --broker 'mqtt://' is not a broker URL"),
        (("--broker", "mqtt://host:99999"), "error: --broker 'mqtt://host:99999' is not a broker"),
        (("--broker", "mqtt://host/topic"), "error: --broker 'mqtt://host/topic' is not a broker"),
        (
            ("--broker", "mqtt://alice:pw@host"),
            "error: --broker 'mqtt://alice:pw@host' holds a user name or password: pass "
            "--username and --password-file",
        ),
        (
            ("--ca-file", "ca.pem"),
            "error: --ca-file is for a TLS broker (mqtts://), not mqtt://localhost:1883",
        ),
        (
            ("--broker", "mqtts://localhost", "--ca-file", "/nonexistent/ca.pem"),
            "error: --ca-file '/nonexistent/ca.pem' cannot be read (No such file or directory)",
        ),
        (
            ("--username", "u", "--password-file", "/nonexistent/pw"),
            "error: --password-file '/nonexistent/pw' cannot be read (No such file or directory)",
        ),
        (("--connect", "127.0.0.1:5555"), "error: --connect '127.0.0.1:5555' is not a ZeroMQ"),
        (("--queue", "0"), "error: --queue 0 must be at least 1 message"),
        (("--qos", "3"), "error: argument --qos: invalid choice: 3"),
        (
            ("--curve-server-key", "server.key"),
            "error: CURVE needs both --curve-server-key and --curve-client-key",
        ),
    ],
)
def test_bad_flags_are_one_line(refused, argv, line):
    assert refused(*argv).startswith(line)


def test_bad_files_are_one_line(refused, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.write_text("s3cret\n")
    shared.chmod(0o644)
    assert refused("--username", "u", "--password-file", str(shared)) == (
        f"error: --password-file {shared} is readable by other users (mode 0644): "
        f"run chmod 600 {shared}"
    )
    mine = tmp_path / "mine"
    mine.write_text("s3cret\n")
    mine.chmod(0o600)
    assert refused("--password-file", str(mine)) == (
        "error: a password (--password-file or AVSTREAM_MQTT_PASSWORD) needs --username as well"
    )
    monkeypatch.setenv(mqtt.PASSWORD_ENV, "s3cret")
    assert refused().startswith("error: a password (--password-file or AVSTREAM_MQTT_PASSWORD)")
    monkeypatch.delenv(mqtt.PASSWORD_ENV)
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    assert refused("--broker", "mqtts://localhost", "--ca-file", str(not_pem)).startswith(
        f"error: --ca-file {str(not_pem)!r} holds no CA certificate in PEM form"
    )


def test_the_outbox_drops_the_oldest_and_counts():
    box = mqtt.Outbox(2)
    items = [mqtt.Outgoing(f"t/{i}", b"x", 1, False) for i in range(4)]
    assert box.put(items[0]) is None and box.put(items[1]) is None
    assert box.put(items[2]) is items[0] and box.put(items[3]) is items[1]
    assert box.dropped == 2 and len(box) == 2
    assert [box.get(), box.get(), box.get()] == [items[2], items[3], None]

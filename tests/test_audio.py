"""Audio: AudioRing, the audio window, the log-mel front end (against librosa), the real
sounddevice path over an ALSA file-backed device, audio files, and picture/sound sync."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import models
from helpers import AV_CLIP_EVENT_S, REPO, wait_until
from stream.control import AudioEnded, AudioOpened, BadInput, VideoEnded, VideoOpened, WriteRing
from stream.errors import FrameLost
from stream.pipeline.preprocess import LogMel
from stream.pipeline.ring import AudioRing, FrameRing
from stream.pipeline.window import AudioSampler

RATE = 16000


def test_audio_ring_time_mapping_and_overwrite():
    with AudioRing.create(8192, RATE, max_block=1024) as ring:
        t0 = 5_000_000_000
        for k in range(4):  # 4 blocks of 1000 samples, 62.5 ms each
            ring.write(np.arange(k * 1000, (k + 1) * 1000, dtype=np.float32), t0 + k * 62_500_000)
        assert ring.clock() == (4000, 3000, t0 + 3 * 62_500_000)
        assert ring.index_at(t0) == 0 and ring.time_of(2000) == t0 + 125_000_000
        out = np.empty(100, np.float32)
        ring.read(3900, out)
        assert out.tolist() == list(range(3900, 4000))
        with pytest.raises(FrameLost):
            ring.read(3950, out)  # beyond what was written
        for k in range(4, 12):
            ring.write(np.zeros(1000, np.float32), t0 + k * 62_500_000)
        with pytest.raises(FrameLost):
            ring.read(0, out)  # overwritten
    assert not os.path.exists(f"/dev/shm/{ring.name}")


def _ramp_writer(name: str, blocks: int) -> None:
    ring = AudioRing.attach(name)
    for k in range(blocks):
        idx = np.arange(k * 256, (k + 1) * 256)
        ring.write((idx % 65536).astype(np.float32), time.monotonic_ns())
    ring.close_writer()
    ring.close()


def test_audio_ring_concurrent_writer_reads_are_consistent():
    ctx = mp.get_context("spawn")
    ring = AudioRing.create(16384, RATE, max_block=256)
    try:
        writer = ctx.Process(target=_ramp_writer, args=(ring.name, 20000))
        writer.start()
        out = np.empty(2048, np.float32)
        reads = lost = 0
        while not ring.closed or reads == 0:
            count, _, _ = ring.clock()
            if count < 4096:
                continue
            start = count - 2048
            try:
                ring.read(start, out)
            except FrameLost:
                lost += 1
                continue
            expected = (np.arange(start, start + 2048) % 65536).astype(np.float32)
            assert np.array_equal(out, expected), "torn audio read"
            reads += 1
        writer.join(30)
        assert writer.exitcode == 0 and reads > 10
    finally:
        ring.close()


def test_audio_window_is_cut_by_time_and_zero_filled():
    with AudioRing.create(64000, RATE, max_block=1600) as ring:
        t0 = 10**9
        for k in range(20):  # 2 s of a ramp, 0.1 s blocks
            ring.write(
                np.arange(k * 1600, (k + 1) * 1600, dtype=np.float32) + 1, t0 + k * 100_000_000
            )
        sampler = AudioSampler(ring, 8000)  # 0.5 s
        w = sampler.sample(t0 + 750_000_000)  # from 0.75 s: samples 12000..20000
        assert w.missing == 0 and w.samples[0] == 12001 and w.samples[-1] == 20000
        assert (w.start_ns, w.end_ns) == (t0 + 750_000_000, t0 + 1_250_000_000)
        assert sampler.arrived(t0 + 750_000_000)
        late = sampler.sample(t0 + 1_650_000_000)  # ends 0.15 s after the newest sample
        assert not sampler.arrived(t0 + 1_650_000_000)
        assert late.missing == 2400 and (late.samples[-2400:] == 0).all() and late.samples[0] > 0


def test_logmel_matches_librosa():
    librosa = pytest.importorskip("librosa")
    cfg = models.AudioInput()
    logmel = LogMel(cfg)
    rng = np.random.default_rng(0)
    t = np.arange(logmel.samples) / RATE
    x = (0.1 * rng.standard_normal(logmel.samples) + 0.2 * np.sin(2 * np.pi * 1000 * t)).astype(
        np.float32
    )
    ours = logmel(x)
    assert ours.shape == (1, 1, 128, 80)
    mel = librosa.feature.melspectrogram(
        y=x, sr=RATE, n_fft=512, hop_length=256, window="hann", center=False, power=2.0, n_mels=80
    )
    ref = ((np.log(mel + cfg.log_eps) - cfg.mean) / cfg.std).T
    np.testing.assert_allclose(ours[0, 0].numpy(), ref, atol=1e-4)


def test_resampler_keeps_pitch():
    from stream.capture.audio import _Resampler

    rs = _Resampler(48000, RATE)
    t = np.arange(48000) / 48000
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    y = np.concatenate(
        [rs(x[i : i + 768]) for i in range(0, 48000, 768)]
        + [rs(np.zeros(0, np.float32), last=True)]
    )
    assert abs(len(y) - RATE) <= 64
    spectrum = np.abs(np.fft.rfft(y[: RATE // 2]))
    assert abs(np.argmax(spectrum) * 2 - 440) <= 2  # bins of 2 Hz over 0.5 s


def _start_audio_capture(spec: str, loop: bool = False):
    from stream.capture.audio import capture_main

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=capture_main, args=(spec, RATE, loop, "warning", os.getpid(), child, stop)
    )
    proc.start()
    child.close()
    assert parent.poll(120), "the audio capture did not report"
    return proc, parent, stop, parent.recv()


def test_real_sounddevice_path_over_alsa_file_device(alsa_file_mic):
    proc, conn, stop, info = _start_audio_capture(alsa_file_mic)
    assert isinstance(info, AudioOpened), info
    assert info.kind == "device" and info.rate == RATE
    ring = AudioRing.create(RATE * 8, RATE, max_block=8192)
    try:
        t_start = time.monotonic_ns()
        conn.send(WriteRing(ring.name, t_start))
        wait_until(lambda: ring.clock()[0] >= RATE, "a second of sound in the ring", 60)
        count, _, _ = ring.clock()
        now = time.monotonic_ns()
        # At the device's pace, not as fast as the file reads (a busy machine only slows
        # the capture down, so only the upper bound is checked).
        assert count < 1.4 * (now - t_start) / 1e9 * RATE, (count, (now - t_start) / 1e9)
        assert t_start <= ring.time_of(count - 1) <= now  # stamped on the monotonic clock
        out = np.empty(RATE // 2, np.float32)
        ring.read(count - len(out), out)
        assert 0.2 < np.abs(out).max() < 0.4
        assert abs(np.argmax(np.abs(np.fft.rfft(out))) * 2 - 440) <= 2
    finally:
        stop.set()
        proc.join(10)
        ring.close()
    assert proc.exitcode == 0


def test_unknown_microphone_lists_devices(alsa_file_mic):
    proc, _, _, message = _start_audio_capture("no such mic")
    proc.join(10)
    assert isinstance(message, BadInput)
    assert "'no such mic' not found" in message.line and "testmic" in message.line


def test_audio_file_without_audio_track(video_file):
    proc, _, _, message = _start_audio_capture(str(video_file))
    proc.join(10)
    assert isinstance(message, BadInput) and "has no audio track" in message.line


def test_missing_audio_file():
    proc, _, _, message = _start_audio_capture("no/such/sound.wav")
    proc.join(10)
    assert isinstance(message, BadInput) and "does not exist" in message.line


def test_video_and_audio_of_one_file_play_in_sync(av_clip):
    """The flash (video) and the click (audio) happen at the same time in the file; played
    by the two capture processes on one timeline, their capture times agree."""
    from stream.capture.video import capture_main as video_main

    ctx = mp.get_context("spawn")
    vstop = ctx.Event()
    vparent, vchild = ctx.Pipe()
    vproc = ctx.Process(
        target=video_main,
        args=(str(av_clip), None, None, False, "warning", os.getpid(), vchild, vstop),
    )
    vproc.start()
    aproc, aconn, astop, ainfo = _start_audio_capture(str(av_clip))
    assert isinstance(ainfo, AudioOpened), ainfo
    assert vparent.poll(120), "the video capture did not report"
    vinfo = vparent.recv()
    assert isinstance(vinfo, VideoOpened), vinfo
    frames = FrameRing.create(200, vinfo.height, vinfo.width)
    audio = AudioRing.create(RATE * 6, RATE, max_block=8192)
    try:
        start_ns = time.monotonic_ns() + 100_000_000
        vparent.send(WriteRing(frames.name, start_ns))
        aconn.send(WriteRing(audio.name, start_ns))
        assert vparent.poll(60) and isinstance(vparent.recv(), VideoEnded)
        assert aconn.poll(60) and isinstance(aconn.recv(), AudioEnded)
        seqs, times = frames.snapshot()
        brightness = [frames.read(int(s))[0].mean() for s in seqs]
        t_flash = int(times[int(np.argmax(brightness))])
        count, _, _ = audio.clock()
        samples = np.empty(count, np.float32)
        audio.read(0, samples)
        t_click = audio.time_of(int(np.argmax(np.abs(samples))))
        assert abs(t_flash - t_click) < 20_000_000, (t_flash - t_click) / 1e6  # < 20 ms
        assert abs((t_flash - start_ns) / 1e9 - AV_CLIP_EVENT_S) < 0.05
    finally:
        vstop.set()
        astop.set()
        vproc.join(10)
        aproc.join(10)
        frames.close()
        audio.close()


# -- files with damaged audio packets, and error lines ------------------------------------

TONE_HZ = 440
#: `_damaged_tone`: 440 Hz over [0, 0.5) and [1.0, 1.5) s, silence between; its AC3
#: packets (1536 samples at 48 kHz: 32 ms) 0 and 8 are garbage, as the first packet of
#: OpenCV's sample Megamind.avi is.
DAMAGED_PACKETS = (0, 8)


def _damaged_tone(path, bad=DAMAGED_PACKETS):
    import av

    rate, size = 48000, 1536
    t = np.arange(round(1.5 * rate)) / rate
    x = np.where((t < 0.5) | (t >= 1.0), 0.3 * np.sin(2 * np.pi * TONE_HZ * t), 0.0)
    x = np.stack([x, x]).astype(np.float32)
    rng = np.random.default_rng(0)
    count = 0
    with av.open(str(path), "w") as c:
        stream = c.add_stream("ac3", rate=rate)
        stream.layout = "stereo"

        def mux(packets):
            nonlocal count
            for p in packets:
                if count in bad:
                    garbage = av.Packet(rng.integers(0, 256, p.size, dtype=np.uint8).tobytes())
                    garbage.pts, garbage.dts, garbage.duration = p.pts, p.dts, p.duration
                    garbage.time_base, garbage.stream = p.time_base, p.stream
                    p = garbage
                count += 1
                c.mux(p)

        for i in range(0, x.shape[1], size):
            chunk = np.ascontiguousarray(x[:, i : i + size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, i
            mux(stream.encode(frame))
        mux(stream.encode())
    return path


def _play_file(spec: str, *, loop: bool = False, seconds: float | None = None):
    """Plays `spec` through the audio capture process into a real AudioRing; returns the
    samples and the capture's exit code. Without `seconds`, until the end of the file."""
    proc, conn, stop, info = _start_audio_capture(spec, loop)
    assert isinstance(info, AudioOpened), info
    ring = AudioRing.create(RATE * 8, RATE, max_block=8192)
    try:
        conn.send(WriteRing(ring.name, time.monotonic_ns()))
        if seconds is None:
            assert conn.poll(60), "no end of the file"
            assert isinstance(conn.recv(), AudioEnded)
        else:
            deadline = time.monotonic() + 60
            while ring.clock()[0] < seconds * RATE:
                assert time.monotonic() < deadline, "the capture did not deliver"
                assert not conn.poll(0.05), conn.recv()
        count = ring.clock()[0]
        samples = np.empty(count, np.float32)
        ring.read(0, samples)
    finally:
        stop.set()
        proc.join(10)
        ring.close()
    return samples, proc.exitcode


def _at(samples: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """The samples over [start_s, end_s) of the paced timeline (sample i is at i / RATE)."""
    return samples[round(start_s * RATE) : round(end_s * RATE)]


def _assert_tone(x: np.ndarray) -> None:
    assert np.sqrt(np.mean(x**2)) > 0.2, "no sound where the tone is"
    hz = np.argmax(np.abs(np.fft.rfft(x))) * RATE / len(x)
    assert abs(hz - TONE_HZ) <= RATE / len(x), hz


def _onset_s(samples: np.ndarray, after_s: float) -> float:
    """When the tone starts again after the silence that precedes `after_s`."""
    return (round(after_s * RATE) + int(np.argmax(np.abs(_at(samples, after_s, 1e9)) > 0.1))) / RATE


@pytest.mark.parametrize("container", ["mkv", "avi"])
def test_undecodable_audio_packets_are_skipped_as_silence_in_place(tmp_path, capfd, container):
    """Packets that do not decode (the first one among them) become silence of their
    span: the rest of the track plays, and every later sample keeps its time (in sync
    with the picture). In AVI the AC3 parser joins garbage to the packet before it, so
    three packets' time is silent there, still two undecodable packets."""
    path = _damaged_tone(tmp_path / f"damaged.{container}")
    samples, code = _play_file(str(path))
    assert code == 0
    assert abs(len(samples) / RATE - 1.5) < 0.01, len(samples) / RATE  # not 64 ms short
    assert np.abs(_at(samples, 0.0, 0.025)).max() == 0  # packet 0's span: silence
    _assert_tone(_at(samples, 0.05, 0.22))
    assert np.abs(_at(samples, 0.258, 0.28)).max() == 0  # packet 8's span: silence
    _assert_tone(_at(samples, 0.30, 0.49))
    assert np.abs(_at(samples, 0.55, 0.95)).max() < 0.02
    assert abs(_onset_s(samples, 0.75) - 1.0) < 0.012  # AC3's 5.3 ms of priming stay in AVI
    _assert_tone(_at(samples, 1.02, 1.48))
    err = capfd.readouterr().err
    assert f"skipped 2 undecodable audio packets in {path}" in err, err
    assert err.count("undecodable audio packet") == 1, err  # one line per run


def test_damaged_file_loops_with_its_timeline(tmp_path):
    path = _damaged_tone(tmp_path / "damaged.mkv")
    samples, code = _play_file(str(path), loop=True, seconds=2.9)
    assert code == 0
    first, second = _onset_s(samples, 0.75), _onset_s(samples, 2.25)
    assert abs(first - 1.0) < 0.012 and abs(second - first - 1.5) < 0.012, (first, second)
    assert np.abs(_at(samples, 1.505, 1.525)).max() == 0  # the second pass's packet 0
    _assert_tone(_at(samples, 1.55, 1.72))


def test_audio_track_of_which_nothing_decodes(tmp_path):
    path = _damaged_tone(tmp_path / "garbage.mkv", bad=range(1000))
    proc, _, _, message = _start_audio_capture(str(path))
    proc.join(10)
    assert isinstance(message, BadInput), message
    message = message.line
    expected = (
        f"the audio track of '{re.escape(str(path))}' cannot be decoded "
        r"\(none of its 4[6-8] packets decode: [^)]+\): "
        "pass a file with sound, a microphone or 'synthetic' to --mic"
    )
    assert re.fullmatch(expected, message), message


MEGAMIND = "/usr/share/doc/opencv-doc/examples/data/Megamind.avi"


@pytest.mark.skipif(not os.path.exists(MEGAMIND), reason="needs OpenCV's sample clip (opencv-doc)")
def test_megamind_sample_clip_is_heard():
    """Its first AC3 packet does not decode; the rest plays, from 32 ms on."""
    samples, code = _play_file(MEGAMIND, seconds=1.5)
    assert code == 0
    assert np.abs(_at(samples, 0.0, 0.03)).max() == 0
    assert np.sqrt(np.mean(_at(samples, 0.05, 1.5) ** 2)) > 0.01


def test_folder_as_mic(tmp_path):
    proc, _, _, message = _start_audio_capture(str(tmp_path))
    proc.join(10)
    assert message == BadInput(
        f"--mic '{tmp_path}' is a folder: pass an audio or video file, a microphone name or index, "
        "synthetic, or none"
    )


def _no_sound_home(tmp_path) -> dict:
    """An environment whose ALSA configuration adds no device (no .asoundrc): on a machine
    without sound hardware, as CI's, PortAudio then lists no input device."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    count = "from stream.capture.audio import list_input_devices as d; print(len(d()))"
    probe = subprocess.run(
        [sys.executable, "-c", count],
        check=False,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert probe.returncode == 0, probe.stderr
    if probe.stdout.strip() != "0":
        pytest.skip("this machine has audio input devices: 'no microphone' needs one without")
    return env


NO_MIC = (
    "no microphone: this machine has no audio input device (--mic default): pass --mic synthetic "
    "for test beeps, --mic FILE for the sound of an audio or video file, or --mic none for a "
    "video-only model"
)


def test_no_microphone_suggests_what_to_pass(tmp_path, monkeypatch):
    for name, value in _no_sound_home(tmp_path).items():
        monkeypatch.setenv(name, value)
    proc, _, _, message = _start_audio_capture("default")
    proc.join(10)
    assert message == BadInput(NO_MIC)

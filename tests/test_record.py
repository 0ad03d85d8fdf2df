"""`python -m stream.record` as a real process: capture processes, shared memory, the
real PortAudio path (an ALSA device that plays a file), clips decoded back with PyAV."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import AV_CLIP_EVENT_S, REPO, descendants, running, shm_segments
from stream.train.clips import list_dataset, read_clip, write_clip

pytestmark = pytest.mark.e2e  # real stream.record runs

CLIP_NAME = re.compile(r"(?P<label>.+)-\d{8}-\d{6}-\d{3}\.mp4")
FAST = ("--countdown", "0", "--log-level", "warning")


def _record(*args: str, act=None, timeout: float = 60) -> tuple[int, str, str]:
    """Run `python -m stream.record ARGS`; `act(proc)` is called until it returns True.

    Checks that nothing is left behind: no process it started (collected while it ran)
    and none of its shared-memory segments (named after its pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.record", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[int] = set()
    acted = act is None
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "stream.record did not finish"
        seen |= descendants(proc.pid)
        if not acted:
            acted = act(proc)
        time.sleep(0.02)
    out, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err
    assert not [n for n in shm_segments() if f"_{proc.pid}_" in n], "shared memory left behind"
    for _ in range(100):  # the resource tracker sees its parent gone and exits
        if not running(seen):
            break
        time.sleep(0.05)
    assert not running(seen), f"processes left behind: {running(seen)}"
    return proc.returncode, out, err


def _clips(folder: Path) -> list[Path]:
    files = sorted(folder.iterdir())
    assert all(CLIP_NAME.fullmatch(p.name) for p in files), files  # no hidden .part file either
    return files


def test_clips_from_a_looped_file_with_its_sound(av_clip, tmp_path):
    """Three 1.5 s clips from the 4 s file: --loop carries the recording past its end."""
    out = tmp_path / "data"
    code, stdout, err = _record(
        "--camera",
        str(av_clip),
        "--mic",
        str(av_clip),
        "--loop",
        "--label",
        "flash",
        "--seconds",
        "1.5",
        "--count",
        "3",
        "--out",
        str(out),
        *FAST,
    )
    assert code == 0, err
    assert stdout.strip() == (
        f"recorded 3 clips of 'flash' into {out / 'flash'} "
        "(1.5 s each, video 320x240 at 30 fps, audio 16000 Hz)"
    )
    assert (
        f"from video file {str(av_clip)!r} (320x240 at 30 fps) and the sound of 'flash_click.mkv'"
        in err
    )
    paths = _clips(out / "flash")
    assert len(paths) == 3
    assert [CLIP_NAME.fullmatch(p.name)["label"] for p in paths] == ["flash"] * 3
    for path in paths:
        clip = read_clip(path)
        assert clip.frames.shape == (45, 240, 320, 3)
        assert np.all(np.diff(clip.times_s) > 0)
        assert np.median(np.diff(clip.times_s)) == pytest.approx(1 / 30, abs=2e-3)
        assert clip.duration_s == pytest.approx(1.5, abs=0.05)
        assert clip.sample_rate == 16000
        assert len(clip.audio) == pytest.approx(
            24000, abs=1100
        )  # AAC pads to its 1024-sample frames
    assert list_dataset(out) == {"flash": paths}


def test_flash_and_click_stay_aligned_and_a_file_that_ends_stops(av_clip, tmp_path):
    """The flash (a frame) and the click (the sound) of av_clip happen at once; in the
    written clip they still do. The file's 4 s hold one 3 s clip, not two."""
    out = tmp_path / "data"
    code, stdout, err = _record(
        "--camera",
        str(av_clip),
        "--mic",
        str(av_clip),
        "--label",
        "event",
        "--seconds",
        "3",
        "--count",
        "2",
        "--out",
        str(out),
        *FAST,
    )
    assert code == 1, err
    assert stdout == ""
    assert err.strip().splitlines()[-1] == (
        f"the video file {str(av_clip)!r} ended (--loop repeats it): "
        "recorded 1 of 2 clips of 'event' "
        f"into {out / 'event'}"
    )
    (path,) = _clips(out / "event")
    clip = read_clip(path)
    assert len(clip.frames) == 90
    brightness = clip.frames.reshape(len(clip.frames), -1).mean(axis=1)
    flash = int(np.argmax(brightness))
    assert brightness[flash] > 200 and np.median(brightness) < 40
    t_flash = clip.times_s[flash]
    t_click = int(np.argmax(np.abs(clip.audio))) / clip.sample_rate
    assert abs(t_flash - t_click) < 0.040, (t_flash, t_click)
    # The file plays from its start and the first clip begins with its first frame.
    assert t_flash == pytest.approx(AV_CLIP_EVENT_S, abs=0.1)


def test_synthetic_camera_and_alsa_microphone(alsa_file_mic, tmp_path):
    out = tmp_path / "data"
    code, stdout, err = _record(
        "--camera",
        "synthetic",
        "--size",
        "160x120",
        "--mic",
        alsa_file_mic,
        "--label",
        "tone",
        "--seconds",
        "1",
        "--count",
        "1",
        "--out",
        str(out),
        *FAST,
    )
    assert code == 0, err
    assert stdout.startswith("recorded 1 clip of 'tone' into")
    assert "and microphone 'testmic" in err
    (path,) = _clips(out / "tone")
    clip = read_clip(path)
    assert clip.frames.shape[1:] == (120, 160, 3)
    assert len(clip.frames) == pytest.approx(30, abs=2)
    assert len(clip.audio) == pytest.approx(16000, abs=1100)
    body = clip.audio[2000:14000]  # away from the AAC encoder's ramps at the ends
    assert 0.15 < np.sqrt(np.mean(body**2)) < 0.3  # the 0.3-amplitude tone: rms 0.21
    spectrum = np.abs(np.fft.rfft(body[:8000]))
    assert abs(np.argmax(spectrum) * 2 - 440) <= 2  # bins of 2 Hz over 0.5 s


def _no_sound_file(tmp_path: Path, video_file: Path) -> tuple[str, ...]:
    return ("--camera", str(video_file), "--mic", str(video_file))


def _out_is_a_file(tmp_path: Path, video_file: Path) -> tuple[str, ...]:
    (tmp_path / "notes.txt").write_text("not a folder")
    return ("--out", str(tmp_path / "notes.txt"))


def _label_is_a_file(tmp_path: Path, video_file: Path) -> tuple[str, ...]:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clap").write_text("not a folder")
    return ()


BAD = {
    "label with a slash": (("--label", "a/b"), "--label 'a/b' is not a folder name"),
    "hidden label": (("--label", ".clap"), "--label '.clap' is not a folder name"),
    "no label": (("--label",), "--label: expected one argument"),
    "zero seconds": (("--seconds", "0"), "--seconds 0.0 must be > 0"),
    "seconds not a number": (("--seconds", "three"), "invalid float value: 'three'"),
    "zero count": (("--count", "0"), "--count 0 must be >= 1"),
    "negative countdown": (("--countdown", "-1"), "--countdown -1 must be >= 0"),
    "bad size": (("--size", "160by120"), "--size '160by120' is not WIDTHxHEIGHT"),
    "missing camera file": (
        ("--camera", "no/such/clip.mp4"),
        "video file 'no/such/clip.mp4' does not exist",
    ),
    "unknown microphone": (("--mic", "nosuchmic"), "microphone 'nosuchmic' not found"),
    "camera file without sound as the mic": (_no_sound_file, "has no audio track"),
    "out is a file": (_out_is_a_file, "notes.txt' is a file, not a folder"),
    "label folder is a file": (_label_is_a_file, "clap' is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_one_line_and_leaves_nothing(case, tmp_path, video_file, request):
    args, expected = BAD[case]
    if case == "unknown microphone":
        # an input device to look the name up among (a machine without any says so instead)
        request.getfixturevalue("alsa_file_mic")
    if callable(args):
        args = args(tmp_path, video_file)
    before = sorted(tmp_path.rglob("*"))
    code, stdout, err = _record(
        "--camera",
        "synthetic",
        "--size",
        "160x120",
        "--mic",
        "none",
        "--label",
        "clap",
        "--seconds",
        "0.5",
        "--count",
        "1",
        "--out",
        str(tmp_path / "data"),
        *FAST,
        *args,
    )
    assert code == 2, err
    assert stdout == ""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expected in lines[0], err
    if case == "camera file without sound as the mic":
        assert "--mic none to record video only" in lines[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even a folder


@pytest.mark.parametrize(
    "sig, mic", [(signal.SIGINT, "synthetic"), (signal.SIGTERM, "none")], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_during_a_clip_drops_that_clip_only(tmp_path, sig, mic):
    folder = tmp_path / "data" / "wave"

    def interrupt_second_clip(proc) -> bool:
        if not folder.is_dir() or not any(CLIP_NAME.fullmatch(p.name) for p in folder.iterdir()):
            return False
        time.sleep(0.3)  # the second clip (2 s: room for a loaded machine) is being recorded
        proc.send_signal(sig)
        return True

    code, stdout, err = _record(
        "--camera",
        "synthetic",
        "--size",
        "160x120",
        "--mic",
        mic,
        "--label",
        "wave",
        "--seconds",
        "2",
        "--count",
        "3",
        "--out",
        str(tmp_path / "data"),
        *FAST,
        act=interrupt_second_clip,
    )
    assert code == 0, err  # an orderly stop the user asked for, as stream.run's
    assert stdout == ""
    name = signal.Signals(sig).name
    assert err.strip().splitlines()[-1] == (
        f"interrupted ({name}): kept 1 of 3 clips of 'wave' in {folder}; "
        "the clip being recorded was dropped"
    ), err
    assert "clip 2/3  dropped" in err
    (path,) = _clips(folder)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    clip = read_clip(path)
    assert len(clip.frames) == pytest.approx(60, abs=2)
    if mic == "none":
        assert "recording video only" in err
        assert clip.audio is None
    else:
        assert clip.audio is not None


def test_existing_clips_are_never_overwritten(tmp_path):
    from stream.train.record import clip_path

    wall = time.time()
    first = clip_path(tmp_path, "clap", 1, wall)
    first.write_bytes(b"taken")
    second = clip_path(tmp_path, "clap", 1, wall)
    assert second != first and second.name.endswith("-002.mp4")
    assert first.read_bytes() == b"taken"


def test_unevenly_captured_frames_are_written_at_their_times(tmp_path):
    """A capture that catches up after a stall delivers frames much closer together than
    a frame period (here 1 ms and 0.4 ms apart at 30 fps). At the encoder's default time
    base of 1/30 s they got the same pts and the muxer failed ("Invalid argument")."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (30, 120, 160, 3), dtype=np.uint8)
    times = np.arange(30) / 30
    times[10] = times[9] + 0.001
    times[20] = times[19] + 0.0004
    times[21:] += 0.05  # and a stall: a late frame, the rest delayed with it
    audio = np.zeros(16000, np.float32)
    path = tmp_path / "uneven.mp4"
    write_clip(path, frames, times, audio, 16000)
    assert [p.name for p in tmp_path.iterdir()] == ["uneven.mp4"]  # no .part file left
    clip = read_clip(path)
    assert len(clip.frames) == 30
    assert np.all(np.diff(clip.times_s) > 0)
    np.testing.assert_allclose(clip.times_s, times, atol=2e-5)  # 90 kHz ticks
    assert clip.duration_s == pytest.approx(times[-1] + 1 / 30, abs=1e-3)
    assert len(clip.audio) == pytest.approx(16000, abs=1100)

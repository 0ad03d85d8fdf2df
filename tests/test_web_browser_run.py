"""A real `stream.run --web` opened in a real browser (Debian's headless Chromium): the
video element shows frames that are not blank and change over time, and the labels of the
run's predictions appear. In PIPELINE (tests/conftest.py): it starts the pipeline."""

from __future__ import annotations

import pytest
from browser import Browser, browser_missing, check_not_blank, screenshot_folder

MISSING = browser_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no browser: {MISSING}")

ARGS = (
    "--camera",
    "synthetic",
    "--size",
    "320x240",
    "--model",
    "x3d_xs",
    "--weights",
    "none",
    "--stride",
    "0.25",
    "--log-level",
    "info",
)

TILE = "document.querySelector('#grid .tile[data-stream=\"cam0\"]')"
#: The frames the tile's video canvas has drawn (its data-frames).
FRAMES = f"Number({TILE}?.querySelector('.video')?.dataset.frames || 0)"


def test_a_run_with_web_shows_its_video_and_labels(run_stream, tmp_path_factory):
    from selenium.webdriver.common.by import By

    shots = screenshot_folder(tmp_path_factory)
    stream = run_stream(*ARGS, "--web", "127.0.0.1:0")
    url = stream.wait_for(r"web view on (http://\S+/)")[1]
    browser = Browser(tmp_path_factory.mktemp("chromium-run"))
    try:
        browser.get(url)
        assert browser.driver.title == "avstream"
        first = browser.wait_js(
            f"return {FRAMES} || null;", "the first video frame in cam0's tile", timeout=120
        )
        video = browser.driver.find_element(
            By.CSS_SELECTOR, '#grid .tile[data-stream="cam0"] .video'
        )
        before = check_not_blank(video.screenshot_as_png, "cam0's video (first screenshot)")
        # Frames keep coming (the synthetic pattern moves): wait for a few more to be shown.
        browser.wait_js(
            f"return {FRAMES} >= {first + 5};",
            "five more video frames in cam0's tile",
            timeout=60,
        )
        after = check_not_blank(video.screenshot_as_png, "cam0's video (second screenshot)")
        assert before.shape == after.shape
        diff = float(abs(before.astype(int) - after.astype(int)).mean())
        assert diff > 1.0, f"two screenshots of the video {first} and 5+ frames apart are alike"
        # The run's predictions: labels, and the note that its weights are untrained.
        browser.wait_js(
            f"const l = {TILE}.querySelector('.labels .label .label-name');"
            "return l && l.textContent.trim().length > 0;",
            "a label of the run's predictions in cam0's tile",
            timeout=120,
        )
        assert "untrained weights" in browser.js(f"return {TILE}.innerText")
        assert (
            browser.js(f"return {TILE}.querySelector('.novideo')?.checkVisibility() ?? false")
            is False
        )
        browser.screenshot(shots, "run")
        assert browser.console_errors() == []
    finally:
        browser.quit()
    code, err = stream.stop()
    assert code == 0, err

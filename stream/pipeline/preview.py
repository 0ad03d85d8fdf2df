"""`--preview`: a window with the newest frame and the current top-k (q or Esc closes it)."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from stream.errors import FrameLost, UserError


class Preview:
    def __init__(self, title: str, *, max_fps: float = 30.0):
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise UserError(
                "--preview needs a display and DISPLAY is not set: run without --preview"
            )
        import cv2

        self._cv2 = cv2
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise UserError(
                "--preview: OpenCV cannot open a window here: run without --preview"
            ) from None
        self.labels: list[dict] = []
        self.closed = False
        self._min_interval = 1.0 / max_fps
        self._last_draw = 0.0

    def show(self, frame: np.ndarray, labels: list[dict]) -> None:
        self.labels = labels
        self._draw(frame)

    def refresh(self, ring) -> None:
        """Redraw with the ring's newest frame, at most `max_fps` times a second."""
        if time.monotonic() - self._last_draw < self._min_interval:
            return
        seqs, _ = ring.snapshot()
        if len(seqs):
            try:
                frame, _ = ring.read(int(seqs[-1]))
            except FrameLost:
                return
            self._draw(frame)

    def _draw(self, frame: np.ndarray) -> None:
        cv2 = self._cv2
        self._last_draw = time.monotonic()
        image = frame.copy()
        for i, item in enumerate(self.labels):
            text = f"{item['score']:.2f} {item['label']}"
            y = 28 + 26 * i
            cv2.putText(
                image, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA
            )
            cv2.putText(
                image, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA
            )
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE)
        if key in (27, ord("q")) or visible < 1:
            self.closed = True

    def close(self) -> None:
        self._cv2.destroyWindow(self.title)

"""The live "Mario" window: the game at 2x zoom, nearest-neighbour, without slowing training.

Closing the window or pressing q hides it for the rest of the run; training goes on.
"""
from __future__ import annotations

import os
import sys

import numpy as np

WINDOW_NAME = "Mario"
ZOOM = 2


def display_available() -> bool:
    """False where no screen can be opened (Linux without DISPLAY/WAYLAND_DISPLAY)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class LiveWindow:
    def __init__(self):
        import cv2
        self._cv2 = cv2
        self.open = True
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)   # no Qt toolbar

    def show(self, rgb: np.ndarray) -> None:
        if not self.open:
            return
        cv2 = self._cv2
        frame = cv2.resize(rgb, (rgb.shape[1] * ZOOM, rgb.shape[0] * ZOOM), interpolation=cv2.INTER_NEAREST)
        cv2.imshow(WINDOW_NAME, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        if key == ord("q") or cv2.getWindowProperty(WINDOW_NAME, cv2.WND_PROP_VISIBLE) < 1:
            self.close()

    def close(self) -> None:
        if self.open:
            self.open = False
            self._cv2.destroyWindow(WINDOW_NAME)
            self._cv2.waitKey(1)

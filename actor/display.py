"""The live "Mario" window: the game at 2x zoom, nearest-neighbour, without slowing training.

Drawing a window costs milliseconds a frame (more under a virtual X server), so the window lives
in its own process. The actor copies each frame into shared memory (a memcpy) and goes on; the
window process shows the newest frame at up to REFRESH_HZ, skipping frames when the actor is
faster than that. Closing the window or pressing q ends the window process; training goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from multiprocessing import shared_memory

import numpy as np

WINDOW_NAME = "Mario"
ZOOM = 2
REFRESH_HZ = 30


def display_available() -> bool:
    """False where no screen can be opened (Linux without DISPLAY/WAYLAND_DISPLAY)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class LiveWindow:
    """The actor's handle on the window process."""

    def __init__(self, height: int, width: int):
        ctx = mp.get_context("spawn")
        self._shm = shared_memory.SharedMemory(create=True, size=height * width * 3)
        self._frame = np.ndarray((height, width, 3), dtype=np.uint8, buffer=self._shm.buf)
        self._sequence = ctx.Value("Q", 0, lock=False)  # bumped after each frame is copied in
        self._stop = ctx.Event()
        self._process = ctx.Process(
            target=_window_process,
            name="window",
            daemon=True,
            args=(self._shm.name, height, width, self._sequence, self._stop, os.getpid()),
        )
        self._process.start()

    @property
    def open(self) -> bool:
        return self._process.is_alive()

    def show(self, rgb: np.ndarray) -> None:
        self._frame[...] = rgb
        self._sequence.value += 1

    def close(self) -> None:
        self._stop.set()
        self._process.join(2.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(1.0)
        self._frame = None
        self._shm.close()
        self._shm.unlink()


def _window_process(shm_name: str, height: int, width: int, sequence, stop, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the launcher's business
    try:
        with open("/proc/self/comm", "w") as f:
            f.write("mario-window")
    except OSError:
        pass
    import cv2

    shm = shared_memory.SharedMemory(name=shm_name)
    frame = np.ndarray((height, width, 3), dtype=np.uint8, buffer=shm.buf)
    cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)  # no Qt toolbar: exactly 2x
    shown = -1
    try:
        while not stop.is_set() and os.getppid() == parent_pid:
            if sequence.value != shown:
                shown = sequence.value
                zoomed = cv2.resize(frame, (width * ZOOM, height * ZOOM), interpolation=cv2.INTER_NEAREST)
                cv2.imshow(WINDOW_NAME, cv2.cvtColor(zoomed, cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1000 // REFRESH_HZ) & 0xFF
            if key == ord("q") or cv2.getWindowProperty(WINDOW_NAME, cv2.WND_PROP_VISIBLE) < 1:
                break
        cv2.destroyAllWindows()
        cv2.waitKey(1)
    finally:
        del frame
        shm.close()

"""The live "Mario" window, on a real X server: there, 2x the game's frame, showing the game."""

import re
import subprocess

import cv2
import numpy as np
import pytest

from tests.conftest import require, x_server

pytestmark = pytest.mark.slow

FRAME_W, FRAME_H = 256, 240
SKY_BGR = np.array([252, 136, 104])  # the 1-1 sky in nes-py's palette (RGB 104, 136, 252)


def _window_geometry(display: str):
    result = subprocess.run(["xwininfo", "-display", display, "-name", "Mario"], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    get = lambda key: int(re.search(rf"{key}:\s+(-?\d+)", result.stdout).group(1))
    return get("Absolute upper-left X"), get("Absolute upper-left Y"), get("Width"), get("Height")


def _screenshot(display: str, path) -> np.ndarray:
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "x11grab",
            "-video_size",
            "1024x768",
            "-i",
            display,
            "-frames:v",
            "1",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return cv2.imread(str(path))


def test_live_window_shows_the_game_at_2x(launch, xvfb, tmp_path):
    require("xwininfo", "ffmpeg")
    run = launch("--max-steps", "100000", "--set", "learning_starts=200", display=xvfb)
    # The window may show for a moment at the toolkit's default size before it is sized: wait for 2x.
    x, y, width, height = run.wait_for(
        lambda: (g := _window_geometry(xvfb)) is not None and g[2:] == (2 * FRAME_W, 2 * FRAME_H) and g,
        120,
        f'a window named "Mario" of {2 * FRAME_W}x{2 * FRAME_H}',
    )
    run.wait_for(lambda: run.status_value("steps") >= 50, 60, "50 env steps")

    def painted():
        """The window's pixels once it shows more than one colour (wait_for wants a truthy value, not an array)."""
        window = _screenshot(xvfb, tmp_path / "screen.png")[y : y + height, x : x + width]
        return (window,) if window.std() > 20 else None

    # A loaded X server may show the mapped window unpainted for a moment: look again for up to 30 s.
    (window,) = run.wait_for(painted, 30, "the window to show more than one colour")
    sky = np.all(np.abs(window.astype(int) - SKY_BGR) < 12, axis=2).mean()
    assert sky > 0.3, f"only {sky:.0%} of the window is Mario's sky"
    run.interrupt()
    assert run.wait(10) == 130, run.output()
    assert "Traceback" not in run.output()


def test_no_display_means_no_window_and_one_line_saying_so(launch):
    run = launch("--env", "MarioApexTest-v0", "--max-steps", "300", "--set", "learning_starts=100")
    assert run.wait(60) == 0, run.output()
    assert run.output().count("no display found (DISPLAY is not set): running without the live window") == 1


def test_missing_x_tools_skip_and_say_which(monkeypatch, tmp_path):
    """Without Xvfb, xwininfo or ffmpeg the window test is skipped naming them, not an error."""
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no tool at all
    with pytest.raises(pytest.skip.Exception, match=r"^needs Xvfb on PATH"):
        with x_server():
            pass
    refuse_to_launch = lambda *args, **options: pytest.fail("launched without the tools to check the window")
    with pytest.raises(pytest.skip.Exception, match=r"^needs xwininfo, ffmpeg on PATH"):
        test_live_window_shows_the_game_at_2x(refuse_to_launch, ":0", tmp_path)

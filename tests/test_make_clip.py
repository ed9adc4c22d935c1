"""docs/make_clip.py: the README's GIF and last frame come from a recorded video (actor/recorder.py's)."""

import numpy as np
from PIL import Image

from actor.recorder import VideoWriter
from docs.make_clip import main

FPS = 10


def video(path, n_frames: int) -> str:
    """A 64x48 video whose frame k is filled with gray level 10 * k, so frames are told apart."""
    writer = VideoWriter(str(path), FPS, 64, 48)
    for k in range(n_frames):
        writer.write(np.full((48, 64, 3), 10 * k, np.uint8))
    writer.close()
    return str(path)


def test_gif_holds_the_last_seconds_and_png_the_last_frame(tmp_path):
    mp4 = video(tmp_path / "play.mp4", 20)
    assert main([mp4, str(tmp_path / "clip.gif"), "--seconds", "1", "--every", "2", "--scale", "2"]) == 0
    gif = Image.open(tmp_path / "clip.gif")
    assert gif.n_frames == 5 and gif.size == (128, 96)  # the last 10 frames, every 2nd, doubled
    gif.seek(gif.n_frames - 1)
    assert abs(np.asarray(gif.convert("L")).mean() - 190) < 8  # ends on the video's last frame (gray 190)
    assert main([mp4, str(tmp_path / "last.png")]) == 0
    assert abs(np.asarray(Image.open(tmp_path / "last.png").convert("L")).mean() - 190) < 8


def test_episode_end_cuts_the_video_first(tmp_path):
    mp4 = video(tmp_path / "play.mp4", 20)
    assert main([mp4, str(tmp_path / "last.png"), "--episode-end-at", "0.95"]) == 0  # frames 0..9
    assert abs(np.asarray(Image.open(tmp_path / "last.png").convert("L")).mean() - 90) < 8


def test_an_unreadable_video_is_one_line_and_exit_1(tmp_path, capsys):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert main([str(tmp_path / "bad.mp4"), str(tmp_path / "x.gif")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("make_clip: cannot read") and err.count("\n") == 1
    assert not (tmp_path / "x.gif").exists()

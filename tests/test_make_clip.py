"""docs/make_clip.py: the README's GIF and last frame come from a recorded video (actor/recorder.py's)."""

import numpy as np
import pytest
from PIL import Image

from actor.recorder import VideoWriter
from docs.make_clip import main, read_frames

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


def test_only_the_frames_the_output_needs_are_kept(tmp_path):
    """A several-episode video decoded whole is over 1 GB of images: a GIF keeps its last seconds, a PNG
    its last frame."""
    mp4 = video(tmp_path / "play.mp4", 20)
    frames, count, fps = read_frames(mp4, None, 1.0)
    assert (len(frames), count, fps) == (10, 20, FPS)
    assert abs(np.asarray(frames[-1].convert("L")).mean() - 190) < 8
    frames, count, _ = read_frames(mp4, 0.95, None)
    assert (len(frames), count) == (1, 10) and abs(np.asarray(frames[0].convert("L")).mean() - 90) < 8


def test_a_bad_output_name_fails_before_the_video_is_read(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "no_such_video.mp4"), str(tmp_path / "clip.jpg")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "out must end in .gif or .png" in err and "cannot read" not in err

"""Recorder: files decode as written, survive SIGKILL, and exactly one best-run file is kept across actors."""

import errno
import fcntl
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import av
import numpy as np
import pytest

from actor import recorder
from actor.recorder import EpisodeRecorder, RecordingError, VideoWriter

H, W = 240, 256
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def colour(i: int) -> tuple[int, int, int]:
    """A colour that encodes the frame number and differs clearly between neighbouring frames."""
    return (i * 37) % 200 + 20, (i * 71) % 200 + 20, 255 - ((i * 37) % 200 + 20)


_rng = np.random.default_rng(0)
_SCENE = np.empty((H, 2 * W, 3), np.uint8)
_SCENE[:] = (92, 148, 252)  # sky over a band of 8x8 tiles, like the game
_SCENE[176:] = _rng.integers(0, 256, (8, 2 * W // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
PATCH = (slice(16, 64), slice(16, 64))


def frame(i: int) -> np.ndarray:
    """The scene scrolled by i pixels (no scene cuts, so keyframes come from the gop setting) with a patch whose
    colour encodes i."""
    rgb = np.ascontiguousarray(_SCENE[:, i % W : i % W + W])
    rgb[PATCH] = colour(i)
    return rgb


def decode(path) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keyframes, count = [], 0
        for packet in container.demux(stream):
            if packet.size:
                if packet.is_keyframe:
                    keyframes.append(count)
                count += 1
        container.seek(0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        return dict(
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            duration=container.duration / 1e6 if container.duration else None,
            keyframes=keyframes,
            frames=frames,
        )


def assert_frames_match(frames, first=0):
    inner = (slice(PATCH[0].start + 4, PATCH[0].stop - 4), slice(PATCH[1].start + 4, PATCH[1].stop - 4))
    for k, rgb in enumerate(frames):
        mean = rgb[inner].reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - colour(first + k)).max() < 6, (first + k, mean, colour(first + k))
        error = np.abs(rgb.astype(np.int16) - frame(first + k)).mean()
        assert error < 8, (first + k, error)


def best_files(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("mario_best_run_"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("fps,n", [(15, 40), (30, 70)])
def test_video_decodes_as_written(tmp_path, fps, n):
    path = tmp_path / "mario_run.mp4"
    writer = VideoWriter(str(path), fps, W, H)
    for i in range(n):
        writer.write(frame(i))
    assert writer.frames == n
    writer.close()
    writer.close()  # idempotent

    video = decode(path)
    assert (video["codec"], video["pix_fmt"]) == ("h264", "yuv420p")
    assert (video["width"], video["height"]) == (W, H)
    assert len(video["frames"]) == n
    assert_frames_match(video["frames"])
    assert video["duration"] == pytest.approx(n / fps, abs=0.5 / fps)
    gaps = np.diff(video["keyframes"] + [n])
    assert video["keyframes"][0] == 0 and gaps.max() <= 2 * fps


def test_odd_size_and_wrong_frame_rejected(tmp_path):
    with pytest.raises(ValueError):
        VideoWriter(str(tmp_path / "a.mp4"), 15, 255, 240)
    with pytest.raises(ValueError):
        EpisodeRecorder(str(tmp_path), 0, 15, 256, 239)
    writer = VideoWriter(str(tmp_path / "b.mp4"), 15, W, H)
    with pytest.raises(ValueError):
        writer.write(np.zeros((H, W, 4), np.uint8))
    writer.close()


def test_killed_writer_leaves_a_playable_file(tmp_path):
    fps, n = 15, 150  # 10 s of video
    path = tmp_path / "mario_run.mp4"
    snippet = textwrap.dedent(f"""
        import os, signal
        from actor.recorder import VideoWriter
        from tests.test_recorder import frame
        writer = VideoWriter({str(path)!r}, {fps}, {W}, {H})
        for i in range({n}):
            writer.write(frame(i))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    child = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()

    video = decode(path)  # must not raise
    lost = n - len(video["frames"])
    assert 0 < lost <= 2 * fps
    # In fact only the fragment being filled (half a second) plus the encoder's lookahead (~13 frames).
    assert lost <= recorder.FRAGMENT_S * fps + 16
    assert_frames_match(video["frames"])


def record_episode(rec: EpisodeRecorder, length: int, reward: float, first: int = 0):
    rec.start_episode()
    for i in range(length):
        rec.write(frame(first + i))
    return rec.end_episode(reward)


def test_best_episode_is_kept(tmp_path):
    rec = EpisodeRecorder(str(tmp_path), 0, 15, W, H)
    results = [
        record_episode(rec, length, reward, first=10 * k)
        for k, (length, reward) in enumerate([(4, 1.0), (6, 3.5), (5, 2.0), (7, 5.25), (3, -1)])
    ]
    best = str(tmp_path / "mario_best_run_5.25.mp4")
    assert results == [
        str(tmp_path / "mario_best_run_1.00.mp4"),
        str(tmp_path / "mario_best_run_3.50.mp4"),
        None,
        best,
        None,
    ]
    rec.start_episode()  # unfinished at close: discarded
    rec.write(frame(0))
    rec.close()
    assert sorted(os.listdir(tmp_path)) == ["mario_best_run_5.25.mp4"]
    video = decode(best)
    assert len(video["frames"]) == 7
    assert_frames_match(video["frames"], first=30)


def test_negative_rewards_and_ties(tmp_path):
    rec = EpisodeRecorder(str(tmp_path), 0, 15, W, H)
    assert record_episode(rec, 2, -1.0).endswith("mario_best_run_-1.00.mp4")
    assert record_episode(rec, 3, -0.5).endswith("mario_best_run_-0.50.mp4")
    assert record_episode(rec, 4, -0.501) is None  # same as the record at the name's precision
    assert record_episode(rec, 0, 9.0) is None  # an empty episode is not a video
    assert record_episode(rec, 5, float("nan")) is None
    assert record_episode(rec, 6, -0.004).endswith("mario_best_run_0.00.mp4")  # not "-0.00"
    rec.close()
    assert best_files(tmp_path) == ["mario_best_run_0.00.mp4"]
    assert len(decode(tmp_path / "mario_best_run_0.00.mp4")["frames"]) == 6


def test_two_actors_interleaved(tmp_path):
    a, b = (EpisodeRecorder(str(tmp_path), i, 15, W, H) for i in (0, 1))
    a.start_episode()
    b.start_episode()
    for i in range(8):
        a.write(frame(i))
        if i < 5:
            b.write(frame(100 + i))
    assert a.temp_path != b.temp_path
    assert b.end_episode(4.0) is not None
    assert a.end_episode(2.0) is None  # beaten by the other actor's file
    assert record_episode(a, 6, 3.0) is None
    assert record_episode(b, 2, 1.0) is None
    a.close()
    b.close()
    assert sorted(os.listdir(tmp_path)) == ["mario_best_run_4.00.mp4"]
    video = decode(tmp_path / "mario_best_run_4.00.mp4")
    assert len(video["frames"]) == 5
    assert_frames_match(video["frames"], first=100)


def test_better_file_of_another_actor_is_not_replaced(tmp_path):
    record_episode(EpisodeRecorder(str(tmp_path), 0, 15, W, H), 4, 9.0)
    best = tmp_path / "mario_best_run_9.00.mp4"
    before = best.stat()
    rec = EpisodeRecorder(str(tmp_path), 1, 15, W, H)
    assert record_episode(rec, 6, 4.0) is None
    rec.close()
    assert best_files(tmp_path) == ["mario_best_run_9.00.mp4"]
    assert (best.stat().st_ino, best.stat().st_size) == (before.st_ino, before.st_size)
    assert not os.path.exists(rec.temp_path)


def _racing_actor(run_dir, index, actors, rounds, barrier):
    rec = EpisodeRecorder(run_dir, index, 15, W, H)
    for r in range(rounds):
        rec.start_episode()
        rec.write(frame(index))
        barrier.wait(timeout=60)  # every actor ends its episode at the same moment
        rec.end_episode(r * actors + index)
    rec.close()


def test_actors_finishing_at_once_leave_one_best_file(tmp_path):
    actors, rounds = 3, 8
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(actors)
    procs = [ctx.Process(target=_racing_actor, args=(str(tmp_path), i, actors, rounds, barrier)) for i in range(actors)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * actors
    best = (rounds - 1) * actors + actors - 1
    assert sorted(os.listdir(tmp_path)) == [f"mario_best_run_{best:.2f}.mp4"]


def test_best_run_is_decided_under_the_run_lock(tmp_path, monkeypatch):
    """Listing the record and renaming must happen while the lock is held, or two actors can both win."""
    checked = []

    def assert_locked():
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # the lock is on the run folder
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: conflicts even in-process
        finally:
            os.close(fd)

    def spy(name, real):
        def wrapper(*args):
            assert_locked()
            checked.append(name)
            return real(*args)

        return wrapper

    rec = EpisodeRecorder(str(tmp_path), 0, 15, W, H)
    rec.start_episode()
    rec.write(frame(0))
    monkeypatch.setattr(recorder, "best_runs", spy("best_runs", recorder.best_runs))
    monkeypatch.setattr(recorder.os, "replace", spy("replace", os.replace))
    assert rec.end_episode(1.0) is not None
    assert checked == ["best_runs", "replace"]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released afterwards
    os.close(fd)


def test_missing_or_unusable_folder_fails_at_construction(tmp_path):
    for folder in (tmp_path / "missing", tmp_path / "a_file"):
        (tmp_path / "a_file").write_text("not a folder")
        with pytest.raises(RecordingError, match=r"mario_run\.mp4") as info:
            VideoWriter(str(folder / "mario_run.mp4"), 15, W, H)
        assert "\n" not in str(info.value)
        rec = EpisodeRecorder(str(folder), 0, 15, W, H)
        with pytest.raises(RecordingError):
            rec.start_episode()
        rec.close()


def test_read_only_folder_fails_at_construction(tmp_path):
    """A folder it may not write: mode 0500, or for root (who ignores modes, as CI runs) a read-only tmpfs."""
    folder = tmp_path / "run"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        expected = "Permission denied"
    else:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
        expected = "Read-only file system"
    try:
        with pytest.raises(RecordingError, match=expected):
            VideoWriter(str(folder / "mario_run.mp4"), 15, W, H)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], timeout=60)
        folder.chmod(0o700)


def test_folder_deleted_mid_run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    writer = VideoWriter(str(folder / "mario_run.mp4"), 15, W, H)
    for i in range(5):
        writer.write(frame(i))
    shutil.rmtree(folder)  # the open file still takes writes: the writer has to look
    with pytest.raises(RecordingError, match="mario_run.mp4.*deleted"):
        writer.write(frame(5))
    writer.close()
    writer.close()
    with pytest.raises(RecordingError):
        writer.write(frame(0))


def test_episode_folder_deleted_mid_episode(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    rec = EpisodeRecorder(str(folder), 0, 15, W, H)
    rec.start_episode()
    rec.write(frame(0))
    shutil.rmtree(folder)
    with pytest.raises(RecordingError):
        rec.end_episode(1.0)
    rec.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full(tmp_path):
    fds = open_fds()
    writer = VideoWriter("/dev/full", 15, W, H)  # every write to /dev/full fails with ENOSPC
    with pytest.raises(RecordingError, match="/dev/full.*No space left on device") as info:
        for i in range(60):
            writer.write(frame(i))
    assert "\n" not in str(info.value)
    writer.close()
    assert open_fds() == fds  # the failed writer let go of its file


def test_disk_full_mid_run(tmp_path, monkeypatch):
    real_write, calls = recorder._UnbufferedFile.write, []

    def fills_up(self, data):
        calls.append(len(data))
        if len(calls) > 3:  # header and a couple of fragments fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(recorder._UnbufferedFile, "write", fills_up)
    fds = open_fds()
    writer = VideoWriter(str(tmp_path / "mario_run.mp4"), 15, W, H)
    with pytest.raises(RecordingError, match="mario_run.mp4 failed: No space left on device"):
        for i in range(150):
            writer.write(frame(i))
    assert 10 < writer.frames < 150
    writer.close()
    writer.close()
    assert open_fds() == fds


def test_disk_full_when_keeping_the_best(tmp_path, monkeypatch):
    def no_space(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    rec = EpisodeRecorder(str(tmp_path), 0, 15, W, H)
    rec.start_episode()
    rec.write(frame(0))
    monkeypatch.setattr(recorder.os, "replace", no_space)
    with pytest.raises(RecordingError, match="No space left on device"):
        rec.end_episode(1.0)
    rec.close()
    assert os.listdir(tmp_path) == [], "nothing left, no lock file either"

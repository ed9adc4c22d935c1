"""What the user keeps: H.264 videos that play, the best run, log.txt and TensorBoard scalars,
and a full disk that stops recording but not training."""

import json
import os
import re
import signal
import subprocess

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import WITH_VIDEO, fake_tool, require

pytestmark = pytest.mark.slow

LOG_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] Episode (\d+), Reward: (-?\d+\.\d\d), Actor: (\d+), "
    r"Steps: (\d+), X: (\d+), Flag: (yes|no), Epsilon: (\d\.\d{3}), End: (flag|death|stall|step limit)$"
)


def frames_so_far(path) -> int:
    """Frames a (fragmented, still growing) MP4 holds now; 0 while it cannot be read yet."""
    try:
        return int(probe(path).get("nb_read_frames", 0))
    except (AssertionError, ValueError, IndexError, KeyError, subprocess.TimeoutExpired):
        return 0


def probe(path) -> dict:
    """Decode the whole file with ffprobe; returns codec, size, pixel format and frames decoded."""
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,pix_fmt,nb_read_frames,avg_frame_rate",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["streams"][0]


def mount_tmpfs(folder, size: str) -> None:
    """A tmpfs of `size` on `folder`, or skip the test with mount's own reason (not root, no permission
    in a container, ...)."""
    require("mount", "umount")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or f'mount exited {result.returncode}'}")


def episodes(run_dir) -> list[tuple]:
    lines = (run_dir / "log.txt").read_text().splitlines()
    parsed = [LOG_LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed) if not m][:3]
    found = [
        (int(m[1]), float(m[2]), int(m[3]), int(m[4]), int(m[5]), m[6] == "yes", float(m[7]), m[8]) for m in parsed
    ]
    assert all(flag == (end == "flag") for *_, flag, _, end in found), found  # the end the actor named
    return found


def run_video_frames(steps: int, log: list) -> int:
    """What a one-env actor's mario_run.mp4 holds: each step's frame and the first frame of each episode that
    took a step: the logged ones, and the one the cap or the stop cut short if any (none when the last logged
    episode ended exactly there)."""
    return steps + len(log) + (sum(e[3] for e in log) < steps)


def test_videos_log_and_tensorboard_after_a_run(launch):
    require("ffprobe")
    # One env per actor: mario_run.mp4 shows actor 0's env 0, so then it holds every step of the run.
    run = launch(*WITH_VIDEO, "--max-steps", "1500", "--envs-per-actor", "1")
    assert run.wait(120) == 0, run.output()
    summary = run.summary()
    log = episodes(run.run_dir)
    assert [e[0] for e in log] == list(range(1, len(log) + 1)) and len(log) == summary["episodes"]

    video = probe(run.run_dir / "mario_run.mp4")
    assert (video["codec_name"], video["pix_fmt"], video["width"], video["height"]) == ("h264", "yuv420p", 256, 240)
    assert video["avg_frame_rate"] == "15/1", "one frame per agent step at frame skip 4 = the game's speed"
    assert int(video["nb_read_frames"]) == run_video_frames(1500, log)

    best_files = sorted(run.run_dir.glob("mario_best_run_*.mp4"))
    best_reward = max(e[1] for e in log)
    assert [p.name for p in best_files] == [f"mario_best_run_{best_reward:.2f}.mp4"]
    first_best = next(e for e in log if e[1] == best_reward)
    assert int(probe(best_files[0])["nb_read_frames"]) == first_best[3] + 1
    assert not list(run.run_dir.glob(".episode_*")), "no temporary episode files left"

    tags = {}
    for events in run.run_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            tags[tag] = tags.get(tag, 0) + len(accumulator.Scalars(tag))
    for tag in (
        "Episode/Reward",
        "Episode/Epsilon",
        "Episode/XPos",
        "Episode/Flag",
        "Loss/Optimize",
        "Q_Value/Mean",
        "Learning_Rate",
        "Actor/StepsPerSec",
        "Learner/UpdatesPerSec",
        "Replay/Size",
        "Replay/SamplesPerInsert",
    ):
        assert tags.get(tag, 0) > 0, f"no values for {tag}: {sorted(tags)}"
    assert tags["Episode/Reward"] == len(log)


def test_ctrl_c_leaves_videos_that_play_to_the_end(launch):
    require("ffprobe")
    run = launch(*WITH_VIDEO, "--envs-per-actor", "1")  # mario_run.mp4 then holds every step
    run.wait_for_episodes(30)
    run.interrupt()
    assert run.wait(10) == 130, run.output()
    steps = run.summary()["actors"]["0"]["actor_steps"]
    assert int(probe(run.run_dir / "mario_run.mp4")["nb_read_frames"]) == run_video_frames(steps, episodes(run.run_dir))


def test_sigkill_of_the_actor_leaves_a_playable_run_video(launch):
    """The killed actor's mario_run.mp4 stays playable; its restarted self records mario_run_2.mp4."""
    require("ffprobe")
    run = launch(*WITH_VIDEO, "--set", "learning_starts=20000")
    run.wait_for(
        lambda: (
            run.runs_dir.exists() and any(run.runs_dir.glob("*_run/mario_run.mp4")) and run.status_value("steps") >= 600
        ),
        60,
        "600 steps recorded",
    )
    actor = run.role_pids()["actor-0"]
    os.kill(actor, signal.SIGKILL)
    run.wait_for(
        lambda: "actor-0 exited unexpectedly (killed by SIGKILL); restarting it (1 of 3)" in run.output(),
        15,
        "the restart",
    )
    video = probe(run.run_dir / "mario_run.mp4")
    assert video["codec_name"] == "h264" and int(video["nb_read_frames"]) >= 400, video
    run.wait_for(lambda: (run.run_dir / "mario_run_2.mp4").exists(), 30, "the restarted actor's segment")
    # Counted in the segment itself: the status line's steps can jump by a report interval's steps when the
    # restarted actor first reports (it goes on from the killed one's newest count, an episode's).
    run.wait_for(lambda: frames_so_far(run.run_dir / "mario_run_2.mp4") >= 200, 60, "200 frames in the segment")
    run.interrupt()
    assert run.wait(10) == 130, run.output()
    second = probe(run.run_dir / "mario_run_2.mp4")
    assert second["codec_name"] == "h264" and int(second["nb_read_frames"]) >= 200, second


def test_full_disk_stops_recording_but_not_training(launch, tmp_path):
    """Runs folder on a tmpfs that fills up once the run has started: videos, log.txt and checkpoints
    fail with a clear message each, and the run goes on to its end."""
    disk = tmp_path / "tiny"
    disk.mkdir()
    mount_tmpfs(disk, "3m")
    try:
        run = launch(*WITH_VIDEO, "--max-steps", "6000", "--runs-dir", str(disk))
        run.wait_for(lambda: any(disk.glob("*_run/mario_run.mp4")), 60, "the run video to be opened")
        with open(disk / "filler", "wb") as filler:  # take every free byte
            try:
                while True:
                    filler.write(b"\0" * 65536)
            except OSError:
                pass
        assert run.wait(120) == 0, run.output()
        output = run.output()
        assert re.search(
            r"\[actor-0\] recording \S+ failed: No space left on device; recording stops, "
            r"training goes on",
            output,
        ), output
        assert re.search(
            r"mario-apex: could not write \S+log.txt: No space left on device; training goes on", output
        ), output
        assert re.search(r"could not write \S*checkpoint_final.pth: No space left on device", output), output
        assert "Traceback" not in output
        assert "reached --max-steps" in output
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_missing_ffprobe_skips_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no tool at all
    refuse_to_launch = lambda *args, **options: pytest.fail("launched without ffprobe to check the videos")
    for test in (
        test_videos_log_and_tensorboard_after_a_run,
        test_ctrl_c_leaves_videos_that_play_to_the_end,
        test_sigkill_of_the_actor_leaves_a_playable_run_video,
    ):
        with pytest.raises(pytest.skip.Exception, match=r"^needs ffprobe on PATH"):
            test(refuse_to_launch)


def test_a_failed_mount_skips_with_mounts_own_reason(monkeypatch, tmp_path):
    """Not "needs root" when root is refused too (a container without the capability)."""
    fake_tool(monkeypatch, tmp_path, "mount", "mount: /x: permission denied by the container", status=32)
    fake_tool(monkeypatch, tmp_path, "umount")
    with pytest.raises(pytest.skip.Exception) as skipped:
        mount_tmpfs(tmp_path, "3m")
    assert skipped.value.msg == "cannot mount a tmpfs here: mount: /x: permission denied by the container"

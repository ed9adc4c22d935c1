"""Checkpoints and resume through the real processes: counters continue, state is identical,
snapshots are consistent with their .pth, and bad checkpoints are refused cleanly."""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint, save_checkpoint
from common.config import Config
from common.records import CheckpointCounters, EpisodeReport, EvalResult
from learner.learning import DQNLearner
from replay_server.buffer import PrioritizedReplay
from replay_server.snapshot import FRAME_FILE, frame_file_name, frame_files_named, read_snapshot
from tests.conftest import FAST_TEST_ENV, TEST_FRAME_SIZE
from tests.harness import REPO, LaunchedRun, free_base_port

pytestmark = pytest.mark.slow


def _replay(path, config: Config) -> tuple[PrioritizedReplay, dict]:
    buffer = PrioritizedReplay(
        config.replay_capacity, config.frame_size, config.frame_stack, config.per_alpha, config.num_actions
    )
    return buffer, read_snapshot(path, buffer)


def _transitions(buffer: PrioritizedReplay) -> dict[int, tuple]:
    """id -> (obs and next-obs frames, action, reward, bootstrap, priority) for every stored transition."""
    state = buffer.state_arrays()
    frames_by_slot = {}
    f_head, f_live = int(state["heads"][1]), int(state["heads"][3])
    for k, frame in enumerate(np.concatenate([state["frames"], state["frames_wrapped"]])):
        frames_by_slot[(f_head - f_live + k) % buffer.frame_capacity] = frame
    return {
        int(i): (np.stack([frames_by_slot[int(s)] for s in stack]), int(a), float(r), bool(d), float(p))
        for i, stack, a, r, d, p in zip(
            state["ids"], state["stack"], state["actions"], state["rewards"], state["bootstraps"], state["priorities"]
        )
    }


def _folder_state(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A short test-env run that trained and wrote checkpoint_final.pth with its replay snapshot
    (made once: the tests that resume from it work on copies or only read it)."""
    run = LaunchedRun(tmp_path_factory.mktemp("finished"), *FAST_TEST_ENV, "--max-steps", "4000")
    try:
        assert run.wait(120) == 0, run.output()
        yield run
    finally:
        run.cleanup()


@pytest.fixture
def finished_copy(finished_run, tmp_path):
    """A private copy of the finished run folder, for tests that resume into it."""
    copy = tmp_path / "copied_runs" / finished_run.run_dir.name
    shutil.copytree(finished_run.run_dir, copy)
    return copy


def test_resume_continues_counters_and_restores_identical_state(launch, finished_copy):
    folder = finished_copy
    before = load_checkpoint(str(folder / "checkpoint_final.pth"))
    config = Config.from_dict(before["config"])
    replay_before, saved_first = _replay(folder / before["counters"]["replay_file"], config)
    log_before = (folder / "log.txt").read_text().splitlines()
    assert before["counters"]["episodes"] == len(log_before) and before["counters"]["env_steps"] == 4000
    frames_before = frame_files_named(str(folder / before["counters"]["replay_file"]))
    assert frames_before, "the snapshot keeps its frames in frame files"

    # The resumed session trains no further (learning_starts = capacity), so the learner state must
    # come back bit for bit, and the old replay contents must still be there, unchanged.
    second = launch("--resume", str(folder), "--max-steps", "600", "--set", "learning_starts=20000")
    assert second.wait(120) == 0, second.output()
    assert "waiting for 20000 transitions" in second.output(), "4,000 restored are not enough"
    assert sorted(folder.parent.iterdir()) == [folder], "no new run folder"
    assert not second.runs_dir.exists() or not any(second.runs_dir.iterdir())
    after = load_checkpoint(str(folder / "checkpoint_final.pth"))
    for key in ("online", "target"):
        for name, tensor in before[key].items():
            assert torch.equal(tensor, after[key][name]), f"{key}.{name} changed"
    assert after["optimizer"]["state"].keys() == before["optimizer"]["state"].keys()
    for index, slot in before["optimizer"]["state"].items():
        for name, value in slot.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["optimizer"]["state"][index][name]))
    assert after["counters"]["updates"] == before["counters"]["updates"]
    assert after["counters"]["env_steps"] == 4600

    assert torch.equal(after["rng"]["torch"], before["rng"]["torch"]), "learner RNG state restored"
    replay_after, saved_after = _replay(folder / after["counters"]["replay_file"], config)
    frames_after = frame_files_named(str(folder / after["counters"]["replay_file"]))
    assert frames_after[:-1] == frames_before, "the resumed run wrote the frames it had restored again"
    assert saved_after["rng"] == saved_first["rng"], "replay sampling RNG state restored"
    old, new = _transitions(replay_before), _transitions(replay_after)
    assert len(new) == len(old) + 600
    for transition_id, (frames, action, reward, bootstrap, priority) in old.items():
        got = new[transition_id]
        assert np.array_equal(frames, got[0]) and (action, reward, bootstrap, priority) == got[1:], transition_id

    log_after = (folder / "log.txt").read_text().splitlines()
    assert log_after[: len(log_before)] == log_before, "log.txt appended, not rewritten"
    assert log_after[len(log_before)].endswith(
        f"] Resumed from checkpoint_final.pth: episode {len(log_before)}, 4000 env steps (numbering goes on from there)"
    )
    episodes = [line for line in log_after if "] Episode " in line]
    numbers = [int(line.split("Episode ")[1].split(",")[0]) for line in episodes]
    assert numbers == list(range(1, len(episodes) + 1)), "episode numbers continue"
    assert after["counters"]["episodes"] == len(episodes) == len(log_after) - 1
    assert "resuming from checkpoint_final.pth" in second.output()
    assert "mario-apex: stops after 600 env steps\n" in second.output(), "its own limit, not the saved 4,000 too"


def test_checkpoints_taken_while_training_are_consistent(launch):
    """checkpoint.pth taken every 50 episodes while actor and learner run: its counters and its
    replay snapshot describe the same moment."""
    run = launch(
        *FAST_TEST_ENV,
        "--max-steps",
        "6000",
        "--set",
        "checkpoint_every=50",
        "--set",
        "checkpoint_time_share=1",
        "--set",
        "samples_per_insert=1",
        "--set",
        "spi_tolerance=1000",
    )  # every 50 episodes, however long saving takes; the ratio pinned closely, so the learner (which takes the
    # checkpoints when its replay stats cross 50 episodes) keeps up with the actor however loaded the machine.
    # (6,000 steps are 150 to 400 episodes, fewer the less the agent learned: every 100 with the default
    # tolerance, which let a loaded learner fall 5,000 steps behind, once gave 197 episodes, one checkpoint.)
    assert run.wait(120) == 0, run.output()
    assert run.output().count("saved checkpoint.pth with replay memory") >= 2
    state = load_checkpoint(str(run.run_dir / "checkpoint.pth"))
    counters = state["counters"]
    buffer, saved = _replay(run.run_dir / counters["replay_file"], Config.from_dict(state["config"]))
    assert len(buffer) == counters["replay_size"] == saved["size"]
    assert (saved["episodes"], saved["env_steps"]) == (counters["episodes"], counters["env_steps"])
    assert counters["episodes"] >= 100 and counters["updates"] > 0
    assert sorted(p.name for p in run.run_dir.glob("*.replay.npz*")) == sorted(
        [counters["replay_file"], load_checkpoint(str(run.run_dir / "checkpoint_final.pth"))["counters"]["replay_file"]]
    ), "old snapshots are cleaned up"
    named = {
        frame_file_name(segment)
        for path in run.run_dir.glob("*.replay.npz")
        for segment in frame_files_named(str(path))
    }
    assert {p.name for p in run.run_dir.iterdir() if FRAME_FILE.match(p.name)} == named, "old frame files cleaned up"


def _resume_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _write(path, kind: str, source) -> None:
    if kind == "truncated":
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "wrong-format":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "no-config":
        save_checkpoint({"online": {}, "counters": {"updates": 1}}, str(path))
    elif kind == "bad-counters":  # a misspelt or mistyped counter would otherwise become a silent 0
        state = load_checkpoint(str(source))
        save_checkpoint({**state, "counters": {**state["counters"], "env_steps": "4000"}}, str(path))
    elif kind == "other-actions":
        DQNLearner(Config(num_actions=12), torch.device("cpu")).save(str(path))
    elif kind == "networks-for-other-frames":  # 64x64 networks under a config that says 84x84
        state = DQNLearner(Config(frame_size=64), torch.device("cpu")).state_dict()
        save_checkpoint({**state, "config": Config().to_dict()}, str(path))


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("missing", "no such file or folder"),
        ("truncated", "not a readable checkpoint"),
        ("corrupt", "not a readable checkpoint"),
        ("wrong-format", "not a mario-apex checkpoint"),
        ("no-config", "damaged checkpoint (no config or counters)"),
        ("bad-counters", "damaged checkpoint (its counter env_steps is str, not int)"),
        ("other-actions", "num_actions is 12 but the env's action set (simple) has 7"),
        ("networks-for-other-frames", "incompatible online network"),
    ],
)
def test_bad_checkpoint_is_refused_with_one_line_and_nothing_overwritten(finished_run, tmp_path, kind, reason):
    folder = finished_run.run_dir
    bad = tmp_path / "bad" / "checkpoint.pth"
    bad.parent.mkdir()
    if kind != "missing":
        _write(bad, kind, folder / "checkpoint_final.pth")
    before = _folder_state(bad.parent) if bad.exists() else {}
    result = _resume_cli("--resume", str(bad), "--headless", "--base-port", "40000")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch.py: error: "), result.stderr
    if kind != "other-actions":
        assert str(bad) in lines[0]
    assert reason in lines[0]
    assert (_folder_state(bad.parent) if bad.exists() else {}) == before, "nothing was written"


def test_incompatible_override_is_refused(finished_run):
    """Resuming with a different frame size than the checkpoint was trained with."""
    folder = finished_run.run_dir
    before = _folder_state(folder)
    result = _resume_cli("--resume", str(folder), "--set", "frame_size=64", "--headless")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"launch.py: error: {folder / 'checkpoint_final.pth'}: incompatible: it was "
        f"trained with frame_size={TEST_FRAME_SIZE}, this run has frame_size=64"
    )
    assert _folder_state(folder) == before


def test_terminal_start_asks_to_resume_and_loads_on_l(finished_copy, tmp_path):
    """Started from a terminal with a checkpoint in the runs folder, the launcher asks the original
    question; answering l resumes that run. With stdin not a terminal it never asks."""
    import pty
    import select
    import signal
    import time

    runs_dir = finished_copy.parent
    master, slave = pty.openpty()
    args = [
        sys.executable,
        "launch.py",
        "--runs-dir",
        str(runs_dir),
        "--headless",
        "--no-video",
        "--base-port",
        str(free_base_port()),
        "--max-steps",
        "50",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    os.close(slave)
    try:
        output, deadline = b"", time.monotonic() + 60
        while b"[n/l]" not in output and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                output += os.read(proc.stdout.fileno(), 4096)
        assert b"Start new training (n) or load the latest checkpoint (l)? [n/l]" in output, output
        os.write(master, b"l\n")
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output + rest
        assert b"resuming from checkpoint_final.pth" in rest
        assert b"transitions restored, enough to train on" in rest and b"waiting for" not in rest, rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(master)
    assert sorted(p.name for p in runs_dir.iterdir()) == [finished_copy.name], "no new run folder"

    quiet = subprocess.run(args, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and "[n/l]" not in quiet.stdout and "resuming" not in quiet.stdout


def test_a_run_folder_resumes_from_the_newest_checkpoint_preferring_one_with_replay(tmp_path):
    """By their counters, not their names; of two equally new, the one whose replay memory was saved."""
    from common.checkpoint import save_checkpoint
    from launcher.resume import find_checkpoint

    def save(name, updates, replay_file=""):
        save_checkpoint(
            {"counters": {"updates": updates, "env_steps": 10 * updates, "replay_file": replay_file}},
            str(tmp_path / name),
        )

    save("checkpoint.pth", 500, "checkpoint-1.replay.npz")
    save("checkpoint_final.pth", 400, "checkpoint_final-2.replay.npz")
    assert find_checkpoint(str(tmp_path)).endswith("/checkpoint.pth"), "newer by its counters"
    save("checkpoint_final.pth", 500)
    assert find_checkpoint(str(tmp_path)).endswith("/checkpoint.pth"), "as new, but without its replay"
    save("checkpoint_final.pth", 501)
    assert find_checkpoint(str(tmp_path)).endswith("/checkpoint_final.pth")


def test_a_resumed_runs_evaluations_go_on_from_the_last_one_in_log_txt(tmp_path):
    """Item 11: evaluation numbers do not start again at 1 after --resume (the launcher counts on from here)."""
    from launcher.episode_log import EpisodeLog

    log = EpisodeLog(str(tmp_path / "log.txt"))
    assert log.last_eval_number() == 0, "no file yet"
    episode = EpisodeReport(reward=1.0, steps=10, x_pos=40, epsilon=0.5)
    result = EvalResult(reward=1.0, steps=10, x_pos=40, actor_steps=9)
    for number in (1, 2, 3):
        log.write(number, episode)
        log.write_eval(number, result, 9)
    log.write_resumed("checkpoint.pth", CheckpointCounters(episodes=2, env_steps=20))
    log.write(3, episode)
    assert log.last_eval_number() == 3

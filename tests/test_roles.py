"""Roles in separate launchers (as on two machines, here over loopback), actor restarts. Keys across
two hosts: test_two_hosts.py; a learner-only environment and three launchers: test_learner_machine.py."""

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.conftest import FAST_TEST_ENV, SMALL_FRAMES
from tests.harness import REPO

pytestmark = pytest.mark.slow

# The learner side of FAST_TEST_ENV: what the replay server and learner need to know.
LEARNER_SIDE = (
    *SMALL_FRAMES,
    "--set",
    "learning_starts=500",
    "--set",
    "publish_every=20",
    "--set",
    "target_update_every=200",
    "--set",
    "replay_capacity=20000",
    "--set",
    "checkpoint_every=0",
)


def weights_update(run) -> int:
    """The newest "weights of update N" on an actor side's status lines."""
    found = re.findall(r"weights of update ([\d,]+)", run.output())
    return int(found[-1].replace(",", "")) if found else 0


def test_learner_and_actor_sides_stop_and_restart_independently(launch):
    """--role learner and --role actor in two launchers: training flows; Ctrl+C on the learner side
    writes its final checkpoint and the actors play on; a resumed learner side is joined again with
    the run's counters continued; Ctrl+C on the actor side leaves the learner waiting."""
    learner = launch("--role", "learner", *LEARNER_SIDE)
    actors = launch("--role", "actor", "--learner", f"127.0.0.1:{learner.base_port}", *FAST_TEST_ENV)
    learner.wait_for_updates(20)
    actors.wait_for(lambda: weights_update(actors) > 0, 60, "trained weights on the actor side")
    assert f"replay server and learner on ipc://{learner.channel_path(0)} (this machine only" in learner.output()

    learner.interrupt()
    assert learner.wait(10) == 130, learner.output()
    assert (learner.run_dir / "checkpoint_final.pth").exists()
    first_summary = learner.summary()
    actors.wait_for(
        lambda: "[actor-0] the learner stopped (it saved checkpoint_final.pth)" in actors.output(),
        20,
        "the actors hearing that the learner stopped",
    )
    episodes = len(actors.log_lines())
    actors.wait_for_episodes(episodes + 30)  # playing on without a learner
    assert actors.proc.poll() is None

    again = launch("--role", "learner", "--resume", str(learner.run_dir), base_port=learner.base_port)
    again.wait_for(lambda: "resumed from checkpoint_final.pth" in again.output(), 60, "the learner resuming")
    actors.wait_for(lambda: "[actor-0] a learner is back" in actors.output(), 60, "the actors rejoining")
    before = weights_update(actors)
    actors.wait_for(lambda: weights_update(actors) > before, 60, "newer weights after the restart")

    actors.interrupt()
    assert actors.wait(10) == 130, actors.output()
    again.wait_for(lambda: "no actor connected: serving no batches" in again.output(), 60, "the learner waiting")
    updates = again.status_value("updates")
    assert again.proc.poll() is None, "the learner side keeps running without actors"
    again.interrupt()
    assert again.wait(10) == 130, again.output()
    final = learner.summary()  # the resumed learner side goes on in the same run folder
    assert final["updates"] - updates <= 2 * 20, "the learner waited instead of training on without actors"
    # The replay server counts episodes and steps once each; the resumed run continues its counts.
    assert final["replay"]["episodes"] > first_summary["replay"]["episodes"] > 0
    assert final["replay"]["inserted"] > first_summary["replay"]["inserted"]
    for run in (learner, actors, again):
        assert "exited unexpectedly" not in run.output()


def test_non_loopback_bind_needs_keys_or_insecure(tmp_path):
    result = subprocess.run(
        [sys.executable, "launch.py", "--role", "learner", "--bind", "0.0.0.0:47999", "--runs-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("launch.py: error: --bind 0.0.0.0 listens beyond this machine: create keys with")
    assert not any(tmp_path.iterdir()), "nothing started, nothing written"


def test_loopback_tcp_needs_keys_or_insecure_too(tmp_path):
    """On loopback the roles use this user's ipc sockets; asking for loopback TCP instead (local_ipc=false)
    would let every user of the machine in, so it needs keys or --insecure like any open port."""
    result = subprocess.run(
        [sys.executable, "launch.py", "--set", "local_ipc=false", "--runs-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "launch.py: error: local_ipc=false opens loopback TCP ports that every user of "
        "this machine can reach: pass --keys or --insecure (or keep local_ipc on)"
    )
    assert not any(tmp_path.iterdir()), "nothing started, nothing written"


def test_a_killed_actor_is_restarted_and_nothing_else_is(launch):
    """kill -9 of one actor of two: the launcher restarts it (saying why), the replay server and the
    learner keep running as they were, and the replay memory keeps everything it had."""
    run = launch(*FAST_TEST_ENV, "--actors", "2")
    run.wait_for_updates(5)
    run.wait_for(lambda: {"replay", "learner", "actor-0", "actor-1"} <= set(run.role_pids()), 30, "all processes")
    before = run.role_pids()
    # What the killed process wrote to TensorBoard is compared below: wait until some of it is on disk (its
    # writer flushes every 10 events; a SIGKILL loses the rest, and on a loaded machine that was everything).
    run.wait_for(lambda: _episode_steps(run, "actor1"), 60, "actor-1's first TensorBoard episodes on disk")
    stored, played = run.status_value("replay"), run.status_value("steps")
    os.kill(before["actor-1"], signal.SIGKILL)
    run.wait_for(
        lambda: "actor-1 exited unexpectedly (killed by SIGKILL); restarting it (1 of 3)" in run.output(),
        20,
        "the restart notice",
    )
    run.wait_for(lambda: run.role_pids().get("actor-1") not in (None, before["actor-1"]), 30, "the new actor-1")
    after = run.role_pids()
    assert {k: after[k] for k in ("replay", "learner", "actor-0")} == {
        k: before[k] for k in ("replay", "learner", "actor-0")
    }, "nothing else restarted"
    run.wait_for(lambda: run.status_value("steps") > played + 2000, 60, "the actors playing on")
    restarted_from = sum(", Actor: 1," in line for line in run.log_lines())  # (the killed one's included)
    run.wait_for(
        lambda: sum(", Actor: 1," in line for line in run.log_lines()) >= restarted_from + 5,
        60,
        "episodes of the restarted actor-1",
    )  # on a loaded machine it starts slowly
    run.interrupt()
    assert run.wait(10) == 130, run.output()
    summary = run.summary()
    # The memory may be full by now (the test env plays ~2,000 steps/s), so it is the inserts that grow
    # on; a few chunks may still have been on their way at the kill and at the stop.
    assert summary["replay"]["inserted"] > played + 1000 and summary["replay"]["dropped"] == 0
    assert summary["replay"]["size"] >= stored
    # The restarted actor-1 went on counting its steps (its epsilon schedule with them): its TensorBoard
    # file starts where the killed process's file ended, give or take the steps whose report was still
    # in the killed process's socket queue (a SIGKILL loses them; CI once saw 12 of 4,433 recounted).
    spans = [(steps[0], steps[-1]) for steps in _episode_steps(run, "actor1")]
    assert len(spans) == 2, spans
    assert spans[0][1] > 0 and spans[1][0] >= 0.9 * spans[0][1], spans


def _episode_steps(run, process: str) -> list[list[int]]:
    """The steps of each of a process's TensorBoard files' Episode/Reward scalars, oldest file first; files
    without any yet are left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for events in sorted(run.run_dir.glob(f"events.out.tfevents.*.{process}"), key=lambda p: p.stat().st_mtime):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "Episode/Reward" in accumulator.Tags()["scalars"]:
            found.append([e.step for e in accumulator.Scalars("Episode/Reward")])
    return found


def test_an_actor_side_without_learner_address_plays_against_this_machine(launch):
    """--role actor without --learner feeds a learner side on this machine: the launcher says where,
    the actors play to their limit and stop cleanly (it once died of a NameError before starting)."""
    run = launch(*FAST_TEST_ENV, "--role", "actor", "--max-steps", "100")
    assert run.wait(60) == 0, run.output()
    assert "feeding the learner side at this machine (" in run.output()
    assert run.summary()["env_steps"] == 100, run.summary()
    assert "Traceback" not in run.output()

"""Stopping: Ctrl+C, SIGTERM and SIGKILL of the launcher, and a child that dies."""
import os
import signal
import time

import pytest

from common.checkpoint import load_checkpoint
from tests.conftest import FAST_TEST_ENV

pytestmark = pytest.mark.slow


def _running_with_children(launch):
    run = launch(*FAST_TEST_ENV)
    run.wait_for_episodes(3)
    run.wait_for(lambda: {"replay", "learner", "actor-0"} <= set(run.role_pids()), 30,
                 "named replay, learner and actor processes")
    run.track_processes()
    return run


@pytest.mark.parametrize("how, expected_status", [("ctrl-c", 130), ("sigterm", 0)])
def test_stop_signal_stops_everything_cleanly(launch, how, expected_status):
    """Ctrl+C (SIGINT to the process group) or SIGTERM to the launcher: all processes gone within
    10 s, right exit status, no traceback, final checkpoint written and loadable."""
    run = _running_with_children(launch)
    children = run.descendants()
    started = time.monotonic()
    if how == "ctrl-c":
        run.interrupt()
    else:
        run.signal_launcher(signal.SIGTERM)
    assert run.wait(10) == expected_status, run.output()
    run.wait_gone(children, timeout=max(0.1, 10 - (time.monotonic() - started)))
    output = run.output()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert "did not stop in time" not in output, output
    summary = run.summary()
    assert summary["stop_reason"] == ("interrupted (Ctrl+C)" if how == "ctrl-c" else "terminated (SIGTERM)")
    state = load_checkpoint(str(run.run_dir / "checkpoint_final.pth"))
    assert state["counters"]["updates"] == summary["updates"]


def test_sigkill_of_the_launcher_takes_the_children_down(launch):
    """If the launcher is SIGKILLed, its children notice and exit within 5 s."""
    run = _running_with_children(launch)
    children = run.descendants()
    run.signal_launcher(signal.SIGKILL)
    run.proc.wait(5)
    run.wait_gone(children, timeout=5)


def test_a_dying_child_stops_the_run_and_is_named(launch):
    """A child killed from outside: the launcher says which and why, stops the others, exits non-zero."""
    run = _running_with_children(launch)
    children = run.descendants()
    learner_pid = run.role_pids()["learner"]
    os.kill(learner_pid, signal.SIGKILL)
    assert run.wait(15) == 1, run.output()
    run.wait_gone(children, timeout=5)
    assert "learner exited unexpectedly (killed by SIGKILL)" in run.output()
    assert run.summary()["stop_reason"] == "learner stopped unexpectedly"


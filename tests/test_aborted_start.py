"""A run stopped during start-up, before anything ran, leaves no run folder behind (it held only
config.json and summary.json); a run that played steps keeps its folder."""

import os
import re
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from common.config import TEST_ENV_ID, Config
from launcher.console import Console
from launcher.supervisor import Supervisor
from tests.conftest import FAST_TEST_ENV, kept_process_hooks
from tests.harness import free_base_port


@pytest.mark.slow
def test_ctrl_c_during_start_up_removes_the_empty_run_folder(launch):
    run = launch(*FAST_TEST_ENV)
    run.wait_for(lambda: "run folder" in run.output(), 60, "the launcher never named its run folder")
    run.interrupt()
    assert run.wait(60) == 130, run.output()
    assert "before anything ran; removed" in run.output(), run.output()
    assert not run.runs_dir.exists() or not any(run.runs_dir.iterdir()), list(run.runs_dir.iterdir())


def _sigint_pending() -> bool:
    """A SIGINT sent to this process and taken by no thread yet (Linux: /proc/self/status ShdPnd)."""
    with open("/proc/self/status") as f:
        pending = next(int(line.split()[1], 16) for line in f if line.startswith("ShdPnd:"))
    return bool(pending & 1 << (signal.SIGINT - 1))


class CtrlCDuringSpawn:
    """Stands in for a spawn context's Process: Ctrl+C comes while start() runs, and start() returns once a
    thread of this process has taken the signal."""

    def __init__(self, name: str, **kwargs):
        self.name = name
        self.sigint_blocked = None

    def start(self) -> None:
        self.sigint_blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # what a child inherits
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 10
        while _sigint_pending() and time.monotonic() < deadline:
            time.sleep(0.01)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the pending signals from /proc")
def test_ctrl_c_while_a_child_is_spawned_reaches_the_launcher(tmp_path):
    """A Ctrl+C during a child's spawn stops the run. The launcher used to set SIGINT to SIG_IGN around the spawn
    (so the child was born ignoring it): a Ctrl+C then taken by another of its threads (numpy's OpenBLAS starts
    one) was discarded, and the launcher ran on (the test above hung). Here a thread stands ready, as OpenBLAS's
    does, and the child is still born with SIGINT held back (blocked)."""
    config = Config(env=TEST_ENV_ID, runs_dir=str(tmp_path), base_port=free_base_port(), device="cpu")
    sup = Supervisor(config, role="all")
    sup.console = Console(0, interactive=False)
    sup._mp = SimpleNamespace(Process=CtrlCDuringSpawn)
    sup.stop_events = {"actor": None}
    idle = threading.Event()
    other_thread = threading.Thread(target=idle.wait, daemon=True)
    other_thread.start()
    try:
        with kept_process_hooks():
            signal.signal(signal.SIGINT, sup._on_signal)
            sup._start("actor", 0, {})
            assert sup.processes["actor-0"].sigint_blocked, "the child would be born taking Ctrl+C"
            assert signal.getsignal(signal.SIGINT) == sup._on_signal
    finally:
        idle.set()
        other_thread.join()
        sup._finish()
    assert sup.stop_reason == "interrupted (Ctrl+C)" and sup.exit_code == 130


@pytest.mark.slow
def test_a_run_that_played_keeps_its_folder(launch):
    run = launch(*FAST_TEST_ENV, "--max-steps", "200")
    assert run.wait(120) == 0, run.output()
    assert run.run_dir.is_dir() and (run.run_dir / "log.txt").stat().st_size > 0
    assert "results in" in run.output()
    assert "no actor connected" not in run.output(), "not at start-up (a connection still settling) nor at the stop"


@pytest.mark.slow
def test_checkpoints_are_kept_before_training_starts(launch):
    """--checkpoint-every counts episodes from the first on, not from the first batch: with learning_starts
    never reached, checkpoint.pth (with the replay memory so far) is still written, and checkpoint_final.pth at
    the stop."""
    run = launch(*FAST_TEST_ENV, "--set", "learning_starts=19000", "--checkpoint-every", "10")
    # Stopped once it is written, not at a step limit: on a loaded machine a short run's actor can finish
    # before the learner has even started, and a learner that starts after the stop takes only the final one.
    run.wait_for(lambda: "saved checkpoint.pth with replay memory" in run.output(), 120, "checkpoint.pth")
    assert (run.run_dir / "checkpoint.pth").exists(), run.output()
    run.signal_launcher(signal.SIGTERM)
    assert run.wait(15) == 0, run.output()
    summary = run.summary()
    assert summary["updates"] == 0, "learning_starts was never reached"
    assert (run.run_dir / "checkpoint_final.pth").exists(), "a clean stop before any update still leaves the final one"
    saved = re.search(r"saved checkpoint_final.pth with replay memory \(([\d,]+) transitions\)", run.output())
    assert saved and 0 < int(saved.group(1).replace(",", "")) <= summary["env_steps"], run.output()

"""A run stopped during start-up, before anything ran, leaves no run folder behind (it held only
config.json and summary.json); a run that played steps keeps its folder."""

import pytest

from tests.conftest import FAST_TEST_ENV

pytestmark = pytest.mark.slow


def test_ctrl_c_during_start_up_removes_the_empty_run_folder(launch):
    run = launch(*FAST_TEST_ENV)
    run.wait_for(lambda: "run folder" in run.output(), 60, "the launcher never named its run folder")
    run.interrupt()
    assert run.wait(60) == 130, run.output()
    assert "before anything ran; removed" in run.output(), run.output()
    assert not run.runs_dir.exists() or not any(run.runs_dir.iterdir()), list(run.runs_dir.iterdir())


def test_a_run_that_played_keeps_its_folder(launch):
    run = launch(*FAST_TEST_ENV, "--max-steps", "200")
    assert run.wait(120) == 0, run.output()
    assert run.run_dir.is_dir() and (run.run_dir / "log.txt").stat().st_size > 0
    assert "results in" in run.output()
    assert "no actor connected" not in run.output(), "not at start-up (a connection still settling) nor at the stop"


def test_checkpoints_are_kept_before_training_starts(launch):
    """--checkpoint-every counts episodes from the first on, not from the first batch: with learning_starts
    never reached, checkpoint.pth (with the replay memory so far) is still written."""
    run = launch(*FAST_TEST_ENV, "--max-steps", "1500", "--set", "learning_starts=19000", "--checkpoint-every", "10")
    assert run.wait(120) == 0, run.output()
    assert run.summary()["updates"] == 0
    assert (run.run_dir / "checkpoint.pth").exists(), run.output()
    assert "saved checkpoint.pth with replay memory" in run.output()

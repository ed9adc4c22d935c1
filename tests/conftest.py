"""Shared fixtures: `launch` starts the real launcher and guarantees nothing outlives the test."""
import pytest

from tests.harness import LaunchedRun

# Settings that make the test env learn in seconds on 2 cores.
FAST_TEST_ENV = ("--env", "MarioApexTest-v0", "--headless", "--set", "learning_starts=500",
                 "--set", "epsilon_decay_steps=3000", "--set", "publish_every=20",
                 "--set", "target_update_every=200", "--set", "replay_capacity=20000")


@pytest.fixture
def launch(tmp_path):
    runs = []

    def start(*args: str, base_port: int | None = None) -> LaunchedRun:
        run = LaunchedRun(tmp_path / f"launch{len(runs)}", *args, base_port=base_port)
        runs.append(run)
        return run

    for i in range(4):
        (tmp_path / f"launch{i}").mkdir()
    yield start
    for run in runs:
        run.cleanup()

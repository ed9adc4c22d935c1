"""The learner side runs on a machine with only requirements-learner.txt: no gym, nes-py or OpenCV.

A real second virtual environment is built from requirements-learner.txt; the replay server and the
learner run from it, in launchers of their own, and train from an actor side running in the full
environment, over loopback.
"""

import subprocess
import sys

import pytest

from tests.conftest import FAST_TEST_ENV
from tests.harness import REPO
from tests.test_roles import LEARNER_SIDE, weights_update

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def learner_python(tmp_path_factory) -> str:
    venv = tmp_path_factory.mktemp("learner-machine") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            "--no-compile",
            "--disable-pip-version-check",
            "-r",
            str(REPO / "requirements-learner.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f"installing requirements-learner.txt failed:\n{result.stderr[-3000:]}"
    return str(venv / "bin" / "python")


def test_learner_environment_lacks_the_emulator(learner_python):
    for module in ("gym", "nes_py", "gym_super_mario_bros", "cv2"):
        result = subprocess.run([learner_python, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module


def test_replay_learner_and_actors_in_three_launchers_without_the_emulator(launch, learner_python):
    """--role replay alone and --role learner --replay (which starts no replay server of its own), both
    from the learner-only environment; the actors, in the full one, send to the replay server and take
    weights from the learner."""
    replay = launch("--role", "replay", *LEARNER_SIDE, python=learner_python)
    learner = launch(
        "--role", "learner", "--replay", f"127.0.0.1:{replay.base_port}", *LEARNER_SIDE, python=learner_python
    )
    actors = launch(
        "--role",
        "actor",
        "--replay",
        f"127.0.0.1:{replay.base_port}",
        "--learner",
        f"127.0.0.1:{learner.base_port}",
        *FAST_TEST_ENV,
    )
    learner.wait_for_updates(20, timeout=120)
    actors.wait_for(lambda: weights_update(actors) > 0, 60, "weights reaching the actors")
    replay.wait_for(lambda: replay.status_value("replay") > 1000, 60, "the replay server storing experience")
    assert set(replay.role_pids()) == {"replay"} and set(learner.role_pids()) == {"learner"}
    assert f"replay server on ipc://{replay.channel_path(0)} (this machine only" in replay.output()
    assert f"learner on ipc://{learner.channel_path(2)} (this machine only" in learner.output()
    for run in (actors, learner, replay):
        run.interrupt()
        assert run.wait(10) == 130, run.output()
        assert "exited unexpectedly" not in run.output() and "Traceback" not in run.output()
    assert (learner.run_dir / "checkpoint_final.pth").exists()
    assert "saved checkpoint_final.pth WITHOUT replay memory" in learner.output()
    assert not list(replay.run_dir.glob("*.replay.npz")), "no snapshot the checkpoint could not name"

"""The learner side runs on a machine with only requirements-learner.txt: no gym, nes-py or OpenCV.

A real second virtual environment is built from requirements-learner.txt; the learner role runs in
it and trains from an actor side running in the full environment, over loopback.
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
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(REPO / "requirements-learner.txt")],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"installing requirements-learner.txt failed:\n{result.stderr[-3000:]}"
    return str(venv / "bin" / "python")


def test_learner_environment_lacks_the_emulator(learner_python):
    for module in ("gym", "nes_py", "gym_super_mario_bros", "cv2"):
        result = subprocess.run([learner_python, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module


def test_learner_role_trains_without_the_emulator(launch, learner_python):
    learner = launch("--role", "learner", *LEARNER_SIDE, python=learner_python)
    actors = launch("--role", "actor", "--learner", f"127.0.0.1:{learner.base_port}", *FAST_TEST_ENV)
    learner.wait_for_updates(20, timeout=120)
    actors.wait_for(lambda: weights_update(actors) > 0, 60, "trained weights on the actor side")
    for run in (actors, learner):
        run.interrupt()
        assert run.wait(10) == 130, run.output()
    assert (learner.run_dir / "checkpoint_final.pth").exists()
    assert "Traceback" not in learner.output() and "exited unexpectedly" not in learner.output()

"""Joypad action sets: the env gets the chosen one, and a set the env cannot play is refused at start."""

import subprocess
import sys

import pytest

from common.config import Config
from actor.envs import find_wrapper, make_env
from tests.harness import REPO


def test_mario_gets_the_chosen_action_set():
    env = make_env(Config(action_set="right_only"))
    try:
        assert env.action_space.n == 5
        from nes_py.wrappers import JoypadSpace

        assert find_wrapper(env, JoypadSpace).get_action_meanings() == [
            "NOOP",
            "right",
            "right A",
            "right B",
            "right A B",
        ]
    finally:
        env.close()


@pytest.mark.parametrize(
    "setting,message",
    [
        ("action_set=right_only", "MarioApexTest-v0 has the simple action set only"),
        ("jump_repress=true", "jump_repress works on the NES emulator's RAM: MarioApexTest-v0 has none"),
    ],
)
@pytest.mark.parametrize("mode", [(), ("--serial",)])
def test_the_test_env_refuses_what_only_mario_has(tmp_path, setting, message, mode):
    """In the launcher and in --serial alike, with a one-line error and no run folder."""
    result = subprocess.run(
        [
            sys.executable,
            "launch.py",
            *mode,
            "--env",
            "MarioApexTest-v0",
            "--headless",
            "--no-video",
            "--runs-dir",
            str(tmp_path),
            "--set",
            setting,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())

"""The network in docs/ that made this project's first greedy flag on World 1-1 still clears it: the
README's --play command, run as a user runs it, on the real emulator."""

import shutil
import subprocess
import sys

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.slow

CHECKPOINT = REPO / "docs" / "mario_1-1_first_greedy_flag.pth"


def test_the_first_greedy_flag_replays_exactly(tmp_path):
    """Greedy play is deterministic (float32 forward, deterministic emulator), so the evaluation that
    first reached the flag (eval 225 at 886,898 env steps) comes back step for step, and is recorded."""
    copy = tmp_path / CHECKPOINT.name  # --play records mario_play.mp4 beside the checkpoint
    shutil.copy(CHECKPOINT, copy)
    result = subprocess.run(
        [sys.executable, "launch.py", "--play", str(copy), "--episodes", "1", "--headless"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "episode 1: reward 298.80, x_pos 3161, steps 383, flag reached" in result.stdout, result.stdout
    assert (tmp_path / "mario_play.mp4").stat().st_size > 100_000

"""The command line: --help, --help-config, and one-line errors with exit status 2 for bad values."""
import subprocess
import sys

import pytest

from tests.harness import REPO


def _launch(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", "--runs-dir", str(tmp_path / "runs"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_help_documents_every_flag(tmp_path):
    result = _launch("--help", tmp_path=tmp_path)
    assert result.returncode == 0
    for flag in ("--headless", "--runs-dir", "--max-episodes", "--max-steps", "--device", "--env",
                 "--actors", "--base-port", "--set", "--help-config", "--checkpoint-every", "--resume",
                 "--resume-reset-exploration", "--play", "--plot", "--no-video", "--role", "--bind", "--learner",
                 "--replay", "--keys", "--insecure", "--max-minutes", "--curriculum"):
        assert flag in result.stdout


def test_help_config_lists_every_field_with_its_doc(tmp_path):
    from common.config import Config
    result = _launch("--help-config", tmp_path=tmp_path)
    assert result.returncode == 0
    for name, _, default, doc in Config.describe():
        assert f"  {name} (" in result.stdout and doc in result.stdout


@pytest.mark.parametrize("args, message", [
    (("--max-steps", "0"), "argument --max-steps: expected a positive integer, got '0'"),
    (("--max-episodes", "ten"), "argument --max-episodes: expected a positive integer, got 'ten'"),
    (("--device", "tpu"), "argument --device: invalid choice: 'tpu'"),
    (("--base-port", "70000"), "argument --base-port: expected a port between 1 and 65533, got '70000'"),
    (("--set", "lr=fast"), "lr must be a number, got 'fast'"),
    (("--set", "nonsense=1"), "unknown config field 'nonsense' (see --help-config)"),
    (("--set", "gamma=1.5"), "gamma must be in (0, 1], got 1.5"),
    (("--set", "learning_starts=500", "--set", "replay_capacity=100"),
     "learning_starts (500) exceeds replay_capacity (100)"),
    (("--env", "Tetris-v0"), "unknown env id 'Tetris-v0'"),
    (("--bogus",), "unrecognized arguments: --bogus"),
    (("--max-minutes", "-1"), "argument --max-minutes: expected a positive number of minutes, got '-1'"),
    (("--role", "gpu"), "argument --role: invalid choice: 'gpu'"),
    (("--bind", "10.0.0.1:0"), "--bind: expected HOST[:PORT] with a port between 1 and 65533, got '10.0.0.1:0'"),
    (("--bind", "0.0.0.0"), "--bind 0.0.0.0 listens beyond this machine: create keys with `python launch.py keys DIR`"),
    (("--role", "replay", "--bind", "192.168.1.5:6000"), "--bind 192.168.1.5 listens beyond this machine"),
    (("--learner", "gpu-box"), "--learner is for --role actor (the other roles listen with --bind)"),
    (("--role", "actor", "--learner", "gpu-box:x"), "--learner: the port in 'gpu-box:x' is not a number"),
    (("--role", "replay", "--replay", "a:1"), "--replay is for --role learner or --role actor"),
    (("--keys", "/nonexistent/keys"), "--keys /nonexistent/keys: no such folder"),
    (("--role", "actor", "--resume", "runs"), "--resume is for the learner side: an actor side continues from the"),
    (("--bind", "*"), "--bind: expected HOST[:PORT] with a port between 1 and 65533, got '*'"),
    (("--set", "epsilon_schedule=greedy"), "epsilon_schedule must be anneal or apex, got 'greedy'"),
    (("--set", "level_mode=random"), "level_mode must be sample or curriculum, got 'random'"),
])
def test_bad_values_give_one_line_and_exit_2(tmp_path, args, message):
    """Nothing starts: one line on stderr, status 2, no run folder."""
    result = _launch(*args, tmp_path=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch.py: error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_is_refused(tmp_path):
    result = _launch("--device", "cuda", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "launch.py: error: --device cuda was requested but this torch build sees no CUDA GPU"


def test_play_refuses_a_checkpoint_whose_network_does_not_fit(tmp_path):
    """--play with a checkpoint whose networks do not match its own config: one line, exit 2."""
    import torch
    from common.checkpoint import save_checkpoint
    from common.config import Config
    from learner.learning import DQNLearner
    path = tmp_path / "odd.pth"
    state = DQNLearner(Config(dueling=False), torch.device("cpu")).state_dict()
    save_checkpoint({**state, "config": Config(dueling=True).to_dict()}, str(path))
    result = _launch("--play", str(path), "--headless", tmp_path=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"launch.py: error: {path}: its network does not fit its config")


def test_keys_command_creates_both_sides_once(tmp_path):
    result = subprocess.run([sys.executable, "launch.py", "keys", str(tmp_path / "k")], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k" / "learner" / "server.key_secret").exists() and (tmp_path / "k" / "actor" / "server.key").exists()
    assert f"--role learner --keys {tmp_path / 'k' / 'learner'}" in result.stdout
    again = subprocess.run([sys.executable, "launch.py", "keys", str(tmp_path / "k")], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert again.stderr.strip() == f"launch.py keys: error: {tmp_path / 'k' / 'learner'} already exists: keys are never " \
                                   "overwritten; choose a new folder"


def test_insecure_allows_a_non_loopback_bind_and_says_so(tmp_path):
    """--insecure lets the bind through the check (here it then fails to bind a foreign address,
    which is again one line)."""
    result = _launch("--role", "replay", "--bind", "192.0.2.1", "--insecure", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("launch.py: error: cannot bind tcp://192.0.2.1:47555: ")

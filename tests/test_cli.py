"""The command line: --help, --help-config, and one-line errors with exit status 2 for bad values."""

import re
import subprocess
import sys

import pytest

from tests.harness import REPO, free_base_port


def _launch(*args: str, tmp_path) -> subprocess.CompletedProcess:
    """launch.py with these flags, on ports of its own: a value that should have been refused and was not
    starts a run, which must not take over the channels of a run this machine is making."""
    return subprocess.run(
        [
            sys.executable,
            "launch.py",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--base-port",
            str(free_base_port()),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_help_documents_every_flag(tmp_path):
    result = _launch("--help", tmp_path=tmp_path)
    assert result.returncode == 0
    for flag in (
        "--headless",
        "--runs-dir",
        "--max-episodes",
        "--max-steps",
        "--device",
        "--env",
        "--actors",
        "--base-port",
        "--set",
        "--help-config",
        "--checkpoint-every",
        "--resume",
        "--resume-reset-exploration",
        "--play",
        "--plot",
        "--no-video",
        "--role",
        "--bind",
        "--learner",
        "--replay",
        "--keys",
        "--insecure",
        "--max-minutes",
        "--curriculum",
        "--resume-new-env",
        "--episodes",
        "--serial",
    ):
        assert flag in result.stdout


def test_help_config_lists_every_field_with_its_doc(tmp_path):
    from common.config import Config

    result = _launch("--help-config", tmp_path=tmp_path)
    assert result.returncode == 0
    blocks = dict(block.partition("\n")[::2] for block in result.stdout.split("\n\n")[1:])  # header: its fields
    for section, name, _, default, doc in Config.describe():
        fields = blocks[f"[{section.name}] {section.title}"]
        assert f"  {name} (" in fields, f"{name} is listed under its section"
        assert doc and " ".join(doc.split()) in " ".join(fields.split()), f"{name}'s doc (wrapped) is printed"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--max-steps", "-1"), "argument --max-steps: max_steps must not be negative, got -1"),
        (("--max-episodes", "ten"), "argument --max-episodes: max_episodes must be an integer, got 'ten'"),
        (("--device", "tpu"), "argument --device: device must be one of auto, cpu, cuda, mps, got 'tpu'"),
        (("--base-port", "70000"), "argument --base-port: base_port must be between 1 and 65533, got 70000"),
        (("--actors", "0"), "argument --actors: actors must be at least 1, got 0"),
        (("--set", "num_actors=0"), "actors must be at least 1, got 0"),  # the field's old name still works
        (("--set", "lr=fast"), "lr must be a number, got 'fast'"),
        (("--set", "nonsense=1"), "unknown config field 'nonsense' (see --help-config)"),
        (("--set", "gamma=1.5"), "gamma must be in (0, 1], got 1.5"),
        (
            ("--set", "learning_starts=500", "--set", "replay_capacity=100"),
            "learning_starts (500) exceeds replay_capacity (100)",
        ),
        (("--env", "Tetris-v0"), "unknown env id 'Tetris-v0'"),
        (("--bogus",), "unrecognized arguments: --bogus"),
        (("--max-minutes", "-1"), "argument --max-minutes: max_minutes must not be negative, got -1.0"),
        (("--role", "gpu"), "argument --role: invalid choice: 'gpu'"),
        (
            ("--bind", "10.0.0.1:0"),
            "argument --bind: expected HOST[:PORT] with a port between 1 and 65533, got '10.0.0.1:0'",
        ),
        (
            ("--bind", "0.0.0.0"),
            "--bind 0.0.0.0 listens beyond this machine: create keys with `python launch.py keys DIR`",
        ),
        (("--role", "replay", "--bind", "192.168.1.5:6000"), "--bind 192.168.1.5 listens beyond this machine"),
        (("--learner", "gpu-box"), "--learner is for --role actor (the other roles listen with --bind)"),
        (("--role", "actor", "--learner", "gpu-box:x"), "argument --learner: the port in 'gpu-box:x' is not a number"),
        (("--role", "replay", "--replay", "a:1"), "--replay is for --role learner or --role actor"),
        (("--keys", "/nonexistent/keys"), "--keys /nonexistent/keys: no such folder"),
        (("--role", "actor", "--resume", "runs"), "--resume is for the learner side: an actor side continues from the"),
        (("--bind", "*"), "argument --bind: expected HOST[:PORT] with a port between 1 and 65533, got '*'"),
        (("--set", "epsilon_schedule=greedy"), "epsilon_schedule must be anneal or apex, got 'greedy'"),
        (("--set", "level_mode=random"), "level_mode must be sample or curriculum, got 'random'"),
        (("--max-episode", "5"), "unrecognized arguments: --max-episode 5"),
        (("--episodes", "2"), "--episodes is for --play (to stop training after N episodes: --max-episodes)"),
        (("--resume-new-env",), "--resume-new-env needs --resume"),
        (("--play", "/nonexistent/run"), "/nonexistent/run: no such file or folder"),
    ],
)
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
    assert (
        result.stderr.strip() == "launch.py: error: --device cuda was requested but this torch build sees no CUDA GPU"
    )


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
    result = subprocess.run(
        [sys.executable, "launch.py", "keys", str(tmp_path / "k")], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k" / "learner" / "server.key_secret").exists() and (
        tmp_path / "k" / "actor" / "server.key"
    ).exists()
    assert f"--role learner --keys {tmp_path / 'k' / 'learner'}" in result.stdout
    again = subprocess.run(
        [sys.executable, "launch.py", "keys", str(tmp_path / "k")], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2
    assert (
        again.stderr.strip() == f"launch.py keys: error: {tmp_path / 'k' / 'learner'} already exists: keys are never "
        "overwritten; choose a new folder"
    )


def test_insecure_allows_a_non_loopback_bind_and_says_so(tmp_path):
    """--insecure lets the bind through the check (here it then fails to bind a foreign address,
    which is again one line)."""
    result = _launch("--role", "replay", "--bind", "192.0.2.1", "--insecure", tmp_path=tmp_path)
    assert result.returncode == 2
    assert re.match(r"launch.py: error: cannot bind tcp://192.0.2.1:\d+: ", result.stderr.strip()), result.stderr


def _test_env_checkpoint(path) -> None:
    """An untrained checkpoint for the test env, as the learner writes it."""
    import torch
    from common.config import TEST_ENV_ID, Config
    from learner.learning import DQNLearner

    path.parent.mkdir(parents=True, exist_ok=True)
    DQNLearner(Config(env=TEST_ENV_ID), torch.device("cpu")).save(str(path), {"env_steps": 0})


def test_play_takes_a_run_folder_like_resume(tmp_path):
    run = tmp_path / "runs" / "2026-01-01_00-00-00_run"
    _test_env_checkpoint(run / "checkpoint_final.pth")
    result = _launch("--play", str(run), "--episodes", "1", "--headless", "--no-video", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "mario-apex: 1 episode(s), mean x_pos" in result.stdout


def test_resume_on_another_env_is_refused_unless_asked(tmp_path):
    """Another env would mix two envs in one replay memory and log.txt: one line, exit 2, unless
    --resume-new-env asks for it (then the checkpoint is planned as usual)."""
    from common.config import TEST_ENV_ID, Config
    from launcher.resume import ResumeError, load_resume_state, plan_resume

    path = tmp_path / "old" / "checkpoint_final.pth"
    _test_env_checkpoint(path)
    result = _launch("--resume", str(path), "--env", "SuperMarioBros-1-1-v0", "--headless", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"launch.py: error: {path}: it was trained on {TEST_ENV_ID}, not "
        "SuperMarioBros-1-1-v0: continuing would mix both envs in one replay memory "
        "and log.txt (pass --resume-new-env to do it anyway)"
    )
    checkpoint, state = load_resume_state(str(path))
    other = Config.from_dict({**state["config"], "env": "SuperMarioBros-1-2-v0"})
    with pytest.raises(ResumeError, match="it was trained on"):
        plan_resume(checkpoint, state, other, None)
    assert plan_resume(checkpoint, state, other, None, new_env=True).checkpoint == checkpoint
    assert plan_resume(checkpoint, state, Config.from_dict(state["config"]), None).checkpoint == checkpoint


def test_resume_does_not_take_what_the_last_launch_chose_for_itself():
    """A run stopped by --max-minutes 22 and resumed stopped again 22 minutes later, with no word about it,
    and a run started with --headless stayed without its window: those belong to one launch, so a resume
    has only those given now."""
    from common.config import LAUNCH_ONLY, Config
    from launcher.cli import build_parser, config_from_args, resumed_base

    saved = Config(max_steps=1_000_000, max_episodes=50, max_minutes=22.0, headless=True, lr=0.0003).to_dict()
    resumed = config_from_args(build_parser().parse_args(["--resume", "run"]), resumed_base(saved, "elsewhere"))
    assert [getattr(resumed, name) for name in LAUNCH_ONLY] == [False, 0, 0, 0.0]
    assert resumed.lr == 0.0003 and resumed.runs_dir == "elsewhere", "the rest of the saved config goes on"
    given = build_parser().parse_args(["--resume", "run", "--max-minutes", "5", "--set", "max_steps=700", "--headless"])
    resumed = config_from_args(given, resumed_base(saved, "runs"))
    assert (resumed.max_minutes, resumed.max_steps, resumed.max_episodes, resumed.headless) == (5.0, 700, 0, True)


@pytest.mark.parametrize("name", ["show_a_button", "jump_repress"])
def test_resume_that_changes_what_the_env_shows_is_refused_unless_asked(tmp_path, name):
    """Drawing the A button (or re-pressing it) changes the observations or the game: mixing both in one
    replay memory is refused like another env id."""
    from common.config import Config
    from launcher.resume import ResumeError, load_resume_state, plan_resume

    path = tmp_path / "old" / "checkpoint_final.pth"
    _test_env_checkpoint(path)
    checkpoint, state = load_resume_state(str(path))
    other = Config.from_dict({**state["config"], name: True})
    with pytest.raises(ResumeError, match=f"trained with {name}=False, this run has {name}=True"):
        plan_resume(checkpoint, state, other, None)
    assert plan_resume(checkpoint, state, other, None, new_env=True).checkpoint == checkpoint


def _answers(*answers):
    """An `input` that gives these answers in turn (an exception class is raised) and records the prompts."""
    prompts, queue = [], list(answers)

    def read(prompt: str) -> str:
        prompts.append(prompt)
        answer = queue.pop(0)
        if isinstance(answer, type):
            raise answer()
        return answer

    return read, prompts


@pytest.mark.parametrize(
    "answer, loads",
    [
        ("n", False),
        ("New", False),
        (" N ", False),
        ("l", True),
        ("LOAD", True),
        ("y", True),
        ("yes", True),
        ("Yes\n", True),
    ],
)
def test_resume_question_understands_the_answer(answer, loads):
    from launcher.cli import ask_to_resume

    read, prompts = _answers(answer)
    assert ask_to_resume("runs/x_run", read) == ("runs/x_run" if loads else None)
    assert prompts == [
        "Found a checkpoint in runs/x_run.\nStart new training (n) or load the latest checkpoint (l)? [n/l]: "
    ]


def test_resume_question_asks_again_on_anything_else():
    from launcher.cli import ask_to_resume

    read, prompts = _answers("", "maybe", "nope", "l")
    assert ask_to_resume("runs/x_run", read) == "runs/x_run"
    assert len(prompts) == 4 and all(
        p == "Please answer n (new training) or l (load the checkpoint) [n/l]: " for p in prompts[1:]
    )


@pytest.mark.parametrize("key, status", [(KeyboardInterrupt, 130), (EOFError, 1)])
def test_resume_question_ctrl_c_and_ctrl_d_exit_cleanly(capsys, key, status):
    """Ctrl+C (KeyboardInterrupt) and Ctrl+D (EOFError) leave with an exit status and one line, no traceback."""
    from launcher.cli import ask_to_resume

    read, _ = _answers("what", key)
    with pytest.raises(SystemExit) as exit_:
        ask_to_resume("runs/x_run", read)
    assert exit_.value.code == status
    assert capsys.readouterr().err == "\nmario-apex: no answer; nothing started\n"


def _bad_checkpoint(path, kind: str) -> None:
    import fractions

    import torch

    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello\n")
    elif kind == "random":
        path.write_bytes(bytes(range(256)) * 16)
    elif kind == "truncated":
        torch.save({"weights": torch.zeros(10_000)}, path)
        path.write_bytes(path.read_bytes()[:20_000])
    elif kind == "objects":
        torch.save({"weights": fractions.Fraction(1, 3)}, path)


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("empty", "the file is empty"),
        ("text", "not a torch file"),
        ("random", "not a torch file"),
        ("truncated", "damaged or truncated"),
        ("objects", "it holds Python objects besides tensors and plain values, refused as loading them could run code"),
    ],
)
def test_unreadable_checkpoint_says_what_is_wrong(tmp_path, kind, reason):
    """The reason in the user's terms, not the exception torch raised (KeyError, RuntimeError, ...)."""
    from common.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "checkpoint.pth"
    _bad_checkpoint(path, kind)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(str(path))
    assert str(error.value) == f"{path}: not a readable checkpoint ({reason})"


def test_bad_replay_snapshot_and_networks_say_what_is_wrong(tmp_path):
    import numpy as np
    import torch
    from common.config import Config
    from learner.learning import DQNLearner
    from launcher.resume import ResumeError, _check_networks, _check_snapshot

    config = Config()
    cases = {
        "truncated.npz": "the replay snapshot is damaged or truncated",
        "random.npz": "the replay snapshot is damaged or truncated",
        "headless.npz": "not a mario-apex replay snapshot (no shape header)",
    }
    np.savez(tmp_path / "full.npz", shape=np.zeros(5), frames=np.arange(50_000))
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "full.npz").read_bytes()[:100_000])
    (tmp_path / "random.npz").write_bytes(bytes(range(256)) * 16)
    np.savez(tmp_path / "headless.npz", frames=np.zeros(3))
    for name, reason in cases.items():
        with pytest.raises(ResumeError) as error:
            _check_snapshot(str(tmp_path / name), config)
        assert str(error.value) == f"{tmp_path / name}: {reason}"

    other_frames = DQNLearner(Config(frame_size=64), torch.device("cpu")).state_dict()
    with pytest.raises(ResumeError, match=r"^x.pth: incompatible online network \(size mismatch for \S+: "):
        _check_networks("x.pth", other_frames, config)
    state = DQNLearner(config, torch.device("cpu")).state_dict()
    _check_networks("x.pth", state, config)
    with pytest.raises(ResumeError, match=r"^x.pth: damaged checkpoint \(no target network\)$"):
        _check_networks("x.pth", {**state, "target": None}, config)

"""Every benchmark script runs in its smoke mode and prints its figures, so none of them rots."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "bench_actor",
            [
                "bare emulator, frame skip 4:",
                "actor loop, window+video off:",
                "actor loop, video on:",
                "video encoding, CPU per 256x240 frame: run video (veryfast)",
            ],
        ),
        ("bench_replay", ["insert:", "sample+update batch  32:", "sample+update batch 256:"]),
        (
            "bench_learner",
            [
                "learner batch  32,        float32:",
                "learner batch 256,        float32:",
                "learner batch  32, mixed bfloat16:",
            ],
        ),
        ("bench_checkpoint", ["replay snapshot:", "incremental snapshot after", "PASS:", "learner checkpoint:"]),
        (
            "bench_checkpoint --live 0.3",
            [
                re.compile(
                    r"live run, test env, 0.3 min \(.*\): \d+ periodic checkpoints with replay memory, .* s of them "
                    r"\(.*% of the run\), then the final one on stopping in .* s; .* MB of replay files"
                )
            ],
        ),
        (
            "bench_pipeline --ray",
            [
                "learner batch  32:",
                "weights publish->act:",
                "replay    20,000:",
                "actors 2:",
                "on Ray actors 2:",
                "of plain --actors 2;",
            ],
        ),
        (
            "bench_learning",
            [
                "test env solved:",
                "trained, greedy",
                "random policy",
                "untrained networks (start)",
                re.compile(
                    r"trained, epsilon 0\.01 +\d+ +-?\d+\.\d\d +\d+%  ((flag|death|stall|step limit) \d+(, )?)+\n"
                ),
            ],
        ),
        (
            "bench_learning --env mario",
            [
                re.compile(
                    r"seed 0: (first greedy flag after|no greedy flag).*; \d+ evaluations "
                    r"\(\d+ with the flag, median x_pos \d+; ended: flag \d+, death \d+, stall \d+.*, step limit \d+\); "
                    r"at 600: x \d+, flags \d+%"
                ),
                re.compile(
                    r"goal \(first greedy flag within 1,000,000 env steps and 120 minutes "
                    r"in every seed\): (met|missed)"
                ),
            ],
        ),
        (
            "bench_replay_service",
            [
                re.compile(
                    rf"{label} +ours +[1-9]\d* transitions/s +cpprb +[1-9]\d* transitions/s +"
                    r"ours/cpprb +\d+\.\d\dx"
                )
                for label in ("inserts:", r"sample\+update batch  32:", r"sample\+update batch 256:")
            ]
            + [
                re.compile(r"goal >= 1\.0: (met on every figure|missed on .+)\n"),
                "torn batches (frames overwritten while read, dropped): 0",
            ]
            + [  # a learner on another machine: tcp://, frames sent once each to its copy of the ring
                re.compile(
                    rf"tcp sample\+update batch {size}: +ours +[1-9]\d* transitions/s +cpprb +[1-9]\d* "
                    r"transitions/s +ours/cpprb +\d+\.\d\dx +[1-9]\d* bytes/transition on the wire"
                )
                for size in (" 32", "256")
            ]
            + [
                re.compile(r"tcp goal >= 1\.0: (met on every figure|missed on .+)\n"),
                re.compile(r"filling the copy first .*; torn batches 0\n"),
                re.compile(r"frames in every message instead \(tcp://, no copy\): batch 32 [1-9]\d* transitions/s"),
            ],
        ),
    ],
)
def test_benchmark_smoke_mode(name, expected):
    script, *options = name.split()
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", *options, "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for text in expected:  # a plain string must appear; a pattern must match a line with its figures
        found = text.search(result.stdout) if isinstance(text, re.Pattern) else text in result.stdout
        assert found, f"{getattr(text, 'pattern', text)!r} not in:\n{result.stdout}"


def test_checkpoint_spacing_without_a_fork_counts_the_synchronous_write(monkeypatch, capsys, tmp_path):
    """Where start_snapshot cannot fork it writes the snapshot itself: the spacing of periodic checkpoints
    follows that write, not the ~0 s spent waiting for no child ("every 0.0 min")."""
    import benchmarks.bench_checkpoint as bench

    def without_fork(buffer, counters, path, saved):
        bench.write_snapshot(buffer, counters, path, saved)
        time.sleep(0.6)  # a write that takes a while
        return None

    monkeypatch.setattr(bench, "start_snapshot", without_fork)
    assert bench.bench_replay(1_000, str(tmp_path))
    out = capsys.readouterr().out
    assert "no fork here, written synchronously" in out
    assert float(re.search(r"waits for the (?:forked )?snapshot \((\d+\.\d) s\)", out)[1]) >= 0.6, out


def test_checkpoint_smoke_refuses_an_explicit_capacity():
    """--smoke runs at capacity 5000: a --capacity beside it would be ignored, so it is an error."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_checkpoint", "--smoke", "--capacity", "2000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--smoke" in result.stderr.splitlines()[-1], result.stderr


def test_learning_minutes_leave_out_the_time_between_a_stop_and_a_resume(tmp_path):
    """bench_learning --report on a resumed run: minutes to an evaluation count the time the run ran, not
    the hour it stood stopped before --resume (no log.txt line for 5 minutes or more)."""
    from benchmarks.bench_learning import Evaluation, evaluations

    run = tmp_path / "2026-12-03_10-00-00_run"
    run.mkdir()
    eval_line = "[{}] Eval {}, Reward: 1.00, Actor: 0, Steps: 10, X: {}, Flag: {}, Env steps: {}"
    (run / "log.txt").write_text(
        "\n".join(
            [
                eval_line.format("2026-12-03 10:04:00", 1, 300, "no", 1000),
                "[2026-12-03 10:08:00] Episode 9, Reward: 1.00, Actor: 0, Steps: 10, X: 40, Flag: no, Epsilon: 0.500",
                eval_line.format("2026-12-03 11:30:00", 1, 900, "no", 2000),  # resumed at 11:30
                eval_line.format("2026-12-03 11:34:00", 2, 3161, "yes", 3000) + ", End: flag",
            ]
        )
        + "\n"
    )
    assert evaluations(run) == [
        Evaluation(1000, 300, False, 4.0),
        Evaluation(2000, 900, False, 8.0),
        Evaluation(3000, 3161, True, 12.0, "flag"),
    ]


def learning_report(run, rows, *args: str, config: dict | None = None) -> str:
    """bench_learning --report on a run folder whose log.txt holds these (eval, x, flag, env steps[, end]) rows,
    a minute apart from 10:01 (and this config.json, if given); its stdout."""
    run.mkdir()
    if config is not None:
        (run / "config.json").write_text(json.dumps(config))
    eval_line = "[2026-12-03 10:0{}:00] Eval {}, Reward: 1.00, Actor: 0, Steps: 10, X: {}, Flag: {}, Env steps: {}"
    lines = [eval_line.format(i, i, x, f, s) + (f", End: {end[0]}" if end else "") for i, x, f, s, *end in rows]
    (run / "log.txt").write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_learning", "--env", "mario", "--report", str(run), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_learning_report_counts_only_evaluations_after_a_step_and_reads_a_renamed_folder(tmp_path):
    """bench_learning --report --after N scores what a --resume with a change did (the evaluations past N);
    a run folder renamed from YYYY-MM-DD_HH-MM-SS_run counts its minutes from its first log line."""
    rows = [(1, 300, "yes", 1000), (2, 3161, "yes", 2000), (3, 900, "no", 3000), (4, 1000, "no", 4000)]
    out = learning_report(tmp_path / "control", rows, "--after", "1500", "--at", "4000")
    assert "first greedy flag after 2,000 env steps, 1.0 minutes" in out
    assert "3 evaluations (1 with the flag, median x_pos 1000)" in out


def test_learning_report_counts_an_evaluation_at_step_0_by_default(tmp_path):
    """Without --after every evaluation counts, the one at env step 0 (before any training) too."""
    rows = [(1, 3000, "yes", 0), (2, 1000, "no", 1000)]
    out = learning_report(tmp_path / "2026-12-03_10-00-00_run", rows, "--at", "1000")
    assert "first greedy flag after 0 env steps, 1.0 minutes" in out
    assert "2 evaluations (1 with the flag, median x_pos 2000)" in out


def test_learning_report_counts_how_the_evaluations_ended_and_where_they_stalled(tmp_path):
    """Deaths, stalls (with the x_pos they stalled at, the most frequent first) and the rest; an older line
    without an end is counted apart."""
    rows = [(1, 434, "no", 100, "stall"), (2, 722, "no", 200, "stall"), (3, 434, "no", 300, "stall")]
    rows += [(4, 1100, "no", 400, "death"), (5, 900, "no", 500)]
    out = learning_report(tmp_path / "2026-12-03_10-00-00_run", rows, "--at", "500")
    assert "ended: flag 0, death 1, stall 3 (at x 434 x2, 722 x1), step limit 0; 1 logged without an end)" in out, out


@pytest.mark.parametrize("jump_repress,verdict", [(False, "met"), (True, "not counted: jump_repress changes the game")])
def test_a_flag_under_jump_repress_does_not_count_toward_the_goal(tmp_path, jump_repress, verdict):
    """With jump_repress a constant action reaches the flag of 1-1: the report says so instead of 'met'."""
    out = learning_report(
        tmp_path / "run", [(1, 3161, "yes", 1000)], "--at", "1000", config={"jump_repress": jump_repress}
    )
    assert f"minutes in every seed): {verdict}" in out, out


def test_the_start_note_reads_jump_repress_as_the_launcher_does():
    from benchmarks.bench_learning import _asks_jump_repress

    assert _asks_jump_repress(["action_set=right_only", "jump_repress = yes"])
    assert _asks_jump_repress(["jump_repress=True"])
    assert not _asks_jump_repress(["jump_repress=false", "action_set=right_only"])
    assert not _asks_jump_repress(["jump_repress=banana"])  # the launcher refuses it, with its own message


def test_learning_report_gives_the_training_episodes_median_x_and_flags_at_each_budget(tmp_path):
    """Beside the greedy figures, each budget gets the median x_pos of the last 200 training episodes ended by
    it and the training flags up to it (the README's "training x" figures)."""
    run = tmp_path / "2026-12-03_10-00-00_run"
    run.mkdir()
    train_line = "[2026-12-03 10:00:0{}] Episode {}, Reward: 1.00, Actor: 0, Steps: 500, X: {}, Flag: {}, Epsilon: 0.5"
    lines = [train_line.format(i, i, x, flag) for i, (x, flag) in enumerate([(100, "no"), (200, "yes"), (900, "no")])]
    evaluation = "[2026-12-03 10:00:0{}] Eval {}, Reward: 1.00, Actor: 0, Steps: 10, X: 434, Flag: no, Env steps: {}"
    lines.insert(2, evaluation.format(5, 1, 1000))
    lines.append(evaluation.format(6, 2, 1500))
    (run / "log.txt").write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_learning",
            "--env",
            "mario",
            "--report",
            str(run),
            "--at",
            "1000,1500",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "at 1,000: x 434, flags 0%, training x 150 (median of the last 200), 1 training flags" in result.stdout
    assert "at 1,500: x 434, flags 0%, training x 200 (median of the last 200), 1 training flags" in result.stdout
    assert "median training x_pos 150, training flags 1 (1 seeds)" in result.stdout


def test_a_free_base_port_has_no_ipc_socket_file_left_by_a_killed_run(tmp_path, monkeypatch):
    """A SIGKILLed run leaves its <port>.sock files behind; a base port among them is not free for a test
    that binds such a file itself (it failed with EADDRINUSE when the random pick hit one)."""
    import benchmarks.common as common
    import common.addresses as addresses

    monkeypatch.setattr(addresses, "private_ipc_dir", lambda: str(tmp_path))
    (tmp_path / "30002.sock").touch()  # one of 30000..30003
    picks = iter([30_000, 40_000])
    monkeypatch.setattr(common.random, "randint", lambda low, high: next(picks))
    assert common.free_base_port() == 40_000


# A stand-in for the original trainer's mario_gym.py (not part of this project) with the same shape: an
# unused torchvision import, the start-up prompt, the env made at module level under JoypadSpace, a window.
ORIGINAL_LIKE = """
import sys
import cv2
import gym_super_mario_bros
from gym_super_mario_bros.actions import SIMPLE_MOVEMENT
from nes_py.wrappers import JoypadSpace
from torchvision import transforms as T

env = JoypadSpace(
    gym_super_mario_bros.make("SuperMarioBros-v0", apply_api_compatibility=True, render_mode="rgb_array"),
    SIMPLE_MOVEMENT,
)
if __name__ == "__main__":
    assert input("Start new training (n) or load from checkpoint (l)? [n/l]: ") == "n"
    env.reset()
    for step in range(STEPS):
        obs, reward, terminated, truncated, info = env.step(step % len(SIMPLE_MOVEMENT))
        if SHOW:
            cv2.imshow("Mario", obs)
            cv2.waitKey(1)
        if terminated or truncated:
            env.reset()
"""


def test_the_original_trainer_runs_unmodified_with_every_emulator_step_counted(tmp_path):
    """bench_vs_original's child runs the script as `python mario_gym.py` would (prompt answered "n",
    torchvision stubbed where missing) and counts each emulator step once."""
    import multiprocessing as mp

    from benchmarks.bench_vs_original import _run_original

    script = tmp_path / "mario_gym.py"
    script.write_text(ORIGINAL_LIKE.replace("STEPS", "57").replace("SHOW", "False"))
    ctx = mp.get_context("spawn")
    steps = ctx.RawValue("q", 0)
    child = ctx.Process(target=_run_original, args=(str(script), str(tmp_path), steps))
    child.start()
    child.join(120)
    assert child.exitcode == 0, (tmp_path / "original.out").read_text()
    assert steps.value == 57


def test_bench_vs_original_smoke_prints_both_rates_and_the_ratio(tmp_path, xvfb):
    script = tmp_path / "mario_gym.py"
    script.write_text(ORIGINAL_LIKE.replace("STEPS", "10**9").replace("SHOW", "True"))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_vs_original", "--original", str(script), "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DISPLAY": xvfb},
    )
    assert result.returncode == 0, result.stderr
    for pattern in (
        r"round 1: original +[1-9][\d.]* NES frames/s\n",
        r"round 1: ours +[1-9][\d.]* NES frames/s over \d+ s of training \(1 actor\(s\); [\d,]+ env steps, [1-9][\d,]* updates",
        r"median: original [\d.]+ NES frames/s, ours [\d.]+: [\d.]+x \(goal >= 30x: (met|missed)\)",
    ):
        assert re.search(pattern, result.stdout), f"{pattern!r} not in:\n{result.stdout}"


def test_bench_vs_original_refuses_a_missing_script_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_vs_original", "--original", str(tmp_path / "nope.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no such file" in result.stderr.strip().splitlines()[-1]

"""Learning benchmark: does the agent learn, and how fast? Real launcher runs, as a user starts them.

- `--env test` (default): the built-in test environment. Trains until a greedy evaluation episode is
  optimal (the flag in the fewest steps) and prints the wall time to that point (goal: < 60 s on
  2 cores), then compares the final greedy policy with the same network exploring a little, a random
  policy and the untrained network.
- `--env mario`: Super Mario Bros 1-1 for a fixed env-step budget (`--steps`, default 1,000,000), with
  the replay ratio pinned (`samples_per_insert`, actors and learner wait for each other), so the curve
  over env steps is the same on a busy or a quiet machine; wall time is measured too. It stops at the
  first greedy evaluation that reaches the flag (`--until-budget` plays the whole budget), and prints
  the env steps and minutes to that flag or the best greedy x_pos, the greedy x_pos and flag rate at
  each `--at` budget (the median of the last 5 evaluations up to it), how the evaluations ended, and the
  goal met or missed; `--compare` then plays the final network as the test env's comparison does.
  `--seeds N` runs seeds 0..N-1 one after another and prints medians; `--set NAME=VALUE` is passed to
  the launcher, so variants are compared with the same command.

Run with `.venv/bin/python -m benchmarks.bench_learning [--env mario --seeds 2]`; `--smoke` is a
short test-env run that only checks the script works.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a file path: make the repository importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import free_base_port, machine, parser  # noqa: E402
from common.config import ConfigError, parse_assignment  # noqa: E402
from common.records import EPISODE_ENDS  # noqa: E402
from launcher.plot import read_log  # noqa: E402

TEST_SETTINGS = (
    "--env",
    "MarioApexTest-v0",
    "--headless",
    "--no-video",
    "--set",
    "learning_starts=500",
    "--set",
    "epsilon_decay_steps=3000",
    "--set",
    "publish_every=20",
    "--set",
    "target_update_every=200",
    "--set",
    "replay_capacity=20000",
    "--set",
    "eval_every_episodes=20",
)
# The launcher's defaults, pinned to a replay ratio this 2-core machine sustains with one actor, with an
# evaluation every 20 episodes for the curve's resolution, and one env per actor as in every run of the
# README's learning table (envs_per_actor came later; `--set envs_per_actor=2` measures the default's).
MARIO_SETTINGS = (
    "--env",
    "SuperMarioBros-1-1-v0",
    "--headless",
    "--no-video",
    "--set",
    "eval_every_episodes=20",
    "--set",
    "checkpoint_every=0",
    "--set",
    "samples_per_insert=4",
    "--set",
    "envs_per_actor=1",
)
GOAL_STEPS, GOAL_MINUTES = 1_000_000, 120
NOT_LEARNING = "jump_repress changes the game (the constant action 'right A' reaches the flag)"
_EVAL = re.compile(
    r"Eval \d+, Reward: (-?[\d.]+), Actor: \d+, Steps: (\d+), X: (\d+), Flag: (yes|no), "
    r"Env steps: (\d+)(?:, End: ([a-z ]+))?"
)


class Evaluation(NamedTuple):
    """One greedy evaluation's line of log.txt."""

    env_steps: int
    x_pos: int
    flag: bool
    minutes: float
    """How long the run had been running (the time between a stop and a --resume left out)."""
    end: str = ""
    """How it ended (common/records.py EPISODE_ENDS); "" in logs from before the field."""


def optimal_test_steps() -> int:
    """Fewest steps to the flag in the test env: jump right (action 2) every step."""
    from common.config import TEST_ENV_ID, Config
    from actor.envs import make_env

    env = make_env(Config(env=TEST_ENV_ID))
    env.reset()
    steps, done, info = 0, False, {}
    while not done:
        _, _, terminated, truncated, info = env.step(2)
        steps, done = steps + 1, terminated or truncated
    env.close()
    assert info["flag_get"], "jumping right must reach the test env's flag"
    return steps


def train(settings: tuple, minutes: float, runs_dir: str, solved=None) -> tuple[Path, float | None, int | None]:
    """Run the launcher (for at most `minutes` if given) until it stops, or until solved(eval_line_match)
    is true; then Ctrl+C it as a user would. Returns (run folder, seconds to the first solved
    evaluation, env steps then)."""
    os.makedirs(runs_dir, exist_ok=True)
    cmd = [
        sys.executable,
        "launch.py",
        "--runs-dir",
        runs_dir,
        "--base-port",
        str(free_base_port()),
        *(("--max-minutes", str(minutes)) if minutes else ()),
        *settings,
    ]
    started = time.monotonic()
    output = open(os.path.join(runs_dir, "launcher.out"), "w+")  # a file never fills up like a pipe
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run_dir = None
    while run_dir is None and proc.poll() is None:  # the launcher's first line names the run folder
        time.sleep(0.1)
        found = re.search(r"run folder (\S+)", Path(output.name).read_text())
        run_dir = Path(found[1]) if found else None
    solved_at = solved_steps = None
    seen = 0
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            log = run_dir / "log.txt" if run_dir else None
            if solved is None or solved_at is not None or log is None or not log.exists():
                continue
            lines = log.read_text().splitlines()
            for line in lines[seen:]:
                match = _EVAL.search(line)
                if match and solved(match):
                    solved_at, solved_steps = time.monotonic() - started, int(match[5])
                    os.killpg(proc.pid, signal.SIGINT)  # stop as a user would
                    break
            seen = len(lines)
    except KeyboardInterrupt:  # Ctrl+C here reaches the launcher too (same terminal): let it stop
        proc.wait()
        raise
    output.close()
    if proc.wait() not in (0, 130) or run_dir is None:
        raise SystemExit(f"the launcher failed with exit status {proc.returncode}: see {output.name}")
    return run_dir, solved_at, solved_steps


STOPPED_S = 300
"""No log.txt line for this long: the run was stopped and later resumed (--resume); not counted as its time."""


def evaluations(run_dir: Path) -> list[Evaluation]:
    """Every greedy evaluation in log.txt."""
    found, running = [], 0.0
    try:
        last = datetime.strptime(run_dir.name[:19], "%Y-%m-%d_%H-%M-%S")  # the run folder's name: its start
    except ValueError:  # a renamed folder: its first log line then
        last = None
    for line in (run_dir / "log.txt").read_text().splitlines():
        try:
            now = datetime.strptime(line[1:20], "%Y-%m-%d %H:%M:%S")
        except ValueError:
            continue
        last = last or now
        if (now - last).total_seconds() < STOPPED_S:
            running += (now - last).total_seconds()
        last = now
        match = _EVAL.search(line)
        if match:
            found.append(Evaluation(int(match[5]), int(match[3]), match[4] == "yes", running / 60, match[6] or ""))
    return found


def at_budget(evals: list[Evaluation], budget: int, last: int = 5) -> tuple[float, float] | None:
    """(median x_pos, flag rate) of the last `last` evaluations up to `budget` env steps; None if the
    run did not get that far (or had no evaluation by then)."""
    upto = [e for e in evals if e.env_steps <= budget]
    if not upto or max(e.env_steps for e in evals) < budget * 0.98:
        return None
    window = upto[-last:]
    return statistics.median(e.x_pos for e in window), sum(e.flag for e in window) / len(window)


TRAINING_WINDOW = 200
"""Training episodes whose median x_pos is given at each budget: exploring episodes move less from one
network to the next than a greedy one does, so they show learning where the 5 evaluations are all at one pipe."""


def training_at(episodes, budget: int, after: int = 0) -> tuple[float, int] | None:
    """(median x_pos of the last TRAINING_WINDOW training episodes, training flags) among the episodes ended
    after `after` and by `budget` env steps (summed episode lengths, as launcher/plot.py reads log.txt);
    None if the run did not get that far."""
    if not len(episodes.steps) or episodes.steps[-1] < budget * 0.98:
        return None
    played = (episodes.steps > after) & (episodes.steps <= budget)
    if not played.any():
        return None
    return float(statistics.median(episodes.x_pos[played][-TRAINING_WINDOW:])), int(episodes.flag[played].sum())


def first_flag(evals: list[Evaluation]) -> tuple[int, float] | None:
    """(env steps, minutes) of the first greedy evaluation that reached the flag."""
    return next(((e.env_steps, e.minutes) for e in evals if e.flag), None)


def ends(evals: list[Evaluation]) -> str:
    """How the evaluations ended, counted ("death 40, stall 23 (at x 434 x12, 594 x5), ..."): a stall is
    a greedy Mario holding one action against an obstacle, most often "right A" at a pipe (see the README's
    "The A button"), so its places are named. "" when the log has no ends (written before the field)."""
    counts = Counter(e.end for e in evals if e.end)
    if not counts:
        return ""
    stalls = Counter(e.x_pos for e in evals if e.end == "stall").most_common(5)
    where = f" (at x {', '.join(f'{x} x{n}' for x, n in stalls)})" if stalls else ""
    unknown = len(evals) - sum(counts.values())
    return ", ".join(f"{name} {counts[name]}" + (where if name == "stall" else "") for name in EPISODE_ENDS[1:]) + (
        f"; {unknown} logged without an end" if unknown else ""
    )


def compare(checkpoint: Path, episodes: int) -> dict[str, tuple[float, float, float, str]]:
    """(mean x_pos, mean reward, flag rate, how the episodes ended) of the trained greedy policy, the trained
    policy with 1% and 5% exploration, a random policy and untrained networks (one greedy episode each of
    `episodes` freshly initialised networks: where training starts from). Greedy play on the emulator is
    deterministic: one episode says all; a little exploration shows whether greedy Mario fails for want of
    skill or by repeating one mistake (a held A at a pipe) that a random press gets him out of."""
    import warnings

    import numpy as np
    import torch

    from actor.evaluate import load_policy, play
    from common.network import build_network

    # gym's env checker's numpy deprecation chatter; after gym's import, whose own "once" filter goes first
    warnings.filterwarnings("ignore", module="gym")

    net, config = load_policy(str(checkpoint))
    untrained = []
    for seed in range(episodes):
        torch.manual_seed(seed)
        untrained += play(build_network(config).eval(), config, 1)

    def summary(results):
        ended = Counter(EPISODE_ENDS[r.end] for r in results)
        return (
            float(np.mean([r.x_pos for r in results])),
            float(np.mean([r.reward for r in results])),
            float(np.mean([r.flag for r in results])),
            ", ".join(f"{name} {n}" for name, n in ended.most_common()),
        )

    return {
        "trained, greedy": summary(play(net, config, 1)),  # greedy play is deterministic
        "trained, epsilon 0.01": summary(play(net, config, episodes, epsilon=0.01, seed=3)),
        "trained, epsilon 0.05": summary(play(net, config, episodes, epsilon=0.05, seed=1)),
        "untrained networks (start)": summary(untrained),
        "random policy": summary(play(net, config, episodes, epsilon=1.0, seed=2)),
    }


def print_comparison(checkpoint: Path, episodes: int) -> None:
    print(f"{'policy':28s} {'x_pos':>8s} {'reward':>8s} {'flags':>6s}  ended")
    for name, (x_pos, reward, flags, ended) in compare(checkpoint, episodes).items():
        print(f"{name:28s} {x_pos:8.0f} {reward:8.2f} {flags:6.0%}  {ended}", flush=True)


def learn_mario(args, runs_dir: str) -> None:
    """Train each seed for the budget (stopping at the first greedy flag unless --until-budget), then
    print per-seed figures, their medians and the goal."""
    extra = tuple(a for pair in args.set for a in ("--set", pair))
    budgets = [int(float(b)) for b in args.at.split(",")] if args.at else []
    if args.smoke:  # only checks the script: a few evaluations, training from 300 transitions, fewer updates
        args.steps, budgets = 800, [600]
        extra += ("--set", "learning_starts=300", "--set", "eval_every_episodes=1", "--set", "stall_steps=50")
        extra += ("--set", "samples_per_insert=1", "--set", "max_episode_steps=150")  # an evaluation after 600
    if not args.report:
        if _asks_jump_repress(args.set):
            print(f"note: this run does not count toward the goal: {NOT_LEARNING}")
        print(
            f"SuperMarioBros-1-1-v0, {args.steps:,} env steps per seed, seeds {args.first_seed}.."
            f"{args.first_seed + args.seeds - 1}; settings: "
            f"{' '.join(MARIO_SETTINGS[4:] + extra)}",
            flush=True,
        )
    rows, run_dirs = [], []
    for i in range(len(args.report) if args.report else args.seeds):
        seed = i if args.report else args.first_seed + i
        if args.report:  # figures of runs already made (e.g. stopped early), from their log.txt
            run_dir = Path(args.report[i])
        else:
            settings = (*MARIO_SETTINGS, "--max-steps", str(args.steps), "--seed", str(seed), *extra)
            run_dir, _, _ = train(
                settings,
                args.minutes,
                os.path.join(runs_dir, f"seed{seed}"),
                solved=None if args.until_budget else lambda m: m[4] == "yes",
            )
        run_dirs.append(run_dir)
        evals = [e for e in evaluations(run_dir) if e.env_steps > args.after]
        flag = first_flag(evals)
        best = max(evals, key=lambda e: e.x_pos, default=None)
        episodes, _ = read_log(str(run_dir / "log.txt"))
        training = [training_at(episodes, b, args.after) for b in budgets]
        rows.append((flag, best, [at_budget(evals, b) for b in budgets], training))
        at = "; ".join(
            (f"at {b:,}: x {r[0]:.0f}, flags {r[1]:.0%}" if r else f"at {b:,}: not reached")
            + (f", training x {t[0]:.0f} (median of the last {TRAINING_WINDOW}), {t[1]} training flags" if t else "")
            for b, r, t in zip(budgets, rows[-1][2], training)
        )
        ended = ends(evals)
        reached = f"first greedy flag after {flag[0]:,} env steps, {flag[1]:.1f} minutes" if flag else "no greedy flag"
        print(
            f"{'run' if args.report else 'seed'} {seed}: {reached}; best greedy x_pos {best.x_pos if best else 0} "
            f"(at {best.env_steps if best else 0:,} env steps); {len(evals)} evaluations ({sum(e.flag for e in evals)} with the "
            f"flag, median x_pos {statistics.median(e.x_pos for e in evals) if evals else 0:.0f}"
            f"{'; ended: ' + ended if ended else ''}); {at}; run folder {run_dir}",
            flush=True,
        )
        if args.compare:
            print(f"its final network ({run_dir / 'checkpoint_final.pth'}), {args.episodes} episodes per policy:")
            print_comparison(run_dir / "checkpoint_final.pth", args.episodes)
    flags = [r[0] for r in rows if r[0]]
    print(f"flag reached in {len(flags)} of {len(rows)} {'runs' if args.report else 'seeds'}")
    if flags:
        print(
            f"median over seeds with a flag: {statistics.median(f[0] for f in flags):,.0f} env steps, "
            f"{statistics.median(f[1] for f in flags):.1f} minutes"
        )
    print(f"median best greedy x_pos: {statistics.median(r[1].x_pos if r[1] else 0 for r in rows):.0f}")
    for i, budget in enumerate(budgets):
        points = [r[2][i] for r in rows if r[2][i]]
        trained = [r[3][i] for r in rows if r[3][i]]
        if points:
            print(
                f"at {budget:,} env steps: median greedy x_pos {statistics.median(p[0] for p in points):.0f}, "
                f"flag rate {statistics.median(p[1] for p in points):.0%} ({len(points)} seeds)"
                + (
                    f"; median training x_pos {statistics.median(t[0] for t in trained):.0f}, training flags "
                    f"{statistics.median(t[1] for t in trained):.0f} ({len(trained)} seeds)"
                    if trained
                    else ""
                )
            )
    met = all(r[0] and r[0][0] <= GOAL_STEPS and r[0][1] <= GOAL_MINUTES for r in rows)
    if any(_repressed_jumps(run_dir) for run_dir in run_dirs):
        verdict = f"not counted: {NOT_LEARNING}"
    else:
        verdict = "met" if met else "missed"
    print(
        f"goal (first greedy flag within {GOAL_STEPS:,} env steps and {GOAL_MINUTES} minutes in every seed): {verdict}"
    )


def _asks_jump_repress(assignments: list[str]) -> bool:
    """Whether these --set NAME=VALUE turn jump_repress on, read as the launcher reads them (a bad one is
    the launcher's to refuse)."""
    for text in assignments:
        try:
            if parse_assignment(text) == ("jump_repress", True):
                return True
        except ConfigError:
            pass
    return False


def _repressed_jumps(run_dir: Path) -> bool:
    """Whether the run played with jump_repress on (its config.json), under which 1-1 needs no learning."""
    try:
        return bool(json.loads((run_dir / "config.json").read_text()).get("jump_repress", False))
    except (OSError, ValueError, AttributeError):
        return False


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--env", choices=("test", "mario"), default="test")
    p.add_argument("--minutes", type=float, help="wall-time cap per run (default: 1 for test; none for mario)")
    p.add_argument("--steps", type=int, default=GOAL_STEPS, help="mario: env-step budget per seed (default 1M)")
    p.add_argument("--seeds", type=int, default=1, help="mario: seeds 0..N-1, one after another (default 1)")
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        metavar="K",
        help="mario: seeds K..K+N-1 instead (to run seeds side by side in two benchmarks)",
    )
    p.add_argument("--at", default="150000,500000", help="mario: budgets to report x_pos and flag rate at")
    p.add_argument("--until-budget", action="store_true", help="mario: go on after the first greedy flag")
    p.add_argument("--report", nargs="+", metavar="RUN_FOLDER", help="mario: report on these runs' log.txt, train none")
    p.add_argument(
        "--after",
        type=int,
        default=-1,
        metavar="STEPS",
        help="mario: count only evaluations after this many env steps (default -1: all, the one at step 0 too), "
        "e.g. what a --resume with a change did; 'first greedy flag after X env steps, Y minutes' still counts "
        "both from the run's start",
    )
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="passed to the launcher")
    p.add_argument(
        "--compare",
        action="store_true",
        help="mario: then play each run's final network greedily, at epsilon 0.01 and 0.05, and a random policy and "
        "untrained networks (--episodes each), and say how their episodes ended (the test env always does)",
    )
    p.add_argument("--episodes", type=int, default=5, help="episodes per policy compared (default 5; 2 with --smoke)")
    p.add_argument("--keep", metavar="DIR", help="keep the run folders under DIR (default: a temporary folder)")
    args = p.parse_args()
    print(f"machine: {machine()}")
    runs_dir = args.keep or tempfile.mkdtemp(prefix="bench_learning_")
    args.episodes = 2 if args.smoke else args.episodes
    if args.env == "mario":
        learn_mario(args, runs_dir)
        return
    minutes = args.minutes or (0.25 if args.smoke else 1.0)
    optimum = optimal_test_steps()
    print(
        f"training on the test env until a greedy evaluation is optimal ({optimum} steps to the flag), "
        f"at most {minutes:g} minutes ...",
        flush=True,
    )
    run_dir, seconds, steps = train(
        (*TEST_SETTINGS, *(a for pair in args.set for a in ("--set", pair))),
        minutes,
        runs_dir,
        solved=lambda m: m[4] == "yes" and int(m[2]) == optimum,
    )
    if seconds is None:
        print(f"test env solved: no, not within {minutes:g} minutes (goal < 60 s)")
    else:
        print(
            f"test env solved: greedy policy optimal after {seconds:.1f} s wall time, {steps:,} env steps "
            f"(goal < 60 s, {'met' if seconds < 60 else 'missed'})"
        )
    print(f"run folder: {run_dir}")
    print_comparison(run_dir / "checkpoint_final.pth", args.episodes)
    from launcher.plot import PlotError, plot_run

    try:
        print(f"learning curve: {plot_run(str(run_dir))}")
    except PlotError as exc:
        print(f"learning curve: none ({exc})")


if __name__ == "__main__":
    main()

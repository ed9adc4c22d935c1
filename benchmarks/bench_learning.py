"""Learning benchmark: does the agent learn, and how fast? Real launcher runs, as a user starts them.

- `--env test` (default): the built-in test environment. Trains until a greedy evaluation episode is
  optimal (the flag in the fewest steps) and prints the wall time to that point (goal: < 60 s on
  2 cores), then compares the final greedy policy with a random policy and the untrained network.
- `--env mario --minutes 20`: Super Mario Bros 1-1 for a fixed wall time, then the same comparison
  (greedy x_pos and reward, averaged over evaluation episodes), the env steps and wall time to the
  first greedy evaluation that reached the flag (if any), and `learning_curve.png` of the run.

Run with `.venv/bin/python -m benchmarks.bench_learning [--env mario --minutes 20]`; `--smoke` is a
short test-env run that only checks the script works.
"""
from __future__ import annotations

import os
import re
from datetime import datetime
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):          # run as a file path: make the repository importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import free_base_port, machine, parser  # noqa: E402

TEST_SETTINGS = ("--env", "MarioApexTest-v0", "--headless", "--no-video", "--set", "learning_starts=500",
                 "--set", "epsilon_decay_steps=3000", "--set", "publish_every=20", "--set", "target_update_every=200",
                 "--set", "replay_capacity=20000", "--set", "eval_every_episodes=20")
# 20 minutes on a 2-core CPU are about 100k env steps: explore over the first half of them.
MARIO_SETTINGS = ("--env", "SuperMarioBros-1-1-v0", "--headless", "--no-video", "--set", "epsilon_decay_steps=50000",
                  "--set", "eval_every_episodes=10", "--set", "learning_starts=5000", "--set", "target_update_every=1000",
                  "--set", "checkpoint_every_episodes=0")
_EVAL = re.compile(r"Eval \d+, Reward: (-?[\d.]+), Actor: \d+, Steps: (\d+), X: (\d+), Flag: (yes|no), "
                   r"Env steps: (\d+)")


def optimal_test_steps() -> int:
    """Fewest steps to the flag in the test env: jump right (action 2) every step."""
    from common.config import TEST_ENV_ID, Config
    from common.envs import make_env
    env = make_env(Config(env_id=TEST_ENV_ID))
    env.reset()
    steps, done, info = 0, False, {}
    while not done:
        _, _, terminated, truncated, info = env.step(2)
        steps, done = steps + 1, terminated or truncated
    env.close()
    assert info["flag_get"], "jumping right must reach the test env's flag"
    return steps


def train(settings: tuple, minutes: float, runs_dir: str, solved=None) -> tuple[Path, float | None, int | None]:
    """Run the launcher for `minutes` (or until solved(eval_line_match) is true; then Ctrl+C it).
    Returns (run folder, seconds to the first solved evaluation, env steps then)."""
    cmd = [sys.executable, "launch.py", "--runs-dir", runs_dir, "--base-port", str(free_base_port()),
           "--max-minutes", str(minutes), *settings]
    started = time.monotonic()
    output = open(os.path.join(runs_dir, "launcher.out"), "w+")     # a file never fills up like a pipe
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run_dir = None
    while run_dir is None and proc.poll() is None:       # the launcher's first line names the run folder
        time.sleep(0.1)
        found = re.search(r"run folder (\S+)", Path(output.name).read_text())
        run_dir = Path(found[1]) if found else None
    solved_at = solved_steps = None
    seen = 0
    while proc.poll() is None:
        time.sleep(0.2)
        log = run_dir / "log.txt" if run_dir else None
        if solved is None or solved_at is not None or log is None or not log.exists():
            continue
        lines = log.read_text().splitlines()
        for line in lines[seen:]:
            match = _EVAL.search(line)
            if match and solved(match):
                solved_at, solved_steps = time.monotonic() - started, int(match[5])
                os.killpg(proc.pid, signal.SIGINT)      # stop as a user would
                break
        seen = len(lines)
    output.close()
    if proc.wait() not in (0, 130) or run_dir is None:
        raise SystemExit(f"the launcher failed with exit status {proc.returncode}: see {output.name}")
    return run_dir, solved_at, solved_steps


def first_flag(run_dir: Path) -> str:
    """When a greedy evaluation first reached the flag: env steps and wall time since the run began."""
    started = datetime.strptime(run_dir.name[:19], "%Y-%m-%d_%H-%M-%S")
    for line in (run_dir / "log.txt").read_text().splitlines():
        match = _EVAL.search(line)
        if match and match[4] == "yes":
            seconds = (datetime.strptime(line[1:20], "%Y-%m-%d %H:%M:%S") - started).total_seconds()
            return f"first greedy flag: after {int(match[5]):,} env steps, {seconds / 60:.1f} minutes"
    return "first greedy flag: not reached in this run"


def compare(checkpoint: Path, episodes: int) -> dict[str, tuple[float, float, float]]:
    """(mean x_pos, mean reward, flag rate) of the trained greedy policy, the trained policy with 5%
    exploration, a random policy and untrained networks (one greedy episode each of `episodes`
    freshly initialised networks: where training starts from)."""
    import warnings

    import numpy as np
    import torch
    warnings.filterwarnings("ignore", module="gym")      # its env checker's numpy deprecation chatter

    from actor.evaluate import load_policy, play
    from common.network import build_network
    net, config = load_policy(str(checkpoint))
    untrained = []
    for seed in range(episodes):
        torch.manual_seed(seed)
        untrained += play(build_network(config).eval(), config, 1)

    def summary(results):
        return (float(np.mean([r.x_pos for r in results])), float(np.mean([r.reward for r in results])),
                float(np.mean([r.flag for r in results])))
    return {"trained, greedy": summary(play(net, config, 1)),           # greedy play is deterministic
            "trained, epsilon 0.05": summary(play(net, config, episodes, epsilon=0.05, seed=1)),
            "untrained networks (start)": summary(untrained),
            "random policy": summary(play(net, config, episodes, epsilon=1.0, seed=2))}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--env", choices=("test", "mario"), default="test")
    p.add_argument("--minutes", type=float, help="training wall time (default: 1 for test, 20 for mario)")
    p.add_argument("--episodes", type=int, default=5, help="evaluation episodes per policy (default 5)")
    p.add_argument("--keep", metavar="DIR", help="keep the run folder under DIR (default: a temporary folder)")
    args = p.parse_args()
    mario = args.env == "mario"
    minutes = args.minutes or (0.25 if args.smoke else 20.0 if mario else 1.0)
    episodes = 2 if args.smoke else args.episodes
    print(f"machine: {machine()}")
    runs_dir = args.keep or tempfile.mkdtemp(prefix="bench_learning_")
    if mario:
        print(f"training on SuperMarioBros-1-1-v0 for {minutes:g} minutes ...", flush=True)
        run_dir, _, _ = train(MARIO_SETTINGS, minutes, runs_dir)
        print(first_flag(run_dir))
    else:
        optimum = optimal_test_steps()
        print(f"training on the test env until a greedy evaluation is optimal ({optimum} steps to the flag), "
              f"at most {minutes:g} minutes ...", flush=True)
        run_dir, seconds, steps = train(TEST_SETTINGS, minutes, runs_dir,
                                        solved=lambda m: m[4] == "yes" and int(m[2]) == optimum)
        if seconds is None:
            print(f"test env solved: no, not within {minutes:g} minutes (goal < 60 s)")
        else:
            print(f"test env solved: greedy policy optimal after {seconds:.1f} s wall time, {steps:,} env steps "
                  f"(goal < 60 s, {'met' if seconds < 60 else 'missed'})")
    print(f"run folder: {run_dir}")
    print(f"{'policy':28s} {'x_pos':>8s} {'reward':>8s} {'flags':>6s}")
    for name, (x_pos, reward, flags) in compare(run_dir / "checkpoint_final.pth", episodes).items():
        print(f"{name:28s} {x_pos:8.0f} {reward:8.2f} {flags:6.0%}")
    from launcher.plot import PlotError, plot_run
    try:
        print(f"learning curve: {plot_run(str(run_dir))}")
    except PlotError as exc:
        print(f"learning curve: none ({exc})")


if __name__ == "__main__":
    main()

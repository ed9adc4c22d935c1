"""The whole system against the original single-file trainer: NES frames per second of each, both with
the "Mario" window and the video on and a learner training (issue 19's goal: ours >= 30x).

The original is mario_gym.py of https://github.com/willierhart/super-mario-dqn at commit 3ed6fbf, the
version whose README is ../shared/reference/original-trainer-README.md. Its code is not part of this
project: clone it and pass its path (a display is needed for both windows; xvfb-run gives one):

    git clone https://github.com/willierhart/super-mario-dqn /tmp/super-mario-dqn
    git -C /tmp/super-mario-dqn checkout 3ed6fbf
    xvfb-run -a .venv/bin/python -m benchmarks.bench_vs_original --original /tmp/super-mario-dqn/mario_gym.py

How each side is counted:
- The original steps the emulator once per NES frame (no frame skip) and trains one batch after each
  step. Its script runs unmodified in a child process, in a temporary folder: a wrapper under its
  JoypadSpace counts the emulator steps, its start-up prompt is answered "n" (a new run), and
  torchvision, which it imports but never uses, is stubbed when it is not installed. It is stopped
  with SIGKILL, not Ctrl+C: its final checkpoint pickles the replay memory (GBs), no part of its rate.
- Ours is `python launch.py` with its defaults (window, mario_run.mp4, the learner training as fast as
  it can) and `--actors N`; NES frames = the actors' env steps x frame_skip, from the rate points they
  write to TensorBoard once a second, counted only once the learner trains (after learning_starts).
Both rates leave out the first WARMUP_S seconds of training (imports, the first batches).
Each side runs --seconds per round, in interleaved rounds; the ratio is that of the medians.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a file path: make the repository importable
    sys.path.insert(0, str(REPO))

from benchmarks.bench_pipeline import run_launcher, slope  # noqa: E402
from benchmarks.common import machine, parser  # noqa: E402
from common.config import Config  # noqa: E402

ORIGINAL_COMMIT = "3ed6fbf"
WARMUP_S = 5.0
START_S = 90.0  # our start-up and the learner's wait for learning_starts (10,000 transitions), with margin
GOAL = 30.0


def _run_original(script: str, folder: str, steps) -> None:
    """Child process: the original script as `python mario_gym.py` would run it, in `folder`, with every
    emulator step counted in `steps` (a shared counter)."""
    os.chdir(folder)
    out = open(os.path.join(folder, "original.out"), "w", buffering=1)
    sys.stdout = sys.stderr = out
    import builtins

    import gym
    import gym_super_mario_bros

    class CountSteps(gym.Wrapper):
        def step(self, action):
            result = self.env.step(action)
            steps.value += 1  # the only writer
            return result

    make = gym_super_mario_bros.make
    gym_super_mario_bros.make = lambda *args, **kwargs: CountSteps(make(*args, **kwargs))
    builtins.input = lambda prompt="": "n"  # "Start new training (n) or load from checkpoint (l)?"
    if importlib.util.find_spec("torchvision") is None:  # imported by the script, never used
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = stub, stub.transforms
    sys.argv = [script]
    import runpy

    runpy.run_path(script, run_name="__main__")


def original_rate(script: str, seconds: float, start_timeout: float = 180.0) -> float:
    """NES frames/s of the original script over `seconds`, after its first step and WARMUP_S more."""
    ctx = mp.get_context("spawn")
    steps = ctx.RawValue("q", 0)
    with tempfile.TemporaryDirectory(prefix="bench_original_") as folder:
        child = ctx.Process(target=_run_original, args=(script, folder, steps), daemon=True)
        child.start()
        try:
            deadline = time.monotonic() + start_timeout
            while steps.value == 0:
                if not child.is_alive() or time.monotonic() > deadline:
                    log = Path(folder, "original.out")
                    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                    raise RuntimeError(f"the original trainer did not start stepping (exit {child.exitcode}):\n{tail}")
                time.sleep(0.1)
            time.sleep(WARMUP_S)
            t0, s0 = time.monotonic(), steps.value
            time.sleep(seconds)
            t1, s1 = time.monotonic(), steps.value
            if not child.is_alive():
                raise RuntimeError(f"the original trainer stopped during the measurement (exit {child.exitcode})")
        finally:
            child.kill()
            child.join()
    return (s1 - s0) / (t1 - t0)


def our_rate(actors: int, seconds: float, smoke: bool = False) -> tuple[float, float, dict]:
    """NES frames/s of `python launch.py --actors N` (window, video) while its learner trains: from
    WARMUP_S after the learner's first update (it waits for learning_starts transitions, a minute
    here) to the end of the run; and the seconds that covers."""
    start_s, extra = (60.0, ["--set", "learning_starts=500"]) if smoke else (START_S, [])  # loaded CI: slow starts
    run = run_launcher(
        ["--actors", str(actors), "--max-minutes", f"{(seconds + 2 * WARMUP_S + start_s) / 60:.4f}", *extra],
        timeout=seconds + start_s + 180,
        live=True,
    )
    training = [t for t, updates in run["learner"] if updates > 0]
    if not training:
        raise RuntimeError(f"our learner never trained in {run['wall']:.0f} s:\n{run['output'][-3000:]}")
    rates = [slope([p for p in points if p[0] >= training[0]], WARMUP_S) for points in run["actors"]]
    return sum(r for r, _ in rates) * Config().frame_skip, min(s for _, s in rates), run


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--original", required=True, help=f"path of the original mario_gym.py (commit {ORIGINAL_COMMIT})")
    p.add_argument("--seconds", type=float, default=150.0, help="measured seconds per side and round (default 150)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--actors", type=int, default=1, help="our actor processes (default 1, launch.py's default)")
    args = p.parse_args()
    if not os.path.isfile(args.original):
        p.error(f"--original {args.original}: no such file (see --help for where to get it)")
    if not os.environ.get("DISPLAY"):
        p.error("both trainers open a window: run under a display (xvfb-run -a on a headless machine)")
    if args.seconds <= 0 or args.rounds < 1 or args.actors < 1:
        p.error("--seconds must be > 0, --rounds and --actors >= 1")
    seconds, rounds = (5.0, 1) if args.smoke else (args.seconds, args.rounds)
    print(
        f"machine: {machine()}; 1-min load average {os.getloadavg()[0]:.2f} before starting"
        f"{'; smoke mode (figures are not meaningful)' if args.smoke else ''}\n"
        f"window and video on, learners training; {seconds:.0f} s measured per side and round, after "
        f"{WARMUP_S:.0f} s of warm-up, {rounds} interleaved round(s)",
        flush=True,
    )
    theirs, ours = [], []
    for r in range(rounds):
        theirs.append(original_rate(args.original, seconds))
        print(f"round {r + 1}: original {theirs[-1]:7.1f} NES frames/s", flush=True)
        rate, covered, run = our_rate(args.actors, seconds, args.smoke)
        ours.append(rate)
        s = run["summary"]
        print(
            f"round {r + 1}: ours     {rate:7.1f} NES frames/s over {covered:.0f} s of training ({args.actors} actor(s); "
            f"{s['env_steps']:,} env steps, {s['updates']:,} updates in "
            f"{run['wall']:.0f} s wall with start and stop)",
            flush=True,
        )
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(
        f"median: original {statistics.median(theirs):.1f} NES frames/s, ours {statistics.median(ours):.1f}: "
        f"{ratio:.1f}x (goal >= {GOAL:.0f}x: {'met' if ratio >= GOAL else 'missed'})"
    )


if __name__ == "__main__":
    main()

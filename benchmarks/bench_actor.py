"""Actor env steps/s on Super Mario Bros 1-1 against the emulator's limit, in one run:

- the bare emulator stepping with frame skip 4 (the limit);
- the real actor loop (wrappers, network inference, epsilon-greedy, chunks sent over ZeroMQ to a
  drained PULL socket) with window and video off, with video only, and with window and video
  (the window needs a display: run under `xvfb-run -a` on a headless machine);
- the window-and-video-off loop again at epsilon 1 and 0.05, and with the exact float32 forward instead
  of the int8 one that acting_precision=auto picks on CPUs where it is faster.
Each figure is compared with the emulator measured in the same round; the rounds are interleaved and
their medians printed.
Goals: actor loop >= 0.90 of the emulator at epsilon 0.5; video on >= 0.75 of both off.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import threading
import time
import warnings

import numpy as np
import torch
import zmq

from actor.acting_network import choose_precision
from actor.actor import Actor
from actor.display import display_available
from benchmarks.common import machine, parser
from common.addresses import bind_addresses
from common.config import Config
from actor.envs import _make_raw
from common.network import build_network
from common.runtime import RoleRuntime
from common.transport import Transport


def bare_emulator(config: Config, steps: int) -> float:
    env = _make_raw(config.env)
    rng = np.random.default_rng(0)
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        action = int(rng.integers(config.num_actions))
        for _ in range(config.frame_skip):
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
                break
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


class StopAtCap:
    """The actor's stop event: set once the actor has taken its steps."""

    actor: Actor | None = None

    def is_set(self) -> bool:
        return self.actor is not None and self.actor._cap_reached()


def actor_loop(config: Config, run_dir: str) -> float:
    """Steps/s of the real Actor.run loop, its chunks drained by a PULL socket in a thread."""
    transport = Transport(config.max_message_bytes)
    pull = transport.socket(zmq.PULL, bind=bind_addresses(config, "replay_in"))
    stop_draining = threading.Event()

    def drain():
        while not stop_draining.is_set():
            if pull.poll(50):
                pull.recv()

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    stop = StopAtCap()
    runtime = RoleRuntime("actor", 0, config, stop, os.getppid())
    actor = stop.actor = Actor(runtime, run_dir)
    start = time.perf_counter()
    actor.run()
    rate = actor.session_steps / (time.perf_counter() - start)
    actor.close()
    runtime.close()
    stop_draining.set()
    drainer.join()
    transport.close()
    return rate


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds; figures are per-round medians "
        "(a shared machine drifts: each round measures the limit next to the loops it is compared with)",
    )
    p.add_argument("--steps", type=int, default=1000, help="agent steps per measurement")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # as actor.main does
    rounds, steps = (1, 150) if args.smoke else (args.rounds, args.steps)
    base = Config(max_steps=steps, epsilon_start=0.5, epsilon_end=0.5, base_port=47_655, headless=True, video=False)
    modes = {"actor loop, window+video off": {}}
    video = importlib.util.find_spec("av") is not None
    if video:
        modes["actor loop, video on"] = dict(video=True)
    if video and display_available():
        modes["actor loop, window+video on"] = dict(headless=False, video=True)
    for eps in (1.0, 0.05):  # the two ends of an annealed run: no forward at all, a forward nearly every step
        modes[f"  the same at epsilon {eps:g}"] = dict(epsilon_start=eps, epsilon_end=eps)
    modes["  the same, float32 forward"] = dict(acting_precision="float32")
    print(
        f"machine: {machine()}; {rounds} interleaved round(s) of {steps} agent steps per figure, frame skip "
        f"{base.frame_skip}, epsilon 0.5 unless stated"
    )
    precision, why = choose_precision(build_network(base), base)
    print(f"acting precision (auto): {precision} ({why})")
    base = base.replace(acting_precision=precision)  # one choice for every round, not one per actor
    limits, rates = [], {name: [] for name in modes}
    with tempfile.TemporaryDirectory(dir="/tmp") as run_dir:
        for _ in range(rounds):
            limits.append(bare_emulator(base, steps))
            for name, changes in modes.items():
                rates[name].append(actor_loop(base.replace(**changes), run_dir))
    median = lambda values: float(np.median(values))  # noqa: E731
    limit = median(limits)
    print(f"bare emulator, frame skip 4:       {limit:7.1f} steps/s   (the limit)")
    for name, values in rates.items():
        ratios = [r / l for r, l in zip(values, limits)]
        print(
            f"{name + ':':34s} {median(values):7.1f} steps/s   {median(ratios):5.2f} of the limit"
            f"   (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    off = rates["actor loop, window+video off"]
    for name in [n for n in modes if "video on" in n]:
        print(
            f"{name}: {median([r / o for r, o in zip(rates[name], off)]):.2f} of the window+video-off rate "
            f"(goal >= 0.75)"
        )
    if not video:
        print("actor loops with video: skipped (PyAV is not installed)")
    elif "actor loop, window+video on" not in modes:
        print("actor loop, window+video on: skipped (no display; run under xvfb-run -a)")


if __name__ == "__main__":
    main()

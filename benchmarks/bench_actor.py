"""Actor env steps/s on Super Mario Bros 1-1 against the emulator's limit, in one run:

- the bare emulator stepping with frame skip 4 (the limit);
- the real actor loop (wrappers, network inference, epsilon-greedy, chunks sent over ZeroMQ to a
  drained PULL socket), window and video off, with 1, 2 and 4 envs per actor (`--envs`) at epsilon
  0.5 and 0.05;
- at the default envs_per_actor: with video only, with window and video (the window needs a
  display: run under `xvfb-run -a` on a headless machine), at epsilon 1 (no forward), and with the
  exact float32 forward instead of the int8 one that acting_precision=auto picks where it is faster.
Each figure is compared with the emulator measured just before it (a shared host's speed drifts within
seconds); the rounds are interleaved and their medians printed, with the cores the actor kept busy.
Goals: >= 0.95 of the emulator at epsilon 0.5 and 0.05 with the default envs_per_actor; window and
video on >= 0.90 of the emulator.
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


def encoder_ms(config: Config, frames: int, run_dir: str) -> dict[str, float]:
    """CPU ms per frame of each video writer the actor keeps, on real 1-1 frames (median of 3 passes): the run
    video (PRESET) and the best-run candidate every env records (CANDIDATE_PRESET)."""
    from actor.recorder import CANDIDATE_PRESET, PRESET, VideoWriter

    env, rng, shots = _make_raw(config.env), np.random.default_rng(0), []
    env.reset()
    while len(shots) < frames:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(config.num_actions)))
        shots.append(np.ascontiguousarray(env.render()))
        if terminated or truncated:
            env.reset()
    env.close()
    height, width = shots[0].shape[:2]
    costs = {}
    for name, preset in (("run video", PRESET), ("best-run candidate", CANDIDATE_PRESET)):
        passes = []
        for _ in range(3):
            writer = VideoWriter(os.path.join(run_dir, "encoder.mp4"), 15, width, height, preset)
            start = time.process_time()
            for shot in shots:
                writer.write(shot)
            writer.close()
            passes.append((time.process_time() - start) / len(shots) * 1e3)
        costs[f"{name} ({preset})"] = float(np.median(passes))
    return costs


def bare_emulator(config: Config, steps: int) -> float:
    """Steps/s of the raw emulator (one thread, so one core: the limit of an actor's env thread)."""
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


def actor_loop(config: Config, run_dir: str) -> tuple[float, float]:
    """Steps/s of the real Actor.run loop, its chunks drained by a PULL socket in a thread, and the cores
    its process kept busy meanwhile (CPU time of all its threads over wall time)."""
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
    start, cpu = time.perf_counter(), time.process_time()
    actor.run()
    wall = time.perf_counter() - start
    rate, cores = actor.session_steps / wall, (time.process_time() - cpu) / wall
    actor.close()
    runtime.close()
    stop_draining.set()
    drainer.join()
    transport.close()
    return rate, cores


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
    p.add_argument(
        "--envs",
        default="1,2,4",
        help="envs_per_actor values to measure the window+video-off loop with, at epsilon 0.5 and 0.05 "
        "(the other figures use the config's default)",
    )
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # as actor.main does
    rounds, steps = (1, 60) if args.smoke else (args.rounds, args.steps)
    envs = [int(k) for k in args.envs.split(",")] if not args.smoke else [1, 2]
    base = Config(max_steps=steps, epsilon_start=0.5, epsilon_end=0.5, base_port=47_655, headless=True, video=False)
    k = base.envs_per_actor
    modes = {}
    for n in envs:  # Goal: >= 0.95 of the limit at both epsilons
        for eps in (0.5, 0.05):
            modes[f"{n} env(s) per actor, epsilon {eps:g}"] = dict(envs_per_actor=n, epsilon_start=eps, epsilon_end=eps)
    modes["actor loop, window+video off"] = {}
    video = importlib.util.find_spec("av") is not None
    if video:
        modes["actor loop, video on"] = dict(video=True)
    if video and display_available():
        modes["actor loop, window+video on"] = dict(headless=False, video=True)
    modes["  the same at epsilon 1"] = dict(epsilon_start=1.0, epsilon_end=1.0)  # no forward at all
    modes["  the same, float32 forward"] = dict(acting_precision="float32")
    print(
        f"machine: {machine()}; {rounds} interleaved round(s) of {steps} agent steps per figure, frame skip "
        f"{base.frame_skip}; 'actor loop' figures: epsilon 0.5, {k} env(s) per actor (the default)"
    )
    precision, why = choose_precision(build_network(base), base)
    print(f"acting precision (auto): {precision} ({why})")
    base = base.replace(acting_precision=precision)  # one choice for every round, not one per actor
    limits, rates, cores = ({name: [] for name in modes} for _ in range(3))
    with tempfile.TemporaryDirectory(dir="/tmp") as run_dir:
        for _ in range(rounds):
            for name, changes in modes.items():
                limits[name].append(bare_emulator(base, steps))  # right before: the host drifts within a round
                rate, busy = actor_loop(base.replace(**changes), run_dir)
                rates[name].append(rate)
                cores[name].append(busy)
    median = lambda values: float(np.median(values))  # noqa: E731
    limit = median([rate for values in limits.values() for rate in values])
    print(f"{'bare emulator, frame skip 4:':40s} {limit:7.1f} steps/s   (the limit)")
    for name, values in rates.items():
        ratios = [r / l for r, l in zip(values, limits[name])]
        print(
            f"{name + ':':40s} {median(values):7.1f} steps/s   {median(ratios):5.2f} of the limit"
            f"   (rounds: {', '.join(f'{r:.2f}' for r in ratios)})   {median(cores[name]):.2f} cores busy"
        )
    off = rates["actor loop, window+video off"]
    for name in [n for n in modes if "video on" in n]:
        print(f"{name}: {median([r / o for r, o in zip(rates[name], off)]):.2f} of the window+video-off rate")
    if not video:
        print("actor loops with video: skipped (PyAV is not installed)")
        return
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        costs = encoder_ms(base, 100 if args.smoke else 600, folder)
    print("video encoding, CPU per 256x240 frame: " + "; ".join(f"{k} {v:.2f} ms" for k, v in costs.items()))
    if "actor loop, window+video on" not in modes:
        print("actor loop, window+video on: skipped (no display; run under xvfb-run -a)")


if __name__ == "__main__":
    main()

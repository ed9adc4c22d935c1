"""Learner updates/s on this machine's learner device (CPU here), at batch 32 and 256, in float32 and
with mixed precision (float16 with loss scaling on CUDA, bfloat16 elsewhere). With --compile, each row
also with compile_update (torch.compile; CUDA graphs on CUDA) next to the eager update."""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.common import machine, parser, rate
from common.config import Config
from learner.device import pick_device
from learner.learning import DQNLearner

GOAL = 1_000  # compiled updates/s at batch 32 on a CUDA GPU (issue 19: 295 eager on an H200)


def updates_per_s(
    batch_size: int, mixed: bool, compiled: bool, device: torch.device, seconds: float, min_iters: int = 3
) -> tuple:
    """(updates/s, the learner, seconds the first update took: compiling, with compile_update)."""
    if compiled:
        torch._dynamo.reset()  # each compiled learner compiles afresh, for its own batch size only
    config = Config(batch_size=batch_size, mixed_precision=mixed, compile_update=compiled)
    learner = DQNLearner(config, device, check_mixed_precision=False)  # time what is asked for, even if slower
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (batch_size, 8, 84, 84), dtype=np.uint8)  # obs and next obs stacks
    actions = rng.integers(0, 7, batch_size).astype(np.uint8)
    rewards = rng.standard_normal(batch_size).astype(np.float32)
    bootstraps = np.full(batch_size, 0.99**3, np.float32)
    weights = np.ones(batch_size, np.float32)

    def update():
        learner.step(frames, actions, rewards, bootstraps, weights)
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    for _ in range(3 if compiled else 0):  # compiling, and on CUDA the CUDA-graph warm-up and recording
        update()
    return rate(update, seconds, min_iters), learner, time.perf_counter() - start


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--compile", action="store_true", help="also time compile_update next to the eager update")
    args = p.parse_args()
    device = pick_device("auto")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"machine: {machine()}; learner device: {name}")
    seconds, min_iters = (0.5, 1) if args.smoke else (10.0, 3)
    compiled_32 = None
    shapes = ((32, False), (256, False), (32, True), (256, True))
    for batch_size, mixed in shapes[:3] if args.smoke else shapes:  # smoke: bfloat16 at 256 takes ~30 s here
        per_s, learner, _ = updates_per_s(batch_size, mixed, False, device, seconds, min_iters)
        precision = f"mixed {str(learner.autocast_dtype).split('.')[-1]}" if mixed else "float32"
        row = f"learner batch {batch_size:>3}, {precision:>14}: {per_s:8.1f} updates/s  {per_s * batch_size:10.0f} "
        if not args.compile:
            print(f"{row}samples/s (torch threads {torch.get_num_threads()})", flush=True)
            continue
        fast, learner, warm_up = updates_per_s(batch_size, mixed, True, device, seconds, min_iters)
        state = f"first 3 updates {warm_up:.1f} s" if learner.compiled else "compile failed: eager"
        print(f"{row}samples/s, compiled {fast:8.1f} updates/s ({fast / per_s:.2f}x; {state})", flush=True)
        if batch_size == 32 and not mixed and learner.compiled:
            compiled_32 = fast
    if args.compile:
        if device.type != "cuda":
            print(f"goal >= {GOAL:,} compiled updates/s at batch 32 on a CUDA GPU: not measured ({name})")
        else:
            verdict = "met" if compiled_32 is not None and compiled_32 >= GOAL else "missed"
            print(f"goal >= {GOAL:,} compiled updates/s at batch 32 on {name}: {verdict}")


if __name__ == "__main__":
    main()

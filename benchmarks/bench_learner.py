"""Learner updates/s on this machine's learner device (CPU here), at batch 32 and 256, in float32 and
with mixed precision (float16 with loss scaling on CUDA, bfloat16 elsewhere)."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import machine, parser, rate
from common.config import Config
from learner.device import pick_device
from learner.learning import DQNLearner


def main() -> None:
    args = parser(__doc__).parse_args()
    device = pick_device("auto")
    print(f"machine: {machine()}; learner device: {device}")
    rng = np.random.default_rng(0)
    for batch_size, mixed in ((32, False), (256, False), (32, True), (256, True)):
        learner = DQNLearner(Config(batch_size=batch_size, mixed_precision=mixed), device)
        frames = rng.integers(0, 255, (batch_size, 8, 84, 84), dtype=np.uint8)  # obs and next obs stacks
        actions = rng.integers(0, 7, batch_size).astype(np.uint8)
        rewards = rng.standard_normal(batch_size).astype(np.float32)
        bootstraps = np.full(batch_size, 0.99**3, np.float32)
        weights = np.ones(batch_size, np.float32)

        def update():
            learner.step(frames, actions, rewards, bootstraps, weights)
            if device.type == "cuda":
                torch.cuda.synchronize()

        per_s = rate(update, 0.5 if args.smoke else 10.0)
        precision = f"mixed {str(learner.autocast_dtype).split('.')[-1]}" if mixed else "float32"
        print(
            f"learner batch {batch_size:>3}, {precision:>14}: {per_s:8.1f} updates/s  {per_s * batch_size:10.0f} "
            f"samples/s (torch threads {torch.get_num_threads()})"
        )


if __name__ == "__main__":
    main()

"""Actor env steps/s on Super Mario Bros 1-1 (window and video off): the bare emulator with frame
skip 4 (the limit), the wrapper chain, and the wrapper chain plus network inference."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from benchmarks.common import machine, parser
from common.config import Config
from common.envs import _make_raw, make_env
from common.network import build_network


def steps_per_s(step, reset, steps: int) -> float:
    import time
    reset()
    start = time.perf_counter()
    for _ in range(steps):
        if step():
            reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    args = parser(__doc__).parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    steps = 200 if args.smoke else 3000
    config = Config()
    rng = np.random.default_rng(0)
    print(f"machine: {machine()}; {steps} agent steps each, frame skip {config.frame_skip}")

    raw = _make_raw(config.env_id)
    def raw_step():
        action = int(rng.integers(7))
        for _ in range(config.frame_skip):
            _, _, terminated, truncated, _ = raw.step(action)
            if terminated or truncated:
                return True
        return False
    print(f"bare emulator, frame skip 4:   {steps_per_s(raw_step, raw.reset, steps):7.1f} steps/s")
    raw.close()

    env = make_env(config)
    net = build_network(config).eval()
    state = {"obs": None}
    def reset():
        state["obs"], _ = env.reset()
    def wrapped_step(infer: bool):
        action = int(rng.integers(7))
        if infer:
            with torch.inference_mode():
                action = int(net(torch.from_numpy(state["obs"]).unsqueeze(0)).argmax(dim=1).item())
        state["obs"], _, terminated, truncated, _ = env.step(action)
        return terminated or truncated
    print(f"wrappers (gray 84x84, stack):  {steps_per_s(lambda: wrapped_step(False), reset, steps):7.1f} steps/s")
    print(f"wrappers + greedy inference:   {steps_per_s(lambda: wrapped_step(True), reset, steps):7.1f} steps/s")
    env.close()


if __name__ == "__main__":
    main()

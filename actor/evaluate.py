"""Greedy evaluation: play whole episodes with a checkpoint's network, no exploration.

Used by the tests to check that learning happened, and the base of the play mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.checkpoint import load_checkpoint
from common.config import Config
from common.envs import make_env
from common.network import build_network


@dataclass
class EpisodeResult:
    reward: float
    x_pos: int
    flag: bool
    steps: int


def load_policy(path: str, config: Config | None = None) -> tuple[torch.nn.Module, Config]:
    """The online network from a checkpoint (weights_only load) and the config it was trained with."""
    state = load_checkpoint(path)
    config = config or Config.from_dict(state["config"])
    net = build_network(config)
    net.load_state_dict(state["online"])
    return net.eval(), config


def play(net: torch.nn.Module, config: Config, episodes: int, epsilon: float = 0.0,
         seed: int = 0) -> list[EpisodeResult]:
    """Play `episodes` episodes; epsilon 0 is fully greedy, 1 is a uniformly random policy."""
    env = make_env(config)
    rng = np.random.default_rng(seed)
    results = []
    try:
        for _ in range(episodes):
            obs, info = env.reset()
            total, steps, done = 0.0, 0, False
            while not done:
                if rng.random() < epsilon:
                    action = int(rng.integers(config.num_actions))
                else:
                    with torch.inference_mode():
                        action = int(net(torch.from_numpy(obs).unsqueeze(0)).argmax(dim=1).item())
                obs, reward, terminated, truncated, info = env.step(action)
                total += reward
                steps += 1
                done = terminated or truncated
            results.append(EpisodeResult(total, int(info.get("x_pos", 0)), bool(info.get("flag_get", False)), steps))
    finally:
        env.close()
    return results

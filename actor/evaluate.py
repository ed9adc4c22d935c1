"""Greedy evaluation: play whole episodes with a checkpoint's network, no exploration.

Used by the tests to check that learning happened, and the base of the play mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from common.checkpoint import CheckpointError, load_checkpoint
from common.config import Config
from actor.envs import evaluation_limits, find_wrapper, make_env
from common.network import build_network, greedy_action
from actor.wrappers import FrameSkip, episode_end


@dataclass
class EpisodeResult:
    reward: float
    x_pos: int
    flag: bool
    steps: int
    last_action: int = 0
    """The episode's last action: a greedy Mario stopped by eval_stall_steps is usually holding one
    action against an obstacle."""
    last_action_repeats: int = 0
    """For how many of the episode's last steps last_action was taken in a row."""
    end: int = 0
    """How it ended, an index into common.records.EPISODE_ENDS."""


def load_policy(path: str, config: Config | None = None) -> tuple[torch.nn.Module, Config]:
    """The online network from a checkpoint (weights_only load) and the config it was trained with."""
    state = load_checkpoint(path)
    try:
        config = config or Config.from_dict(state["config"])
        net = build_network(config)
        net.load_state_dict(state["online"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: its network does not fit its config ({first})") from None
    return net.eval(), config


def play(
    net: torch.nn.Module,
    config: Config,
    episodes: int,
    epsilon: float = 0.0,
    seed: int = 0,
    on_frame: Callable[[np.ndarray], None] | None = None,
    on_episode: Callable[[int, EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """Play `episodes` episodes; epsilon 0 is fully greedy, 1 is a uniformly random policy.
    on_frame gets every RGB frame shown (for a window or a video), on_episode each result."""
    env = make_env(config)
    frame_skip = find_wrapper(env, FrameSkip)
    rng = np.random.default_rng(seed)
    results = []
    try:
        with evaluation_limits(env, config):
            for episode in range(1, episodes + 1):
                obs, info = env.reset()
                if on_frame:
                    on_frame(frame_skip.last_rgb)
                total, steps, done, terminated, last, repeats = 0.0, 0, False, False, -1, 0
                while not done:
                    explore = rng.random() < epsilon
                    action = int(rng.integers(config.num_actions)) if explore else greedy_action(net, obs)
                    repeats = repeats + 1 if action == last else 1
                    last = action
                    obs, reward, terminated, truncated, info = env.step(action)
                    if on_frame:
                        on_frame(frame_skip.last_rgb)
                    total += reward
                    steps += 1
                    done = terminated or truncated
                x_pos, flag = int(info.get("x_pos", 0)), bool(info.get("flag_get", False))
                result = EpisodeResult(total, x_pos, flag, steps, last, repeats, episode_end(terminated, info))
                results.append(result)
                if on_episode:
                    on_episode(episode, result)
    finally:
        env.close()
    return results

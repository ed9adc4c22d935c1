"""Greedy evaluation: play whole episodes with a network, no exploration (or a little).

The one episode loop of every evaluation: the actor's and the serial launcher's evaluations, the play mode,
the tests that check that learning happened and the learning benchmark's comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from common.checkpoint import CheckpointError, load_checkpoint
from common.config import Config
from common.records import EvalResult
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

    def as_eval(self, actor: int, actor_steps: int) -> EvalResult:
        """The record an evaluation reports (log.txt, TensorBoard, best_eval.pth)."""
        return EvalResult(
            actor=actor,
            reward=float(self.reward),
            steps=self.steps,
            x_pos=self.x_pos,
            flag=self.flag,
            actor_steps=actor_steps,
            end=self.end,
        )


def epsilon_greedy(
    net: torch.nn.Module, epsilon: float, rng: np.random.Generator, num_actions: int
) -> Callable[[np.ndarray], int]:
    """net's greedy action, or a uniformly random one with probability epsilon (0: fully greedy)."""

    def choose(obs: np.ndarray) -> int:
        if rng.random() < epsilon:
            return int(rng.integers(num_actions))
        return greedy_action(net, obs)

    return choose


def play_episode(
    env,
    choose: Callable[[np.ndarray], int],
    on_frame: Callable[[np.ndarray], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpisodeResult | None:
    """One episode of env (from its reset) with choose(obs)'s actions; on_frame gets every RGB frame shown
    (a window, a video). None if should_stop() said so midway."""
    frame_skip = find_wrapper(env, FrameSkip)
    obs, info = env.reset()
    if on_frame:
        on_frame(frame_skip.last_rgb)
    total, steps, done, terminated, last, repeats = 0.0, 0, False, False, -1, 0
    while not done:
        if should_stop and should_stop():
            return None
        action = choose(obs)
        repeats = repeats + 1 if action == last else 1
        last = action
        obs, reward, terminated, truncated, info = env.step(action)
        if on_frame:
            on_frame(frame_skip.last_rgb)
        total += reward
        steps += 1
        done = terminated or truncated
    x_pos, flag = int(info.get("x_pos", 0)), bool(info.get("flag_get", False))
    return EpisodeResult(total, x_pos, flag, steps, last, repeats, episode_end(terminated, info))


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
    choose = epsilon_greedy(net, epsilon, np.random.default_rng(seed), config.num_actions)
    results = []
    try:
        with evaluation_limits(env, config):
            for episode in range(1, episodes + 1):
                result = play_episode(env, choose, on_frame)
                results.append(result)
                if on_episode:
                    on_episode(episode, result)
    finally:
        env.close()
    return results

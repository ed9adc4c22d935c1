"""The env factory: Super Mario Bros (or the built-in test env) with the standard wrapper chain.

Actor-side only: importing this pulls in gym, nes-py and cv2.
"""
from __future__ import annotations

import warnings

from common.config import TEST_ENV_ID, Config
from common.quiet_gym import gym
from common.wrappers import FrameSkip, FrameStack, GrayResize, ShapedReward, TimeLimit


class EnvError(ValueError):
    """The env id cannot be made; one-line message."""


def make_env(config: Config) -> gym.Env:
    """Raw env -> SIMPLE_MOVEMENT -> frame skip -> time limit -> shaped reward -> gray 84x84 -> stack."""
    env = _make_raw(config.env_id)
    env = FrameSkip(env, config.frame_skip)
    env = TimeLimit(env, config.max_episode_steps)
    env = ShapedReward(env, config.reward_scheme, config.single_life)
    env = GrayResize(env, config.frame_size)
    return FrameStack(env, config.frame_stack)


def find_wrapper(env: gym.Env, kind: type):
    """The first wrapper of this type in the chain (e.g. FrameSkip, for the last RGB frame)."""
    while env is not None:
        if isinstance(env, kind):
            return env
        env = getattr(env, "env", None)
    raise LookupError(kind.__name__)


def _make_raw(env_id: str) -> gym.Env:
    if env_id == TEST_ENV_ID:
        from common.test_env import CorridorEnv
        return CorridorEnv()
    import gym_super_mario_bros
    from gym_super_mario_bros.actions import SIMPLE_MOVEMENT
    from nes_py.wrappers import JoypadSpace
    if env_id not in gym.envs.registry:
        raise EnvError(f"unknown env id {env_id!r}: use a gym-super-mario-bros id such as "
                       f"SuperMarioBros-1-1-v0, or {TEST_ENV_ID}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # gym's deprecation chatter about old env versions
        env = gym_super_mario_bros.make(env_id, apply_api_compatibility=True, render_mode="rgb_array")
    return JoypadSpace(env, SIMPLE_MOVEMENT)


def is_known_env(env_id: str) -> bool:
    """Cheap check for the launcher: the test env, or an id gym-super-mario-bros registers."""
    if env_id == TEST_ENV_ID:
        return True
    import gym_super_mario_bros  # noqa: F401  (registers the ids)
    return env_id.startswith("SuperMarioBros") and env_id in gym.envs.registry

"""The env factory: Super Mario Bros (or the built-in test env) with the standard wrapper chain.

Actor-side only: importing this pulls in gym, nes-py and cv2.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from common.config import TEST_ENV_ID, Config
from actor.quiet_gym import gym
from actor.wrappers import FrameSkip, FrameStack, GrayResize, JumpRepress, ShapedReward, ShowAButton, TimeLimit


class EnvError(ValueError):
    """The env id cannot be made; one-line message."""


def make_env(config: Config, seed: int = 0) -> gym.Env:
    """Raw env -> (jump repress) -> joypad action set -> frame skip -> time limit -> shaped reward -> gray 84x84
    -> (A button shown) -> stack.

    A comma-separated env ("SuperMarioBros-1-1-v0,SuperMarioBros-1-2-v0") plays a uniformly
    sampled level each episode (seeded by `seed`), or with curriculum=true the levels in order."""
    ids = level_ids(config.env)
    env = (
        _make_raw(ids[0], config.action_set, config.jump_repress)
        if len(ids) == 1
        else LevelSampler(
            [_make_raw(i, config.action_set, config.jump_repress) for i in ids], seed, ids, curriculum=config.curriculum
        )
    )
    env = FrameSkip(env, config.frame_skip)
    env = TimeLimit(env, config.max_episode_steps, config.stall_steps, config.stall_terminal)
    env = ShapedReward(env, config.reward_scheme, config.single_life)
    env = GrayResize(env, config.frame_size)
    if config.show_a_button:
        env = ShowAButton(env, ["A" in buttons for buttons in joypad_actions(config.action_set)])
    return FrameStack(env, config.frame_stack)


@contextlib.contextmanager
def evaluation_limits(env: gym.Env, config: Config):
    """Within the block, episodes of `env` end after config.eval_stall_steps steps without progress (when set),
    as a truncation: an evaluation is not trained on, and its reward should not carry a stall's death penalty."""
    limit = find_wrapper(env, TimeLimit)
    training = limit.stall_steps, limit.stall_terminal
    limit.stall_steps, limit.stall_terminal = config.eval_stall_steps or training[0], False
    try:
        yield
    finally:
        limit.stall_steps, limit.stall_terminal = training


def find_wrapper(env: gym.Env, kind: type):
    """The first wrapper of this type in the chain (e.g. FrameSkip, for the last RGB frame)."""
    while env is not None:
        if isinstance(env, kind):
            return env
        env = getattr(env, "env", None)
    raise LookupError(kind.__name__)


def _make_raw(env_id: str, action_set: str = "simple", jump_repress: bool = False) -> gym.Env:
    if env_id == TEST_ENV_ID:
        from actor.toy_level import CorridorEnv

        return CorridorEnv()
    import gym_super_mario_bros
    from nes_py.wrappers import JoypadSpace

    if env_id not in gym.envs.registry:
        raise EnvError(
            f"unknown env id {env_id!r}: use a gym-super-mario-bros id such as SuperMarioBros-1-1-v0, or {TEST_ENV_ID}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gym's deprecation chatter about old env versions
        env = gym_super_mario_bros.make(env_id, apply_api_compatibility=True, render_mode="rgb_array")
    return JoypadSpace(JumpRepress(env) if jump_repress else env, joypad_actions(action_set))


def joypad_actions(action_set: str) -> list[list[str]]:
    """The buttons of each action of a gym-super-mario-bros action set (the test env plays `simple`'s)."""
    from gym_super_mario_bros import actions

    return {"simple": actions.SIMPLE_MOVEMENT, "right_only": actions.RIGHT_ONLY, "complex": actions.COMPLEX_MOVEMENT}[
        action_set
    ]


def refused_settings(config: Config) -> str | None:
    """Why the env cannot play with these settings (one line), or None: the test env has only the simple
    action set and no NES RAM for jump_repress."""
    if TEST_ENV_ID in level_ids(config.env):
        if config.action_set != "simple":
            return f"{TEST_ENV_ID} has the simple action set only, got action_set={config.action_set}"
        if config.jump_repress:
            return f"jump_repress works on the NES emulator's RAM: {TEST_ENV_ID} has none"
    return None


def level_ids(env_id: str) -> list[str]:
    return [part.strip() for part in env_id.split(",") if part.strip()]


def unknown_env_ids(env_id: str) -> list[str]:
    """Cheap check for the launcher: the ids in env_id that are neither the test env nor registered
    by gym-super-mario-bros (all of them when env_id is empty)."""
    import gym_super_mario_bros  # noqa: F401  (registers the ids)

    ids = level_ids(env_id)
    bad = [i for i in ids if i != TEST_ENV_ID and not (i.startswith("SuperMarioBros") and i in gym.envs.registry)]
    return bad if ids else [env_id]


class LevelSampler(gym.Env):
    """Several levels behind one env; steps go to the current one. Each reset picks a level uniformly,
    or, as a curriculum, stays on the current level until `advance()` moves on to the next."""

    def __init__(self, levels: list[gym.Env], seed: int, names: list[str] | None = None, curriculum: bool = False):
        self.levels = levels
        self.names = names or [str(i) for i in range(len(levels))]
        self.curriculum = curriculum
        self.index = 0
        self.current = levels[0]
        self.observation_space = levels[0].observation_space
        self.action_space = levels[0].action_space
        self._rng = np.random.default_rng(seed)

    @property
    def level(self) -> str:
        return self.names[self.index]

    def advance(self) -> bool:
        """Curriculum: the next level from the next reset on; False when already on the last."""
        if self.index + 1 >= len(self.levels):
            return False
        self.index += 1
        return True

    def reset(self, **kwargs):
        if not self.curriculum:
            self.index = int(self._rng.integers(len(self.levels)))
        self.current = self.levels[self.index]
        return self.current.reset(**kwargs)

    def step(self, action):
        return self.current.step(action)

    def close(self):
        for level in self.levels:
            level.close()

"""Reward shaping, the wrappers (on small scripted fake envs) and the env factory with the test env."""

import numpy as np
import pytest

from common.config import Config
from common.records import EPISODE_ENDS
from actor.envs import find_wrapper, make_env
from actor.quiet_gym import gym
from actor.wrappers import (
    FrameSkip,
    FrameStack,
    GrayResize,
    JumpRepress,
    ShapedReward,
    ShowAButton,
    TimeLimit,
    episode_end,
    shape_reward,
)

TEST_ENV = "MarioApexTest-v0"


class ScriptedEnv(gym.Env):
    """A deterministic fake env: reset returns (reset_obs, reset_info); step i returns script[i].

    Records every action it receives; stepping past the script is an error.
    """

    def __init__(self, script, reset_obs, reset_info=None):
        self.script = list(script)
        self.reset_obs = reset_obs
        self.reset_info = reset_info or {}
        self.observation_space = gym.spaces.Box(0, 255, reset_obs.shape, np.uint8)
        self.action_space = gym.spaces.Discrete(7)
        self.actions: list[int] = []
        self.resets = 0
        self.i = 0

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        return self.reset_obs, dict(self.reset_info)

    def step(self, action):
        self.actions.append(action)
        obs, reward, terminated, truncated, info = self.script[self.i]
        self.i += 1
        return obs, reward, terminated, truncated, dict(info)


def rgb(k: int) -> np.ndarray:
    """A small RGB frame filled with k, so frames are told apart by value."""
    return np.full((6, 8, 3), k, np.uint8)


def plain_steps(n: int, terminate_at: int | None = None, truncate_at: int | None = None):
    """Script of n steps: obs k, reward k, info {"k": k} for k = 1..n."""
    return [(rgb(k), float(k), k == terminate_at, k == truncate_at, {"k": k}) for k in range(1, n + 1)]


# --- shape_reward ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_reward,x,prev,terminated,flag,expected",
    [
        (0.0, 11, 10, False, False, 0.1),  # +1 progress
        (0.0, 9, 10, False, False, -0.1),  # -1 regress
        (0.0, 10, 10, False, False, 0.0),  # standing
        (3.0, 13, 10, False, False, 0.4),  # env reward + progress
        (-3.0, 7, 10, False, False, -0.4),  # env reward + regress
        (2.5, 10, 10, False, False, 0.25),
        (45.0, 10, 10, True, False, -0.5),  # death: -50 (45 - 50 = -5)
        (40.0, 11, 10, True, False, -0.9),  # death with progress: 40 + 1 - 50
        (0.0, 10, 10, True, False, -1.0),  # death alone: -5, clipped
        (-11.0, 16, 12, True, False, -1.0),  # the test env's goomba death, clipped
        (-995.0, 10, 10, True, True, 0.5),  # flag: +1000 and no death penalty
        (-1005.0, 11, 10, True, True, -0.4),  # flag with progress: -1005 + 1 + 1000
        (4.0, 60, 56, True, True, 1.0),  # the test env's flag step, clipped
        (0.0, 60, 60, False, True, 1.0),  # flag counts even without terminated
        (9.0, 20, 10, False, False, 1.0),  # exactly 1 after scaling
        (15.0, 30, 10, False, False, 1.0),  # 1.6 clipped to 1
        (-10.0, 20, 10, False, False, -0.9),
        (-12.0, 5, 10, False, False, -1.0),  # -1.3 clipped to -1
    ],
)
def test_shape_reward_table(env_reward, x, prev, terminated, flag, expected):
    """(env reward + progress +-1 + death -50 / flag +1000) / 10, clipped to [-1, 1]."""
    value = shape_reward(env_reward, x, prev, terminated, flag)
    assert type(value) is float
    assert value == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "env_reward,x,prev,terminated,flag,expected",
    [
        (-995.0, 10, 10, True, True, 100.0 - 1.0),  # flag: the -995 is clipped to -1, then +100
        (4.0, 60, 56, True, True, 100.5),  # the test env's flag step: (4 + 1) / 10 + 100
        (0.0, 60, 60, False, True, 100.0),  # flag counts even without terminated, no death penalty
        (45.0, 10, 10, True, False, -0.5),  # everything but the flag is as in the original
        (15.0, 30, 10, False, False, 1.0),
        (0.0, 10, 10, True, False, -1.0),
    ],
)
def test_flag_unclipped_adds_the_flag_bonus_after_the_clip(env_reward, x, prev, terminated, flag, expected):
    """flag_unclipped: the flag's +1000 / 10 bypasses the clip, so finishing is worth 100 rather than 1."""
    assert shape_reward(env_reward, x, prev, terminated, flag, clip_flag=False) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("scheme,flag_reward", [("original", 1.0), ("flag_unclipped", 100.5)])
def test_the_reward_scheme_reaches_the_shaping(scheme, flag_reward):
    """make_env hands config.reward_scheme to ShapedReward, and ShapedReward shapes the flag step by it."""
    env = make_env(Config(env=TEST_ENV, reward_scheme=scheme), seed=0)
    assert find_wrapper(env, ShapedReward).scheme == scheme
    env.close()
    flag_step = (rgb(1), 4.0, True, False, {"x_pos": 60, "flag_get": True})
    env = ShapedReward(ScriptedEnv([flag_step], rgb(0), {"x_pos": 56}), scheme)
    env.reset()
    assert env.step(0)[1] == pytest.approx(flag_reward)


# --- FrameSkip ---------------------------------------------------------------------------------------


def test_frame_skip_repeats_action_and_sums_rewards():
    """One agent step = `skip` env steps with the same action; rewards summed; last obs, info and frame kept."""
    env = FrameSkip(ScriptedEnv(plain_steps(8), rgb(0)), skip=4)
    obs, _ = env.reset()
    assert env.last_rgb is obs
    obs, reward, terminated, truncated, info = env.step(5)
    assert env.env.actions == [5, 5, 5, 5]
    assert reward == 1 + 2 + 3 + 4
    assert (terminated, truncated) == (False, False)
    assert np.array_equal(obs, rgb(4)) and info == {"k": 4}
    assert env.last_rgb is obs
    obs, reward, *_ = env.step(2)
    assert env.env.actions == [5] * 4 + [2] * 4 and reward == 5 + 6 + 7 + 8
    assert np.array_equal(env.last_rgb, rgb(8))


@pytest.mark.parametrize("kind", ["terminate_at", "truncate_at"])
def test_frame_skip_stops_early_when_the_episode_ends(kind):
    """On terminated (or truncated) mid-skip the remaining repeats are not played."""
    env = FrameSkip(ScriptedEnv(plain_steps(8, **{kind: 2}), rgb(0)), skip=4)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(1)
    assert env.env.actions == [1, 1]
    assert reward == 1 + 2
    assert (terminated, truncated) == ((True, False) if kind == "terminate_at" else (False, True))
    assert info == {"k": 2} and np.array_equal(env.last_rgb, rgb(2))


def test_frame_skip_of_one_is_the_plain_env():
    env = FrameSkip(ScriptedEnv(plain_steps(3), rgb(0)), skip=1)
    env.reset()
    assert [env.step(0)[1] for _ in range(3)] == [1.0, 2.0, 3.0]


# --- ShapedReward ------------------------------------------------------------------------------------


def test_shaped_reward_uses_x_pos_deltas_from_info():
    """The first delta is from reset's x_pos (not 0); a step without x_pos counts as standing still."""
    script = [
        (rgb(1), 0.0, False, False, {"x_pos": 40}),  # standing at reset position
        (rgb(2), 1.0, False, False, {"x_pos": 41}),  # (1 + 1) / 10
        (rgb(3), 0.0, False, False, {}),  # x_pos missing: no move
        (rgb(4), -2.0, False, False, {"x_pos": 39}),  # (-2 - 1) / 10
        (rgb(5), 45.0, True, False, {"x_pos": 40, "flag_get": False}),  # death: (45 + 1 - 50) / 10
    ]
    env = ShapedReward(ScriptedEnv(script, rgb(0), {"x_pos": 40}))
    env.reset()
    rewards = [env.step(0)[1] for _ in script]
    assert rewards == pytest.approx([0.0, 0.2, 0.0, -0.3, -0.4], abs=1e-12)


def test_shaped_reward_flag_and_passthrough():
    """The flag step gets +1000 (clipped to 1); obs, flags and info pass through unchanged."""
    script = [(rgb(1), -995.0, True, False, {"x_pos": 10, "flag_get": True, "extra": "kept"})]
    env = ShapedReward(ScriptedEnv(script, rgb(0), {"x_pos": 10}))
    env.reset()
    obs, reward, terminated, truncated, info = env.step(3)
    assert reward == pytest.approx(0.5)
    assert np.array_equal(obs, rgb(1)) and (terminated, truncated) == (True, False)
    assert info == {"x_pos": 10, "flag_get": True, "extra": "kept"}


def test_shaped_reward_truncation_is_not_death():
    """Truncation (time limit) does not get the -50 death penalty."""
    script = [(rgb(1), 0.0, False, True, {"x_pos": 5})]
    env = ShapedReward(ScriptedEnv(script, rgb(0), {"x_pos": 5}))
    env.reset()
    assert env.step(0)[1] == 0.0


def test_shaped_reward_reset_rereads_x_pos():
    """After reset the previous x_pos is the new episode's start, not the last episode's end."""
    script = [(rgb(1), 0.0, False, False, {"x_pos": 100}), (rgb(2), 0.0, False, False, {"x_pos": 3})]
    inner = ScriptedEnv(script, rgb(0), {"x_pos": 0})
    env = ShapedReward(inner)
    env.reset()
    assert env.step(0)[1] == pytest.approx(0.1)
    inner.reset_info = {"x_pos": 3}
    env.reset()
    assert env.step(0)[1] == 0.0, "x 3 -> 3 after reset is standing, not a regress from 100"


# --- GrayResize --------------------------------------------------------------------------------------


def luma(r: int, g: int, b: int) -> int:
    """ITU-R BT.601 luma, as OpenCV's RGB2GRAY computes it."""
    return int(round(0.299 * r + 0.587 * g + 0.114 * b))


@pytest.mark.parametrize(
    "colour",
    [(255, 0, 0), (0, 255, 0), (0, 0, 255), (92, 148, 252), (200, 76, 12), (0, 0, 0), (255, 255, 255), (128, 128, 128)],
)
def test_gray_resize_uniform_colour(colour):
    """A uniform RGB frame becomes a uniform (84, 84) uint8 frame of its luma; red and blue are not swapped."""
    frame = np.full((240, 256, 3), colour, np.uint8)
    env = GrayResize(ScriptedEnv([(frame, 0.0, False, False, {})], frame), 84)
    assert env.observation_space.shape == (84, 84) and env.observation_space.dtype == np.uint8
    for obs in (env.reset()[0], env.step(0)[0]):
        assert obs.shape == (84, 84) and obs.dtype == np.uint8
        assert np.all(obs == luma(*colour)), (obs.min(), obs.max(), luma(*colour))


@pytest.mark.parametrize("axis", [0, 1])
def test_gray_resize_keeps_orientation(axis):
    """A frame white in its first half (top, or left) and black in the other stays so after resizing."""
    frame = np.zeros((240, 256, 3), np.uint8)
    if axis == 0:
        frame[:120] = 255
    else:
        frame[:, :128] = 255
    obs = GrayResize(ScriptedEnv([], frame), 84).reset()[0]
    first, second = (obs[:42], obs[42:]) if axis == 0 else (obs[:, :42], obs[:, 42:])
    assert np.all(first == 255) and np.all(second == 0)


def test_gray_resize_other_size():
    frame = np.full((240, 256, 3), 7, np.uint8)
    assert GrayResize(ScriptedEnv([], frame), 42).reset()[0].shape == (42, 42)


# --- FrameStack --------------------------------------------------------------------------------------


def gray(k: int) -> np.ndarray:
    return np.full((84, 84), k, np.uint8)


def stack_ids(stack: np.ndarray) -> list[int]:
    return [int(f[0, 0]) for f in stack]


def test_frame_stack_repeats_first_frame_and_shifts():
    """Reset gives k copies of the first frame; each step drops the oldest and appends the newest."""
    script = [(gray(k), float(k), k == 6, False, {"k": k}) for k in range(1, 7)]
    env = FrameStack(ScriptedEnv(script, gray(0)), 4)
    assert env.observation_space.shape == (4, 84, 84)
    obs, info = env.reset()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert stack_ids(obs) == [0, 0, 0, 0]
    expected = [[0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]]
    for k, want in enumerate(expected, start=1):
        obs, reward, terminated, truncated, info = env.step(0)
        assert stack_ids(obs) == want
        assert (reward, terminated, info) == (float(k), k == 6, {"k": k})


def test_frame_stack_reset_forgets_the_last_episode():
    script = [(gray(k), 0.0, False, False, {}) for k in range(1, 4)]
    inner = ScriptedEnv(script, gray(0))
    env = FrameStack(inner, 3)
    env.reset()
    env.step(0)
    env.step(0)
    inner.reset_obs = gray(9)
    assert stack_ids(env.reset()[0]) == [9, 9, 9]
    assert stack_ids(env.step(0)[0]) == [9, 9, 3]


def test_frame_stack_returns_independent_arrays():
    """An observation already returned is not changed by later steps (the actor keeps references)."""
    script = [(gray(k), 0.0, False, False, {}) for k in range(1, 4)]
    env = FrameStack(ScriptedEnv(script, gray(0)), 2)
    first = env.reset()[0]
    second = env.step(0)[0]
    env.step(0)
    assert stack_ids(first) == [0, 0] and stack_ids(second) == [0, 1]


# --- TimeLimit ---------------------------------------------------------------------------------------


def test_time_limit_truncates_after_max_steps():
    """Steps 1..max-1 are untouched; step max is truncated=True, terminated=False."""
    env = TimeLimit(ScriptedEnv(plain_steps(10), rgb(0)), max_steps=3)
    env.reset()
    flags = [env.step(0)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_time_limit_prefers_termination_on_the_last_step():
    """A real termination on the last allowed step stays a termination (no truncation flag)."""
    env = TimeLimit(ScriptedEnv(plain_steps(10, terminate_at=2), rgb(0)), max_steps=2)
    env.reset()
    env.step(0)
    assert env.step(0)[2:4] == (True, False)


def test_time_limit_counter_restarts_on_reset():
    inner = ScriptedEnv(plain_steps(10), rgb(0))
    env = TimeLimit(inner, max_steps=2)
    env.reset()
    env.step(0)
    env.reset()
    assert env.step(0)[3] is False
    assert env.step(0)[3] is True


def test_time_limit_passes_inner_truncation_through():
    env = TimeLimit(ScriptedEnv(plain_steps(10, truncate_at=1), rgb(0)), max_steps=5)
    env.reset()
    assert env.step(0)[2:4] == (False, True)


# --- make_env with the built-in test env --------------------------------------------------------------


def test_make_env_test_env_observations():
    """The factory chain on MarioApexTest-v0 gives (4, 84, 84) uint8 stacks and keeps the last RGB frame."""
    env = make_env(Config(env=TEST_ENV))
    assert env.observation_space.shape == (4, 84, 84)
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert all(np.array_equal(obs[0], f) for f in obs), "reset repeats the first frame"
    assert info["x_pos"] == 0
    skip = find_wrapper(env, FrameSkip)
    assert skip.skip == 4 and skip.last_rgb.shape == (240, 256, 3)
    obs2, *_ = env.step(1)
    assert obs2.shape == (4, 84, 84) and obs2.dtype == np.uint8
    assert np.array_equal(obs2[:3], obs[1:]) and not np.array_equal(obs2[3], obs[3]), "Mario moved"


def test_find_wrapper_missing_kind():
    with pytest.raises(LookupError):
        find_wrapper(make_env(Config(env=TEST_ENV)), gym.wrappers.RecordEpisodeStatistics)


@pytest.mark.parametrize(
    "action,rewards,info",
    [
        (2, [0.5] * 14 + [1.0], {"x_pos": 60, "flag_get": True}),  # jump right: flag after 15 agent steps
        (1, [0.5, 0.5, 0.5, -1.0], {"x_pos": 16, "flag_get": False}),  # walk right: goomba on the 4th step
    ],
)
def test_make_env_episode_rewards(action, rewards, info):
    """With frame skip 4 one agent step is one cell; shaped rewards are exactly the documented values."""
    env = make_env(Config(env=TEST_ENV))
    env.reset()
    got, terminated = [], False
    while not terminated:
        _, reward, terminated, truncated, last = env.step(action)
        got.append(reward)
        assert not truncated
    assert got == pytest.approx(rewards, abs=1e-12)
    assert {k: last[k] for k in info} == info


def test_make_env_time_limit_and_frame_skip_from_config():
    """max_episode_steps truncates; frame_skip=1 moves Mario one x unit per agent step."""
    env = make_env(Config(env=TEST_ENV, max_episode_steps=3, frame_skip=1, frame_stack=2, frame_size=42))
    obs, _ = env.reset()
    assert obs.shape == (2, 42, 42)
    out = [env.step(1) for _ in range(3)]
    assert [o[4]["x_pos"] for o in out] == [1, 2, 3]
    assert [(o[2], o[3]) for o in out] == [(False, False), (False, False), (False, True)]
    assert [o[1] for o in out] == pytest.approx([0.2, 0.2, 0.2])


# --- the later reward scheme and single-life episodes -------------------------------------------


@pytest.mark.parametrize(
    "x, prev, life_lost, flag, expected",
    [
        (110, 100, False, False, 0.1),  # +0.1 per x gained: 1.0 / 10
        (100, 110, False, False, -0.1),
        (100, 100, True, False, -1.0),  # -50 per life lost, clipped
        (100, 100, False, True, 1.0),  # +2000 flag, clipped
        (105, 100, False, False, 0.05),
    ],
)
def test_progress_scheme(x, prev, life_lost, flag, expected):
    from actor.wrappers import shape_progress_reward

    assert shape_progress_reward(x, prev, life_lost, flag) == pytest.approx(expected)


class _Lives(gym.Env):
    """Scripted infos: x_pos +8 per step, a life lost at step 3."""

    observation_space = gym.spaces.Box(0, 255, (2, 2, 3), np.uint8)
    action_space = gym.spaces.Discrete(7)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros((2, 2, 3), np.uint8), {"x_pos": 0, "life": 2, "flag_get": False}

    def step(self, action):
        self.t += 1
        info = {"x_pos": 8 * self.t, "life": 1 if self.t >= 3 else 2, "flag_get": False}
        return np.zeros((2, 2, 3), np.uint8), 0.0, False, False, info


@pytest.mark.parametrize("single_life, terminated_at", [(True, 3), (False, None)])
def test_single_life_ends_the_episode_on_a_lost_life(single_life, terminated_at):
    from actor.wrappers import ShapedReward

    env = ShapedReward(_Lives(), "progress", single_life)
    env.reset()
    ends = []
    for t in range(1, 6):
        _, reward, terminated, _, _ = env.step(0)
        if t == 3:
            assert reward == pytest.approx(np.clip((0.8 - 50) / 10, -1, 1)), "a lost life costs 50"
        else:
            assert reward == pytest.approx(0.08)
        if terminated:
            ends.append(t)
            break
    assert (ends[0] if ends else None) == terminated_at


def test_level_list_samples_a_level_per_episode():
    """A comma-separated env id: each reset plays one of the levels, chosen uniformly, seeded."""
    from common.config import Config
    from actor.envs import LevelSampler, make_env, unknown_env_ids

    env = make_env(Config(env="SuperMarioBros-1-1-v0,SuperMarioBros-1-2-v0"), seed=3)
    sampler = env
    while not isinstance(sampler, LevelSampler):
        sampler = sampler.env
    stages = []
    for _ in range(12):
        _, info = env.reset()
        _, _, _, _, info = env.step(0)
        stages.append((info["world"], info["stage"]))
    env.close()
    assert set(stages) == {(1, 1), (1, 2)}, stages
    assert unknown_env_ids("SuperMarioBros-1-1-v0, MarioApexTest-v0") == []
    assert unknown_env_ids("SuperMarioBros-1-1-v0,Tetris-v0") == ["Tetris-v0"]
    assert unknown_env_ids("") == [""]


def x_steps(xs):
    """Script of steps at the given x positions."""
    return [(rgb(0), 0.0, False, False, {"x_pos": x}) for x in xs]


def test_time_limit_truncates_a_stalled_episode_only_after_stall_steps_without_a_new_best_x():
    """x 10, 12, 12, 11, 12 (no new best for 3 steps) then truncated; a new best resets the count."""
    env = TimeLimit(
        ScriptedEnv(x_steps([10, 12, 12, 11, 12, 13, 13, 13, 13]), rgb(0), {"x_pos": 10}), max_steps=100, stall_steps=3
    )
    env.reset()
    truncated = [env.step(0)[3] for _ in range(5)]
    assert truncated == [False, False, False, False, True]
    env = TimeLimit(
        ScriptedEnv(x_steps([11, 12, 13, 14, 15, 15, 15]), rgb(0), {"x_pos": 10}), max_steps=100, stall_steps=3
    )
    env.reset()
    assert [env.step(0)[3] for _ in range(7)] == [False] * 7, "always progressing (then 2 stalled): never cut"


def test_time_limit_without_stall_steps_never_cuts_a_stall():
    env = TimeLimit(ScriptedEnv(x_steps([10] * 50), rgb(0), {"x_pos": 10}), max_steps=100)
    env.reset()
    assert not any(env.step(0)[3] for _ in range(50))


def test_a_stall_with_stall_terminal_ends_the_episode_as_a_death_with_its_penalty():
    """stall_terminal: the stall is terminated (no bootstrap), not truncated, and ShapedReward charges the
    death penalty (-50 / 10, clipped to -1) for it; before the stall nothing changes."""
    env = ShapedReward(
        TimeLimit(
            ScriptedEnv(x_steps([11, 11, 11, 11]), rgb(0), {"x_pos": 10}),
            max_steps=100,
            stall_steps=3,
            stall_terminal=True,
        )
    )
    env.reset()
    steps = [env.step(0)[1:4] for _ in range(4)]
    assert steps == [(0.1, False, False), (0.0, False, False), (0.0, False, False), (-1.0, True, False)]


@pytest.mark.parametrize(
    "script,limits,end",
    [
        (x_steps([11, 12, 13]), {"max_steps": 3}, "step limit"),
        (x_steps([11, 11, 11]), {"max_steps": 100, "stall_steps": 2}, "stall"),
        (x_steps([11, 11, 11]), {"max_steps": 100, "stall_steps": 2, "stall_terminal": True}, "stall"),
        ([(rgb(0), 0.0, k == 2, False, {"x_pos": 10 + k}) for k in (1, 2)], {"max_steps": 2}, "death"),
        ([(rgb(0), 0.0, True, False, {"x_pos": 3161, "flag_get": True})], {"max_steps": 1}, "flag"),
        ([(rgb(0), 0.0, False, True, {"x_pos": 11})], {"max_steps": 100}, "step limit"),  # another wrapper's cut
    ],
)
def test_an_episode_end_is_named_by_what_ended_it(script, limits, end):
    """The flag wins over every cut; TimeLimit's cut (a stall, stall_terminal's too, or the step limit) over
    a death on the same step; a termination otherwise is a death."""
    env = TimeLimit(ScriptedEnv(script, rgb(0), {"x_pos": 10}), **limits)
    env.reset()
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(0)
        done = terminated or truncated
    assert EPISODE_ENDS[episode_end(terminated, info)] == end


def test_evaluations_end_a_stall_as_a_truncation_even_with_stall_terminal():
    """Evaluation episodes are not trained on: their stall (eval_stall_steps) is a plain cut, with no death
    penalty in the reward they report; training keeps its terminal stall afterwards."""
    from actor.envs import evaluation_limits

    config = Config(env="MarioApexTest-v0", stall_steps=7, stall_terminal=True, eval_stall_steps=5)
    env = make_env(config)
    limit = find_wrapper(env, TimeLimit)
    assert (limit.stall_steps, limit.stall_terminal) == (7, True)
    with evaluation_limits(env, config):
        assert (limit.stall_steps, limit.stall_terminal) == (5, False)
    assert (limit.stall_steps, limit.stall_terminal) == (7, True)
    env.close()


# --- JumpRepress -------------------------------------------------------------------------------------


class FakeNes(gym.Env):
    """Records the controller bytes it gets; its RAM's float state (0x001D) follows a script, per step."""

    def __init__(self, float_states):
        self.ram = np.zeros(2048, np.uint8)
        self.float_states = list(float_states)
        self.bytes: list[int] = []
        self.observation_space = gym.spaces.Box(0, 255, (1,), np.uint8)
        self.action_space = gym.spaces.Discrete(256)

    def reset(self, *, seed=None, options=None):
        self.ram[0x1D] = 0
        return np.zeros(1, np.uint8), {}

    def step(self, action):
        self.bytes.append(action)
        self.ram[0x1D] = self.float_states[len(self.bytes) - 1]
        return np.zeros(1, np.uint8), 0.0, False, False, {}


RIGHT_A, RIGHT = 0b10000001, 0b10000000


def test_jump_repress_releases_a_for_one_frame_on_the_ground_only():
    # press on the ground; RAM shows the jump one frame later; three frames in the air; landed; landed.
    nes = FakeNes([0, 1, 1, 1, 0, 0, 1, 1])
    env = JumpRepress(nes)
    env.reset()
    for _ in range(8):
        env.step(RIGHT_A)
    # frame 2 still reads "ground" (the jump shows late) and keeps A; frame 6 is on the ground after a
    # landing with A held: released, so frame 7 is a new press.
    assert nes.bytes == [RIGHT_A, RIGHT_A, RIGHT_A, RIGHT_A, RIGHT_A, RIGHT, RIGHT_A, RIGHT_A]


def test_jump_repress_passes_other_buttons_and_fresh_presses_through():
    nes = FakeNes([0] * 6)
    env = JumpRepress(nes)
    env.reset()
    for byte in (RIGHT, RIGHT_A, RIGHT, RIGHT_A, 0b00000011, 0):
        env.step(byte)
    assert nes.bytes == [RIGHT, RIGHT_A, RIGHT, RIGHT_A, 0b00000011, 0]


def test_jump_repress_forgets_a_held_button_on_reset():
    nes = FakeNes([0] * 4)
    env = JumpRepress(nes)
    env.reset()
    env.step(RIGHT_A)
    env.step(RIGHT_A)
    env.reset()
    env.step(RIGHT_A)
    env.step(RIGHT_A)
    assert nes.bytes == [RIGHT_A] * 4


def _jumps_holding_right_a(jump_repress: bool) -> tuple[list[int], int]:
    """Hold "right A" in real 1-1 for 300 emulator frames: the peak height of each jump, and the final x_pos."""
    from actor.envs import _make_raw

    env = _make_raw("SuperMarioBros-1-1-v0", "right_only", jump_repress)
    env.reset()
    ys, x = [], 0
    for _ in range(300):
        _, _, terminated, _, info = env.step(2)  # RIGHT_ONLY[2] = right A
        ys.append(info["y_pos"])
        x = info["x_pos"]
        if terminated:
            break
    env.close()
    peaks, rising = [], False
    for before, after in zip(ys, ys[1:]):
        if after > before:
            rising = True
        elif after < before and rising:
            rising = False
            peaks.append(before)
    return peaks, x


def test_jump_repress_on_real_mario_jumps_again_and_as_high():
    plain_peaks, plain_x = _jumps_holding_right_a(False)
    repress_peaks, repress_x = _jumps_holding_right_a(True)
    assert len(plain_peaks) == 1  # the game jumps on a new press only: held A never jumps again
    assert len(repress_peaks) >= 4
    assert repress_peaks[0] == plain_peaks[0]  # the first jump is not cut short
    assert repress_x > plain_x + 200  # over the first pipes, where the plain hold walks into a goomba


def test_jump_repress_lets_a_constant_action_clear_1_1():
    """Why jump_repress is not the default: with it, holding "right A" reaches the flag with no learning."""
    from actor.envs import evaluation_limits

    for repress, flag in ((False, False), (True, True)):
        config = Config(action_set="right_only", jump_repress=repress)
        env = make_env(config)
        env.reset()
        with evaluation_limits(env, config):
            done = False
            while not done:
                _, _, terminated, truncated, info = env.step(2)  # right A
                done = terminated or truncated
        env.close()
        assert bool(info["flag_get"]) == flag, (repress, info)


# --- ShowAButton -------------------------------------------------------------------------------------


def test_show_a_button_draws_the_last_action_s_a_into_the_top_rows():
    frame = np.full((84, 84), 140, np.uint8)
    inner = ScriptedEnv([(frame, 0.0, False, False, {})] * 3, frame)
    inner.observation_space = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    env = ShowAButton(inner, [False, True, True])
    obs, _ = env.reset()
    tops = [obs[:3, 0].tolist()]
    for action in (1, 0, 2):
        obs, *_ = env.step(action)
        tops.append(obs[:3, 0].tolist())
    assert tops == [[0, 0, 140], [255, 255, 140], [0, 0, 140], [255, 255, 140]]
    assert (obs[2:] == 140).all() and (frame == 140).all()  # the rest of the frame, and the env's own array, untouched


def test_show_a_button_in_make_env_follows_the_action_set_s_buttons():
    """RIGHT_ONLY: 0 NOOP, 1 right, 2 right A, 3 right B, 4 right A B; the band lives in every stacked frame."""
    env = make_env(Config(action_set="right_only", show_a_button=True))
    obs, _ = env.reset()
    assert (obs[:, :2] == 0).all()
    bands = []
    for action in range(5):
        obs, *_ = env.step(action)
        bands.append(int(obs[-1, 0, 0]))
        assert (obs[-1, :2] == obs[-1, 0, 0]).all()
    env.close()
    assert bands == [0, 0, 255, 0, 255]
    assert obs[:, 0, 0].tolist() == [0, 255, 0, 255]  # the stack keeps each frame's own band
    plain_env = make_env(Config(action_set="right_only"))
    plain, _ = plain_env.reset()
    plain_env.close()
    assert (plain[:, :2] != 0).any()  # without the option the sky is left alone

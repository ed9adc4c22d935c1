"""EnvThread: the actor's env steps in a worker thread, exactly as if stepped in order by the caller."""

import numpy as np
import pytest

from actor.env_thread import GREEDY, EnvThread, Step
from common.config import TEST_ENV_ID, Config
from actor.envs import find_wrapper, make_env
from actor.quiet_gym import gym
from actor.wrappers import FrameSkip

NOOP, RIGHT, RIGHT_A = 0, 1, 2


def corridor():
    env = make_env(Config(env=TEST_ENV_ID))
    return env, find_wrapper(env, FrameSkip)


def serial(actions: list[int]) -> list[tuple]:
    """The same actions stepped directly, resetting after each episode's end (the reference)."""
    env, frames = corridor()
    env.reset()
    out = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((action, obs, reward, terminated, truncated, info, frames.last_rgb))
        if terminated or truncated:
            env.reset()
    return out


def test_steps_match_the_env_stepped_directly_across_episodes():
    """Random actions over several episodes (deaths and flags), two in flight at a time: every
    observation, reward, flag, info and RGB frame equals the direct stepping's."""
    rng = np.random.default_rng(0)
    actions = [int(a) for a in rng.choice([RIGHT, RIGHT_A, NOOP], size=300, p=[0.5, 0.4, 0.1])]
    expected = serial(actions)
    env, frames = corridor()
    stepper = EnvThread(env, policy=lambda obs: pytest.fail("no GREEDY was submitted"), frame_source=frames)
    try:
        stepper.reset()
        got, queue, episodes = [], list(actions), 0
        while queue or stepper.in_flight:
            while queue and stepper.in_flight < 2:
                stepper.submit(queue.pop(0))
            step = stepper.result()
            assert step is not None
            got.append(step)
            if step.terminated or step.truncated:
                episodes += 1
                queued = stepper.drain()  # not played: they go again after the reset
                assert queued == [None] * len(queued)
                queue[:0] = [actions[len(got) + i] for i in range(len(queued))]
                stepper.reset()
    finally:
        stepper.close()
    assert episodes >= 3
    assert len(got) == len(expected)
    for step, (action, obs, reward, terminated, truncated, info, rgb) in zip(got, expected):
        assert step.action == action
        assert np.array_equal(step.obs, obs) and step.reward == reward
        assert (step.terminated, step.truncated) == (terminated, truncated) and step.info == info
        assert np.array_equal(step.rgb, rgb)


class ReusedScreenEnv(gym.Env):
    """Like nes-py: every frame is a channel-reversed view into one BGRX buffer that the next step
    overwrites; frame k is filled with the value k."""

    observation_space = gym.spaces.Box(0, 255, (240, 256, 3), np.uint8)
    action_space = gym.spaces.Discrete(7)

    def __init__(self):
        self.screen = np.zeros((240, 256, 4), np.uint8)
        self.frames = 0

    def _view(self):
        self.screen[:] = self.frames % 256
        return self.screen[:, :, 2::-1]

    def reset(self, **kwargs):
        self.frames = 0
        return self._view(), {}

    def step(self, action):
        self.frames += 1
        return self._view(), 0.0, False, False, {"frame": self.frames}


def test_frames_handed_out_are_not_overwritten_by_the_steps_in_flight_behind_them():
    """With two steps in flight, each Step's RGB frame (and observation) is still its own frame when
    the caller reads it, though the emulator's screen buffer has moved on."""
    env = FrameSkip(ReusedScreenEnv(), skip=1)
    stepper = EnvThread(env, policy=None, frame_source=env)
    try:
        _, _, first = stepper.reset()
        steps = []
        for _ in range(2):
            stepper.submit(NOOP)
        for _ in range(20):
            steps.append(stepper.result())
            stepper.submit(NOOP)
        steps += stepper.drain()
    finally:
        stepper.close()
    assert first.shape == (240, 256, 3) and (first == 0).all()
    for number, step in enumerate(steps, start=1):
        assert step.info["frame"] == number
        assert (step.rgb == number).all() and (step.obs == number).all()


def test_steps_queued_behind_the_end_of_an_episode_are_not_played():
    """The corridor's time runs out after 50 agent steps standing still; the two steps queued behind
    the last one return None and the env is not stepped (it would raise on a finished episode)."""
    env, frames = corridor()
    stepper = EnvThread(env, policy=None, frame_source=frames)
    try:
        stepper.reset()
        for _ in range(52):
            stepper.submit(NOOP)
        results = stepper.drain()
        last = results[49]
        assert isinstance(last, Step) and last.terminated and all(isinstance(r, Step) for r in results[:50])
        assert results[50:] == [None, None]
        obs, info, _ = stepper.reset()  # playable again
        assert info["x_pos"] == 0
        stepper.submit(RIGHT)
        assert stepper.result().info["x_pos"] == 4
    finally:
        stepper.close()


def test_greedy_asks_the_policy_with_the_newest_observation():
    seen = []

    def policy(obs):
        seen.append(obs.copy())
        return RIGHT_A

    env, frames = corridor()
    stepper = EnvThread(env, policy=policy, frame_source=frames)
    try:
        obs, _, _ = stepper.reset()
        previous = [obs]
        for action in (GREEDY, NOOP, GREEDY, GREEDY):
            stepper.submit(action)
        steps = stepper.drain()
        previous += [s.obs for s in steps]
    finally:
        stepper.close()
    assert [s.action for s in steps] == [RIGHT_A, NOOP, RIGHT_A, RIGHT_A]  # the action actually played
    assert len(seen) == 3
    for obs, index in zip(seen, (0, 2, 3)):
        assert np.array_equal(obs, previous[index])


def test_an_env_error_is_raised_in_the_callers_thread_and_the_thread_lives_on():
    class Boom(RuntimeError):
        pass

    env, frames = corridor()
    real_step = env.step
    calls = {"n": 0}

    def step(action):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom("emulator fault")
        return real_step(action)

    env.step = step
    stepper = EnvThread(env, policy=None, frame_source=frames)
    try:
        stepper.reset()
        for _ in range(4):
            stepper.submit(RIGHT)
        assert isinstance(stepper.result(), Step) and isinstance(stepper.result(), Step)
        with pytest.raises(Boom, match="emulator fault"):
            stepper.result()
        assert stepper.result() is None  # the failed episode is over until a reset
        stepper.reset()
        stepper.submit(RIGHT)
        assert stepper.result().info["x_pos"] == 4
    finally:
        stepper.close()


def test_misuse_is_refused_and_close_stops_the_thread():
    env, frames = corridor()
    stepper = EnvThread(env, policy=None, frame_source=frames)
    with pytest.raises(RuntimeError, match="no step in flight"):
        stepper.result()
    stepper.reset()
    stepper.submit(RIGHT)
    with pytest.raises(RuntimeError, match="drain"):
        stepper.reset()
    assert stepper.result() is not None
    assert stepper.close() is True
    assert not stepper._thread.is_alive()

"""EnvThread: an actor's envs step in a worker thread, job by job, exactly as if stepped in order by the caller."""

import threading

import numpy as np
import pytest

from actor.env_thread import RESET, EnvThread, Reset, Step
from common.config import TEST_ENV_ID, Config
from actor.envs import find_wrapper, make_env
from actor.quiet_gym import gym
from actor.wrappers import FrameSkip

NOOP, RIGHT, RIGHT_A = 0, 1, 2


def corridor(env_id: str = TEST_ENV_ID):
    env = make_env(Config(env=env_id))
    return env, find_wrapper(env, FrameSkip)


def serial(actions: list[int], env_id: str = TEST_ENV_ID) -> list[tuple]:
    """The same actions stepped directly, resetting after each episode's end (the reference)."""
    env, frames = corridor(env_id)
    env.reset()
    out = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((action, obs, reward, terminated, truncated, info, frames.last_rgb))
        if terminated or truncated:
            env.reset()
    env.close()
    return out


def assert_same(got: list[Step], expected: list[tuple]) -> None:
    assert len(got) == len(expected)
    for step, (action, obs, reward, terminated, truncated, info, rgb) in zip(got, expected):
        assert step.action == action
        assert np.array_equal(step.obs, obs) and step.reward == reward
        assert (step.terminated, step.truncated) == (terminated, truncated) and step.info == info
        assert np.array_equal(step.rgb, rgb)


def test_two_envs_in_alternating_jobs_step_as_each_stepped_directly_across_episodes():
    """Two envs, each with its own random actions over several episodes (deaths and flags), as an actor
    with two groups steps them: a job per env, the other env's job queued while one runs, a reset where
    an episode ended. Every observation, reward, flag, info and RGB frame equals its env's direct stepping."""
    rng = np.random.default_rng(0)
    actions = [[int(a) for a in rng.choice([RIGHT, RIGHT_A, NOOP], size=300, p=[0.5, 0.4, 0.1])] for _ in range(2)]
    (env0, frames0), (env1, frames1) = corridor(), corridor()
    stepper = EnvThread([env0, env1], [frames0, frames1])
    got: list[list[Step]] = [[], []]
    episodes, queued = 0, [0, 1]
    try:
        for env in queued:
            stepper.submit([(env, RESET)])
        while queued:
            env = queued.pop(0)
            (result,) = stepper.result()
            if isinstance(result, Step):
                got[env].append(result)
                ended = result.terminated or result.truncated
                episodes += ended
            else:
                assert isinstance(result, Reset) and result.info["x_pos"] == 0
                ended = False
            if len(got[env]) < len(actions[env]):
                stepper.submit([(env, RESET if ended else actions[env][len(got[env])])])
                queued.append(env)
    finally:
        assert stepper.close()
    assert episodes >= 6
    for env in (0, 1):
        assert_same(got[env], serial(actions[env]))


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


def test_frames_handed_out_are_not_overwritten_by_the_jobs_queued_behind_them():
    """With the next job queued before a result is read, each Step's RGB frame (and observation) is
    still its own frame when the caller reads it, though the emulator's screen buffer has moved on."""
    env = FrameSkip(ReusedScreenEnv(), skip=1)
    stepper = EnvThread([env], [env])
    try:
        stepper.submit([(0, RESET)])
        first = stepper.result()[0].rgb
        steps = []
        stepper.submit([(0, NOOP)])
        for _ in range(20):
            stepper.submit([(0, NOOP)])
            steps += stepper.result()
        steps += stepper.result()
    finally:
        stepper.close()
    assert first.shape == (240, 256, 3) and (first == 0).all()
    for number, step in enumerate(steps, start=1):
        assert step.info["frame"] == number
        assert (step.rgb == number).all() and (step.obs == number).all()


def test_an_env_that_ended_its_episode_must_be_reset_before_it_steps_again():
    """The corridor's time runs out after 50 agent steps standing still."""
    env, frames = corridor()
    stepper = EnvThread([env], [frames])
    try:
        stepper.submit([(0, RESET)] + [(0, NOOP)] * 50)
        results = stepper.result()
        assert isinstance(results[-1], Step) and results[-1].terminated
        stepper.submit([(0, NOOP)])
        with pytest.raises(RuntimeError, match="without a reset"):
            stepper.result()
        stepper.submit([(0, RESET), (0, RIGHT)])
        assert stepper.result()[1].info["x_pos"] == 4  # playable again
    finally:
        stepper.close()


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
    stepper = EnvThread([env], [frames])
    try:
        stepper.submit([(0, RESET), (0, RIGHT), (0, RIGHT)])
        assert [type(r) for r in stepper.result()] == [Reset, Step, Step]
        stepper.submit([(0, RIGHT), (0, RIGHT)])
        with pytest.raises(Boom, match="emulator fault"):
            stepper.result()
        stepper.submit([(0, RIGHT)])
        with pytest.raises(RuntimeError, match="without a reset"):  # the failed episode is over
            stepper.result()
        stepper.submit([(0, RESET), (0, RIGHT)])
        assert stepper.result()[1].info["x_pos"] == 4
    finally:
        stepper.close()


def test_misuse_is_refused_and_close_stops_the_thread():
    env, frames = corridor()
    stepper = EnvThread([env], [frames])
    with pytest.raises(RuntimeError, match="no job in flight"):
        stepper.result()
    stepper.submit([(0, RESET)])
    assert isinstance(stepper.result()[0], Reset)
    assert stepper.close() is True
    assert not stepper._thread.is_alive()


def test_two_mario_emulators_step_at_once_in_two_threads_as_they_do_alone():
    """An actor plays an evaluation on one env in its main thread while the env thread steps its other
    envs: two nes-py emulators stepping at the same time must not disturb each other."""
    rng = np.random.default_rng(1)
    actions = [[int(a) for a in rng.integers(0, 7, size=150)] for _ in range(2)]
    expected = [serial(actions[i], "SuperMarioBros-1-1-v0") for i in (0, 1)]
    envs = [corridor("SuperMarioBros-1-1-v0") for _ in (0, 1)]
    got: list[list] = [[], []]

    def play(i: int) -> None:
        env, frames = envs[i]
        env.reset()
        for action in actions[i]:
            obs, reward, terminated, truncated, info = env.step(action)
            got[i].append(Step(action, obs, reward, terminated, truncated, info, frames.last_rgb))
            if terminated or truncated:
                env.reset()

    other = threading.Thread(target=play, args=(1,))
    other.start()
    play(0)
    other.join()
    for i in (0, 1):
        envs[i][0].close()
        assert_same(got[i], expected[i])

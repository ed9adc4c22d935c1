"""The level curriculum: in order, moving on once the recent average reward passes the threshold."""

import numpy as np

from actor.curriculum import Curriculum
from common.config import Config
from actor.envs import LevelSampler, find_wrapper, make_env


class _Level:
    def __init__(self, name):
        self.name, self.resets = name, 0
        self.observation_space = self.action_space = None

    def reset(self, **kwargs):
        self.resets += 1
        return self.name, {}


def test_curriculum_moves_on_after_a_good_window_and_stays_on_the_last():
    levels = LevelSampler([_Level("a"), _Level("b")], seed=0, names=["1-1", "1-2"], curriculum=True)
    curriculum = Curriculum(levels, threshold=5.0, window=3)
    assert [levels.reset()[0] for _ in range(3)] == ["a", "a", "a"], "a curriculum does not sample"
    assert curriculum.on_episode(10.0) is None and curriculum.on_episode(10.0) is None, "the window is not full"
    # (10 + 10 - 4) / 3 = 5.33 >= 5: moves on at the third episode
    assert curriculum.on_episode(-4.0) == (
        "curriculum: average reward 5.33 over the last 3 episodes on 1-1 passed 5; moving on to 1-2"
    )
    assert levels.level == "1-2" and levels.reset()[0] == "b"
    for reward in (1.0, 2.0, 100.0, 100.0):
        assert curriculum.on_episode(reward) is None, "the last level stays"
    assert levels.level == "1-2"


def test_curriculum_waits_while_the_average_is_below_the_threshold():
    levels = LevelSampler([_Level("a"), _Level("b")], seed=0, curriculum=True)
    curriculum = Curriculum(levels, threshold=5.0, window=4)
    for reward in (9.0, 9.0, 0.0, 1.0, 2.0, 3.0):  # windows average 4.75, 3.0, 1.5: never 5
        assert curriculum.on_episode(reward) is None
    message = None
    for reward in (9.0, 9.0, 9.0):  # (3 + 9 + 9 + 9) / 4 = 7.5
        message = curriculum.on_episode(reward) or message
    assert message and "moving on to 1" in message and levels.index == 1


def test_sampled_level_lists_stay_random():
    levels = LevelSampler([_Level("a"), _Level("b")], seed=3)
    seen = {levels.reset()[0] for _ in range(30)}
    assert seen == {"a", "b"}


def test_make_env_builds_a_curriculum_from_the_config():
    env = make_env(Config(env="MarioApexTest-v0,MarioApexTest-v0", curriculum=True))
    levels = find_wrapper(env, LevelSampler)
    assert levels.curriculum and levels.names == ["MarioApexTest-v0", "MarioApexTest-v0"]
    obs, _ = env.reset()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    env.close()

"""CorridorEnv (MarioApexTest-v0): deterministic, Mario-shaped, with a known optimal policy."""

import numpy as np
import pytest

from actor.toy_level import CELL_UNITS, GOAL_CELL, GOOMBA_CELLS, TIME_LIMIT_FRAMES, CorridorEnv

NOOP, RIGHT, RIGHT_A, RIGHT_B, RIGHT_A_B, A, LEFT = range(7)
MARIO_INFO_KEYS = {"x_pos", "y_pos", "flag_get", "time", "life", "world", "stage", "score", "coins", "status"}
FLAG_X = GOAL_CELL * CELL_UNITS


def run(env: CorridorEnv, actions) -> list[tuple]:
    """Play the actions from a fresh reset; returns [reset result, step results...], stopping at done."""
    out = [env.reset()]
    for action in actions:
        step = env.step(action)
        out.append(step)
        if step[2] or step[3]:
            break
    return out


def test_spaces_and_observation():
    """Mario's spaces: 7 actions; (240, 256, 3) uint8 RGB frames inside the observation space."""
    env = CorridorEnv()
    assert env.action_space.n == 7
    obs, info = env.reset(seed=3)
    assert obs.shape == (240, 256, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    obs, *_ = env.step(RIGHT)
    assert obs.shape == (240, 256, 3) and obs.dtype == np.uint8
    assert np.array_equal(env.render(), obs)


def test_info_has_marios_keys():
    env = CorridorEnv()
    _, info = env.reset()
    assert set(info) == MARIO_INFO_KEYS
    assert info["x_pos"] == 0 and info["flag_get"] is False and info["time"] == TIME_LIMIT_FRAMES // CELL_UNITS
    *_, info = env.step(RIGHT)
    assert set(info) == MARIO_INFO_KEYS
    assert type(info["x_pos"]) is int and info["x_pos"] == 1


def test_deterministic_for_the_same_actions():
    """Two envs given the same (random-looking but fixed) actions give identical frames, rewards and infos,
    whatever the reset seed."""
    actions = np.random.default_rng(7).integers(0, 7, 400)
    a, b = CorridorEnv(), CorridorEnv()
    steps_a, steps_b, i = [], [], 0
    while i < len(actions):
        a.reset(seed=1)
        b.reset(seed=999)
        while i < len(actions):
            sa, sb = a.step(actions[i]), b.step(actions[i])
            steps_a.append(sa)
            steps_b.append(sb)
            i += 1
            if sa[2]:
                break
    assert len(steps_a) == len(actions)
    assert sum(s[2] for s in steps_a) >= 2, "the sequence spans several episodes"
    for (oa, ra, ta, ua, ia), (ob, rb, tb, ub, ib) in zip(steps_a, steps_b):
        assert np.array_equal(oa, ob) and (ra, ta, ua, ia) == (rb, tb, ub, ib)


@pytest.mark.parametrize("action", [RIGHT_A, RIGHT_A_B])
def test_always_jump_right_reaches_the_flag(action):
    """Jumping right every frame passes every goomba and reaches the flag at x = 60 after 60 frames."""
    steps = run(CorridorEnv(), [action] * 1000)[1:]
    assert len(steps) == FLAG_X == 60
    rewards = [s[1] for s in steps]
    assert rewards == [1.0] * 60
    *_, terminated, truncated, info = steps[-1]
    assert (terminated, truncated) == (True, False)
    assert info["flag_get"] is True and info["x_pos"] == 60
    assert info["time"] == (TIME_LIMIT_FRAMES - 60) // CELL_UNITS
    assert not any(s[4]["flag_get"] for s in steps[:-1])


@pytest.mark.parametrize("action", [RIGHT, RIGHT_B])
def test_walking_right_dies_at_the_first_goomba(action):
    """Without jumping Mario dies on arriving at cell 4 (x = 16): reward 1 - 15, no flag."""
    steps = run(CorridorEnv(), [action] * 1000)[1:]
    first = GOOMBA_CELLS[0] * CELL_UNITS
    assert len(steps) == first == 16
    assert [s[1] for s in steps] == [1.0] * 15 + [-14.0]
    *_, terminated, truncated, info = steps[-1]
    assert (terminated, truncated) == (True, False)
    assert info["flag_get"] is False and info["x_pos"] == first


@pytest.mark.parametrize("cell", GOOMBA_CELLS)
def test_every_goomba_kills_a_walker_and_spares_a_jumper(cell):
    """Jump up to just before a goomba cell; walking onto it kills, jumping onto it does not."""
    x = cell * CELL_UNITS
    for last, dies in ((RIGHT, True), (RIGHT_A, False)):
        steps = run(CorridorEnv(), [RIGHT_A] * (x - 1) + [last])[1:]
        assert len(steps) == x
        assert steps[-1][2] is dies and steps[-1][4]["x_pos"] == x


def test_standing_and_jumping_in_place_do_not_move():
    steps = run(CorridorEnv(), [NOOP, A, NOOP])[1:]
    assert [s[4]["x_pos"] for s in steps] == [0, 0, 0]
    assert [s[1] for s in steps] == [0.0, 0.0, 0.0]
    assert all(np.array_equal(steps[0][0], s[0]) for s in steps), "the frame only changes when Mario moves"


def test_left_moves_back_but_not_past_the_start():
    steps = run(CorridorEnv(), [LEFT, RIGHT, RIGHT, LEFT])[1:]
    assert [s[4]["x_pos"] for s in steps] == [0, 1, 2, 1]
    assert [s[1] for s in steps] == [0.0, 1.0, 1.0, -1.0]


def test_frame_shows_mario_moving():
    env = CorridorEnv()
    first, _ = env.reset()
    moved, *_ = env.step(RIGHT)
    assert not np.array_equal(first, moved)


def test_running_out_of_time_terminates():
    """Standing still, the episode ends at the time limit (frame 200) with the death reward -15."""
    steps = run(CorridorEnv(), [NOOP] * 1000)[1:]
    assert len(steps) == TIME_LIMIT_FRAMES
    assert all(not s[2] for s in steps[:-1])
    *_, reward, terminated, truncated, info = steps[-1]
    assert (reward, terminated, truncated) == (-15.0, True, False)
    assert info["flag_get"] is False and info["time"] == 0


def test_stepping_after_done_raises_and_reset_restarts():
    env = CorridorEnv()
    with pytest.raises(RuntimeError):
        env.step(NOOP)  # never reset
    run(env, [RIGHT] * 100)  # dies at the first goomba
    with pytest.raises(RuntimeError):
        env.step(RIGHT_A)
    obs, info = env.reset()
    assert info["x_pos"] == 0
    assert env.step(RIGHT)[4]["x_pos"] == 1

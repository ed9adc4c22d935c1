"""MarioApexTest-v0: a tiny deterministic stand-in for Super Mario Bros, for tests that need learning
to happen in seconds.

Mario walks a corridor of cells toward a flag. It has Mario's observation (240x256x3 RGB frames),
action set (the 7 SIMPLE_MOVEMENT actions) and info keys (x_pos, flag_get, time, life, ...), so the
same wrappers and processes run unchanged. Each emulator frame a right-moving action advances x_pos
by 1 and left moves back by 1; a cell is 4 frames wide, so with frame skip 4 one agent step is one
cell. Goombas stand on some cells: arriving on one without jumping (an action with A) is death, as is
running out of time. Jumping right every step reaches the flag, so the optimal greedy policy is easy
to check, while a random policy rarely gets there.
"""

from __future__ import annotations

import numpy as np

from actor.quiet_gym import gym

HEIGHT, WIDTH = 240, 256
CELL_UNITS = 4  # x_pos units (= emulator frames of walking) per cell
NUM_CELLS = 16
GOAL_CELL = NUM_CELLS - 1
GOOMBA_CELLS = (4, 8, 11)
TIME_LIMIT_FRAMES = 50 * CELL_UNITS
CELL_PX = WIDTH // NUM_CELLS

# Indices into SIMPLE_MOVEMENT: NOOP, right, right+A, right+B, right+A+B, A, left
RIGHT_ACTIONS = {1, 2, 3, 4}
JUMP_ACTIONS = {2, 4, 5}
LEFT_ACTIONS = {6}


class CorridorEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 60}

    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 255, (HEIGHT, WIDTH, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(7)
        self._background = self._draw_background()
        self._x = 0
        self._frames = 0
        self._done = True

    @staticmethod
    def _draw_background() -> np.ndarray:
        frame = np.full((HEIGHT, WIDTH, 3), (92, 148, 252), np.uint8)  # sky
        frame[200:] = (200, 76, 12)  # ground
        for cell in GOOMBA_CELLS:
            frame[170:200, cell * CELL_PX + 2 : (cell + 1) * CELL_PX - 2] = (120, 60, 0)
        frame[80:200, GOAL_CELL * CELL_PX + 6 : GOAL_CELL * CELL_PX + 9] = (0, 168, 0)  # flag pole
        return frame

    def _render_frame(self) -> np.ndarray:
        frame = self._background.copy()
        left = int(self._x * CELL_PX / CELL_UNITS)
        frame[150:200, left + 3 : left + CELL_PX - 3] = (255, 255, 255)
        return frame

    def _info(self, flag: bool) -> dict:
        return {
            "coins": 0,
            "flag_get": flag,
            "life": 2,
            "score": 0,
            "stage": 1,
            "status": "small",
            "time": (TIME_LIMIT_FRAMES - self._frames) // CELL_UNITS,
            "world": 1,
            "x_pos": int(self._x),
            "y_pos": 79,
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._x, self._frames, self._done = 0, 0, False
        return self._render_frame(), self._info(False)

    def step(self, action):
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset()")
        action = int(action)
        old_x = self._x
        if action in RIGHT_ACTIONS:
            self._x += 1
        elif action in LEFT_ACTIONS:
            self._x = max(0, self._x - 1)
        self._frames += 1
        cell, on_boundary = divmod(self._x, CELL_UNITS)
        flag = cell >= GOAL_CELL
        stomped = on_boundary == 0 and self._x != old_x and cell in GOOMBA_CELLS and action not in JUMP_ACTIONS
        out_of_time = self._frames >= TIME_LIMIT_FRAMES
        terminated = flag or stomped or out_of_time
        reward = float(self._x - old_x) + (-15.0 if terminated and not flag else 0.0)  # Mario-like
        self._done = terminated
        return self._render_frame(), reward, terminated, False, self._info(flag)

    def render(self):
        return self._render_frame()

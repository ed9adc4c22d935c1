"""Environment wrappers: frame skip, reward shaping, grayscale 84x84, the A button's state, frame stack.

Actor-side only (imports gym and cv2); the learner and replay server never import this module.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from actor.area_resize import AreaShrinker, shrinks_faster
from actor.quiet_gym import gym
from common.records import DEATH_END, FLAG_END, STALL_END, STEP_LIMIT_END

PROGRESS_BONUS = 1.0
REGRESS_PENALTY = -1.0
DEATH_PENALTY = -50.0
FLAG_BONUS = 1000.0
REWARD_SCALE = 10.0


def shape_reward(
    env_reward: float, x_pos: int, prev_x_pos: int, terminated: bool, flag_get: bool, clip_flag: bool = True
) -> float:
    """The original trainer's shaping: +1 forward, -1 backward, -50 death, +1000 flag, /10, clip [-1, 1].

    The terms are added to the emulator's own reward, as the original did. With clip_flag false the
    flag's +1000 / 10 is added after the clip: finishing is then worth 100, not 1 (one running step's worth).
    """
    reward = float(env_reward)
    if x_pos > prev_x_pos:
        reward += PROGRESS_BONUS
    elif x_pos < prev_x_pos:
        reward += REGRESS_PENALTY
    if flag_get and clip_flag:
        reward += FLAG_BONUS
    elif terminated and not flag_get:
        reward += DEATH_PENALTY
    shaped = float(np.clip(reward / REWARD_SCALE, -1.0, 1.0))
    return shaped if clip_flag or not flag_get else shaped + FLAG_BONUS / REWARD_SCALE


def contiguous_rgb(frame: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of an RGB frame, cheaply.

    nes-py hands out its screen as a channel-reversed view into a BGRX buffer; copying that view
    element by element costs ~0.4 ms, and every consumer (cv2, the video encoder) would do it
    again. OpenCV converts the underlying buffer in ~0.1 ms. The fast path is used only where the
    layout is exactly that; anything else gets a plain copy.
    """
    if frame.flags.c_contiguous:
        return frame
    base = frame.base
    h, w = frame.shape[:2]
    if (
        isinstance(base, np.ndarray)
        and base.dtype == np.uint8
        and base.size == h * w * 4
        and frame.strides == (w * 4, 4, -1)
        and base.flags.c_contiguous
        and frame.__array_interface__["data"][0] == base.__array_interface__["data"][0] + 2
    ):
        return cv2.cvtColor(base.reshape(h, w, 4), cv2.COLOR_BGRA2RGB)
    return np.ascontiguousarray(frame)


class FrameSkip(gym.Wrapper):
    """Repeat each action `skip` emulator frames, summing rewards; keep the last RGB frame for display
    and recording. Frames leave here C-contiguous, so nothing downstream copies them again."""

    def __init__(self, env: gym.Env, skip: int):
        super().__init__(env)
        self.skip = skip
        self.last_rgb: np.ndarray | None = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.last_rgb = obs = contiguous_rgb(obs)
        return obs, info

    def step(self, action):
        total = 0.0
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += reward
            if terminated or truncated:
                break
        self.last_rgb = obs = contiguous_rgb(obs)
        return obs, total, terminated, truncated, info


class JumpRepress(gym.Wrapper):
    """Makes a held A button jump again on landing (config.jump_repress), one emulator frame at a time.

    Sits under the joypad wrapper, on the raw NES controller byte. Super Mario Bros jumps only on a new
    press of A; this releases A for the one frame on which Mario stands on the ground (RAM 0x001D = 0)
    with A held for at least two frames (the jump shows in RAM one frame after the press), so the next
    frame is a new press. In the air nothing changes: holding A still makes the jump higher.
    """

    A_BUTTON = 0b00000001
    FLOAT_STATE = 0x001D  # 0: on the ground; 1: jumping; 2: falling; 3: sliding down the flagpole

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._ram = _nes_ram(env)
        self._held = 0

    def reset(self, **kwargs):
        self._held = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        action = int(action)
        if action & self.A_BUTTON:
            if self._held >= 2 and self._ram[self.FLOAT_STATE] == 0:
                action &= ~self.A_BUTTON
                self._held = 0
            else:
                self._held += 1
        else:
            self._held = 0
        return self.env.step(action)


def _nes_ram(env: gym.Env) -> np.ndarray:
    """The emulator's live 2 KiB RAM array under gym's compatibility wrappers."""
    while not hasattr(env, "ram"):
        env = env.env
    return env.ram


def shape_progress_reward(x_pos: int, prev_x_pos: int, life_lost: bool, flag_get: bool) -> float:
    """The original trainer's later scheme: +0.1 per x_pos gained, -50 per life lost, +2000 on the flag;
    then /10 and clipped to [-1, 1] like the default, so the learner sees the same range."""
    reward = 0.1 * (x_pos - prev_x_pos)
    if life_lost:
        reward += DEATH_PENALTY
    if flag_get:
        reward += 2 * FLAG_BONUS
    return float(np.clip(reward / REWARD_SCALE, -1.0, 1.0))


class ShapedReward(gym.Wrapper):
    """Replace the env's reward by a shaped one ("original", "flag_unclipped" or "progress", see common/config.py).

    With single_life, losing a life ends the episode (terminated), as dying does on one-level envs."""

    def __init__(self, env: gym.Env, scheme: str = "original", single_life: bool = False):
        super().__init__(env)
        self.scheme = scheme
        self.single_life = single_life
        self._prev_x = 0
        self._lives = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._prev_x = int(info.get("x_pos", 0))
        self._lives = info.get("life")
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        x_pos = int(info.get("x_pos", self._prev_x))
        flag = bool(info.get("flag_get", False))
        lives = info.get("life", self._lives)
        life_lost = self._lives is not None and lives is not None and lives < self._lives
        if self.scheme == "progress":
            shaped = shape_progress_reward(x_pos, self._prev_x, life_lost or (terminated and not flag), flag)
        else:
            shaped = shape_reward(
                reward,
                x_pos,
                self._prev_x,
                terminated or (self.single_life and life_lost),
                flag,
                clip_flag=self.scheme != "flag_unclipped",
            )
        if self.single_life and life_lost:
            terminated = True
        self._prev_x, self._lives = x_pos, lives
        return obs, shaped, terminated, truncated, info


class GrayResize(gym.ObservationWrapper):
    """RGB (H, W, 3) -> grayscale (size, size) uint8, area interpolation (actor/area_resize.py where
    it is faster, OpenCV otherwise)."""

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        self.size = size
        self.observation_space = gym.spaces.Box(0, 255, (size, size), np.uint8)
        self._shrink: AreaShrinker | None = None
        height, width = env.observation_space.shape[:2]
        if shrinks_faster(height, width, size):  # compile (or load) the kernel now, not in the first step
            self._shrink = AreaShrinker(height, width, size)
            self._shrink(np.zeros((height, width), np.uint8))

    def observation(self, observation):
        gray = cv2.cvtColor(observation, cv2.COLOR_RGB2GRAY)
        if self._shrink is None or self._shrink.shape != gray.shape:  # a frame shape not seen last time
            if not shrinks_faster(*gray.shape, self.size):
                return cv2.resize(gray, (self.size, self.size), interpolation=cv2.INTER_AREA)
            self._shrink = AreaShrinker(*gray.shape, self.size)
        return self._shrink(gray)


class ShowAButton(gym.Wrapper):
    """Draws whether the A button is held into each observation frame (config.show_a_button).

    Super Mario Bros jumps only on a new press of A, and the screen does not show a held button: a Mario
    against a pipe holding "right A" looks the same as one that could jump, so a greedy policy that holds
    it stays there for good. Here the top rows of each gray frame (sky, above the score line) are white
    while the last step's action held A and black otherwise; the game itself is unchanged. (After a lost
    life in a multi-life env the game has let go of A in its own frames, and the band says "held" for
    one step more.)
    """

    def __init__(self, env: gym.Env, holds_a: list[bool]):
        super().__init__(env)
        self.holds_a = holds_a
        self.rows = max(1, env.observation_space.shape[0] // 42)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._draw(obs, False), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._draw(obs, self.holds_a[int(action)]), reward, terminated, truncated, info

    def _draw(self, frame: np.ndarray, held: bool) -> np.ndarray:
        frame = frame.copy()
        frame[: self.rows] = 255 if held else 0
        return frame


class FrameStack(gym.Wrapper):
    """Stack the last `k` frames into a (k, size, size) uint8 array; reset repeats the first frame."""

    def __init__(self, env: gym.Env, k: int):
        super().__init__(env)
        self.k = k
        self._frames: deque[np.ndarray] = deque(maxlen=k)
        size = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 255, (k, *size), np.uint8)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        for _ in range(self.k):
            self._frames.append(obs)
        return np.stack(self._frames), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(obs)
        return np.stack(self._frames), reward, terminated, truncated, info


class TimeLimit(gym.Wrapper):
    """Truncate an episode (truncated=True, not terminated: the cut is ours, so it still bootstraps) after
    `max_steps` agent steps, or after `stall_steps` steps without a new rightmost x_pos (0 = never):
    a Mario stuck at a pipe otherwise waits out the game clock, about 2,400 steps. With `stall_terminal`
    a stall ends the episode as a death (terminated; ShapedReward then charges the death penalty)."""

    def __init__(self, env: gym.Env, max_steps: int, stall_steps: int = 0, stall_terminal: bool = False):
        super().__init__(env)
        self.max_steps = max_steps
        self.stall_steps = stall_steps
        self.stall_terminal = stall_terminal
        self._steps = 0
        self._best_x = 0
        self._best_at = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._steps, self._best_x, self._best_at = 0, int(info.get("x_pos", 0)), 0
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._steps += 1
        x_pos = int(info.get("x_pos", 0))
        if x_pos > self._best_x:
            self._best_x, self._best_at = x_pos, self._steps
        stalled = self.stall_steps and self._steps - self._best_at >= self.stall_steps
        if (stalled or self._steps >= self.max_steps) and not terminated:
            info = {**info, "cut": STALL_END if stalled else STEP_LIMIT_END}  # what episode_end reads
            if stalled and self.stall_terminal:
                terminated = True
            else:
                truncated = True
        return obs, reward, terminated, truncated, info


def episode_end(terminated: bool, info: dict) -> int:
    """How the episode that ended on this step (terminated or truncated) ended, an EPISODE_ENDS index: the
    flag, TimeLimit's cut (a stall or the step limit), else a death if the env ended it (the step limit if not:
    another wrapper's cut)."""
    if info.get("flag_get"):
        return FLAG_END
    return info.get("cut") or (DEATH_END if terminated else STEP_LIMIT_END)

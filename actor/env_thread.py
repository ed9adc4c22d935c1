"""Steps the env in a worker thread, so the actor does its bookkeeping (chunks, sends, window, video)
while the emulator and the network run.

nes-py's emulator is C++ called through ctypes, which releases the GIL, so the two threads really
overlap. Steps run strictly in the order submitted. After a step that ends the episode, the steps
already queued behind it are not played (their result is None) until the next `reset()`.
"""

from __future__ import annotations

import queue
import threading
from typing import NamedTuple

import numpy as np

_RESET, _STOP = object(), object()
GREEDY = -1  # submitted instead of an action: the policy picks it from the newest observation


class Step(NamedTuple):
    action: int
    obs: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    info: dict
    rgb: np.ndarray | None  # the frame to show and record (taken before the next step replaces it)


class _Failure(NamedTuple):
    error: BaseException


class EnvThread:
    """`submit` queues actions; `result` returns their Steps in order. `reset` needs nothing in flight."""

    def __init__(self, env, policy, frame_source=None):
        self.env = env
        self.policy = policy  # obs -> action for GREEDY steps, called in the env thread
        self._frame_source = frame_source  # the FrameSkip wrapper, whose last_rgb is the frame shown
        self._actions: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self.in_flight = 0
        self._thread = threading.Thread(target=self._work, name="env", daemon=True)
        self._thread.start()

    def submit(self, action: int) -> None:
        self.in_flight += 1
        self._actions.put(action)

    def result(self) -> Step | None:
        """The oldest submitted step's result (None: it came after the end of the episode, not played)."""
        if not self.in_flight:
            raise RuntimeError("no step in flight")
        out = self._results.get()
        self.in_flight -= 1
        if isinstance(out, _Failure):
            raise out.error
        return out

    def drain(self) -> list[Step | None]:
        return [self.result() for _ in range(self.in_flight)]

    def reset(self):
        """(obs, info, rgb) of a new episode; the env is idle once this returns."""
        if self.in_flight:
            raise RuntimeError("reset with steps in flight: drain() first")
        self.in_flight += 1
        self._actions.put(_RESET)
        return self.result()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the worker after the steps already queued; the env itself is closed by its owner, and
        only when this returns True (False: a step is still running after `timeout` seconds)."""
        self._actions.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _rgb(self):
        return self._frame_source.last_rgb if self._frame_source is not None else None

    def _work(self) -> None:
        done, obs = True, None  # nothing is played before the first reset
        while True:
            item = self._actions.get()
            if item is _STOP:
                return
            try:
                if item is _RESET:
                    obs, info = self.env.reset()
                    done, out = False, (obs, info, self._rgb())
                elif done:
                    out = None
                else:
                    action = self.policy(obs) if item == GREEDY else item
                    obs, reward, terminated, truncated, info = self.env.step(action)
                    done = terminated or truncated
                    out = Step(action, obs, reward, terminated, truncated, info, self._rgb())
            except BaseException as exc:  # handed to the actor's thread, which raises it
                done, out = True, _Failure(exc)
            self._results.put(out)

"""Steps an actor's envs in a worker thread, so the actor's main thread computes actions and does its
bookkeeping (chunks, sends, window, video) while the emulators run.

nes-py's emulator is C++ called through ctypes, which releases the GIL, and so does PyTorch's forward,
so the two threads really overlap. Work comes in jobs: one action (or RESET) for each of some envs,
stepped in the order given; jobs run strictly in the order submitted and their results come back in
that order. An actor with two groups of envs keeps one group's job running while it chooses the
other group's actions: Sample Factory's double-buffered sampling.
"""

from __future__ import annotations

import queue
import threading
from typing import NamedTuple, Sequence

import numpy as np

RESET = -1  # submitted instead of an action: start a new episode


class Step(NamedTuple):
    action: int
    obs: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    info: dict
    rgb: np.ndarray | None  # the frame to show and record (taken before the next step replaces it)


class Reset(NamedTuple):
    obs: np.ndarray
    info: dict
    rgb: np.ndarray | None


class _Failure(NamedTuple):
    error: BaseException


_STOP = object()


class EnvThread:
    """`submit` queues a job of (env index, action or RESET) pairs; `result` returns the oldest job's
    Steps and Resets, in its order. Stepping an env whose episode has ended without a RESET is an error."""

    def __init__(self, envs: Sequence, frame_sources: Sequence | None = None):
        self.envs = list(envs)
        self._frame_sources = list(frame_sources) if frame_sources is not None else [None] * len(self.envs)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self.in_flight = 0  # jobs submitted and not yet returned by result()
        self._thread = threading.Thread(target=self._work, name="env", daemon=True)
        self._thread.start()

    def submit(self, job: list[tuple[int, int]]) -> None:
        self.in_flight += 1
        self._jobs.put(job)

    def result(self) -> list[Step | Reset]:
        """The oldest submitted job's results; re-raises what an env raised (the rest of that job is not played)."""
        if not self.in_flight:
            raise RuntimeError("no job in flight")
        out = self._results.get()
        self.in_flight -= 1
        if isinstance(out, _Failure):
            raise out.error
        return out

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the worker after the jobs already queued; the envs themselves are closed by their owner,
        and only when this returns True (False: a step is still running after `timeout` seconds)."""
        self._jobs.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        done = [True] * len(self.envs)  # nothing is played before an env's first reset
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            out: list[Step | Reset] = []
            try:
                for index, action in job:
                    env, frames = self.envs[index], self._frame_sources[index]
                    if action == RESET:
                        obs, info = env.reset()
                        done[index] = False
                        out.append(Reset(obs, info, frames.last_rgb if frames is not None else None))
                        continue
                    if done[index]:
                        raise RuntimeError(f"env {index} stepped after its episode ended, without a reset")
                    obs, reward, terminated, truncated, info = env.step(action)
                    done[index] = terminated or truncated
                    rgb = frames.last_rgb if frames is not None else None
                    out.append(Step(action, obs, reward, terminated, truncated, info, rgb))
            except BaseException as exc:  # handed to the actor's thread, which raises it
                done = [True] * len(self.envs)
                self._results.put(_Failure(exc))
                continue
            self._results.put(out)

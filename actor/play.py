"""`python launch.py --play CHECKPOINT`: watch a trained agent, no learner or replay server needed.

Loads the online network from a checkpoint (weights_only), plays greedy episodes in the "Mario"
window (or headless), records them to mario_play.mp4 beside the checkpoint, and prints each
episode's reward, x position and whether the flag was reached.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from actor.display import LiveWindow, display_available
from actor.evaluate import EpisodeResult, load_policy, play
from actor.recorder import RecordingError, VideoWriter
from actor.envs import joypad_actions
from common.records import DEATH_END, STALL_END, STEP_LIMIT_END

ENDED_BY = {DEATH_END: "died", STALL_END: "stalled", STEP_LIMIT_END: "out of steps"}
"""What the episode line says of an episode that did not reach the flag."""


class _Screen:
    """The window and the video of a play session, opened on the first frame (whose size they take)."""

    def __init__(self, video_path: str | None, fps: float, headless: bool, say):
        self.video_path, self.fps, self.headless, self.say = video_path, fps, headless, say
        self.window = self.video = None
        self.started = False

    def __call__(self, rgb: np.ndarray) -> None:
        if not self.started:
            self._open(*rgb.shape[:2])
        if self.window is not None and self.window.open:
            self.window.show(rgb)
        if self.video is not None:
            try:
                self.video.write(rgb)
            except RecordingError as exc:
                self.say(f"{exc}; recording stops")
                self.video.close()
                self.video = None

    def _open(self, height: int, width: int) -> None:
        self.started = True
        if not self.headless:
            if display_available():
                self.window = LiveWindow(height, width)
            else:
                self.say("no display found (DISPLAY is not set): playing without the live window")
        if self.video_path:
            try:
                self.video = VideoWriter(self.video_path, self.fps, width, height)
                self.say(f"recording {self.video_path}")
            except RecordingError as exc:
                self.say(f"{exc}; playing without recording")

    def close(self) -> None:
        if self.video is not None:
            self.video.close()
        if self.window is not None:
            self.window.close()


def play_checkpoint(
    path: str, episodes: int, headless: bool, record: bool, epsilon: float = 0.0, say=print
) -> list[EpisodeResult]:
    warnings.filterwarnings("ignore", module="gym")
    net, config = load_policy(path)
    video_path = os.path.join(os.path.dirname(os.path.abspath(path)), "mario_play.mp4") if record else None
    screen = _Screen(video_path, 60.0 / config.frame_skip, headless, say)

    names = [" ".join(buttons) for buttons in joypad_actions(config.action_set)]

    def report(episode: int, result: EpisodeResult) -> None:
        greedy_stop = not result.flag and epsilon == 0  # with exploration the last steps are partly random
        held = f" (its last {result.last_action_repeats} steps: {names[result.last_action]!r})" if greedy_stop else ""
        end = "" if result.flag else f": {ENDED_BY.get(result.end, 'ended')}"
        say(
            f"episode {episode}: reward {result.reward:.2f}, x_pos {result.x_pos}, steps {result.steps}, "
            f"flag {'reached' if result.flag else 'not reached'}{end}{held}"
        )

    try:
        return play(
            net,
            config,
            episodes,
            epsilon=epsilon,
            seed=int.from_bytes(os.urandom(4), "little"),
            on_frame=screen,
            on_episode=report,
        )
    finally:
        screen.close()

"""The actor process: plays Mario epsilon-greedily, streams transitions, picks up new weights.

Sockets (addresses from the config, types and options from common/topology.py):
- replay_in, PUSH (connects): "transitions" chunks (every `chunk_size` steps and at episode end)
  and one "episode" message per finished episode.
- weights, SUB with CONFLATE (connects): only the newest "weights" message is kept; the actor
  checks for it after each step and never waits for it. A "bye" there means the learner stopped: the
  actor plays on with the weights it has; its transitions queue (up to the socket's limit, then are
  dropped and counted) until a learner is back, which ZeroMQ reconnects to by itself.
It reports each episode to the launcher (which writes log.txt) and writes TensorBoard scalars.
The emulator and the network's forward run in an env thread (actor/env_thread.py) while the main
thread does everything else.
"""

from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np
import torch
import zmq

from actor.acting_network import choose_precision, make_policy
from actor.best_eval import BestEval
from actor.chunks import ChunkBuilder
from actor.curriculum import Curriculum
from actor.display import LiveWindow, display_available
from actor.env_thread import GREEDY, EnvThread
from actor.epsilon import actor_epsilon
from actor.recorder import EpisodeRecorder, RecordingError, VideoWriter
from actor.envs import LevelSampler, evaluation_limits, find_wrapper, make_env
from common.log_limit import LogLimit
from common.metrics import Metrics
from common.network import build_network, greedy_action, network_from_arrays
from common.protocol import ProtocolError, decode, encode
from common.records import ActorDone, ActorProgress, ActorStart, EpisodeReport, EvalResult
from common.runtime import RoleRuntime
from common.topology import connect_socket
from actor.wrappers import FrameSkip

LAST_SEND_WAIT_MS = 1000  # at the stop, how long the last flush waits for room in a full queue


class Actor:
    def __init__(self, runtime: RoleRuntime, run_dir: str):
        self.rt = runtime
        c = self.config = runtime.config
        self.index = runtime.index
        start: ActorStart = runtime.start
        self.restarts = start.restarts
        self.seed = actor_seed(c.seed, c.run_actor(self.index), self.restarts)
        self.env = make_env(c, seed=self.seed)
        if self.env.action_space.n != c.num_actions:
            raise ValueError(f"{c.env} has {self.env.action_space.n} actions but num_actions is {c.num_actions}")
        self.frame_skip = find_wrapper(self.env, FrameSkip)
        self.curriculum = self._make_curriculum()
        self.net = build_network(c).eval()
        self.precision, why = choose_precision(self.net, c)
        restarted = f"; restart {self.restarts}: a new seed, {self.seed}" if self.restarts else ""
        runtime.log(f"acting in {self.precision} ({why}){restarted}")
        self.policy = make_policy(self.net, self.precision)
        self.stepper = EnvThread(self.env, self._greedy, self.frame_skip)
        self.rng = np.random.default_rng(self.seed)
        self.push = connect_socket(runtime.transport, c, "replay_in")
        self.sub = connect_socket(runtime.transport, c, "weights")
        self.chunk = ChunkBuilder(c.frame_stack, c.n_step, c.gamma)
        self.window = self._open_window()
        self.run_video, self.episode_video = self._open_recorders(run_dir)
        self.metrics = Metrics(run_dir, f".actor{self.index}", runtime.log)
        self.best_eval = BestEval(run_dir, c, runtime.log)
        self.steps = start.actor_steps  # this actor's env steps over the whole run
        self.session_steps = start.session_steps  # ... since this launch (what limits count)
        self.joining = start.join  # an actor side of its own: continue the run's exploration
        reset = start.reset_epsilon  # --resume-reset-exploration: decay again from here
        self.epsilon_origin = 0 if reset is None else start.epsilon_origin
        self.epsilon_start = c.epsilon_start if reset is None else reset
        self.episodes = start.episodes  # this launch's, continued over a restart
        self.learner_stopped = False
        self.weights_version = 0
        self.weights_updates = 0  # learner updates behind the weights in use (0 = initial)
        self.dropped_chunks = 0  # experience messages dropped: the replay server was not taking them
        self._drop_log = LogLimit()
        self.dropped = 0  # bad weights messages, ignored
        self._bad_weights_log = LogLimit()
        self.step_cap = math.ceil(c.max_steps / c.actors) if c.max_steps else 0
        self.episode_cap = math.ceil(c.max_episodes / c.actors) if c.max_episodes else 0

    def _make_curriculum(self) -> Curriculum | None:
        c = self.config
        if not c.curriculum:
            return None
        try:
            levels = find_wrapper(self.env, LevelSampler)
        except LookupError:
            return None  # one level: nothing to move on to
        levels.index = min(self.rt.start.level, len(levels.levels) - 1)  # after a restart
        return Curriculum(levels, c.curriculum_threshold, c.curriculum_window)

    def _open_window(self) -> LiveWindow | None:
        if self.index != 0 or self.config.headless:
            return None
        if not display_available():
            self.rt.log("no display found (DISPLAY is not set): running without the live window")
            return None
        height, width = self.frame_skip.env.observation_space.shape[:2]
        return LiveWindow(height, width)

    def _open_recorders(self, run_dir: str):
        """mario_run.mp4 for the display actor (a new mario_run_N.mp4 segment on resume); every
        actor records its episodes so the run's best one can be kept."""
        if not self.config.video:
            return None, None
        height, width = self.frame_skip.env.observation_space.shape[:2]
        fps = 60.0 / self.config.frame_skip  # one frame per agent step plays at the game's speed
        run_video = None
        try:
            if self.index == 0:
                run_video = VideoWriter(_next_segment(run_dir), fps, width, height)
            return run_video, EpisodeRecorder(run_dir, self.index, fps, width, height)
        except RecordingError as exc:
            self.rt.log(f"{exc}; recording is off, training goes on")
            if run_video is not None:
                run_video.close()
            return None, None

    def _show_and_record(self, rgb: np.ndarray, episode: bool = True) -> None:
        """Window and run video always; the episode video (best-run candidate) for training episodes."""
        if self.window is not None and self.window.open:
            self.window.show(rgb)
        for name in ("run_video", "episode_video") if episode else ("run_video",):
            recorder = getattr(self, name)
            if recorder is None:
                continue
            try:
                recorder.write(rgb)
            except RecordingError as exc:
                self.rt.log(f"{exc}; recording stops, training goes on")
                recorder.close()
                setattr(self, name, None)

    # --- loop --------------------------------------------------------------------------------
    def run(self) -> None:
        """Play until stopped or capped. The env and the greedy forward run in the env thread, which
        always has the next step queued; this thread does the bookkeeping (chunks, sends, window,
        video, weights) meanwhile, so the emulator does not wait for it."""
        self._session_started = time.monotonic()
        steps_at_start = self.session_steps  # a restarted process continues the count, not the clock
        self._reset()
        episode_reward, episode_steps = 0.0, 0
        started, steps_at_report = self._session_started, steps_at_start  # for the steps/s figure
        self._submit_ahead()
        while self.stepper.in_flight:
            step = self.stepper.result()
            done = step.terminated or step.truncated
            self.steps += 1
            self.session_steps += 1
            if not done:
                self._submit_ahead()  # first: the env thread must never wait for what follows
            self._poll_weights()
            self.chunk.add(step.obs[-1], step.action, step.reward, step.terminated, step.truncated)
            episode_reward += step.reward
            episode_steps += 1
            self._show_and_record(step.rgb)
            if done or len(self.chunk) >= self.config.chunk_size:
                self._send(encode("transitions", actor=self.index, **self.chunk.take()))
            if done:
                self.stepper.drain()  # steps queued behind the episode's end: not played
                self._finish_episode(episode_reward, episode_steps, step.info, self.epsilon())
                if self._evaluation_due():
                    self._evaluate()
                self._reset()
                episode_reward, episode_steps = 0.0, 0
                self._submit_ahead()
            if self.rt.progress_due():
                self.rt.check_links()
                now = time.monotonic()
                rate = (self.session_steps - steps_at_report) / max(now - started, 1e-9)
                started, steps_at_report = now, self.session_steps
                self.metrics.scalar("Actor/StepsPerSec", rate, self.steps)
                self._report_progress(rate, self.epsilon())
        self.chunk.flush_pending()  # stopping mid-episode is a truncation: nothing is lost
        if len(self.chunk):
            self._send(encode("transitions", actor=self.index, **self.chunk.take()))
        elapsed = time.monotonic() - self._session_started
        self._report_progress((self.session_steps - steps_at_start) / max(elapsed, 1e-9), self.epsilon())  # its mean
        if self._cap_reached():
            self.rt.report("done", ActorDone(session_steps=self.session_steps, episodes=self.episodes))
            self.rt.log(f"reached its limit after {self.session_steps} steps and {self.episodes} episodes")
            while not self.rt.should_stop():  # wait for the launcher to stop everyone
                time.sleep(0.1)

    def _submit_ahead(self) -> None:
        """Keep the env thread busy: up to two steps in flight, each a random action or GREEDY (the env
        thread asks the network once the step's observation exists). Each step's coin is flipped once,
        when it is queued, with the epsilon of the newest finished step."""
        while self.stepper.in_flight < 2 and not (self.rt.should_stop() or self._cap_reached(self.stepper.in_flight)):
            explore = self.rng.random() < self.epsilon()
            self.stepper.submit(int(self.rng.integers(self.config.num_actions)) if explore else GREEDY)

    def epsilon(self) -> float:
        return actor_epsilon(self.config, self.index, self.steps - self.epsilon_origin, self.epsilon_start)

    def _cap_reached(self, ahead: int = 0) -> bool:
        """This session's step or episode limit is reached, counting `ahead` steps already submitted."""
        return bool(
            self.step_cap
            and self.session_steps + ahead >= self.step_cap
            or self.episode_cap
            and self.episodes >= self.episode_cap
        )

    def _evaluation_due(self) -> bool:
        every = self.config.eval_every_episodes
        return self.index == 0 and every > 0 and self.episodes % every == 0 and not self._cap_reached()

    def _evaluate(self) -> None:
        """Greedy episodes (epsilon eval_epsilon) with the newest weights, kept for the whole evaluation
        (new ones wait) so the network behind a result is one network: the best is saved to replay it.
        Nothing is sent for training and no training counter moves; the window and mario_run.mp4 show them."""
        c = self.config
        self._poll_weights()
        net, results = self.net, []
        for _ in range(c.eval_episodes):
            with evaluation_limits(self.env, c):
                result = self._evaluation_episode()
            if result is None:
                return
            self.rt.report("eval", result)  # the launcher logs it to log.txt
            results.append(result)
            self.best_eval.offer(result, net)
        self.metrics.scalar("Eval/Reward", float(np.mean([r.reward for r in results])), self.steps)
        self.metrics.scalar("Eval/XPos", float(np.mean([r.x_pos for r in results])), self.steps)
        self.metrics.scalar("Eval/FlagRate", float(np.mean([r.flag for r in results])), self.steps)

    def _evaluation_episode(self) -> EvalResult | None:
        """One evaluation episode's result (None: stopped midway)."""
        obs, _ = self.env.reset()  # the env thread is idle: between episodes
        self._show_and_record(self.frame_skip.last_rgb, episode=False)
        total, steps, done, info = 0.0, 0, False, {}
        while not done:
            if self.rt.should_stop():
                return None
            obs, reward, terminated, truncated, info = self.env.step(self._act(obs, self.config.eval_epsilon))
            self._show_and_record(self.frame_skip.last_rgb, episode=False)
            total, steps, done = total + reward, steps + 1, terminated or truncated
        return EvalResult(
            actor=self.index,
            reward=float(total),
            steps=steps,
            x_pos=int(info.get("x_pos", 0)),
            flag=bool(info.get("flag_get", False)),
            actor_steps=self.steps,
        )

    def _reset(self) -> None:
        obs, _, rgb = self.stepper.reset()  # nes-py takes no seed; exploration randomness comes from self.rng
        self.chunk.start_episode(obs[-1])
        if self.episode_video is not None:
            self.episode_video.start_episode()
        self._show_and_record(rgb)

    def _greedy(self, obs: np.ndarray) -> int:
        """The env thread's policy; replaced whole when weights arrive, never changed in place."""
        return self.policy(obs)

    def _act(self, obs: np.ndarray, epsilon: float) -> int:
        if self.rng.random() < epsilon:
            return int(self.rng.integers(self.config.num_actions))
        return greedy_action(self.net, obs)

    def _send(self, payload: bytes) -> None:
        """Queue a message for the replay server. With a pinned replay ratio a full queue means the learner
        is behind: wait for it (new weights still arrive). Otherwise the server is unreachable: drop it
        and keep playing."""
        while self.config.actors_wait_for_learner and not (self.learner_stopped or self.rt.should_stop()):
            if self.push.poll(100, zmq.POLLOUT):
                break
            self._poll_weights()
        if self.rt.should_stop():  # the last flush: the replay server takes everything once the stop began
            self.push.poll(LAST_SEND_WAIT_MS, zmq.POLLOUT)
        try:
            self.push.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped_chunks += 1
            if self._drop_log.due():
                self.rt.log(
                    f"the replay server is not taking experience (its queue of {self.config.actor_queue_chunks()} "
                    f"messages is full): {self.dropped_chunks:,} message(s) dropped so far; playing on"
                )

    def _poll_weights(self) -> None:
        try:
            payload = self.sub.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            msg = decode(payload, self.config.max_message_bytes, expect=("weights", "bye"))
            if msg["t"] == "weights":
                net = network_from_arrays(self.config, msg["tensors"])  # whole: never changed in place
                self.net, self.policy = net, make_policy(net, self.precision)
        except (ProtocolError, ValueError) as exc:
            self.dropped += 1
            if self._bad_weights_log.due():
                self.rt.log(f"ignored bad weights ({str(exc)[:200]}); {self.dropped:,} ignored so far")
            return
        if msg["t"] == "bye":
            self.learner_stopped = True
            self.rt.log(
                f"the learner stopped (it saved {msg['checkpoint'] or 'no checkpoint'}); playing on with the "
                f"weights of update {self.weights_updates:,}, experience queues until a learner is back"
            )
            return
        self.weights_version, self.weights_updates = msg["weights_version"], msg["weights_updates"]
        if self.learner_stopped:
            self.learner_stopped = False
            self.rt.log(f"a learner is back: weights of update {self.weights_updates:,}")
        run_steps = msg["run"].env_steps if "run" in msg else 0  # (a RunCounters record)
        if self.joining and self.config.epsilon_schedule == "anneal" and run_steps > 0:
            share = run_steps // self.config.actors
            if share > self.steps:  # joining a running learner: explore as far into the schedule as the run is
                self.steps = share
                self.rt.log(f"joined a run at {int(run_steps):,} env steps: epsilon {self.epsilon():.2f}")
        self.joining = False

    def _finish_episode(self, reward: float, steps: int, info: dict, epsilon: float) -> None:
        self.episodes += 1
        x_pos, flag = int(info.get("x_pos", 0)), bool(info.get("flag_get", False))
        values = {
            "actor": self.index,
            "episode": self.episodes,
            "reward": float(reward),
            "steps": steps,
            "x_pos": x_pos,
            "flag": flag,
            "epsilon": float(epsilon),
            "actor_steps": self.steps,
        }
        self._send(encode("episode", **values))
        self.rt.report("episode", EpisodeReport(**values, session_steps=self.session_steps, level=self._level()))
        if self.curriculum is not None:
            self.metrics.scalar("Episode/Level", self.curriculum.levels.index, self.steps)
            moved = self.curriculum.on_episode(reward)
            if moved:
                self.rt.log(moved)
        if self.episode_video is not None:
            try:
                best = self.episode_video.end_episode(reward)
            except RecordingError as exc:
                self.rt.log(f"{exc}; recording stops, training goes on")
                self.episode_video.close()
                self.episode_video = None
                best = None
            if best:
                self.rt.log(f"new best episode (reward {reward:.2f}): {os.path.basename(best)}")
        for tag, value in (
            ("Episode/Reward", reward),
            ("Episode/Epsilon", epsilon),
            ("Episode/XPos", x_pos),
            ("Episode/Flag", float(flag)),
            ("Episode/Steps", steps),
        ):
            self.metrics.scalar(tag, value, self.steps)

    def _level(self) -> int:
        """The curriculum position, for the launcher to hand back if this process is restarted."""
        return self.curriculum.levels.index if self.curriculum is not None else 0

    def _report_progress(self, rate: float, epsilon: float) -> None:
        self.rt.report(
            "progress",
            ActorProgress(
                actor_steps=self.steps,
                session_steps=self.session_steps,
                episodes=self.episodes,
                steps_per_s=rate,
                epsilon=epsilon,
                weights_version=self.weights_version,
                weights_updates=self.weights_updates,
                learner_stopped=self.learner_stopped,
                level=self._level(),
                dropped=self.dropped,
                dropped_chunks=self.dropped_chunks,
            ),
        )

    def close(self) -> None:
        if self.window is not None:
            self.window.close()
        for recorder in (self.run_video, self.episode_video):
            if recorder is not None:
                recorder.close()
        self.metrics.close()
        if self.stepper.close():
            self.env.close()
        else:  # closing the emulator under a running step could crash the process
            self.rt.log("the env thread is stuck in a step; leaving the emulator to the process exit")


def actor_seed(seed: int, run_actor: int, restarts: int) -> int:
    """seed + actor at the first start; a restart gets another seed, from (seed, actor, restart count), so a
    restarted actor does not replay the episodes of the process it replaces."""
    if not restarts:
        return seed + run_actor
    return int(np.random.SeedSequence([seed, run_actor, restarts]).generate_state(1)[0])


def _next_segment(run_dir: str) -> str:
    """mario_run.mp4, or on a resumed run the first free mario_run_N.mp4: never overwrite a video."""
    path, n = os.path.join(run_dir, "mario_run.mp4"), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(run_dir, f"mario_run_{n}.mp4")
    return path


def main(runtime: RoleRuntime, run_dir: str) -> None:
    warnings.filterwarnings("ignore", module="gym")
    torch.set_num_threads(1)
    actor = Actor(runtime, run_dir)
    try:
        actor.run()
    finally:
        actor.close()

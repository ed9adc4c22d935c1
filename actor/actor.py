"""The actor process: plays Mario epsilon-greedily, streams transitions, picks up new weights.

Sockets (addresses from the config, types and options from common/topology.py):
- replay_in, PUSH (connects): "transitions" chunks (every `chunk_size` steps and at episode end)
  and one "episode" message per finished episode.
- weights, SUB with CONFLATE (connects): only the newest "weights" message is kept; the actor
  checks for it after each step and never waits for it. A "bye" there means the learner stopped: the
  actor plays on with the weights it has; its transitions queue (up to the socket's limit, then are
  dropped and counted) until a learner is back, which ZeroMQ reconnects to by itself.
It reports each episode to the launcher (which writes log.txt) and writes TensorBoard scalars.
It steps envs_per_actor envs (EnvSlot: each with its own seed, epsilon, episode and n-step chunk) in
an env thread (actor/env_thread.py), in two groups: while the emulators play one group's step, the
main thread takes the other group's results, chooses its next actions in one batched forward and does
the bookkeeping. With one env, its next action is chosen as soon as its step is back.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import zmq

from actor.acting_network import choose_precision, make_policy
from actor.best_eval import BestEval
from actor.chunks import ChunkBuilder
from actor.curriculum import Curriculum
from actor.display import LiveWindow, display_available
from actor.env_thread import RESET, EnvThread, Reset, Step
from actor.epsilon import actor_epsilon
from actor.recorder import EpisodeRecorder, RecordingError, VideoWriter
from actor.envs import LevelSampler, evaluation_limits, find_wrapper, make_env
from common.log_limit import LogLimit
from common.metrics import Metrics
from common.network import build_network, network_from_arrays
from common.protocol import ProtocolError, decode, encode
from common.records import ActorDone, ActorProgress, ActorStart, EpisodeReport, EvalResult
from common.runtime import RoleRuntime
from common.topology import connect_socket
from actor.wrappers import FrameSkip, episode_end
from actor.evaluate import epsilon_greedy, play_episode

LAST_SEND_WAIT_MS = 1000  # at the stop, how long the last flush (all its messages together) waits for room


@dataclass(eq=False)
class EnvSlot:
    """One of an actor's envs, with what is its own: seed, exploration coin, episode, n-step chunk,
    curriculum and best-episode recorder."""

    index: int  # within the actor
    seed: int
    env: object
    frame_skip: FrameSkip
    rng: np.random.Generator
    chunk: ChunkBuilder
    curriculum: Curriculum | None = None
    recorder: EpisodeRecorder | None = None
    obs: np.ndarray | None = None  # the newest observation; None: the episode ended, a reset is due
    reward: float = 0.0  # the episode's so far
    steps: int = 0
    first_frame: np.ndarray | None = None  # shown and recorded with the episode's first step, so a reset
    # taken after the stop leaves no frame that no step follows


class Actor:
    def __init__(self, runtime: RoleRuntime, run_dir: str):
        self.rt = runtime
        c = self.config = runtime.config
        self.index = runtime.index
        start: ActorStart = runtime.start
        self.restarts = start.restarts
        self.slots = [self._make_slot(j) for j in range(c.envs_per_actor)]
        half = (len(self.slots) + 1) // 2  # two groups, stepped in turn; one with a single env
        self.groups = [self.slots[:half], self.slots[half:]] if len(self.slots) > 1 else [self.slots]
        self.net = build_network(c).eval()
        self.precision, why = choose_precision(self.net, c)
        seeds = ", ".join(str(slot.seed) for slot in self.slots)
        new_seeds = "a new seed" if len(self.slots) == 1 else "new seeds"
        restarted = f"; restart {self.restarts}: {new_seeds}, {seeds}" if self.restarts else ""
        envs = f"; {len(self.slots)} envs, seeds {seeds}" if len(self.slots) > 1 and not self.restarts else ""
        runtime.log(f"acting in {self.precision} ({why}){envs}{restarted}")
        self.policy = make_policy(self.net, self.precision)
        self.stepper = EnvThread([slot.env for slot in self.slots], [slot.frame_skip for slot in self.slots])
        self.push = connect_socket(runtime.transport, c, "replay_in")
        self.sub = connect_socket(runtime.transport, c, "weights")
        self.window = self._open_window()
        self.run_video = self._open_recorders(run_dir)
        self.metrics = Metrics(run_dir, f".actor{self.index}", runtime.log)
        self.best_eval = BestEval(run_dir, c, runtime.log)
        self.steps = start.actor_steps  # this actor's env steps over the whole run (all its envs)
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
        self._steps_in_flight = 0  # steps submitted to the env thread and not yet counted
        self._last_flush_ends: float | None = None  # monotonic deadline of the last flush, set at the stop

    def _make_slot(self, j: int) -> EnvSlot:
        c = self.config
        seed = actor_seed(c.seed, c.run_env(self.index, j), self.restarts)
        env = make_env(c, seed=seed)
        if env.action_space.n != c.num_actions:
            raise ValueError(f"{c.env} has {env.action_space.n} actions but num_actions is {c.num_actions}")
        return EnvSlot(
            index=j,
            seed=seed,
            env=env,
            frame_skip=find_wrapper(env, FrameSkip),
            rng=np.random.default_rng(seed),
            chunk=ChunkBuilder(c.frame_stack, c.n_step, c.gamma),
            curriculum=self._make_curriculum(env),
        )

    def _make_curriculum(self, env) -> Curriculum | None:
        c = self.config
        if not c.curriculum:
            return None
        try:
            levels = find_wrapper(env, LevelSampler)
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
        height, width = self.slots[0].frame_skip.env.observation_space.shape[:2]
        return LiveWindow(height, width)

    def _open_recorders(self, run_dir: str) -> VideoWriter | None:
        """mario_run.mp4 for the display actor (a new mario_run_N.mp4 segment on resume); every env
        records its episodes so the run's best one can be kept."""
        if not self.config.video:
            return None
        height, width = self.slots[0].frame_skip.env.observation_space.shape[:2]
        fps = 60.0 / self.config.frame_skip  # one frame per agent step plays at the game's speed
        run_video = None
        try:
            if self.index == 0:
                run_video = VideoWriter(_next_segment(run_dir), fps, width, height)
            for slot in self.slots:
                slot.recorder = EpisodeRecorder(run_dir, self.index, fps, width, height, env_index=slot.index)
            return run_video
        except RecordingError as exc:
            self.rt.log(f"{exc}; recording is off, training goes on")
            if run_video is not None:
                run_video.close()
            for slot in self.slots:
                slot.recorder = None
            return None

    def _show_and_record(self, rgb: np.ndarray, slot: EnvSlot | None = None) -> None:
        """Env 0's training frames and every evaluation frame (slot None) go to the window and the run
        video; a training frame also to its env's episode video (a best-run candidate)."""
        if slot is None or slot.index == 0:
            if self.window is not None and self.window.open:
                self.window.show(rgb)
            if self.run_video is not None:
                self.run_video = self._write(self.run_video, rgb)
        if slot is not None and slot.recorder is not None:
            slot.recorder = self._write(slot.recorder, rgb)

    def _write(self, recorder, rgb: np.ndarray):
        """The recorder, or None once it failed (training goes on without it)."""
        try:
            recorder.write(rgb)
            return recorder
        except RecordingError as exc:
            self.rt.log(f"{exc}; recording stops, training goes on")
            recorder.close()
            return None

    # --- loop --------------------------------------------------------------------------------
    def run(self) -> None:
        """Play until stopped or capped. The env thread steps one group of envs while this thread takes
        the other group's results, chooses its next actions and does the bookkeeping (chunks, sends,
        window, video, weights), so the emulators do not wait for it."""
        self._session_started = time.monotonic()
        steps_at_start = self.session_steps  # a restarted process continues the count, not the clock
        started, steps_at_report = self._session_started, steps_at_start  # for the steps/s figure
        jobs: deque[tuple[list[EnvSlot], list[EnvSlot]]] = deque()  # (group, its slots in the job), oldest first
        for group in self.groups:
            self._submit(group, jobs)
        while jobs:
            group, slots = jobs.popleft()
            results = self.stepper.result()
            ended = False
            for slot, result in zip(slots, results):
                finished = isinstance(result, Step) and (result.terminated or result.truncated)
                slot.obs = None if finished else result.obs
                ended |= finished
            self._poll_weights()
            if not ended:
                self._submit(group, jobs)  # first: the env thread must never wait for what follows
            for slot, result in zip(slots, results):
                self._take(slot, result)
            if ended:  # after the bookkeeping, which may have played an evaluation on an ended env
                self._submit(group, jobs)
            if self.rt.progress_due():
                self.rt.check_links()
                now = time.monotonic()
                rate = (self.session_steps - steps_at_report) / max(now - started, 1e-9)
                started, steps_at_report = now, self.session_steps
                self.metrics.scalar("Actor/StepsPerSec", rate, self.steps)
                self._report_progress(rate, self.epsilon())
        for slot in self.slots:
            slot.chunk.flush_pending()  # stopping mid-episode is a truncation: nothing is lost
            if len(slot.chunk):
                self._send(encode("transitions", actor=self.index, **slot.chunk.take()))
        elapsed = time.monotonic() - self._session_started
        self._report_progress((self.session_steps - steps_at_start) / max(elapsed, 1e-9), self.epsilon())  # its mean
        if self._cap_reached():
            self.rt.report("done", ActorDone(session_steps=self.session_steps, episodes=self.episodes))
            self.rt.log(f"reached its limit after {self.session_steps} steps and {self.episodes} episodes")
            while not self.rt.should_stop():  # wait for the launcher to stop everyone
                time.sleep(0.1)

    def _submit(self, group: list[EnvSlot], jobs: deque) -> None:
        """Queue the group's next step in the env thread: a reset for each env whose episode ended, an
        action for the others (a coin flip with the env's epsilon, then one batched forward for the envs
        that act greedily). Nothing once stopping or capped; fewer steps where the step limit is near."""
        job, greedy = [], []
        for slot in group:
            if self.rt.should_stop() or self._cap_reached(self._steps_in_flight):
                break
            if slot.obs is None:
                job.append((slot, RESET))
                continue
            self._steps_in_flight += 1
            if slot.rng.random() < self.epsilon(slot):
                job.append((slot, int(slot.rng.integers(self.config.num_actions))))
            else:
                greedy.append(len(job))
                job.append((slot, None))
        if greedy:
            actions = self.policy(np.stack([job[i][0].obs for i in greedy]))
            for i, action in zip(greedy, actions):
                job[i] = (job[i][0], int(action))
        if job:
            self.stepper.submit([(slot.index, action) for slot, action in job])
            jobs.append((group, [slot for slot, _ in job]))

    def _take(self, slot: EnvSlot, result: Step | Reset) -> None:
        """One env's result: a new episode, or a step into its chunk (sent when full or at the episode's
        end), the window and videos; at an episode's end its report and perhaps an evaluation."""
        if isinstance(result, Reset):  # nes-py takes no seed; exploration randomness comes from slot.rng
            slot.chunk.start_episode(result.obs[-1])
            slot.reward, slot.steps = 0.0, 0
            if slot.recorder is not None:
                slot.recorder.start_episode()
            slot.first_frame = result.rgb
            return
        if slot.first_frame is not None:
            self._show_and_record(slot.first_frame, slot)
            slot.first_frame = None
        self.steps += 1
        self.session_steps += 1
        self._steps_in_flight -= 1
        slot.chunk.add(result.obs[-1], result.action, result.reward, result.terminated, result.truncated)
        slot.reward += result.reward
        slot.steps += 1
        self._show_and_record(result.rgb, slot)
        done = result.terminated or result.truncated
        if done or len(slot.chunk) >= self.config.chunk_size:
            self._send(encode("transitions", actor=self.index, **slot.chunk.take()))
        if done:
            self._finish_episode(slot, result.info, episode_end(result.terminated, result.info))
            if self._evaluation_due():
                self._evaluate(slot)

    def epsilon(self, slot: EnvSlot | None = None) -> float:
        """An env's exploration rate now (env 0's without one)."""
        env = slot.index if slot is not None else 0
        return actor_epsilon(self.config, self.index, self.steps - self.epsilon_origin, self.epsilon_start, env)

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

    def _evaluate(self, slot: EnvSlot) -> None:
        """Greedy episodes (epsilon eval_epsilon) on the env of `slot`, whose training episode just ended (the
        env thread is stepping other envs meanwhile), with the newest weights, kept for the whole
        evaluation (new ones wait) so the network behind a result is one network: the best is saved to
        replay it. Nothing is sent for training and no training counter moves; the window and
        mario_run.mp4 show them."""
        c = self.config
        self._poll_weights()
        net, results = self.net, []
        for _ in range(c.eval_episodes):
            with evaluation_limits(slot.env, c):
                result = self._evaluation_episode(slot)
            if result is None:
                return
            self.rt.report("eval", result)  # the launcher logs it to log.txt
            results.append(result)
            self.best_eval.offer(result, net)
        self.metrics.scalar("Eval/Reward", float(np.mean([r.reward for r in results])), self.steps)
        self.metrics.scalar("Eval/XPos", float(np.mean([r.x_pos for r in results])), self.steps)
        self.metrics.scalar("Eval/FlagRate", float(np.mean([r.flag for r in results])), self.steps)

    def _evaluation_episode(self, slot: EnvSlot) -> EvalResult | None:
        """One evaluation episode's result (None: stopped midway)."""
        c = self.config
        choose = epsilon_greedy(self.net, c.eval_epsilon, slot.rng, c.num_actions)
        played = play_episode(slot.env, choose, self._show_and_record, self.rt.should_stop)
        return None if played is None else played.as_eval(self.index, self.steps)

    def _send(self, payload: bytes) -> None:
        """Queue a message for the replay server. With a pinned replay ratio a full queue means the learner
        is behind: wait for it (new weights still arrive). Otherwise the server is unreachable: drop it
        and keep playing."""
        while self.config.actors_wait_for_learner and not (self.learner_stopped or self.rt.should_stop()):
            if self.push.poll(100, zmq.POLLOUT):
                break
            self._poll_weights()
        if self.rt.should_stop():  # the last flush: the replay server takes everything once the stop began
            if self._last_flush_ends is None:  # one wait for all the messages, however many envs flush
                self._last_flush_ends = time.monotonic() + LAST_SEND_WAIT_MS / 1000
            left_ms = int((self._last_flush_ends - time.monotonic()) * 1000)
            if left_ms > 0:
                self.push.poll(left_ms, zmq.POLLOUT)
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

    def _finish_episode(self, slot: EnvSlot, info: dict, end: int) -> None:
        self.episodes += 1
        reward, steps, epsilon = slot.reward, slot.steps, self.epsilon(slot)
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
        report = EpisodeReport(**values, end=end, session_steps=self.session_steps, level=self._level(slot))
        self.rt.report("episode", report)
        if slot.curriculum is not None:
            if slot.index == 0:
                self.metrics.scalar("Episode/Level", slot.curriculum.levels.index, self.steps)
            moved = slot.curriculum.on_episode(reward)
            if moved:
                self.rt.log(moved if len(self.slots) == 1 else f"env {slot.index}: {moved}")
        if slot.recorder is not None:
            try:
                best = slot.recorder.end_episode(reward)
            except RecordingError as exc:
                self.rt.log(f"{exc}; recording stops, training goes on")
                slot.recorder.close()
                slot.recorder = None
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

    def _level(self, slot: EnvSlot | None = None) -> int:
        """The curriculum position (env 0's without a slot), for the launcher to hand back if this process
        is restarted."""
        slot = slot or self.slots[0]
        return slot.curriculum.levels.index if slot.curriculum is not None else 0

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
        for recorder in (self.run_video, *(slot.recorder for slot in self.slots)):
            if recorder is not None:
                recorder.close()
        self.metrics.close()
        if self.stepper.close():
            for slot in self.slots:
                slot.env.close()
        else:  # closing an emulator under a running step could crash the process
            self.rt.log("the env thread is stuck in a step; leaving the emulators to the process exit")


def actor_seed(seed: int, run_env: int, restarts: int) -> int:
    """seed + env (run-wide) at the first start; a restart gets another seed, from (seed, env, restart
    count), so a restarted actor does not replay the episodes of the process it replaces."""
    if not restarts:
        return seed + run_env
    return int(np.random.SeedSequence([seed, run_env, restarts]).generate_state(1)[0])


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

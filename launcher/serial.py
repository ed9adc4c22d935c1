"""`launch.py --serial`: the whole Ape-X loop in one process, no ZeroMQ, read top to bottom.

    act epsilon-greedily -> n-step chunks -> prioritized replay -> learner update -> new priorities
                                                                               -> acting weights

The same components as the distributed trainer (make_env, ChunkBuilder, PrioritizedReplay with the replay
server's RateLimiter, DQNLearner, the actor's acting network and policy, EpisodeLog), called in turn by one
loop. It is slower (the emulator waits while the learner trains) and exists for reading the algorithm,
debugging it and stepping through it in a debugger. Where it differs from the default:
- The replay ratio is exact: from learning_starts stored transitions on, the learner samples
  samples_per_insert transitions per inserted one, or with samples_per_insert 0 one batch per 4 env steps
  (DQN's classic ratio, batch_size / 4). Updates follow inserts, which come in chunks (every chunk_size
  steps and at each episode's end), as at the replay server.
- One actor with one env (envs_per_actor is not used; actor 0's env 0's seed), no live window and no
  videos, no child process, no --resume.
- checkpoint.pth (every checkpoint_every episodes) holds the learner only; checkpoint_final.pth
  names a replay snapshot written synchronously beside it, so `--resume RUN` continues the run in the
  distributed trainer with its replay memory. Ctrl+C stops at the next step (exit status 130; SIGTERM 0);
  Ctrl+C during the final save abandons it (files are written atomically: those on disk stay whole).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
import warnings

import numpy as np
import torch

from actor.acting_network import choose_precision, make_policy
from actor.best_eval import BestEval
from actor.chunks import ChunkBuilder
from actor.curriculum import Curriculum
from actor.epsilon import actor_epsilon
from common.config import Config
from actor.envs import EnvError, LevelSampler, evaluation_limits, find_wrapper, level_ids, make_env, refused_settings
from actor.evaluate import epsilon_greedy, play_episode
from actor.wrappers import episode_end
from common.metrics import Metrics
from common.network import network_from_arrays, weights_to_arrays
from common.records import CheckpointCounters, EpisodeReport, EvalResult, as_map
from launcher.episode_log import EpisodeLog
from launcher.supervisor import StartError, limits_line, make_run_dir
from learner.device import DeviceError, pick_device
from learner.learning import DQNLearner
from replay_server.buffer import PrioritizedReplay
from replay_server.rate_limit import RateLimiter
from replay_server.snapshot import SnapshotError, remove_unused_frame_files, write_snapshot

PROGRESS_EVERY_S = 5.0
STEPS_PER_UPDATE = 4  # with samples_per_insert 0: one batch per 4 env steps


def say(text: str) -> None:
    print(f"mario-apex: {text}", flush=True)


class Stop:
    """Ctrl+C (exit 130) or SIGTERM (exit 0) asks the loop to stop after its current step."""

    def __init__(self):
        self.reason, self.exit_code = None, 0
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.reason is None:
            self.reason = "interrupted (Ctrl+C)" if signum == signal.SIGINT else "terminated (SIGTERM)"
            self.exit_code = 130 if signum == signal.SIGINT else 0


def acting_policy(learner: DQNLearner, precision: str):
    """What an actor builds from a weights message: a copy of the online network, and its greedy policy."""
    net = network_from_arrays(learner.config, weights_to_arrays(learner.online))
    return net, make_policy(net, precision)


def learn(learner: DQNLearner, replay: PrioritizedReplay, rng: np.random.Generator) -> dict:
    """One update: a prioritized batch (the replay server's sample), the learner's step, and the batch's new
    priorities |TD error| + eps back into the replay (what the learner sends on its next request)."""
    batch = replay.sample(learner.config.batch_size, learner.beta(), rng)
    metrics, priorities = learner.step(batch.frames, batch.actions, batch.rewards, batch.bootstraps, batch.weights)
    replay.update_priorities(batch.ids, priorities)
    return metrics


def evaluate(env, net, c: Config, rng: np.random.Generator, stop: Stop, run_steps: int) -> EvalResult | None:
    """A greedy evaluation episode (epsilon eval_epsilon), never trained on; None if stopped midway."""
    with evaluation_limits(env, c):
        played = play_episode(env, epsilon_greedy(net, c.eval_epsilon, rng, c.num_actions), None, lambda: stop.reason)
    return None if played is None else played.as_eval(0, run_steps)


def run_serial(c: Config) -> int:
    # --- set-up: everything that can fail comes before the run folder -------------------------------
    warnings.filterwarnings("ignore", module="gym")  # as the actor: gym's deprecation chatter
    refused = refused_settings(c)
    if refused:
        raise StartError(refused)
    try:
        device = pick_device(c.device)
        env = make_env(c, seed=c.seed + c.run_env(0))
    except (DeviceError, EnvError) as exc:
        raise StartError(str(exc)) from None
    if env.action_space.n != c.num_actions:
        raise StartError(f"{c.env} has {env.action_space.n} actions but num_actions is {c.num_actions}")
    if device.type == "cpu":  # as the learner process with one actor beside it
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    run_dir = make_run_dir(c.runs_dir)
    c.save(os.path.join(run_dir, "config.json"))
    say(f"run folder {run_dir}")
    say(
        f"serial: env {c.env}, actor, replay and learner in this process (no ZeroMQ), learner on {device}; "
        "Ctrl+C stops cleanly"
    )
    if limits := limits_line(c):
        say(limits)
    if not c.headless or c.video:
        say("--serial shows no live window and records no videos")
    log, metrics = EpisodeLog(os.path.join(run_dir, "log.txt")), Metrics(run_dir, ".serial", say)
    best_eval = BestEval(run_dir, c, say)
    levels = find_wrapper(env, LevelSampler) if len(level_ids(c.env)) > 1 else None
    curriculum = Curriculum(levels, c.curriculum_threshold, c.curriculum_window) if levels and c.curriculum else None

    torch.manual_seed(c.seed)  # the network's initial weights: the same config starts the same run
    learner = DQNLearner(c, device)
    replay = PrioritizedReplay(c.replay_capacity, c.frame_size, c.frame_stack, c.per_alpha, c.num_actions)
    ratio = c.samples_per_insert or c.batch_size / STEPS_PER_UPDATE
    limiter = RateLimiter(c.learning_starts, ratio, tolerance=0.0, pin_actors=False)
    sample_rng = np.random.default_rng(c.seed + 10_000)  # the replay server's
    rng = np.random.default_rng(c.seed + c.run_env(0))  # actor 0's env 0's
    chunks = ChunkBuilder(c.frame_stack, c.n_step, c.gamma)
    precision, why = choose_precision(learner.online, c)
    say(
        f"acting in {precision} ({why}); learning from {c.learning_starts:,} stored transitions, "
        f"{ratio:g} sampled per inserted one"
    )
    net, policy = acting_policy(learner, precision)
    weights_version, steps, episodes, evaluations, best = 1, 0, 0, 0, None
    loss = q_mean = None
    stop = Stop()
    started = last_print = time.monotonic()
    marks = (started, 0, 0)

    obs, _ = env.reset()
    chunks.start_episode(obs[-1])
    episode_reward, episode_steps = 0.0, 0
    while stop.reason is None:
        # 1. act: a random action with probability epsilon, else the acting network's greedy one
        explore = rng.random() < actor_epsilon(c, 0, steps)
        action = int(rng.integers(c.num_actions)) if explore else int(policy(obs[None])[0])
        obs, reward, terminated, truncated, info = env.step(action)
        steps, episode_reward, episode_steps = steps + 1, episode_reward + reward, episode_steps + 1
        chunks.add(obs[-1], action, reward, terminated, truncated)
        done = terminated or truncated

        # 2. a full chunk, or an episode's last transitions, goes into the prioritized replay
        if done or len(chunks) >= c.chunk_size:
            replay.add_chunk(**chunks.take())
            limiter.observe(len(replay), replay.inserted)

        # 3. learn at the replay ratio; every publish_every updates the actor acts with the new weights
        while limiter.can_sample(replay.inserted, c.batch_size):
            limiter.took(c.batch_size)
            result = learn(learner, replay, sample_rng)
            loss, q_mean = result["loss"], result["q_mean"]
            if learner.updates % c.publish_every == 0:
                net, policy = acting_policy(learner, precision)
                weights_version += 1

        # 4. stop conditions, as the launcher checks them
        if c.max_steps and steps >= c.max_steps:
            stop.reason = "reached --max-steps"
        elif c.max_minutes and time.monotonic() - started >= c.max_minutes * 60:
            stop.reason = "reached --max-minutes"

        # 5. an episode's end: log.txt, TensorBoard, curriculum, evaluation, checkpoint, a new episode
        if done:
            episodes += 1
            best = episode_reward if best is None else max(best, episode_reward)
            if c.max_episodes and episodes >= c.max_episodes:
                stop.reason = stop.reason or "reached --max-episodes"
            x_pos, flag = int(info.get("x_pos", 0)), bool(info.get("flag_get", False))
            log.write(
                episodes,
                EpisodeReport(
                    actor=0,
                    episode=episodes,
                    reward=episode_reward,
                    steps=episode_steps,
                    x_pos=x_pos,
                    flag=flag,
                    epsilon=actor_epsilon(c, 0, steps),
                    actor_steps=steps,
                    end=episode_end(terminated, info),
                    session_steps=steps,
                    level=curriculum.levels.index if curriculum else 0,
                ),
            )
            for tag, value in (
                ("Reward", episode_reward),
                ("Epsilon", actor_epsilon(c, 0, steps)),
                ("XPos", x_pos),
                ("Flag", float(flag)),
                ("Steps", episode_steps),
            ):
                metrics.scalar(f"Episode/{tag}", value, steps)
            moved = curriculum.on_episode(episode_reward) if curriculum else None
            if moved:
                say(moved)
            if c.eval_every_episodes and episodes % c.eval_every_episodes == 0 and not stop.reason:
                for _ in range(c.eval_episodes):  # with the acting weights, as actor 0 plays them
                    result = evaluate(env, net, c, rng, stop, steps)
                    if result is None:
                        break
                    evaluations += 1
                    log.write_eval(evaluations, result, steps)
                    best_eval.offer(result, net)
                    metrics.scalar("Eval/Reward", result.reward, steps)
                    metrics.scalar("Eval/XPos", result.x_pos, steps)
            if c.checkpoint_every and episodes % c.checkpoint_every == 0 and not stop.reason:
                try:
                    learner.save(
                        os.path.join(run_dir, "checkpoint.pth"),
                        as_map(counters(episodes, steps, best, replay, weights_version)),
                    )
                except OSError as exc:
                    say(f"could not write checkpoint.pth: {exc.strerror or exc}; training goes on")
            obs, _ = env.reset()
            chunks.start_episode(obs[-1])
            episode_reward, episode_steps = 0.0, 0

        # 6. progress on the terminal every few seconds
        now = time.monotonic()
        if now - last_print >= PROGRESS_EVERY_S:
            rates = ((steps - marks[1]) / (now - marks[0]), (learner.updates - marks[2]) / (now - marks[0]))
            print(
                status(
                    now - started,
                    steps,
                    episodes,
                    learner.updates,
                    rates,
                    loss,
                    actor_epsilon(c, 0, steps),
                    replay,
                    c,
                    best,
                ),
                flush=True,
            )
            if loss is not None:
                metrics.scalar("Loss/Optimize", loss, learner.updates)
                metrics.scalar("Q_Value/Mean", q_mean, learner.updates)
            last_print, marks = now, (now, steps, learner.updates)

    # --- stop: a cut episode is a truncation (its transitions still bootstrap); final checkpoint ------
    chunks.flush_pending()
    if len(chunks):
        replay.add_chunk(**chunks.take())
    say(f"stopping: {stop.reason} ...")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl+C now abandons the final checkpoint
    snapshot = f"checkpoint_final-{time.time_ns()}.replay.npz"
    try:
        write_snapshot(
            replay,
            {
                "episodes": episodes,
                "env_steps": steps,
                "best_reward": best or 0.0,
                "size": len(replay),
                "inserted": replay.inserted,
                "sampled": limiter.sampled,
                "rng": sample_rng.bit_generator.state,
            },
            os.path.join(run_dir, snapshot),
        )
        learner.save(
            os.path.join(run_dir, "checkpoint_final.pth"),
            as_map(
                dataclasses.replace(
                    counters(episodes, steps, best, replay, weights_version),
                    replay_file=snapshot,
                    replay_updates=learner.updates,
                )
            ),
        )
        say(f"saved checkpoint_final.pth with replay memory ({len(replay):,} transitions)")
    except KeyboardInterrupt:
        stop.exit_code = 130
        _remove_unnamed_snapshot(run_dir, snapshot)
        say("Ctrl+C during the final save: stopped without checkpoint_final.pth")
    except OSError as exc:
        _remove_unnamed_snapshot(run_dir, snapshot)
        say(f"could not write the final checkpoint: {exc.strerror or exc}")
    metrics.close()
    env.close()
    elapsed = time.monotonic() - started
    summary = {
        "mode": "serial",
        "stop_reason": stop.reason,
        "exit_code": stop.exit_code,
        "episodes": episodes,
        "env_steps": steps,
        "updates": learner.updates,
        "best_reward": best,
        "evaluations": evaluations,
        "seconds": round(elapsed, 1),
        "replay": {"size": len(replay), "inserted": replay.inserted, "sampled": limiter.sampled},
    }
    try:
        with open(os.path.join(run_dir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    except OSError as exc:
        say(f"could not write summary.json: {exc.strerror or exc}")
    say(
        status(
            elapsed,
            steps,
            episodes,
            learner.updates,
            (steps / elapsed, learner.updates / elapsed),
            loss,
            actor_epsilon(c, 0, steps),
            replay,
            c,
            best,
        )
    )
    say(f"stopped: {stop.reason}; results in {run_dir}")
    return stop.exit_code


def _remove_unnamed_snapshot(run_dir: str, snapshot: str) -> None:
    """After a failed final save: the snapshot no checkpoint names, and its frame files (a full disk is not
    left full)."""
    if not os.path.exists(os.path.join(run_dir, "checkpoint_final.pth")):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(run_dir, snapshot))
    with contextlib.suppress(OSError, SnapshotError):
        remove_unused_frame_files(run_dir)


def counters(
    episodes: int, steps: int, best: float | None, replay: PrioritizedReplay, weights_version: int
) -> CheckpointCounters:
    """The run's counters in a checkpoint, as the learner process writes them (without a replay file; the
    learner adds its updates)."""
    return CheckpointCounters(
        episodes=episodes,
        env_steps=steps,
        best_reward=best or 0.0,
        replay_size=len(replay),
        weights_version=weights_version,
    )


def status(
    seconds: float,
    steps: int,
    episodes: int,
    updates: int,
    rates: tuple[float, float],
    loss: float | None,
    eps: float,
    replay: PrioritizedReplay,
    c: Config,
    best: float | None,
) -> str:
    """The launcher's plain status line (launcher/status.py), from this loop's own counters."""
    s = int(seconds)
    parts = [
        f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}",
        f"steps {steps:,} ({rates[0]:.0f}/s)",
        f"episodes {episodes:,}",
        f"updates {updates:,} ({rates[1]:.1f}/s)",
    ]
    parts += [f"loss {loss:.4f}"] if loss is not None else []
    parts += [f"eps {eps:.2f}", f"replay {len(replay):,}/{c.replay_capacity:,}"]
    parts += [f"best {best:.2f}"] if best is not None else []
    return " | ".join(parts)

"""Run-wide progress as the launcher sees it, from the processes' reports: the status line and
summary.json."""

from __future__ import annotations

import time
from collections import deque

from common.records import (
    ActorProgress,
    ActorStart,
    CheckpointCounters,
    EpisodeReport,
    EvalResult,
    LearnerProgress,
    ReplayStats,
    as_map,
)

RATE_WINDOW_S = 10.0
"""Rates are averaged over this long: reports come once a second, so a 1 s window read 0/s about
every third refresh."""


class RunStatus:
    def __init__(self, replay_capacity: int, before: CheckpointCounters | None = None):
        """`before`: the counters of the checkpoint a resumed run continues, so totals, rates and the best
        reward go on from them."""
        before = before or CheckpointCounters()
        self.replay_capacity = replay_capacity
        self.episodes_before = before.episodes
        self.started = time.monotonic()
        self.actors: dict[int, ActorProgress] = {}  # latest progress per actor
        self.actor_episodes: dict[int, EpisodeReport] = {}  # latest episode per actor
        self.learner: LearnerProgress | None = None
        self.replay: ReplayStats | None = None
        self.episodes = 0
        self.best_reward: float | None = before.best_reward if self.episodes_before else None
        self.done_actors: set[int] = set()
        self.evaluations = 0
        self.last_eval: EvalResult | None = None
        self.dropped_reports = 0  # bad reports the launcher dropped (see Supervisor._drain_reports)
        self._rate_origin = (before.env_steps, before.updates)
        self._rate_marks: deque[tuple[float, int, int]] = deque([(time.monotonic(), *self._rate_origin)])
        self.rates = (0.0, 0.0)

    def on_report(self, msg: dict) -> None:
        """A report as common.protocol.check_report returns it: its values are the kind's record."""
        role, index, kind, values = msg["role"], msg["index"], msg["kind"], msg["values"]
        if kind == "progress":
            if role == "actor":
                self.actors[index] = values
            elif role == "learner":
                self.learner = values
            elif role == "replay":
                self.replay = values
        elif kind == "episode":
            self.episodes += 1
            self.actor_episodes[index] = values
            self.best_reward = values.reward if self.best_reward is None else max(self.best_reward, values.reward)
        elif kind == "eval":
            self.evaluations += 1
            self.last_eval = values
        elif kind == "done" and role == "actor":
            self.done_actors.add(index)

    def actor_counters(self, index: int) -> ActorStart:
        """What a restarted actor continues from: its steps, this launch's steps and episodes, and its
        curriculum level, from its latest progress report or episode, whichever is newer."""
        progress, episode = self.actors.get(index, ActorProgress()), self.actor_episodes.get(index, EpisodeReport())
        return ActorStart(
            actor_steps=max(progress.actor_steps, episode.actor_steps),
            session_steps=max(progress.session_steps, episode.session_steps),
            episodes=max(progress.episodes, episode.episode),
            level=max(progress.level, episode.level),
        )

    def env_steps_at(self, index: int, own_steps: int) -> int:
        """The run's env steps when actor `index` had played `own_steps` (an evaluation's moment): its exact
        count plus the other actors' latest (those of this launcher)."""
        others = (set(self.actors) | set(self.actor_episodes)) - {index}
        return own_steps + sum(self.actor_counters(i).actor_steps for i in others)

    @property
    def env_steps(self) -> int:
        """Env steps of the whole run, resumed sessions included (the replay server's count where no
        actor runs under this launcher)."""
        if not self.actors:
            return self.replay.env_steps if self.replay else 0
        return sum(a.actor_steps for a in self.actors.values())

    @property
    def session_steps(self) -> int:
        """Env steps since this launcher started (what --max-steps counts)."""
        return sum(a.session_steps for a in self.actors.values())

    @property
    def total_episodes(self) -> int:
        if not self.actors and self.replay:
            return self.replay.episodes  # the learner side: as the replay server counted them
        return self.episodes_before + self.episodes

    @property
    def updates(self) -> int:
        return self.learner.updates if self.learner else 0

    def _update_rates(self) -> None:
        """Steps/s and updates/s over the last RATE_WINDOW_S seconds (or since the start). Until a process
        has reported, its count reads 0: a resumed run's counts never fall below where it resumed."""
        now = time.monotonic()
        steps, updates = max(self.env_steps, self._rate_origin[0]), max(self.updates, self._rate_origin[1])
        marks = self._rate_marks
        marks.append((now, steps, updates))
        while len(marks) > 2 and now - marks[1][0] >= RATE_WINDOW_S:
            marks.popleft()
        mark_t, mark_steps, mark_updates = marks[0]
        if now - mark_t >= 1.0:
            self.rates = ((steps - mark_steps) / (now - mark_t), (updates - mark_updates) / (now - mark_t))

    def line(self, whole_run: bool = False) -> str:
        """The plain status line: elapsed time, steps and every field; with `whole_run` (the last line)
        the rates are this session's averages, not the last seconds' (which include the stop)."""
        self._update_rates()
        seconds = max(time.monotonic() - self.started, 1e-9)
        rates = (
            (self.session_steps / seconds, (self.updates - self._rate_origin[1]) / seconds) if whole_run else self.rates
        )
        elapsed = int(seconds)
        clock = f"{elapsed // 3600:02d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
        return " | ".join([clock, f"steps {self.env_steps:,} ({rates[0]:.0f}/s)", *self.fields(rates)])

    def fields(self, rates: tuple[float, float] | None = None) -> list[str]:
        """Everything but time and steps (the live bar shows those itself)."""
        if rates is None:
            self._update_rates()
            rates = self.rates
        parts = [f"episodes {self.total_episodes:,}"]
        if self.learner or not self.actors:
            parts.append(f"updates {self.updates:,} ({rates[1]:.1f}/s)")
        else:  # the actor side: the learner is elsewhere; its newest weights tell how far it is
            parts.append(f"weights of update {max(a.weights_updates for a in self.actors.values()):,}")
        if self.learner and self.learner.updates > self._rate_origin[1]:  # (a resumed run: once it trains)
            parts.append(f"loss {self.learner.loss:.4f}")
        if len(self.actors) > 1:  # per-actor throughput: a slow or stuck actor shows
            parts.append(
                "actors " + "/".join(f"{self.actors[i].steps_per_s:.0f}" for i in sorted(self.actors)) + " steps/s"
            )
        if not self.actors and self.replay:
            parts.append(f"actors connected {self.replay.actors}")
        if any(a.learner_stopped for a in self.actors.values()):
            parts.append("learner stopped")
        if self.actors:
            parts.append(f"eps {min(a.epsilon for a in self.actors.values()):.2f}")
        if self.replay or not self.actors:
            parts.append(f"replay {self.replay.size if self.replay else 0:,}/{self.replay_capacity:,}")
        if self.best_reward is not None:
            parts.append(f"best {self.best_reward:.2f}")
        if self.last_eval:
            parts.append(f"eval x {self.last_eval.x_pos}{' FLAG' if self.last_eval.flag else ''}")
        return parts

    def summary(self) -> dict:
        return {
            "episodes": self.episodes,
            "total_episodes": self.total_episodes,
            "env_steps": self.env_steps,
            "session_steps": self.session_steps,
            "updates": self.updates,
            "best_reward": self.best_reward,
            "evaluations": self.evaluations,
            "last_eval": as_map(self.last_eval) if self.last_eval else {},
            "dropped_reports": self.dropped_reports,
            "seconds": round(time.monotonic() - self.started, 1),
            "actors": {str(k): as_map(v) for k, v in self.actors.items()},
            "learner": as_map(self.learner) if self.learner else {},
            "replay": as_map(self.replay) if self.replay else {},
        }

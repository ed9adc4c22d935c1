"""Typed records for the counters that travel inside messages (the protocol's "record" fields) and for the
reports the roles send their launcher.

Each field is named once, here, with its type: the decoder checks a record field against its dataclass
(exactly these keys, each of its type) and hands the handler the record, so a misspelt name is an
AttributeError in a test where it was a silent 0 from `.get(name, 0)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class RunCounters:
    """How far the run is, as the replay server counts it (continued over resumes): what a joining actor
    continues its exploration from."""

    episodes: int = 0
    """Episodes finished, all actors."""
    env_steps: int = 0
    """Agent steps stored, all actors."""
    best_reward: float = 0.0
    """The best episode's shaped reward (0 before the first episode)."""


@dataclass(frozen=True)
class ReplayStats(RunCounters):
    """The replay server's state, sent with every batch, snapshot answer and stats reply."""

    size: int = 0
    """Transitions stored now (at most replay_capacity)."""
    inserted: int = 0
    """Transitions ever stored (by this server process and the snapshot it started from)."""
    actors: int = 0
    """Actor processes connected now."""
    sampled: int = 0
    """Transitions sampled into batches."""
    batches: int = 0
    """Batches sent."""
    dropped: int = 0
    """Bad messages dropped."""
    undeliverable: int = 0
    """Replies whose peer had gone."""

    def run(self) -> RunCounters:
        return RunCounters(self.episodes, self.env_steps, self.best_reward)


RECORDS: dict[str, type] = {cls.__name__: cls for cls in (RunCounters, ReplayStats)}


# --- reports: what a role tells its launcher (common/protocol.py REPORTS says which kind carries which) -------
@dataclass(frozen=True)
class ActorProgress:
    """An actor's progress, once a report interval and at its stop: the status line, summary.json, and
    (with its latest episode) what the launcher restarts it from."""

    actor_steps: int = 0
    """This actor's env steps over the whole run (the run's env_steps are all actors' together)."""
    session_steps: int = 0
    """... since this launch (what --max-steps counts)."""
    episodes: int = 0
    """Training episodes since this launch."""
    steps_per_s: float = 0.0
    """Env steps per second since the last report (at the stop: this launch's mean)."""
    epsilon: float = 0.0
    """Exploration rate now."""
    weights_version: int = 0
    """The learner's publication the actor acts with (0: its initial network)."""
    weights_updates: int = 0
    """... and the learner update those weights come from."""
    learner_stopped: bool = False
    """The learner said goodbye; the actor plays on with its last weights."""
    level: int = 0
    """Curriculum level (0 without a curriculum)."""
    dropped: int = 0
    """Bad weights messages the actor ignored."""
    dropped_chunks: int = 0
    """Experience messages the actor dropped because the replay server was not taking them."""


@dataclass(frozen=True)
class LearnerProgress:
    """The learner's progress, once a report interval and at its stop."""

    updates: int = 0
    """Updates of the online network."""
    weights_version: int = 0
    """Weight publications to the actors."""
    dropped: int = 0
    """Bad messages dropped."""
    torn_batches: int = 0
    """Batches from shared memory overwritten while being read (dropped, never trained on)."""
    mirror_frames: int = 0
    """Frames copied into the learner's mirror of the frame ring (a learner on another machine)."""
    mirror_restarts: int = 0
    """Times that mirror started over (after a restart of either side)."""
    dropped_priorities: int = 0
    """Priority updates the replay server could not take."""
    lr: float = 0.0
    """Learning rate now."""
    wait_fraction: float = 0.0
    """Share of the time spent waiting for batches."""
    loss: float = 0.0
    """Mean loss over the last report interval with updates (0 before the first)."""
    q_mean: float = 0.0
    """Mean Q-value of the sampled actions, likewise."""


EPISODE_ENDS = ("", "flag", "death", "stall", "step limit")
"""How an episode ended, by its index (EpisodeResult.end): the flag; a death (a lost life where it ends the
episode, the game clock too); a stall (stall_steps or eval_stall_steps steps without a new rightmost x_pos);
the step limit (max_episode_steps). 0, "", is not known."""
FLAG_END, DEATH_END, STALL_END, STEP_LIMIT_END = 1, 2, 3, 4


@dataclass(frozen=True)
class EpisodeResult:
    """What any episode's line in log.txt gives."""

    actor: int = 0
    """The actor that played it."""
    reward: float = 0.0
    """Shaped reward of the episode."""
    steps: int = 0
    """Its agent steps."""
    x_pos: int = 0
    """Mario's x position at its end."""
    flag: bool = False
    """It reached the flag."""
    actor_steps: int = 0
    """The actor's env steps over the whole run, at its end."""
    end: int = 0
    """How it ended, an index into EPISODE_ENDS (a number, as reports carry only numbers): where greedy
    Mario fails (deaths, or stalls at a pipe) is what the learning benchmark counts."""

    @property
    def ended(self) -> str:
        """The end's name; "" when not known (or a code this version does not know)."""
        return EPISODE_ENDS[self.end] if self.end < len(EPISODE_ENDS) else ""


@dataclass(frozen=True)
class EvalResult(EpisodeResult):
    """One greedy evaluation episode: a line of log.txt (with the run's env steps, all actors', which the
    launcher counts), TensorBoard's Eval/ tags, best_eval.pth."""


@dataclass(frozen=True)
class EpisodeReport(EpisodeResult):
    """A finished training episode: a line of log.txt (the launcher numbers the episodes run-wide)."""

    episode: int = 0
    """The actor's count of episodes this launch, this one included."""
    epsilon: float = 0.0
    """Exploration rate at its end."""
    session_steps: int = 0
    """The actor's env steps since this launch, at its end."""
    level: int = 0
    """Curriculum level it was played on (0 without a curriculum)."""


@dataclass(frozen=True)
class ActorDone:
    """An actor reached its share of --max-steps or --max-episodes and waits for the launcher's stop."""

    session_steps: int = 0
    """Its env steps this launch."""
    episodes: int = 0
    """Its episodes this launch."""


@dataclass(frozen=True)
class CheckpointCounters:
    """Where the run was when a checkpoint (.pth) was saved: the learner writes them, `--resume` and a
    restored learner read them. With a replay snapshot, the run counters are the snapshot's own (a final
    checkpoint whose snapshot failed names the last good one, and its counters)."""

    updates: int = 0
    """Learner updates."""
    episodes: int = 0
    """Episodes finished, all actors (the replay server's count)."""
    env_steps: int = 0
    """Agent steps stored, all actors."""
    best_reward: float = 0.0
    """The best episode's shaped reward."""
    replay_size: int = 0
    """Transitions in the replay memory."""
    weights_version: int = 0
    """Weight publications to the actors."""
    replay_file: str = ""
    """The replay snapshot beside it that holds the replay memory ("": none saved)."""
    replay_updates: int = 0
    """Learner updates when that snapshot was taken."""

    @classmethod
    def from_saved(cls, saved: dict) -> CheckpointCounters:
        """From a checkpoint's "counters" map. A key an older checkpoint lacks takes its default and one this
        version does not know is ignored; a value of the wrong type is a ValueError."""
        if not isinstance(saved, dict):
            raise ValueError(f"its counters are a {type(saved).__name__}, not a map")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in saved:
                continue
            value = saved[f.name]
            fits = {
                "int": isinstance(value, int),
                "float": isinstance(value, (int, float)),
                "str": isinstance(value, str),
            }
            if isinstance(value, bool) or not fits[f.type]:
                raise ValueError(f"its counter {f.name} is {type(value).__name__}, not {f.type}")
            values[f.name] = float(value) if f.type == "float" else value
        return cls(**values)

    def with_snapshot_of(self, saved: CheckpointCounters) -> CheckpointCounters:
        """These counters, but the replay memory and the run counters it fixes from `saved` (the checkpoint
        of the last good snapshot)."""
        return dataclasses.replace(
            self,
            **{name: getattr(saved, name) for name in ("episodes", "env_steps", "best_reward", "replay_size")},
            replay_file=saved.replay_file,
            replay_updates=saved.replay_updates,
        )


@dataclass(frozen=True)
class ActorStart:
    """What an actor process continues from, given by the launcher when it starts one (launcher/resume.py
    for a resumed run, RunStatus.actor_counters for a restarted actor)."""

    actor_steps: int = 0
    """This actor's env steps over the whole run: where its exploration schedule is."""
    session_steps: int = 0
    """... since this launch (what --max-steps counts); nonzero after a restart."""
    episodes: int = 0
    """This launch's episodes, continued over a restart."""
    level: int = 0
    """Curriculum level, continued over a restart."""
    restarts: int = 0
    """Times the launcher restarted this actor (each restart plays with a new seed)."""
    join: bool = False
    """An actor side of its own (--role actor): continue the run's exploration from the replay server's count."""
    reset_epsilon: float | None = None
    """--resume-reset-exploration: epsilon decays again from this value ..."""
    epsilon_origin: int = 0
    """... starting at this many of the actor's steps (those it resumed at)."""


def as_map(record) -> dict:
    """The record as a plain map (what goes on the wire, into a report or a checkpoint)."""
    return dataclasses.asdict(record)


def field_kinds(cls: type) -> dict[str, str]:
    """The protocol kind of each field: "count" for an int (counters are never negative), "float" (finite),
    "bool", "str"."""
    kinds = {"int": "count", "float": "float", "bool": "bool", "str": "str"}
    return {f.name: kinds[f.type] for f in dataclasses.fields(cls)}

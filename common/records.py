"""Typed records for the counters that travel inside messages (the protocol's "record" fields).

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


def as_map(record) -> dict:
    """The record as a plain map (what goes on the wire, into a report or a checkpoint)."""
    return dataclasses.asdict(record)


def field_kinds(cls: type) -> dict[str, str]:
    """The protocol kind of each field: "count" for an int (counters are never negative), "float" (finite)."""
    kinds = {"int": "count", "float": "float"}
    return {f.name: kinds[f.type] for f in dataclasses.fields(cls)}

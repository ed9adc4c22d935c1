"""The typed records of what a checkpoint holds and what a role process starts from."""

import dataclasses

import pytest

from common.records import ActorProgress, ActorStart, CheckpointCounters, EpisodeReport, as_map
from launcher.resume import ResumePlan
from launcher.status import RunStatus


def test_checkpoint_counters_round_trip_and_read_an_older_checkpoint():
    counters = CheckpointCounters(updates=7, episodes=3, env_steps=900, best_reward=2.5, replay_file="r.npz")
    assert CheckpointCounters.from_saved(as_map(counters)) == counters
    older = {"updates": 7, "episodes": 3, "env_steps": 900, "best_reward": 2, "retired_counter": 1}
    assert CheckpointCounters.from_saved(older) == CheckpointCounters(
        updates=7, episodes=3, env_steps=900, best_reward=2.0
    )


@pytest.mark.parametrize(
    "saved, error",
    [
        ({"env_steps": "900"}, "its counter env_steps is str, not int"),
        ({"updates": True}, "its counter updates is bool, not int"),
        ({"best_reward": None}, "its counter best_reward is NoneType, not float"),
        ({"replay_file": 3}, "its counter replay_file is int, not str"),
        ([1, 2], "its counters are a list, not a map"),
    ],
)
def test_a_mistyped_checkpoint_counter_is_an_error_not_a_silent_zero(saved, error):
    with pytest.raises(ValueError, match=f"^{error}$"):
        CheckpointCounters.from_saved(saved)


def test_a_snapshot_fixes_the_run_counters_it_was_taken_at():
    """A final checkpoint naming an older snapshot keeps that snapshot's run counters and the learner's own."""
    old = CheckpointCounters(updates=10, episodes=5, env_steps=500, best_reward=1.0, replay_size=500, replay_file="a")
    now = CheckpointCounters(updates=20, episodes=9, env_steps=900, best_reward=3.0, replay_size=900, weights_version=4)
    assert now.with_snapshot_of(dataclasses.replace(old, replay_updates=10)) == CheckpointCounters(
        updates=20,
        episodes=5,
        env_steps=500,
        best_reward=1.0,
        replay_size=500,
        weights_version=4,
        replay_file="a",
        replay_updates=10,
    )


def test_each_role_starts_from_its_own_record():
    fresh = ResumePlan()
    assert (fresh.for_role("learner"), fresh.for_role("replay"), fresh.for_role("actor", 2)) == ("", "", ActorStart())
    plan = ResumePlan("run/checkpoint.pth", "run/s.replay.npz", CheckpointCounters(env_steps=1001), reset_epsilon=0.5)
    assert plan.for_role("learner") == "run/checkpoint.pth" and plan.for_role("replay") == "run/s.replay.npz"
    assert plan.for_role("actor", 2) == ActorStart(actor_steps=500, reset_epsilon=0.5, epsilon_origin=500)


def test_a_restarted_actor_continues_from_its_newest_counters():
    status = RunStatus(100)
    status.on_report(
        {
            "role": "actor",
            "index": 1,
            "kind": "progress",
            "values": ActorProgress(actor_steps=40, session_steps=30, episodes=2),
        }
    )
    status.on_report(
        {"role": "actor", "index": 1, "kind": "episode", "values": EpisodeReport(actor_steps=55, episode=3, level=1)}
    )
    assert status.actor_counters(1) == ActorStart(actor_steps=55, session_steps=30, episodes=3, level=1)
    assert status.actor_counters(0) == ActorStart()


@pytest.mark.parametrize("saved, expected", [({"updates": 700}, 700), ({"updates": 700, "replay_updates": 650}, 650)])
def test_a_checkpoint_from_before_replay_updates_names_its_own_update_for_its_snapshot(saved, expected):
    """Checkpoints older than the replay_updates counter took their snapshot with them: a restored learner
    says so (it read 0, "the replay memory of update 0", and wrote that into its next checkpoint)."""
    from types import SimpleNamespace

    from learner.service import LearnerService

    service = LearnerService.__new__(LearnerService)
    service.learner = SimpleNamespace(updates=700, restore=lambda path: {**saved, "replay_file": "s.replay.npz"})
    service.rt = SimpleNamespace(log=lambda text: None)
    service.restore("checkpoint.pth")
    assert service._replay.replay_updates == expected

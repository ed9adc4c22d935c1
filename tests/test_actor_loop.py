"""Actor.run with its env thread, on the test env over a real ZeroMQ socket: exact step and episode
limits, every step sent once as a transition, the epsilon coin, evaluation between episodes."""
import os
import time

import pytest
import zmq

from actor.actor import Actor
from benchmarks.bench_actor import StopAtCap
from common.config import TEST_ENV_ID, Config
from common.protocol import decode
from common.runtime import RoleRuntime
from common.transport import Transport
from tests.harness import free_base_port


def play(tmp_path, before_run=lambda actor: None, **changes):
    """Run one actor to its limit; returns it (closed) and the messages it sent to the replay server."""
    config = Config(**{"env_id": TEST_ENV_ID, "headless": True, "record_video": False, "base_port": free_base_port(),
                       "eval_every_episodes": 0, **changes})
    transport = Transport(config.max_message_bytes)
    pull = transport.socket(zmq.PULL, bind=config.bind_addresses("replay_in"))
    stop = StopAtCap()
    runtime = RoleRuntime("actor", 0, config, stop, os.getppid())
    try:
        actor = stop.actor = Actor(runtime, str(tmp_path))
        before_run(actor)
        try:
            actor.run()
        finally:
            actor.close()
        messages, deadline = [], time.monotonic() + 20
        while not _complete(messages, actor) and time.monotonic() < deadline:
            if pull.poll(100):
                messages.append(decode(pull.recv(), config.max_message_bytes))
        while pull.poll(300):             # anything sent twice would be here by now
            messages.append(decode(pull.recv(), config.max_message_bytes))
        return actor, messages
    finally:
        runtime.close()
        transport.close()


def transitions(messages) -> int:
    return sum(len(m["actions"]) for m in messages if m["t"] == "transitions")


def episodes(messages) -> list[dict]:
    return [m for m in messages if m["t"] == "episode"]


def _complete(messages, actor) -> bool:
    return transitions(messages) >= actor.session_steps and len(episodes(messages)) >= actor.episodes


def test_a_step_limit_is_played_exactly_and_every_step_is_sent_once(tmp_path):
    actor, messages = play(tmp_path, max_steps=157, epsilon_start=0.5, epsilon_end=0.5)
    assert actor.session_steps == actor.steps == 157
    assert transitions(messages) == 157
    sent = episodes(messages)
    assert len(sent) == actor.episodes >= 2          # the corridor ends within 50 steps
    assert [m["episode"] for m in sent] == list(range(1, actor.episodes + 1))
    assert sum(m["steps"] for m in sent) <= 157      # the last episode was cut by the limit


def test_an_episode_limit_stops_after_that_episode_with_evaluations_between(tmp_path):
    evaluations = []

    def count_evaluations(actor):
        play_evaluation = actor._evaluate

        def evaluate():
            evaluations.append(actor.episodes)
            play_evaluation()
        actor._evaluate = evaluate
    actor, messages = play(tmp_path, count_evaluations, max_episodes=3, eval_every_episodes=1, eval_episodes=1)
    assert actor.episodes == 3 and len(episodes(messages)) == 3
    assert evaluations == [1, 2]                       # none after the last: the limit is reached
    assert transitions(messages) == actor.session_steps == sum(m["steps"] for m in episodes(messages))


@pytest.mark.parametrize("epsilon", [0.0, 1.0])
def test_the_network_chooses_every_step_at_epsilon_0_and_none_at_1(tmp_path, epsilon):
    asked = []

    def count_policy(actor):
        policy = actor.stepper.policy
        actor.stepper.policy = lambda obs: asked.append(obs.shape) or policy(obs)
    actor, messages = play(tmp_path, count_policy, max_steps=60, epsilon_start=epsilon, epsilon_end=epsilon)
    assert actor.session_steps == 60 and transitions(messages) == 60
    assert len(asked) == (60 if epsilon == 0.0 else 0)
    assert set(asked) <= {(4, 84, 84)}

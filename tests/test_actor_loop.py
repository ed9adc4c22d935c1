"""Actor.run with its env thread, on the test env over real ZeroMQ sockets: exact step and episode
limits, every step sent once as a transition, the epsilon coin, evaluation between episodes, new
weights acted on in either acting precision."""

import os
import signal
import time

import pytest
import torch
import zmq

from actor.acting_network import Int8Policy, make_policy
from actor.actor import Actor
from actor.best_eval import BEST_EVAL_FILE
from actor.env_thread import RESET
from actor.evaluate import load_policy
from actor.evaluate import play as evaluate
from benchmarks.bench_actor import StopAtCap
from common.addresses import bind_addresses
from common.checkpoint import load_checkpoint
from common.config import TEST_ENV_ID, Config
from common.network import build_network, weights_to_arrays
from common.protocol import decode, encode
from common.records import as_map
from common.runtime import RoleRuntime
from common.transport import Transport
from tests.conftest import kept_process_hooks, process_hooks
from tests.harness import free_base_port

pytestmark = pytest.mark.usefixtures("keep_process_hooks")  # play() builds a RoleRuntime here
# After the actor's sockets closed (flushing what they held), a message sent twice is already on its way
# here: this long without one is the end. Generous, so a descheduled test process does not miss it.
QUIET_MS = 3000


class StopAtCapOrWhenTold(StopAtCap):
    """StopAtCap, or once `told` (the launcher's stop, at a moment a test picks)."""

    told = False

    def is_set(self) -> bool:
        return self.told or super().is_set()


def play(tmp_path, before_run=lambda actor: None, serve_replay=True, stop=None, **changes):
    """Run one actor to its limit or its stop; returns it (closed) and the messages it sent to the replay
    server (none is bound without serve_replay)."""
    config = Config(
        **{
            "env": TEST_ENV_ID,
            "headless": True,
            "video": False,
            "base_port": free_base_port(),
            "eval_every_episodes": 0,
            **changes,
        }
    )
    transport = Transport(config.max_message_bytes)
    pull = transport.socket(zmq.PULL, bind=bind_addresses(config, "replay_in") if serve_replay else "inproc://none")
    stop = stop or StopAtCap()
    runtime = RoleRuntime("actor", 0, config, stop, os.getppid())
    closed = False
    try:
        actor = stop.actor = Actor(runtime, str(tmp_path))
        before_run(actor)
        try:
            actor.run()
        finally:
            actor.close()
        messages, deadline = [], time.monotonic() + (120 if serve_replay else 0)  # generous: a loaded machine
        while not _complete(messages, actor) and time.monotonic() < deadline:  # is slow
            if pull.poll(100):
                messages.append(decode(pull.recv(), config.max_message_bytes))
        runtime.close()  # its sockets have sent everything (or given up) by now
        closed = True
        while serve_replay and pull.poll(QUIET_MS):  # anything sent twice: it is on its way, so it arrives in time
            messages.append(decode(pull.recv(), config.max_message_bytes))
        return actor, messages
    finally:
        if not closed:
            runtime.close()
        transport.close()


def transitions(messages) -> int:
    return sum(len(m["actions"]) for m in messages if m["t"] == "transitions")


def episodes(messages) -> list[dict]:
    return [m for m in messages if m["t"] == "episode"]


def _complete(messages, actor) -> bool:
    return transitions(messages) >= actor.session_steps and len(episodes(messages)) >= actor.episodes


@pytest.mark.parametrize("envs", [1, 2, 3])
def test_a_step_limit_is_played_exactly_and_every_step_is_sent_once(tmp_path, envs):
    actor, messages = play(tmp_path, max_steps=157, epsilon_start=0.5, epsilon_end=0.5, envs_per_actor=envs)
    assert actor.session_steps == actor.steps == 157
    assert transitions(messages) == 157
    sent = episodes(messages)
    assert len(sent) == actor.episodes >= 2  # the corridor ends within 50 steps
    assert [m["episode"] for m in sent] == list(range(1, actor.episodes + 1))
    assert sum(m["steps"] for m in sent) <= 157  # the last episode was cut by the limit


def test_a_reset_queued_just_before_the_stop_adds_no_frame_to_the_run_video(tmp_path):
    """The run video holds each step's frame and the first frame of each episode that took a step: a new
    episode's reset, queued before the stop and taken after it, must not leave a frame no step follows."""
    stop, frames = StopAtCapOrWhenTold(), []

    class Frames:
        def write(self, rgb):
            frames.append(rgb)

        def close(self):
            pass

    def before_run(actor):
        actor.run_video = Frames()
        submit = actor.stepper.submit

        def submit_then_stop(job):
            submit(job)
            if actor.episodes == 2 and any(action is RESET for _, action in job):
                stop.told = True  # the stop comes while the third episode's reset is in flight

        actor.stepper.submit = submit_then_stop

    actor, messages = play(tmp_path, before_run, stop=stop, epsilon_start=0.5, epsilon_end=0.5, envs_per_actor=1)
    assert actor.episodes == 2 and sum(m["steps"] for m in episodes(messages)) == actor.session_steps > 0
    assert len(frames) == actor.session_steps + 2


def chunks_by_env(actor, chunks: dict) -> None:
    """Keep each env's chunks, in the order its ChunkBuilder hands them out for sending."""
    for slot in actor.slots:

        def take(take=slot.chunk.take, env=slot.index):
            chunk = take()
            chunks.setdefault(env, []).append(chunk)
            return chunk

        slot.chunk.take = take


def expand(chunks: list[dict]) -> list[tuple]:
    """Every transition of these chunks, in order: (obs and next obs frames, action, n-step return, bootstrap)."""
    return [
        (chunk["frames"][row].tobytes(), int(action), float(ret), float(bootstrap))
        for chunk in chunks
        for row, action, ret, bootstrap in zip(chunk["stack"], chunk["actions"], chunk["rewards"], chunk["bootstraps"])
    ]


def test_each_env_of_a_vectorized_actor_plays_as_a_one_env_actor_with_its_seed(tmp_path):
    """Three envs (groups of two and one: a batched forward of two) at epsilon 0.5 with a network whose
    greedy actions depend on the frames: env j's transitions are exactly those of a one-env actor with
    seed 10 + j and as many steps, so batching the forward and interleaving the envs change nothing."""
    torch.manual_seed(0)
    reference = build_network(Config(env=TEST_ENV_ID))
    with torch.no_grad():
        reference.head[2].weight.mul_(40)  # clear margins between the actions: no near-ties to flip

    def prepare(chunks):
        def before_run(actor):
            actor.net.load_state_dict(reference.state_dict())
            actor.policy = make_policy(actor.net, actor.precision)
            chunks_by_env(actor, chunks)

        return before_run

    settings = {"epsilon_start": 0.5, "epsilon_end": 0.5, "acting_precision": "float32", "seed": 10}
    vectorized: dict = {}
    play(tmp_path / "three", prepare(vectorized), max_steps=300, envs_per_actor=3, **settings)
    assert sorted(vectorized) == [0, 1, 2]
    greedy_actions = set()
    for env in (0, 1, 2):
        steps = len(expand(vectorized[env]))
        assert steps >= 90
        alone: dict = {}
        play(
            tmp_path / f"alone{env}",
            prepare(alone),
            max_steps=steps,
            envs_per_actor=1,
            **{**settings, "seed": 10 + env},
        )
        assert expand(alone[0]) == expand(vectorized[env])
        greedy_actions |= {t[1] for t in expand(alone[0])}
    assert len(greedy_actions) >= 3


def test_with_two_envs_evaluations_play_on_the_env_whose_episode_ended(tmp_path):
    """Evaluations come after every episode of either env, on that env while the other env's step runs;
    both envs' episodes are reported, and the episode limit stops the actor."""
    evaluated = []

    def watch(actor):
        play_evaluation = actor._evaluate

        def evaluate(slot):
            assert slot.obs is None  # its episode ended and no reset is queued for it
            evaluated.append(slot.index)
            play_evaluation(slot)

        actor._evaluate = evaluate

    actor, messages = play(
        tmp_path, watch, max_episodes=6, eval_every_episodes=1, eval_episodes=1, envs_per_actor=2, seed=3
    )
    assert actor.episodes == 6 and len(episodes(messages)) == 6
    assert len(evaluated) == 5 and set(evaluated) == {0, 1}
    assert transitions(messages) == actor.session_steps >= sum(m["steps"] for m in episodes(messages))


def test_an_episode_limit_stops_after_that_episode_with_evaluations_between(tmp_path):
    evaluations = []

    def count_evaluations(actor):
        play_evaluation = actor._evaluate

        def evaluate(slot):
            evaluations.append(actor.episodes)
            play_evaluation(slot)

        actor._evaluate = evaluate

    actor, messages = play(
        tmp_path, count_evaluations, max_episodes=3, eval_every_episodes=1, eval_episodes=1, envs_per_actor=1
    )
    assert actor.episodes == 3 and len(episodes(messages)) == 3
    assert evaluations == [1, 2]  # none after the last: the limit is reached
    assert transitions(messages) == actor.session_steps == sum(m["steps"] for m in episodes(messages))


@pytest.mark.parametrize("epsilon", [0.0, 1.0])
def test_the_network_chooses_every_step_at_epsilon_0_and_none_at_1(tmp_path, epsilon):
    asked = []

    def count_policy(actor):
        policy = actor.policy
        actor.policy = lambda batch: asked.append(batch.shape) or policy(batch)

    actor, messages = play(tmp_path, count_policy, max_steps=60, epsilon_start=epsilon, epsilon_end=epsilon)
    assert actor.session_steps == 60 and transitions(messages) == 60
    assert len(asked) == (60 if epsilon == 0.0 else 0)
    assert set(asked) <= {(1, 4, 84, 84)}


@pytest.mark.parametrize("precision", ["int8", "float32"])
def test_weights_from_the_learners_socket_replace_the_policy_the_env_thread_acts_with(tmp_path, precision):
    """Weights whose action head always prefers action 5 (zero weights, a one-hot bias), published on a
    real PUB socket: once the actor has taken them, every action at epsilon 0 is 5."""
    sender = build_network(Config(env=TEST_ENV_ID))
    with torch.no_grad():
        sender.head[2].weight.zero_()
        sender.head[2].bias.copy_(torch.eye(7)[5])
    message = encode("weights", weights_version=1, weights_updates=100, tensors=weights_to_arrays(sender))
    initial = []

    def take_weights(actor):
        initial.append(actor.policy)
        _publish_until(actor, [message], lambda: actor.weights_version == 1)

    actor, messages = play(
        tmp_path, take_weights, max_steps=60, epsilon_start=0.0, epsilon_end=0.0, acting_precision=precision
    )
    assert actor.weights_version == 1 and actor.weights_updates == 100
    assert actor.policy is not initial[0] and isinstance(actor.policy, Int8Policy) == (precision == "int8")
    actions = [a for m in messages if m["t"] == "transitions" for a in m["actions"].tolist()]
    assert len(actions) == 60 and set(actions) == {5}


def _publish_until(actor, messages: list[bytes], taken, timeout: float = 10) -> None:
    """Publish `messages` on a real PUB socket at the actor's weights address, over and over (a PUB drops
    what comes before the SUB has connected), until `taken()` says the actor has acted on them."""
    pub = actor.rt.transport.socket(zmq.PUB, bind=bind_addresses(actor.config, "weights"))
    deadline = time.monotonic() + timeout
    while not taken() and time.monotonic() < deadline:
        for message in messages:
            pub.send(message)
            time.sleep(0.02)
            actor._poll_weights()
    pub.close(linger=0)


def test_after_the_learners_goodbye_new_weights_say_a_learner_is_back(tmp_path):
    """A "bye" leaves the actor playing on with its weights; the next weights message (a learner restarted)
    is taken and named in one line with its update."""
    weights = encode(
        "weights",
        weights_version=2,
        weights_updates=200,
        tensors=weights_to_arrays(build_network(Config(env=TEST_ENV_ID))),
    )
    logs = []

    def bye_then_weights(actor):
        actor.rt.log = logs.append
        _publish_until(actor, [encode("bye", checkpoint="checkpoint_final.pth")], lambda: actor.learner_stopped)
        _publish_until(actor, [weights], lambda: actor.weights_version == 2)

    actor, _ = play(tmp_path, bye_then_weights, max_steps=20)
    assert not actor.learner_stopped and (actor.weights_version, actor.weights_updates) == (2, 200)
    assert any("the learner stopped (it saved checkpoint_final.pth)" in line for line in logs), logs
    assert "a learner is back: weights of update 200" in logs, logs


def test_a_role_runtime_built_here_leaves_the_process_hooks_as_they_were():
    """RoleRuntime ignores SIGINT and takes SIGTERM and threading.excepthook (right in a role process);
    kept_process_hooks, which the keep_process_hooks fixture uses, puts them back."""
    with kept_process_hooks():  # whatever the suite runs with comes back at the end
        signal.signal(signal.SIGINT, signal.default_int_handler)  # (a background job starts with SIGINT ignored)
        before = process_hooks()
        with kept_process_hooks():
            runtime = RoleRuntime("actor", 0, Config(env=TEST_ENV_ID), StopAtCap(), os.getppid())
            runtime.close()
            assert process_hooks()[0] == signal.SIG_IGN
            assert all(now != then for now, then in zip(process_hooks(), before)), "nothing to restore"
        assert process_hooks() == before


def test_the_best_evaluations_network_is_kept_and_replays_that_evaluation(tmp_path):
    """best_eval.pth holds the network that played the best evaluation: played again with --play's
    loader, it gives the very same episode (the test env and the greedy policy are deterministic)."""
    reported = []

    def keep_reports(actor):
        report = actor.rt.report
        actor.rt.report = lambda kind, values, text=None: (
            reported.append(values) if kind == "eval" else None,
            report(kind, values, text),
        )

    play(
        tmp_path,
        keep_reports,
        max_episodes=3,
        eval_every_episodes=1,
        eval_episodes=2,
        epsilon_start=0.0,
        epsilon_end=0.0,
    )
    assert len(reported) == 4
    kept = load_checkpoint(str(tmp_path / BEST_EVAL_FILE))["eval"]
    assert kept == as_map(max(reported, key=lambda r: (r.flag, r.reward)))
    net, config = load_policy(str(tmp_path / BEST_EVAL_FILE))
    [again] = evaluate(net, config, episodes=1)
    assert (again.reward, again.x_pos, again.flag, again.steps) == pytest.approx(
        (kept["reward"], kept["x_pos"], kept["flag"], kept["steps"])
    )


def test_experience_dropped_while_no_replay_server_takes_it_is_counted_and_told(tmp_path):
    """Item 11: an actor whose replay server is gone (unpinned ratio) fills its queue, then drops and counts
    each message and says so (the first time, then at most every 30 s), and plays on to its limit."""
    logs = []

    def keep_logs(actor):
        actor.rt.log = logs.append

    actor, messages = play(tmp_path, keep_logs, serve_replay=False, max_steps=3000, chunk_size=1)
    assert messages == [] and actor.session_steps == 3000
    queue = actor.config.actor_queue_chunks()
    assert actor.dropped_chunks >= 3000 - 2 * queue > 0  # the queue (both sides of the link) held the rest
    told = [line for line in logs if "is not taking experience" in line]
    assert len(told) == 1 and told[0].startswith(f"the replay server is not taking experience (its queue of {queue} ")


def test_evaluations_give_up_after_eval_stall_steps_without_progress(tmp_path):
    """A greedy Mario that stands still stays still: evaluation (and --play) episodes end after
    eval_stall_steps without a new rightmost x_pos, while training episodes keep stall_steps (here none)."""
    standing = build_network(Config(env=TEST_ENV_ID))
    with torch.no_grad():
        standing.head[2].weight.zero_()
        standing.head[2].bias.copy_(torch.eye(7)[0])  # always NOOP
    reported = []

    def stand_in_evaluations(actor):
        actor.net = standing
        report = actor.rt.report
        actor.rt.report = lambda kind, values, text=None: (
            reported.append(values) if kind == "eval" else None,
            report(kind, values, text),
        )

    actor, messages = play(
        tmp_path,
        stand_in_evaluations,
        max_episodes=2,
        eval_every_episodes=1,
        eval_stall_steps=5,
        epsilon_start=1.0,
        epsilon_end=1.0,
    )
    assert [r.steps for r in reported] == [5]
    assert all(m["steps"] != 5 or m["x_pos"] > 0 for m in episodes(messages)), "training episodes are not cut"
    config = Config(env=TEST_ENV_ID, eval_stall_steps=5)
    assert [r.steps for r in evaluate(standing, config, episodes=1)] == [5]
    assert [r.steps for r in evaluate(standing, config.replace(eval_stall_steps=0), episodes=1)] == [50], (
        "without it, standing still runs out the test env's clock"
    )


def _stopping_sender(config: Config, push) -> Actor:
    """An Actor with only what _send uses, its run stopping (the last flush)."""
    from common.log_limit import LogLimit

    actor = Actor.__new__(Actor)
    actor.config, actor.push, actor.learner_stopped, actor.dropped_chunks = config, push, False, 0
    actor._last_flush_ends = None
    actor.rt = type("Stopping", (), {"should_stop": staticmethod(lambda: True), "log": staticmethod(print)})()
    actor._drop_log = LogLimit()
    return actor


def test_the_last_flush_at_the_stop_waits_for_room_in_a_full_queue():
    """With the ratio pinned the queue to the replay server is short and full when the run stops (the learner
    behind); the replay server takes everything once the stop begins, so the actor's last chunk waits for
    room (a second at most) instead of being dropped at once."""
    import threading

    from common.topology import bind_socket, connect_socket

    config = Config(env=TEST_ENV_ID, base_port=free_base_port(), samples_per_insert=1)
    assert config.actor_queue_chunks() == 4
    transport = Transport(config.max_message_bytes)
    try:
        pull = bind_socket(transport, config, "replay_in")
        push = connect_socket(transport, config, "replay_in")
        queued = 0
        while push.poll(5000 if not queued else 300, zmq.POLLOUT):  # the replay server reads nothing yet
            push.send(b"x" * 100_000, zmq.NOBLOCK)
            queued += 1
        assert queued >= config.actor_queue_chunks()
        actor = _stopping_sender(config, push)
        received = []
        reader = threading.Timer(0.3, lambda: received.extend(pull.recv() for _ in range(queued + 1)))
        reader.start()  # the replay server, once told the run is stopping
        actor._send(b"last")
        reader.join(30)
        assert actor.dropped_chunks == 0
        assert received[-1] == b"last"
    finally:
        transport.close()


def test_the_last_flush_waits_once_for_all_its_messages(monkeypatch):
    """An actor with many envs flushes one chunk per env at the stop; when the replay server takes none of
    them, the wait is LAST_SEND_WAIT_MS in all, not per message (a slow stop the launcher had to kill)."""
    import actor.actor as actor_module

    clock = [100.0]
    monkeypatch.setattr(actor_module.time, "monotonic", lambda: clock[0])

    class FullQueue:
        """A push socket whose queue never has room: poll waits its whole timeout, send raises Again."""

        waited_ms = 0

        def poll(self, timeout_ms, _flags):
            self.waited_ms += timeout_ms
            clock[0] += timeout_ms / 1000
            return 0

        def send(self, _payload, _flags):
            raise zmq.Again

    actor = _stopping_sender(Config(env=TEST_ENV_ID, samples_per_insert=1), FullQueue())
    for _ in range(8):
        actor._send(b"chunk")
    assert actor.dropped_chunks == 8
    assert actor.push.waited_ms == actor_module.LAST_SEND_WAIT_MS

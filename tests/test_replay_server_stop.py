"""The replay server at the stop: every transition an actor counted reaches the buffer, even with the
replay ratio pinned and the learner behind (CI once counted 7,995 of 8,000 env steps inserted)."""

import os
import threading

import numpy as np
import zmq

from common.addresses import connect_address
from common.config import TEST_ENV_ID, Config
from common.protocol import encode
from common.runtime import RoleRuntime
from common.topology import connect_socket
from common.transport import Transport
from replay_server.server import ReplayServer
from tests.harness import free_base_port

TRANSITIONS = 64  # an actor's chunk_size: a chunk (about 460 kB) fills the socket buffers between processes


def chunk() -> bytes:
    return encode(
        "transitions",
        actor=0,
        frames=np.zeros((TRANSITIONS + 1, 84, 84), np.uint8),
        stack=np.array([[i, i, i, i, i, i, i, i + 1] for i in range(TRANSITIONS)], np.int32),
        actions=np.zeros(TRANSITIONS, np.uint8),
        rewards=np.zeros(TRANSITIONS, np.float32),
        bootstraps=np.ones(TRANSITIONS, np.float32),
    )


def held_back_server(tmp_path, stop_event, run_stop_event=None) -> tuple[ReplayServer, RoleRuntime]:
    """A replay server whose pinned ratio holds the actors back: it has stored more than the learner sampled."""
    config = Config(
        env=TEST_ENV_ID,
        base_port=free_base_port(),
        replay_capacity=4096,
        learning_starts=4,
        samples_per_insert=1,
        spi_tolerance=1,
    )
    runtime = RoleRuntime("replay", 0, config, stop_event, os.getppid(), run_stop_event=run_stop_event)
    server = ReplayServer(runtime, str(tmp_path))
    server._on_actor_message([chunk()])
    server.limiter.observe(len(server.buffer), server.buffer.inserted)
    server._on_actor_message([chunk()])
    assert server.limiter.inserts_wait(server.buffer.inserted), "the ratio holds the actors back"
    return server, runtime


def test_chunks_queued_at_the_replay_server_are_stored_at_its_stop(tmp_path):
    """The last flush already sits in the server's queue when it is stopped: stored, not left there."""
    stop = threading.Event()
    server, runtime = held_back_server(tmp_path, stop)
    try:
        push = runtime.transport.socket(zmq.PUSH, connect=connect_address(runtime.config, "replay_in"))
        push.send(chunk())
        assert server.pull.poll(5000)
        stop.set()  # the launcher stops the replay server last
        server.run()
        assert server.stats().inserted == 3 * TRANSITIONS
    finally:
        runtime.close()


def test_chunks_still_queued_at_a_stopping_actor_reach_the_replay_server(tmp_path):
    """With the learner behind, the queues between an actor and the server are full when the run stops. The
    actor's socket gives up on its queued chunks after its linger: the server must take them all before,
    ratio or not, once the launcher has begun the stop."""
    run_stopping, actor_gone, queues_full = threading.Event(), threading.Event(), threading.Event()
    server, runtime = held_back_server(tmp_path, actor_gone, run_stopping)
    sent = []

    def actor():
        transport = Transport(runtime.config.max_message_bytes)
        push = connect_socket(transport, runtime.config, "replay_in")  # the actor's socket, with its linger
        while push.poll(5000 if not sent else 300, zmq.POLLOUT):  # until both queues are full
            push.send(chunk(), zmq.NOBLOCK)
            sent.append(TRANSITIONS)
        queues_full.set()
        transport.close()  # the actor stops: its socket lingers on the chunks it still holds
        actor_gone.set()

    thread = threading.Thread(target=actor)
    try:
        thread.start()
        assert queues_full.wait(60)
        assert len(sent) > runtime.config.actor_queue_chunks(), "more than the server's side of the queue"
        run_stopping.set()  # the launcher begins the stop: the actors first, the replay server last
        server.run()  # returns once the actor is gone
        thread.join(10)
        assert server.stats().inserted == 2 * TRANSITIONS + sum(sent), (server.stats().inserted, len(sent))
    finally:
        actor_gone.set()
        thread.join(10)
        runtime.close()


def test_transitions_stored_after_the_last_snapshot_are_counted_at_the_stop(tmp_path):
    """Issue 16, item 11: what reached the replay server after the learner's final snapshot (actors of another
    launcher still playing) is in no checkpoint; the stop says how much, instead of losing it silently."""
    stop = threading.Event()
    server, runtime = held_back_server(tmp_path, stop)
    logs = []
    runtime.log = logs.append
    try:
        server._start_snapshot(b"learner", "checkpoint_final-1.replay.npz")
        while server.snapshot is not None:
            server._check_snapshot()
        assert server._last_snapshot[0] == "checkpoint_final-1.replay.npz"
        server._on_actor_message([chunk()])  # a straggler's chunk
        stop.set()
        server.run()
        assert (
            f"{TRANSITIONS} transition(s) arrived after the last replay snapshot (checkpoint_final-1.replay.npz)"
            in ("\n".join(logs))
        )
    finally:
        runtime.close()

"""Bad input from the network and from the machine: servers drop and count, never die."""
import json
import socket

import msgpack
import numpy as np
import pytest
import zmq

from common.protocol import decode_parts, encode
from tests.conftest import FAST_TEST_ENV
from tests.harness import free_base_port

pytestmark = pytest.mark.slow


def _bad_messages(rng: np.random.Generator) -> list[list[bytes]]:
    """Malformed, truncated, wrong-type and wrong-shape messages, each one ZeroMQ message."""
    valid_chunk = encode("transitions", actor=0, frames=np.zeros((2, 84, 84), np.uint8),
                         stack=np.array([[0, 0, 0, 0, 0, 0, 0, 1]], np.int32), actions=np.zeros(1, np.uint8),
                         rewards=np.zeros(1, np.float32), bootstraps=np.ones(1, np.float32))
    messages = [[rng.bytes(int(rng.integers(1, 300)))] for _ in range(40)]                # garbage
    messages += [[valid_chunk[:cut]] for cut in rng.integers(1, len(valid_chunk), 40)]    # truncated
    messages += [[msgpack.packb([1, 2, 3])], [msgpack.packb({"v": 99, "t": "transitions"})],
                 [msgpack.packb({"v": 1, "t": "exec"})], [encode("sample", batch_size=32, beta=0.5)],
                 [valid_chunk, valid_chunk],                                              # two parts
                 [encode("transitions", actor=0, frames=np.zeros((1, 84, 84), np.uint8),   # index out of range
                         stack=np.array([[0, 0, 0, 0, 0, 0, 0, 7]], np.int32), actions=np.zeros(1, np.uint8),
                         rewards=np.zeros(1, np.float32), bootstraps=np.ones(1, np.float32))],
                 [encode("transitions", actor=0, frames=np.zeros((2, 84, 84), np.float32),  # wrong dtype
                         stack=np.array([[0, 0, 0, 0, 0, 0, 0, 1]], np.int32), actions=np.zeros(1, np.uint8),
                         rewards=np.zeros(1, np.float32), bootstraps=np.ones(1, np.float32))]]
    return messages


def test_servers_survive_bad_messages_and_count_them(launch):
    """Hundreds of bad messages at the replay server's two bound sockets while training runs: every
    one is dropped and counted, nothing dies, and training goes on afterwards."""
    run = launch(*FAST_TEST_ENV)
    run.wait_for_updates(1)
    rng = np.random.default_rng(7)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{run.base_port}")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{run.base_port + 1}")
    sent = 0
    for _ in range(3):
        for parts in _bad_messages(rng):
            push.send_multipart(parts)
            sent += 1
        for parts in _bad_messages(rng)[:-4]:     # the last four are valid on the sample socket or actor-only
            dealer.send_multipart(parts)
            sent += 1
    dealer.send_multipart([b"x"] * 3)              # ROUTER sees 4 parts: dropped too
    sent += 1
    dealer.send(encode("sample", batch_size=4, beta=0.5, ids=np.array([0, 1])))   # ids without priorities
    sent += 1
    dealer.send(encode("sample", batch_size=4, beta=0.5, ids=np.array([0, 1]), priorities=np.array([np.nan, 1.0])))
    sent += 1                                      # its NaN priorities are dropped and counted ...
    assert dealer.poll(30_000), "... but the batch it asked for still comes"
    assert decode_parts(dealer.recv_multipart(), 64 << 20, expect=("batch",))["ids"].shape == (4,)
    oversized = ctx.socket(zmq.PUSH)               # over max_message_bytes: refused by ZeroMQ itself
    oversized.connect(f"tcp://127.0.0.1:{run.base_port}")
    oversized.send(b"\0" * (64 * 1024 * 1024 + 1))
    for sock in (push, dealer, oversized):
        sock.close(linger=2000)
    ctx.term()

    episodes_after_fuzz = len(run.log_lines())
    run.wait_for_episodes(episodes_after_fuzz + 20)     # the actor keeps playing and sending
    run.interrupt()
    assert run.wait(10) == 130, run.output()
    summary = run.summary()
    assert summary["replay"]["dropped"] == sent, (summary["replay"], sent)
    assert summary["updates"] > 0
    batch_size = json.loads((run.run_dir / "config.json").read_text())["batch_size"]
    assert summary["replay"]["sampled"] >= summary["updates"] * batch_size, "the learner kept getting batches"
    assert summary["replay"]["inserted"] == summary["env_steps"], "the actor's data all got in"
    assert "exited unexpectedly" not in run.output()


BUSY = ("launch.py: error: cannot bind tcp://127.0.0.1:{port}: address already in use (is another run using these "
        "ports? try --base-port or --bind)")


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_busy_port_is_a_clear_error(launch, offset):
    """A port already taken (replay-in, replay-sample or weights): a one-line usage error naming it,
    exit 2, before any process starts."""
    base_port = free_base_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base_port + offset))
        blocker.listen()
        run = launch(*FAST_TEST_ENV, "--max-steps", "100", base_port=base_port)
        assert run.wait(60) == 2, run.output()
    assert run.output().splitlines() == [BUSY.format(port=base_port + offset)]


def test_ten_thousand_bad_messages_at_every_bound_port(launch):
    """A bounded fuzz run while training: 10,000 random, truncated and wrong-type messages at each of
    the replay server's sockets, oversized ones (refused by ZeroMQ), and 10,000 junk messages plus raw
    TCP garbage at the learner's weights port. No process dies, the replay server's dropped counter
    equals what reached it, and training goes on."""
    run = launch(*FAST_TEST_ENV)
    run.wait_for_updates(1)
    rng = np.random.default_rng(11)
    pool = _bad_messages(rng)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{run.base_port}")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{run.base_port + 1}")
    xsub = ctx.socket(zmq.XSUB)             # the only socket type that may talk to a PUB: junk "subscriptions"
    xsub.connect(f"tcp://127.0.0.1:{run.base_port + 2}")
    sent = 0
    for i in range(10_000):
        push.send_multipart(pool[i % len(pool)] if i % 2 else [rng.bytes(int(rng.integers(1, 2000)))])
        dealer.send_multipart(pool[i % (len(pool) - 4)] if i % 2 else [rng.bytes(int(rng.integers(1, 2000)))])
        xsub.send(rng.bytes(int(rng.integers(1, 200))))
        sent += 2
    for port in (run.base_port, run.base_port + 1):       # oversized: ZeroMQ drops the connection itself
        big = ctx.socket(zmq.PUSH if port == run.base_port else zmq.DEALER)
        big.connect(f"tcp://127.0.0.1:{port}")
        big.send(b"\0" * (64 * 1024 * 1024 + 1))
        big.close(linger=5000)
    # Not even ZeroMQ: raw bytes. At the replay server they start like a ZMTP 3 greeting (0xFF) and then
    # go wrong, so ZeroMQ closes the connection; wholly random bytes could pass for ZMTP 1.0 framing and
    # arrive as (uncountable) messages, so those go to the PUB port, which takes none.
    for port in (run.base_port, run.base_port + 1, run.base_port + 2):
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                junk = rng.bytes(int(rng.integers(1, 5000)))
                raw.sendall(junk if port == run.base_port + 2 else b"\xff" + junk)
    for sock in (push, dealer, xsub):
        sock.close(linger=20_000)
    ctx.term()

    run.wait_for(lambda: run.status_value("updates") > 0 and "dropped" in run.output(), 30, "the drops")
    updates = run.status_value("updates")
    run.wait_for_updates(updates + 20, timeout=120)           # training goes on
    run.interrupt()
    assert run.wait(10) == 130, run.output()
    summary = run.summary()
    assert summary["replay"]["dropped"] == sent, (summary["replay"], sent)
    assert summary["learner"].get("dropped", 0) == 0
    assert "exited unexpectedly" not in run.output() and "Traceback" not in run.output()

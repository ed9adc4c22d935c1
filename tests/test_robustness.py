"""Bad input from the network and from the machine: servers drop and count, never die."""

import glob
import json
import math
import os
import shutil
import signal
import socket
import tempfile

import msgpack
import numpy as np
import pytest
import zmq

from common.protocol import PROTOCOL_VERSION, decode, decode_parts, encode
from replay_server.buffer import PrioritizedReplay
from tests.conftest import FAST_TEST_ENV, TEST_FRAME_SIZE
from tests.harness import free_base_port

pytestmark = pytest.mark.slow

SIZE = TEST_FRAME_SIZE  # the frame size of a FAST_TEST_ENV run: every chunk below has it


def _bad_messages(rng: np.random.Generator) -> list[list[bytes]]:
    """Malformed, truncated, wrong-type and wrong-shape messages, each one ZeroMQ message."""
    valid_chunk = encode(
        "transitions",
        actor=0,
        frames=np.zeros((2, SIZE, SIZE), np.uint8),
        stack=np.array([[0, 0, 0, 0, 0, 0, 0, 1]], np.int32),
        actions=np.zeros(1, np.uint8),
        rewards=np.zeros(1, np.float32),
        bootstraps=np.ones(1, np.float32),
    )
    messages = [[rng.bytes(int(rng.integers(1, 300)))] for _ in range(40)]  # garbage
    messages += [[valid_chunk[:cut]] for cut in rng.integers(1, len(valid_chunk), 40)]  # truncated
    messages += [
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"v": 99, "t": "transitions"})],
        [msgpack.packb({"v": PROTOCOL_VERSION, "t": "exec"})],
        [encode("sample", batch_size=32, beta=0.5)],
        [valid_chunk, valid_chunk],  # two parts
        [
            encode(
                "transitions",
                actor=0,
                frames=np.zeros((1, SIZE, SIZE), np.uint8),  # index out of range
                stack=np.array([[0, 0, 0, 0, 0, 0, 0, 7]], np.int32),
                actions=np.zeros(1, np.uint8),
                rewards=np.zeros(1, np.float32),
                bootstraps=np.ones(1, np.float32),
            )
        ],
        [
            encode(
                "transitions",
                actor=0,
                frames=np.zeros((2, SIZE, SIZE), np.float32),  # wrong dtype
                stack=np.array([[0, 0, 0, 0, 0, 0, 0, 1]], np.int32),
                actions=np.zeros(1, np.uint8),
                rewards=np.zeros(1, np.float32),
                bootstraps=np.ones(1, np.float32),
            )
        ],
    ]
    return messages


def test_servers_survive_bad_messages_and_count_them(launch):
    """Hundreds of bad messages at the replay server's two bound sockets while training runs: every
    one is dropped and counted, nothing dies, and training goes on afterwards."""
    run = launch(*FAST_TEST_ENV)
    run.wait_for_updates(1)
    for offset in range(3):  # on loopback no TCP port is open: the attacks below come in as this user
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", run.base_port + offset), timeout=5).close()
    rng = np.random.default_rng(7)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"ipc://{run.channel_path(0)}")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"ipc://{run.channel_path(1)}")
    sent = 0
    for _ in range(3):
        for parts in _bad_messages(rng):
            push.send_multipart(parts)
            sent += 1
        for parts in _bad_messages(rng)[:-4]:  # the last four are valid on the sample socket or actor-only
            dealer.send_multipart(parts)
            sent += 1
    dealer.send_multipart([b"x"] * 3)  # ROUTER sees 4 parts: dropped too
    sent += 1
    dealer.send(encode("sample", batch_size=4, beta=0.5, ids=np.array([0, 1])))  # ids without priorities
    sent += 1
    dealer.send(encode("sample", batch_size=4, beta=0.5, ids=np.array([0, 1]), priorities=np.array([np.nan, 1.0])))
    sent += 1  # its NaN priorities are dropped and counted ...
    assert dealer.poll(30_000), "... but the batch it asked for still comes"
    assert decode_parts(dealer.recv_multipart(), 64 << 20, expect=("batch",))["ids"].shape == (4,)
    oversized = ctx.socket(zmq.PUSH)  # over max_message_bytes: refused by ZeroMQ itself
    oversized.connect(f"ipc://{run.channel_path(0)}")
    oversized.send(b"\0" * (64 * 1024 * 1024 + 1))
    for sock in (push, dealer, oversized):
        sock.close(linger=2000)
    ctx.term()

    episodes_after_fuzz = len(run.log_lines())
    run.wait_for_episodes(episodes_after_fuzz + 20)  # the actor keeps playing and sending
    run.interrupt()
    assert run.wait(10) == 130, run.output()
    summary = run.summary()
    assert summary["replay"]["dropped"] == sent, (summary["replay"], sent)
    assert summary["updates"] > 0
    batch_size = json.loads((run.run_dir / "config.json").read_text())["batch_size"]
    assert summary["replay"]["sampled"] >= summary["updates"] * batch_size, "the learner kept getting batches"
    assert summary["replay"]["inserted"] == summary["env_steps"], "the actor's data all got in"
    assert "exited unexpectedly" not in run.output()


BUSY = (
    "launch.py: error: cannot bind {address}: address already in use (is another run using these ports? try "
    "--base-port or --bind)"
)


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_a_busy_channel_is_a_clear_error(launch, offset):
    """A channel another run is serving (replay-in, replay-sample or weights: on loopback, a live socket in
    this user's ipc folder): a one-line usage error naming it, exit 2, before any process starts."""
    base_port = free_base_port()
    folder = os.path.join(tempfile.gettempdir(), f"mario-apex-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, f"{base_port + offset}.sock")
    with socket.socket(socket.AF_UNIX) as blocker:
        blocker.bind(path)
        blocker.listen()
        try:
            run = launch(*FAST_TEST_ENV, "--max-steps", "100", base_port=base_port)
            assert run.wait(60) == 2, run.output()
        finally:
            os.unlink(path)
    assert run.output().splitlines() == [BUSY.format(address=f"ipc://{path}")]


def test_a_busy_tcp_port_is_a_clear_error(launch):
    """Where the run does open TCP ports (here loopback TCP, asked for with local_ipc=false and --insecure)."""
    base_port = free_base_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base_port + 1))
        blocker.listen()
        run = launch(
            *FAST_TEST_ENV, "--max-steps", "100", "--set", "local_ipc=false", "--insecure", base_port=base_port
        )
        assert run.wait(60) == 2, run.output()
    assert run.output().splitlines() == [BUSY.format(address=f"tcp://127.0.0.1:{base_port + 1}")]


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
    push.connect(f"ipc://{run.channel_path(0)}")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"ipc://{run.channel_path(1)}")
    xsub = ctx.socket(zmq.XSUB)  # the only socket type that may talk to a PUB: junk "subscriptions"
    xsub.connect(f"ipc://{run.channel_path(2)}")
    sent = 0
    for i in range(10_000):
        push.send_multipart(pool[i % len(pool)] if i % 2 else [rng.bytes(int(rng.integers(1, 2000)))])
        dealer.send_multipart(pool[i % (len(pool) - 4)] if i % 2 else [rng.bytes(int(rng.integers(1, 2000)))])
        xsub.send(rng.bytes(int(rng.integers(1, 200))))
        sent += 2
    for offset in (0, 1):  # oversized: ZeroMQ drops the connection itself
        big = ctx.socket(zmq.PUSH if offset == 0 else zmq.DEALER)
        big.connect(f"ipc://{run.channel_path(offset)}")
        big.send(b"\0" * (64 * 1024 * 1024 + 1))
        big.close(linger=5000)
    # Not even ZeroMQ: raw bytes. At the replay server they start like a ZMTP 3 greeting (0xFF) and then
    # go wrong, so ZeroMQ closes the connection; wholly random bytes could pass for ZMTP 1.0 framing and
    # arrive as (uncountable) messages, so those go to the PUB port, which takes none.
    for offset in (0, 1, 2):
        for _ in range(20):
            with socket.socket(socket.AF_UNIX) as raw:
                raw.settimeout(5)
                raw.connect(run.channel_path(offset))
                junk = rng.bytes(int(rng.integers(1, 5000)))
                raw.sendall(junk if offset == 2 else b"\xff" + junk)
    xsub.close(linger=20_000)
    _wait_until_replay_dropped(run, ctx, sent)
    for sock in (push, dealer):
        sock.close(linger=0)
    ctx.term()
    updates = run.status_value("updates")
    run.wait_for_updates(updates + 20, timeout=120)  # training goes on
    run.interrupt()
    assert run.wait(10) == 130, run.output()
    summary = run.summary()
    assert summary["replay"]["dropped"] == sent, (summary["replay"], sent)
    # No fuzz here reaches the learner's input (its DEALER talks only to the replay server), so its dropped
    # counter is not checked here: test_learner_fuzz.py answers the real learner's requests with bad replies.
    assert "exited unexpectedly" not in run.output() and "Traceback" not in run.output()


def _wait_until_replay_dropped(run, ctx: zmq.Context, count: int) -> None:
    """Ask the replay server itself (as the learner does) until it has counted `count` dropped messages.
    Sent is not received: with the replay ratio pinned the server reads replay-in only as fast as the
    learner samples, so on a loaded machine messages wait in the sender's queue, and a close that gives up
    on them (a linger) or a stop before they are read leaves them uncounted. The sending sockets stay open
    until this returns."""
    asker = ctx.socket(zmq.DEALER)  # its own: a test's DEALER may also get batches for its requests
    asker.connect(f"ipc://{run.channel_path(1)}")

    def replay_dropped() -> int:
        asker.send(encode("ask_stats"))
        if not asker.poll(10_000):
            raise AssertionError(f"the replay server did not answer ask_stats:\n{run.output()}")
        return decode_parts(asker.recv_multipart(), 1 << 20, expect=("stats",))["stats"].dropped

    run.wait_for(lambda: replay_dropped() == count, 120, f"the replay server to count {count} dropped messages")
    asker.close(linger=0)


def _chunk(**changes) -> dict:
    """A valid one-transition chunk of a FAST_TEST_ENV run (SIZE x SIZE frames, stack 4, 7 actions), with changes."""
    fields = dict(
        actor=0,
        frames=np.zeros((2, SIZE, SIZE), np.uint8),
        stack=np.array([[0, 0, 0, 0, 0, 0, 0, 1]], np.int32),
        actions=np.zeros(1, np.uint8),
        rewards=np.zeros(1, np.float32),
        bootstraps=np.ones(1, np.float32),
    )
    return {**fields, **changes}


def _raw(msg_type: str, **fields) -> bytes:
    """A message with fields that encode() would not pack as arrays (raw maps, out-of-range ints)."""
    return msgpack.packb({"v": PROTOCOL_VERSION, "t": msg_type, **fields}, use_bin_type=True)


def _wrong_actor_messages() -> list[bytes]:
    """Well-formed messages to replay-in whose content is wrong."""
    episode = dict(actor=0, episode=1, reward=1.0, steps=10, x_pos=5, flag=False, epsilon=0.5, actor_steps=10)
    big = 20_001  # over replay_capacity (20000 in FAST_TEST_ENV)
    return [
        encode("transitions", **_chunk(actions=np.array(0, np.uint8))),  # 0-d actions (issue 16)
        encode("transitions", **_chunk(rewards=np.array(0.0, np.float32))),  # 0-d rewards
        encode("transitions", **_chunk(actions=np.zeros((1, 1), np.uint8))),  # 2-d actions
        encode("transitions", **_chunk(frames=np.zeros((1, 2, SIZE, SIZE), np.uint8))),  # 4-d frames
        encode("transitions", **_chunk(actions=np.zeros(2, np.uint8))),  # lengths disagree
        encode("transitions", **_chunk(stack=np.zeros((2, 8), np.int32))),
        encode("transitions", **_chunk(stack=np.zeros((1, 8), np.int64))),  # wrong dtype
        encode("transitions", **_chunk(stack=np.array([[0, 0, 0, 0, 0, 0, 0, -1]], np.int32))),  # frame -1
        encode("transitions", **_chunk(stack=np.array([[0, 0, 0, 0, 0, 0, 0, 2**31 - 1]], np.int32))),
        encode("transitions", **_chunk(actions=np.array([200], np.uint8))),  # no such action
        encode("transitions", **_chunk(rewards=np.array([np.nan], np.float32))),
        encode("transitions", **_chunk(rewards=np.array([-np.inf], np.float32))),
        encode("transitions", **_chunk(bootstraps=np.array([2.0], np.float32))),
        encode(
            "transitions",
            **_chunk(
                stack=np.zeros((big, 8), np.int32),
                actions=np.zeros(big, np.uint8),
                rewards=np.zeros(big, np.float32),
                bootstraps=np.ones(big, np.float32),
            ),
        ),
        _raw(
            "transitions",
            **{k: v for k, v in _encoded_fields(_chunk()).items() if k != "frames"},
            frames={"dtype": "uint8", "shape": [2**40, SIZE, SIZE], "data": b"\0" * 10},
        ),  # huge shape
        _raw("transitions", **{**_encoded_fields(_chunk()), "actor": -1}),
        _raw("episode", **{**episode, "steps": -3}),
        _raw("episode", **{**episode, "actor": 2**64 - 1}),
        _raw("episode", **{**episode, "reward": math.nan}),
        _raw("episode", **{**episode, "reward": math.inf}),
    ]


def _encoded_fields(fields: dict) -> dict:
    """A chunk's fields as encode() writes them (arrays as raw maps), to change one past encode()."""
    return {k: v for k, v in msgpack.unpackb(encode("transitions", **fields), raw=False).items() if k not in "vt"}


def test_the_chunk_the_wrong_messages_change_is_stored_unchanged():
    """Each wrong chunk above changes one field of _chunk() and must be dropped for that change alone:
    unchanged, it is stored by the replay buffer of a FAST_TEST_ENV run."""
    msg = decode(encode("transitions", **_chunk()), 1 << 20, expect=("transitions",))
    buffer = PrioritizedReplay(100, TEST_FRAME_SIZE, 4, 0.6, 7)
    assert buffer.add_chunk(msg["frames"], msg["stack"], msg["actions"], msg["rewards"], msg["bootstraps"]) == 1


def _wrong_learner_messages() -> list[bytes]:
    """Well-formed messages to replay-sample whose content is wrong; none is answered."""
    ids, prios = np.array([0, 1], np.int64), np.array([1.0, 2.0])
    return [
        encode("sample", batch_size=0, beta=0.5),
        encode("sample", batch_size=2**40, beta=0.5),
        _raw("sample", batch_size=-1, beta=0.5),
        _raw("sample", batch_size=4, beta=math.nan),
        encode("sample", batch_size=4, beta=1.5),
        encode("sample", batch_size=4, beta=0.5, ids=np.array(0, np.int64), priorities=np.array(1.0)),  # 0-d
        encode("priorities", ids=np.array(0, np.int64), priorities=np.array(1.0)),
        encode("priorities", ids=ids.reshape(2, 1), priorities=prios.reshape(2, 1)),  # 2-d
        encode("priorities", ids=ids, priorities=prios[:1]),  # lengths disagree
        encode("priorities", ids=ids.astype(np.float64), priorities=prios),  # float ids
        encode("priorities", ids=np.array([-1, 0], np.int64), priorities=prios),  # negative id
        encode("priorities", ids=np.array([-(2**63), 0], np.int64), priorities=prios),
        encode("priorities", ids=ids, priorities=np.array([np.inf, 1.0])),
        encode("priorities", ids=ids, priorities=np.array([-1.0, 1.0])),
        encode("snapshot", name="../escape.replay.npz"),
        encode("snapshot", name="/tmp/abs.replay.npz"),
        encode("snapshot", name="sub/dir.replay.npz"),
        encode("snapshot", name="x" * 5000 + ".replay.npz"),
        encode("snapshot", name="checkpoint.pth"),
    ]


def _wrong_reports() -> list[bytes]:
    """Well-formed reports to the launcher whose content is wrong."""
    episode = dict(
        actor=0, episode=1, reward=1.0, steps=10, x_pos=5, flag=False, epsilon=0.5, actor_steps=10, session_steps=10
    )
    return [
        encode("report", role="actor", index=0, kind="episode", values={}),  # KeyError (issue 16)
        encode("report", role="actor", index=0, kind="episode", values={}),  # twice
        encode("report", role="learner", index=0, kind="progress", values={"updates": math.nan}),
        encode("report", role="learner", index=0, kind="progress", values={"updates": -1}),
        encode("report", role="actor", index=0, kind="episode", values={**episode, "reward": math.inf}),
        encode("report", role="actor", index=7, kind="episode", values={**episode, "actor": 7}),
        encode("report", role="actor", index=2**63, kind="episode", values=episode),
        _raw("report", role="actor", index=-1, kind="episode", values=episode),
        encode("report", role="actor", index=0, kind="episode", values={**episode, "steps": 2**64 - 1}),
        encode("report", role="actor", index=0, kind="exec", values={}),
        encode("report", role="root", index=0, kind="failed", values={}, text="x"),
        encode("report", role="actor", index=0, kind="eval", values={"actor": 0}),
        encode(
            "report",
            role="replay",
            index=0,
            kind="progress",
            values={"size": 2.5, "env_steps": 1, "episodes": 1, "actors": 1},
        ),
        encode("sample", batch_size=4, beta=0.5),
        b"\x00garbage",
    ]


def test_semantically_wrong_messages_at_every_socket_are_dropped_and_counted(launch, monkeypatch):
    """Well-formed but wrong messages (0-d and wrong-ndim arrays, mismatched lengths, negative and
    out-of-range ids, frame numbers and counts, NaN/inf, huge sizes, file names with paths) at the
    replay server's two sockets and at the launcher's report socket: each is dropped and counted
    and the run goes on, then stops cleanly (exit 0) with its counters."""
    private_tmp = tempfile.mkdtemp()  # short: the launcher's report socket lives in here
    monkeypatch.setenv("TMPDIR", private_tmp)
    try:
        run = launch(*FAST_TEST_ENV)
        run.wait_for_updates(1)
        (reports_path,) = glob.glob(os.path.join(private_tmp, "mario-apex-reports-*", "reports"))
        assert os.stat(os.path.dirname(reports_path)).st_mode & 0o777 == 0o700
        ctx = zmq.Context()
        push, dealer, reports = ctx.socket(zmq.PUSH), ctx.socket(zmq.DEALER), ctx.socket(zmq.PUSH)
        push.connect(f"ipc://{run.channel_path(0)}")
        dealer.connect(f"ipc://{run.channel_path(1)}")
        reports.connect(f"ipc://{reports_path}")
        to_replay, to_launcher = 0, 0
        for raw in _wrong_actor_messages():
            push.send(raw)
            to_replay += 1
        for raw in _wrong_learner_messages():
            dealer.send(raw)
            to_replay += 1
        for raw in _wrong_reports():
            reports.send(raw)
            to_launcher += 1
        _wait_until_replay_dropped(run, ctx, to_replay)  # a close with a 20 s linger once gave up on six
        for sock in (push, dealer):
            sock.close(linger=0)
        reports.close(linger=20_000)  # the launcher reads its reports at once
        ctx.term()

        episodes = len(run.log_lines())
        run.wait_for_episodes(episodes + 20)  # the actor keeps playing and the launcher logging
        updates = run.status_value("updates")
        run.wait_for_updates(updates + 20, timeout=120)  # and the learner training
        run.signal_launcher(signal.SIGTERM)
        assert run.wait(15) == 0, run.output()
        summary = run.summary()
        assert summary["stop_reason"] == "terminated (SIGTERM)"
        assert summary["replay"]["dropped"] == to_replay, (summary["replay"], to_replay)
        assert summary["dropped_reports"] == to_launcher, (summary["dropped_reports"], to_launcher)
        assert summary["replay"]["inserted"] == summary["env_steps"], "the actor's data all got in"
        assert summary["updates"] > updates
        assert not glob.glob(os.path.join(private_tmp, "mario-apex-reports-*")), "the report socket's folder is removed"
        assert not (run.run_dir.parent / "escape.replay.npz").exists()
        assert "exited unexpectedly" not in run.output() and "Traceback" not in run.output()
    finally:
        shutil.rmtree(private_tmp, ignore_errors=True)

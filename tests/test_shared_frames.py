"""The replay server's frame ring in shared memory (common/shared_frames.py), the learner's side of it
(learner/replay_batches.py) and the guard that keeps a forked snapshot writer's frames intact
(replay_server/snapshot.py).

Every chunk here has random frames, so each transition's stack of frames is known by its global id:
what a learner gathers is compared with what was inserted, not with what the buffer says it holds.
"""

import gc
import json
import os
import select
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import common.shared_frames as shared_frames
import replay_server.snapshot as snapshot
from common.config import MAX_N_STEP
from common.protocol import ProtocolError, decode, decode_parts, encode, encode_parts
from common.shared_frames import (
    ABANDONED,
    NO_SNAPSHOT,
    SNAPSHOT,
    TOKEN,
    WRITING,
    FrameRing,
    SharedFrames,
    SharedFramesError,
)
from common.records import ReplayStats
from learner.replay_batches import ReplayBatches
from replay_server.buffer import PrioritizedReplay
from replay_server.snapshot import read_snapshot, start_snapshot, write_snapshot
from tests.harness import REPO

S = 4  # frame stack
SIZE = 8  # frame size
ACTIONS = 7
GAMMA = 0.9
MOST_EXTRA = S + MAX_N_STEP  # a chunk of n transitions may carry n + this many frames
MAX_BYTES = 64 * 1024 * 1024

needs_memfd = pytest.mark.skipif(
    not (hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")),
    reason="the frame ring is shared only where memfd and /proc exist (Linux)",
)


def make_buffer(capacity: int) -> PrioritizedReplay:
    return PrioritizedReplay(capacity, frame_size=SIZE, frame_stack=S, alpha=0.6, num_actions=ACTIONS)


class Book:
    """What was inserted, by global transition id (ids count up from 0 in insertion order)."""

    def __init__(self):
        self.stacks, self.actions, self.rewards, self.bootstraps = [], [], [], []

    def frames(self, ids) -> np.ndarray:
        return np.stack([self.stacks[i] for i in np.asarray(ids)])

    def field(self, name: str, ids) -> np.ndarray:
        return np.array([getattr(self, name)[i] for i in np.asarray(ids)])


def insert(buffer: PrioritizedReplay, rng: np.random.Generator, book: Book, n: int = 4, extra: int = 1) -> np.ndarray:
    """Add a chunk of n transitions carrying n + extra random frames; returns the new ids."""
    m = n + extra
    frames = rng.integers(0, 256, (m, SIZE, SIZE), dtype=np.uint8)
    stack = rng.integers(0, m, (n, 2 * S)).astype(np.int32)
    actions = rng.integers(0, ACTIONS, n).astype(np.uint8)
    rewards = rng.normal(size=n).astype(np.float32)
    bootstraps = np.where(rng.random(n) < 0.2, 0.0, GAMMA).astype(np.float32)
    first = buffer.inserted
    assert first == len(book.stacks)
    assert buffer.add_chunk(frames, stack, actions, rewards, bootstraps) == n
    for row in range(n):
        book.stacks.append(frames[stack[row]].copy())
        book.actions.append(actions[row])
        book.rewards.append(rewards[row])
        book.bootstraps.append(bootstraps[row])
    return np.arange(first, first + n)


def fill(buffer, rng, book, chunks: int, n: int = 4, extra: int = 1) -> None:
    for _ in range(chunks):
        insert(buffer, rng, book, n, extra)


def gather(ring: SharedFrames, numbers) -> tuple[bool, np.ndarray]:
    numbers = np.asarray(numbers, dtype=np.int64)
    out = np.empty(numbers.shape + (ring.size, ring.size), dtype=np.uint8)
    return ring.gather(numbers, out), out


# --- FrameRing and SharedFrames ----------------------------------------------------------------------


@needs_memfd
def test_ring_is_shared_and_described():
    ring = FrameRing(10, SIZE)
    assert ring.shared and ring.fd >= 0
    info = ring.describe()
    assert info == {"pid": os.getpid(), "fd": ring.fd, "token": ring.token, "frames": 10, "size": SIZE}
    assert ring.token == int(ring.header[TOKEN]) and ring.token != 0
    assert FrameRing(10, SIZE).token != ring.token  # each ring has its own token
    assert ring.frames.shape == (10, SIZE, SIZE) and ring.frames.dtype == np.uint8
    assert ring.header[SNAPSHOT] == NO_SNAPSHOT and ring.header[WRITING] == 0
    assert os.fstat(ring.fd).st_size == shared_frames.HEADER_BYTES + 10 * SIZE * SIZE


def memfd_holders(inode: int) -> tuple[list[str], list[str]]:
    """This process's open fds and maps of the frame ring whose memfd has this inode: while any remain,
    its memory stays allocated."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:mario-apex-frames"):
                if os.stat(f"/proc/self/fd/{name}").st_ino == inode:
                    fds.append(name)
        except OSError:  # the fd listdir itself used, closed since
            pass
    with open("/proc/self/maps") as f:
        fields = (line.split(maxsplit=5) for line in f)
        maps = [x[0] for x in fields if len(x) == 6 and int(x[4]) == inode and "memfd:mario-apex-frames" in x[5]]
    return fds, maps


@needs_memfd
def test_close_frees_the_ring_and_a_mapped_learner_keeps_reading():
    rng, book = np.random.default_rng(3), Book()
    buffer = make_buffer(64)
    fill(buffer, rng, book, 10)
    inode = os.fstat(buffer.ring.fd).st_ino
    learner = SharedFrames(buffer.ring.describe())
    batch = buffer.sample(16, 0.4, rng, with_frames=False)
    fds, maps = memfd_holders(inode)  # (Python's mmap keeps a dup of the fd it maps)
    assert (len(fds), len(maps)) == (3, 2)  # the server's fd, map and its fd; the learner's map and its fd
    buffer.close()
    buffer.close()  # idempotent
    fds, maps = memfd_holders(inode)
    assert (len(fds), len(maps)) == (1, 1) and not buffer.ring.shared  # the learner's only
    ok, frames = gather(learner, batch.frame_numbers)  # its own map: the frames are still there
    assert ok
    np.testing.assert_array_equal(frames, book.frames(batch.ids))
    learner.close()
    assert memfd_holders(inode) == ([], [])


@needs_memfd
def test_a_dropped_buffer_frees_its_ring():
    buffer = make_buffer(64)
    fill(buffer, np.random.default_rng(4), Book(), 10)
    inode = os.fstat(buffer.ring.fd).st_ino
    assert memfd_holders(inode) != ([], [])
    del buffer
    gc.collect()
    assert memfd_holders(inode) == ([], [])


@needs_memfd
def test_a_forked_snapshot_writer_outlives_the_close_of_its_buffer(tmp_path, monkeypatch):
    """The writer has its own map of the ring: the server closing its buffer does not tear the file."""
    rng = np.random.default_rng(5)
    buffer = make_buffer(256)
    fill(buffer, rng, Book(), 20, n=4, extra=EXTRA)
    counters, path, expected = {"episodes": 1}, str(tmp_path / "replay.npz"), buffer.content_hash()
    go_r, go_w = os.pipe()
    write = snapshot.write_snapshot

    def write_after_the_close(*args):  # runs in the child
        select.select([go_r], [], [], 20)
        write(*args)

    monkeypatch.setattr(snapshot, "write_snapshot", write_after_the_close)
    try:
        pid = start_snapshot(buffer, counters, path)
        buffer.close()
        os.write(go_w, b"x")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(go_r)
        os.close(go_w)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"snapshot child status {status}"
    restored = make_buffer(256)
    assert read_snapshot(path, restored) == counters and restored.content_hash() == expected


@needs_memfd
def test_learner_map_sees_frames_written_after_it_attached():
    rng, book = np.random.default_rng(0), Book()
    buffer = make_buffer(64)
    learner = SharedFrames(buffer.ring.describe())  # attached to the empty ring
    try:
        assert learner.token == buffer.ring.token and learner.count == buffer.frame_capacity
        fill(buffer, rng, book, 30, n=4, extra=3)  # 120 transitions, 210 frames: both rings wrapped
        assert buffer.inserted == 120 and len(buffer) <= 64
        batch = buffer.sample(48, 0.4, np.random.default_rng(7), with_frames=False)
        assert batch.frames is None and batch.frame_numbers.shape == (48, 2 * S)
        assert batch.frame_numbers.dtype == np.int64
        ok, frames = gather(learner, batch.frame_numbers)
        assert ok
        np.testing.assert_array_equal(frames, book.frames(batch.ids))
        # the same slots sampled with frames: identical stacks, numbers and fields
        with_frames = buffer.sample(48, 0.4, np.random.default_rng(7), with_frames=True)
        np.testing.assert_array_equal(with_frames.ids, batch.ids)
        np.testing.assert_array_equal(with_frames.frame_numbers, batch.frame_numbers)
        np.testing.assert_array_equal(with_frames.frames, frames)
        slots = batch.ids % buffer.capacity
        np.testing.assert_array_equal(buffer._frames[buffer._stack[slots]], frames)
        # the numbers are live frame numbers: in the window the ring still holds
        assert batch.frame_numbers.max() < buffer.ring.header[WRITING] == 210
        assert batch.frame_numbers.min() >= buffer.oldest_frame()
    finally:
        learner.close()


@needs_memfd
def test_another_process_maps_the_ring_through_proc():
    """The real arrangement: the learner is another process that maps /proc/<server pid>/fd/<fd>."""
    rng, book = np.random.default_rng(1), Book()
    buffer = make_buffer(32)
    fill(buffer, rng, book, 6, n=4, extra=2)
    batch = buffer.sample(8, 0.4, rng, with_frames=False)
    code = (
        "import json, sys\nimport numpy as np\nfrom common.shared_frames import SharedFrames\n"
        "info, numbers = json.loads(sys.argv[1]), np.array(json.loads(sys.argv[2]))\n"
        "ring = SharedFrames(info)\nout = np.empty(numbers.shape + (ring.size, ring.size), np.uint8)\n"
        "ok = ring.gather(numbers, out)\nsys.stdout.buffer.write(bytes([ok]) + out.tobytes())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(buffer.ring.describe()), json.dumps(batch.frame_numbers.tolist())],
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout[0] == 1
    frames = np.frombuffer(result.stdout[1:], np.uint8).reshape(8, 2 * S, SIZE, SIZE)
    np.testing.assert_array_equal(frames, book.frames(batch.ids))


@needs_memfd
def test_gather_refuses_overwritten_unwritten_and_negative_numbers():
    rng, book = np.random.default_rng(2), Book()
    buffer = make_buffer(64)
    fc = buffer.frame_capacity
    learner = SharedFrames(buffer.ring.describe())
    try:
        ok, _ = gather(learner, [0])
        assert not ok  # nothing written yet: WRITING is 0
        fill(buffer, rng, book, 8, n=4, extra=2)  # 48 frames, the ring (73) not yet wrapped
        written = int(buffer.ring.header[WRITING])
        assert written == 48
        assert gather(learner, [written - 1])[0]
        assert not gather(learner, [written])[0]  # not yet written
        assert not gather(learner, [0, written + 5])[0]
        assert not gather(learner, [-1])[0]
        assert not gather(learner, [5, -3, 7])[0]
        assert not gather(learner, np.zeros(0, np.int64))[0]

        batch = buffer.sample(16, 0.4, rng, with_frames=False)
        ok, before = gather(learner, batch.frame_numbers)
        assert ok
        np.testing.assert_array_equal(before, book.frames(batch.ids))
        # wrap the ring past every one of those frames
        while buffer.ring.header[WRITING] - fc <= batch.frame_numbers.max():
            insert(buffer, rng, book, n=4, extra=2)
        ok, after = gather(learner, batch.frame_numbers)
        assert not ok
        assert not np.array_equal(after, before)  # they really were overwritten

        # the window of intact numbers is [WRITING - count, WRITING), both ends exact
        written = int(buffer.ring.header[WRITING])
        assert written > fc
        ok, frames = gather(learner, [written - fc, written - 1])
        assert ok
        np.testing.assert_array_equal(frames, buffer.ring.frames[[(written - fc) % fc, (written - 1) % fc]])
        assert not gather(learner, [written - fc - 1])[0]
        assert not gather(learner, [written - fc - 1, written - 1])[0]  # one overwritten frame tears the batch
        assert not gather(learner, [written - fc, written])[0]
        # a batch only partly overwritten is torn too
        fresh = buffer.sample(16, 0.4, rng, with_frames=False)
        assert gather(learner, fresh.frame_numbers)[0]
        numbers = fresh.frame_numbers.copy()
        numbers[3, 2] = written - fc - 1
        assert not gather(learner, numbers)[0]
    finally:
        learner.close()


@needs_memfd
def test_shared_frames_refuses_what_is_not_this_ring(tmp_path):
    ring = FrameRing(16, SIZE)
    info = ring.describe()
    assert SharedFrames(info).token == ring.token  # the good description maps

    unused_pid = next(p for p in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{p}"))
    with open(tmp_path / "other", "wb") as f:  # an open fd that is not a frame ring
        f.write(b"x" * 100)
    other = os.open(tmp_path / "other", os.O_RDONLY)
    try:
        cases = {
            "fd -1": ({**info, "fd": -1}, "not in shared memory"),
            "token": ({**info, "token": ring.token ^ 1}, "token differs"),
            "frame count": ({**info, "frames": 17}, "size differs"),
            "frame size": ({**info, "size": SIZE + 1}, "size differs"),
            "pid": ({**info, "pid": unused_pid}, f"/proc/{unused_pid}/fd/{ring.fd}"),
            "fd": ({**info, "fd": 999_999}, f"/proc/{os.getpid()}/fd/999999"),
            "another file": ({**info, "fd": other}, "size differs"),
        }
        for name, (bad, words) in cases.items():
            with pytest.raises(SharedFramesError) as caught:
                SharedFrames(bad)
            assert isinstance(caught.value, OSError), name
            assert words in str(caught.value), f"{name}: {caught.value}"
    finally:
        os.close(other)


def test_ring_falls_back_to_private_memory_without_memfd(monkeypatch):
    def no_memfd(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", no_memfd, raising=False)
    rng, book = np.random.default_rng(3), Book()
    buffer = make_buffer(32)
    assert not buffer.ring.shared and buffer.ring.describe()["fd"] == -1
    buffer.ring.snapshot_begin(0)  # nothing to guard: the snapshot copies on write
    assert buffer.ring.header[SNAPSHOT] == NO_SNAPSHOT
    fill(buffer, rng, book, 12, n=4, extra=2)  # wraps, and never waits
    batch = buffer.sample(16, 0.4, rng)
    np.testing.assert_array_equal(batch.frames, book.frames(batch.ids))
    learner = ReplayBatches(4, 16, S, SIZE, use_shared=True, log=(told := []).append)
    learner.on_frame_ring(decode(encode("frame_ring", **buffer.ring.describe()), MAX_BYTES))
    assert learner.ring is None and told and "not in shared memory" in told[-1]


# --- ReplayBatches ----------------------------------------------------------------------------------------

B = 8


def filled_buffer(seed: int = 4) -> tuple[PrioritizedReplay, Book, np.random.Generator]:
    """A wrapped buffer whose transitions have distinct priorities (so distinct IS weights)."""
    rng, book = np.random.default_rng(seed), Book()
    buffer = make_buffer(64)
    fill(buffer, rng, book, 25, n=4, extra=2)
    live = buffer._ids[buffer._ids >= 0]
    assert buffer.update_priorities(live, rng.uniform(0.1, 5.0, len(live))) == len(live)
    return buffer, book, rng


def server_message(buffer, rng, shared: bool, n: int = 4 * B, **override) -> tuple[dict, object]:
    """What the server sends (replay_server/server.py), through the real encoding and decoding."""
    batch = buffer.sample(n, 0.4, rng, with_frames=not shared)
    fields = dict(
        ids=batch.ids,
        actions=batch.actions,
        rewards=batch.rewards,
        bootstraps=batch.bootstraps,
        weights=batch.weights,
        stats=ReplayStats(size=len(buffer)),
    )
    if shared:
        fields = {**fields, "frame_numbers": batch.frame_numbers, "ring": buffer.ring.token, **override}
        return decode(encode("batch_shared", **fields), MAX_BYTES, expect=("batch_shared",)), batch
    parts = encode_parts("batch", {"frames": override.pop("frames", batch.frames)}, **{**fields, **override})
    return decode_parts([bytes(p) for p in parts], MAX_BYTES, expect=("batch",)), batch


def attached(buffer, seed: int = 0) -> ReplayBatches:
    learner = ReplayBatches(B, 4 * B, S, SIZE, use_shared=True, log=lambda text: None, seed=seed)
    assert decode(learner.attach_request(), MAX_BYTES)["t"] == "attach_frames"
    learner.on_frame_ring(decode(encode("frame_ring", **buffer.ring.describe()), MAX_BYTES))
    assert learner.ring is not None
    return learner


def check_split(batches, server, book: Book) -> None:
    """4 batches of B that hold exactly the server's transitions, shuffled, each with its own data.
    Each is checked as it comes: a batch's frames are valid until the next one is taken."""
    taken = []
    for b in batches:
        taken.append(b["ids"].copy())
        assert b.keys() == {"ids", "frames", "actions", "rewards", "bootstraps", "weights"}
        assert b["frames"].shape == (B, 2 * S, SIZE, SIZE) and b["frames"].dtype == np.uint8
        assert all(b[k].shape == (B,) for k in ("ids", "actions", "rewards", "bootstraps", "weights"))
        np.testing.assert_array_equal(b["frames"], book.frames(b["ids"]))
        np.testing.assert_array_equal(b["actions"], book.field("actions", b["ids"]))
        np.testing.assert_array_equal(b["rewards"], book.field("rewards", b["ids"]))
        np.testing.assert_array_equal(b["bootstraps"], book.field("bootstraps", b["ids"]))
        weight_of = dict(zip(server.ids.tolist(), server.weights.tolist()))  # a transition's weight goes with it
        np.testing.assert_array_equal(b["weights"], [weight_of[i] for i in b["ids"].tolist()])
    assert len(taken) == 4
    ids = np.concatenate(taken)
    np.testing.assert_array_equal(np.sort(ids), np.sort(server.ids))  # the same multiset
    assert np.any(ids != server.ids), "the transitions were not shuffled"
    assert len(set(server.weights.tolist())) > 1  # the weights check meant something


@needs_memfd
def test_batch_shared_is_split_into_shuffled_batches_with_their_frames():
    buffer, book, rng = filled_buffer()
    learner = attached(buffer)
    try:
        assert decode(learner.sample_request(0.4), MAX_BYTES) == {
            "t": "sample",
            "batch_size": 4 * B,
            "beta": 0.4,
            "shared": True,
        }
        msg, server = server_message(buffer, rng, shared=True)
        assert msg["t"] == "batch_shared"
        check_split(learner.batches(msg), server, book)
        assert learner.torn == 0 and not learner.reattach
        # the next message is another shuffle, into the same reused frames buffer
        msg2, server2 = server_message(buffer, rng, shared=True)
        check_split(learner.batches(msg2), server2, book)
    finally:
        learner.close()


@needs_memfd
def test_shuffle_depends_on_the_seed_only():
    buffer, _, rng = filled_buffer()
    msg, _ = server_message(buffer, rng, shared=True)
    orders = []
    for seed in (5, 5, 6):
        learner = attached(buffer, seed)
        try:
            orders.append(np.concatenate([b["ids"] for b in learner.batches(msg)]))
        finally:
            learner.close()
    np.testing.assert_array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], orders[2])


@needs_memfd
def test_batch_shared_from_another_ring_asks_to_reattach():
    buffer, _, rng = filled_buffer()
    learner = attached(buffer)
    try:
        msg, _ = server_message(buffer, rng, shared=True, ring=buffer.ring.token ^ 1)
        assert list(learner.batches(msg)) == []
        assert learner.reattach and learner.torn == 0
        assert learner.attach_request() is not None  # reconnecting clears it and unmaps
        assert not learner.reattach and learner.ring is None
        msg, _ = server_message(buffer, rng, shared=True)  # right token, but nothing mapped now
        assert list(learner.batches(msg)) == [] and learner.reattach
    finally:
        learner.close()


@needs_memfd
def test_batch_shared_torn_by_an_overwrite_is_dropped():
    buffer, book, rng = filled_buffer()
    learner = attached(buffer)
    try:
        msg, server = server_message(buffer, rng, shared=True)
        while buffer.ring.header[WRITING] - buffer.frame_capacity <= server.frame_numbers.max():
            insert(buffer, rng, book, n=4, extra=2)
        assert list(learner.batches(msg)) == []
        assert learner.torn == 4 and not learner.reattach  # each of the 4 batches
    finally:
        learner.close()


@needs_memfd
@pytest.mark.parametrize(
    "bad",
    ["one short", "one over", "short weights", "frame_numbers columns", "frame_numbers rows", "flat frame_numbers"],
)
def test_malformed_batch_shared_raises_protocol_error(bad):
    buffer, _, rng = filled_buffer()
    learner = attached(buffer)
    n = 4 * B
    try:
        msg, _ = server_message(buffer, rng, shared=True, n=n + 1 if bad == "one over" else n)
        if bad == "one short":
            msg = {
                **msg,
                **{k: msg[k][:-1] for k in ("ids", "actions", "rewards", "bootstraps", "weights", "frame_numbers")},
            }
        elif bad == "short weights":
            msg["weights"] = msg["weights"][:-1]
        elif bad == "frame_numbers columns":
            msg["frame_numbers"] = msg["frame_numbers"][:, :-1]
        elif bad == "frame_numbers rows":
            msg["frame_numbers"] = msg["frame_numbers"][:-1]
        elif bad == "flat frame_numbers":
            msg["frame_numbers"] = msg["frame_numbers"].ravel()
        with pytest.raises(ProtocolError):
            learner.batches(msg)
    finally:
        learner.close()


def test_batch_with_frames_is_split_the_same_way():
    buffer, book, rng = filled_buffer()
    learner = ReplayBatches(B, 4 * B, S, SIZE, use_shared=False, log=lambda text: None, seed=0)
    assert learner.attach_request() is None
    assert decode(learner.sample_request(0.4, ids=np.arange(3), priorities=np.ones(3)), MAX_BYTES)["shared"] is False
    msg, server = server_message(buffer, rng, shared=False)
    assert msg["t"] == "batch"
    check_split(learner.batches(msg), server, book)
    # a single batch is passed through in the server's order
    msg, server = server_message(buffer, rng, shared=False, n=B)
    (only,) = learner.batches(msg)
    np.testing.assert_array_equal(only["ids"], server.ids)
    np.testing.assert_array_equal(only["frames"], book.frames(server.ids))


@pytest.mark.parametrize("bad", ["not a multiple", "frame shape", "frame dtype"])
def test_malformed_batch_raises_protocol_error(bad):
    buffer, _, rng = filled_buffer()
    learner = ReplayBatches(B, 4 * B, S, SIZE, use_shared=False, log=lambda text: None)
    if bad == "not a multiple":
        msg, _ = server_message(buffer, rng, shared=False, n=4 * B - 3)
    elif bad == "frame shape":
        msg, _ = server_message(buffer, rng, shared=False, frames=np.zeros((4 * B, 2 * S, SIZE, SIZE - 1), np.uint8))
    else:  # the decoder refuses it already: frames are uint8 by the message's schema
        with pytest.raises(ProtocolError, match="frames"):
            server_message(buffer, rng, shared=False, frames=np.zeros((4 * B, 2 * S, SIZE, SIZE), np.int16))
        return
    with pytest.raises(ProtocolError):
        learner.batches(msg)


@needs_memfd
def test_frame_ring_of_another_frame_size_is_not_mapped():
    buffer, _, _ = filled_buffer()
    told = []
    learner = ReplayBatches(B, 4 * B, S, SIZE + 1, use_shared=True, log=told.append)
    learner.on_frame_ring(decode(encode("frame_ring", **buffer.ring.describe()), MAX_BYTES))
    assert learner.ring is None and told == [
        f"batch frames travel over ZeroMQ: the replay server's frames are {SIZE} pixels wide"
    ]
    learner.on_frame_ring(decode(encode("frame_ring", **buffer.ring.describe()), MAX_BYTES))
    assert len(told) == 1  # said once


# --- the snapshot guard -----------------------------------------------------------------------------

EXTRA = MOST_EXTRA  # chunks of 4 transitions and 24 frames: the frame ring, not the transitions, fills


def full_frame_ring(seed: int = 6) -> tuple[PrioritizedReplay, Book, np.random.Generator]:
    """Capacity 256, frame ring 289: 12 chunks of 24 frames fill 288 slots, so the next chunk
    overwrites frames 0..22."""
    rng, book = np.random.default_rng(seed), Book()
    buffer = make_buffer(256)
    assert buffer.frame_capacity == 289
    fill(buffer, rng, book, 12, n=4, extra=EXTRA)
    assert buffer.oldest_frame() == 0 and buffer.ring.header[WRITING] == 288
    return buffer, book, rng


def recording_waits(ring: FrameRing) -> tuple[list, threading.Event]:
    """Wraps ring.wait_for_snapshot: records each call's bound and whether it had to wait."""
    calls, entered = [], threading.Event()

    def wait(overwritten_below):
        calls.append((overwritten_below, int(ring.header[SNAPSHOT]) < overwritten_below))
        entered.set()
        FrameRing.wait_for_snapshot(ring, overwritten_below)

    ring.wait_for_snapshot = wait
    return calls, entered


@needs_memfd
def test_add_chunk_waits_for_unsaved_snapshot_frames():
    buffer, book, rng = full_frame_ring()
    ring = buffer.ring
    calls, entered = recording_waits(ring)
    ring.snapshot_begin(buffer.oldest_frame())
    assert ring.header[SNAPSHOT] == 0 and not ring.snapshot_abandoned
    frames_before = ring.frames.copy()
    done = threading.Event()

    def add():
        insert(buffer, np.random.default_rng(99), book, n=4, extra=EXTRA)
        done.set()

    thread = threading.Thread(target=add, daemon=True)
    thread.start()
    try:
        assert entered.wait(60)
        assert calls == [(288 + 24 - 289, True)]  # frames 0..22 are about to be overwritten
        assert not done.wait(0.3)  # blocked ...
        assert ring.header[WRITING] == 288  # ... before announcing or writing anything
        np.testing.assert_array_equal(ring.frames, frames_before)
        ring.snapshot_saved(22)  # progress, but frame 22 is still unsaved
        assert not done.wait(0.2)
        np.testing.assert_array_equal(ring.frames, frames_before)
        ring.snapshot_saved(23)
        assert done.wait(60)
    finally:
        ring.snapshot_end()
        thread.join(10)
    assert not thread.is_alive()
    assert ring.header[WRITING] == 312 and not ring.snapshot_abandoned
    written = [288] + list(range(23))  # frames 288..311 in slots 288, 0..22
    assert all(not np.array_equal(ring.frames[i], frames_before[i]) for i in written)
    np.testing.assert_array_equal(ring.frames[23:288], frames_before[23:288])
    # and with no snapshot running nothing waits
    insert(buffer, rng, book, n=4, extra=EXTRA)
    assert calls[-1][1] is False


@needs_memfd
def test_a_dead_snapshot_writer_is_not_waited_for(monkeypatch):
    """A writer killed before it could end the guard (SIGKILL, the OOM killer): add_chunk goes on at
    once instead of stalling the server for SNAPSHOT_STALL_S."""
    monkeypatch.setattr(shared_frames, "SNAPSHOT_STALL_S", 60.0)
    buffer, book, rng = full_frame_ring()
    ring = buffer.ring
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # exited and reaped: its pid is free
    ring.snapshot_begin(buffer.oldest_frame())
    ring.writer_pid = gone.pid
    started = time.monotonic()
    insert(buffer, rng, book, n=4, extra=EXTRA)  # overwrites unsaved frames 0..22
    assert time.monotonic() - started < 30  # not the 60 s stall (generous: a loaded machine is slow)
    assert ring.header[SNAPSHOT] == NO_SNAPSHOT and not ring.snapshot_abandoned
    assert ring.header[WRITING] == 312


@needs_memfd
def test_add_chunk_does_not_wait_for_frames_it_does_not_overwrite(monkeypatch):
    monkeypatch.setattr(shared_frames, "SNAPSHOT_STALL_S", 60.0)  # a wrong wait takes 60 s, twice the bound
    rng, book = np.random.default_rng(7), Book()
    buffer = make_buffer(256)
    calls, _ = recording_waits(buffer.ring)
    buffer.ring.snapshot_begin(buffer.oldest_frame())
    started = time.monotonic()
    fill(buffer, rng, book, 12, n=4, extra=EXTRA)  # up to 288 of 289 slots: nothing overwritten
    assert time.monotonic() - started < 30
    assert [waited for _, waited in calls] == [False] * 12 and not buffer.ring.snapshot_abandoned
    # a chunk evicted by transitions count, not frames, overwrites only frames before the snapshot's first
    rng, book = np.random.default_rng(8), Book()
    buffer = make_buffer(256)
    calls, _ = recording_waits(buffer.ring)
    fill(buffer, rng, book, 20, n=16, extra=1)  # 17 frames per 16 transitions: 340 frames, wrapped
    assert buffer.oldest_frame() == 68 and len(buffer) == 256
    buffer.ring.snapshot_begin(buffer.oldest_frame())
    insert(buffer, rng, book, n=16, extra=1)  # evicts a chunk, overwrites frames 51..67 only
    assert calls[-1] == (68, False) and not buffer.ring.snapshot_abandoned
    buffer.ring.snapshot_end()


@needs_memfd
def test_stalled_snapshot_is_abandoned(monkeypatch, tmp_path):
    monkeypatch.setattr(shared_frames, "SNAPSHOT_STALL_S", 0.2)
    buffer, book, rng = full_frame_ring()
    ring = buffer.ring
    ring.snapshot_begin(buffer.oldest_frame())
    started = time.monotonic()
    insert(buffer, rng, book, n=4, extra=EXTRA)  # needs frames 0..22 saved; nobody saves them
    took = time.monotonic() - started
    assert 0.2 <= took < 60  # abandoned after the stall, not waited for forever
    assert ring.snapshot_abandoned and ring.header[ABANDONED] == 1
    assert ring.header[SNAPSHOT] == NO_SNAPSHOT and ring.header[WRITING] == 312
    batch = buffer.sample(16, 0.4, rng)  # the chunk was stored after all
    np.testing.assert_array_equal(batch.frames, book.frames(batch.ids))
    ring.snapshot_saved(100)  # a late writer cannot re-arm the guard
    assert ring.header[SNAPSHOT] == NO_SNAPSHOT
    # the writer reports the abandonment: its file would hold torn frames
    path = str(tmp_path / "replay.npz")
    with pytest.raises(OSError, match="stopped waiting"):
        write_snapshot(buffer, {}, path)
    assert not os.path.exists(path) and not os.path.exists(path + ".tmp")
    ring.snapshot_begin(buffer.oldest_frame())  # the next snapshot starts afresh
    assert not ring.snapshot_abandoned and ring.header[SNAPSHOT] == buffer.oldest_frame()
    ring.snapshot_end()


@needs_memfd
def test_snapshot_making_progress_is_waited_for_beyond_the_stall_limit(monkeypatch):
    monkeypatch.setattr(shared_frames, "SNAPSHOT_STALL_S", 2.0)  # a step never takes this long, even under load
    buffer, book, rng = full_frame_ring()
    ring = buffer.ring
    ring.snapshot_begin(buffer.oldest_frame())
    calls, entered = recording_waits(ring)
    stop = threading.Event()

    def slow_writer():  # 2 frames per 0.25 s: 3 s in all, > 2 s
        assert entered.wait(60)
        for saved in range(2, 25, 2):
            if stop.wait(0.25):
                return
            ring.snapshot_saved(saved)

    thread = threading.Thread(target=slow_writer, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        insert(buffer, rng, book, n=4, extra=EXTRA)
    finally:
        stop.set()
        thread.join(10)
    assert time.monotonic() - started >= 2.0
    assert not ring.snapshot_abandoned and ring.header[SNAPSHOT] == 24
    ring.snapshot_end()


# --- a real forked snapshot ------------------------------------------------------------------------


@needs_memfd
@pytest.mark.parametrize("force_overwrite", [False, True], ids=["free running", "slow writer"])
def test_forked_snapshot_is_the_buffer_at_the_fork(tmp_path, monkeypatch, force_overwrite):
    """The parent inserts right after the fork, overwriting every frame of the snapshot. With
    force_overwrite the writer publishes no progress until the parent has reached an unsaved frame (so
    the parent must wait for it), then pauses 2 ms after each piece it reports saved (a slow disk), so
    the parent follows it piece by piece: a writer that claimed frames before saving them, or a parent
    that did not wait, would leave torn frames in the file."""
    monkeypatch.setattr(snapshot, "FRAMES_PER_WRITE", 8)  # progress in small steps (the child inherits it)
    rng, book = np.random.default_rng(9), Book()
    buffer = make_buffer(256)
    fill(buffer, rng, book, 20, n=4, extra=EXTRA)  # 480 frames: the frame ring has wrapped
    live = buffer._ids[buffer._ids >= 0]
    buffer.update_priorities(live, rng.uniform(0.1, 5.0, len(live)))
    counters = {"episodes": 3, "env_steps": buffer.inserted}
    path = str(tmp_path / "replay.npz")
    before, first = buffer.content_hash(), buffer.oldest_frame()
    ring = buffer.ring
    release_r, release_w = os.pipe()
    calls, _ = recording_waits(ring)
    if force_overwrite:

        def snapshot_saved(upto):  # runs in the child
            if not getattr(snapshot_saved, "released", False):
                select.select([release_r], [], [], 20)  # until the parent had to wait (or 20 s)
                snapshot_saved.released = True
            FrameRing.snapshot_saved(ring, upto)
            time.sleep(0.002)

        ring.snapshot_saved = snapshot_saved
        parent_wait = ring.wait_for_snapshot

        def wait(overwritten_below):  # runs in the parent
            if int(ring.header[SNAPSHOT]) < overwritten_below:
                os.write(release_w, b"x")
            parent_wait(overwritten_below)

        ring.wait_for_snapshot = wait
    try:
        pid = start_snapshot(buffer, counters, path)
        assert pid is not None and pid > 0
        fill(buffer, rng, book, 14, n=4, extra=EXTRA)  # 336 > 289 frames: every saved frame overwritten
        after = buffer.content_hash()
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(release_r)
        os.close(release_w)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"snapshot child status {status}"
    assert after != before and buffer.oldest_frame() >= first + buffer.frame_capacity
    if force_overwrite:
        assert calls[0] == (first + 23, True), calls[:3]  # the first overwrite found frames unsaved
    assert ring.header[SNAPSHOT] == NO_SNAPSHOT and not ring.snapshot_abandoned  # the child ended it
    restored = make_buffer(256)
    assert read_snapshot(path, restored) == counters
    assert restored.content_hash() == before
    assert not os.path.exists(path + ".tmp")


def test_a_learner_whose_frames_travel_asks_for_no_more_than_one_message_carries():
    """Without the shared ring, 4096 transitions of 84x84 stacks (231 MB) would pass the 64 MiB message
    limit and ZeroMQ would drop the link again and again; the learner asks for 1184 and says so once.
    With the ring, only frame numbers travel and it asks for all 4096."""
    told = []
    learner = ReplayBatches(32, 4096, 4, 84, use_shared=False, log=told.append, max_message_bytes=64 * 1024 * 1024)
    for _ in range(2):
        assert decode(learner.sample_request(0.4), MAX_BYTES)["batch_size"] == 1184
    assert len(told) == 1 and "asking for 1184 transitions per request, not 4096" in told[0]
    learner.ring = object()  # stands in for a mapped ring: frames no longer travel
    assert decode(learner.sample_request(0.4), MAX_BYTES)["batch_size"] == 4096
    learner.ring = None


def test_off_x86_a_learner_takes_its_frames_from_the_messages(monkeypatch):
    """The torn-frame check relies on x86's store ordering: on ARM the learner does not map the ring, and says why."""
    assert shared_frames.stores_in_order("x86_64") and shared_frames.stores_in_order("AMD64")
    assert not shared_frames.stores_in_order("aarch64") and not shared_frames.stores_in_order("arm64")
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    told = []
    learner = ReplayBatches(4, 16, S, SIZE, use_shared=True, log=told.append)
    assert learner.attach_request() is None and not learner.use_shared
    assert told == [
        "batch frames travel over ZeroMQ: reading the replay server's shared memory needs x86's memory "
        "ordering to detect overwritten frames, and this CPU is arm64"
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the snapshot writer forks only where os.fork exists")
def test_off_x86_the_ring_is_private_and_a_forked_snapshot_sees_it_as_at_the_fork(tmp_path, monkeypatch):
    """The snapshot writer's guard (the server waits for frames the writer says it saved) also relies on
    x86's store ordering. Off x86 the ring is not shared, so the fork's copy-on-write keeps the writer's
    view as it was, however much the server overwrites meanwhile."""
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    rng, book = np.random.default_rng(11), Book()
    buffer = make_buffer(256)
    assert not buffer.ring.shared and buffer.ring.describe()["fd"] == -1
    fill(buffer, rng, book, 20, n=4, extra=EXTRA)  # the frame ring has wrapped
    counters, path, before = {"episodes": 2}, str(tmp_path / "replay.npz"), buffer.content_hash()
    pid = start_snapshot(buffer, counters, path)
    assert pid is not None and pid > 0
    fill(buffer, rng, book, 14, n=4, extra=EXTRA)  # every frame the writer saves is overwritten here
    assert buffer.content_hash() != before
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"snapshot child status {status}"
    restored = make_buffer(256)
    assert read_snapshot(path, restored) == counters and restored.content_hash() == before

"""A learner on another machine keeps a copy of the replay server's frame ring (learner/replay_batches.py
FrameMirror; replay_server/server.py Mirrors): each reply brings only the frames that copy lacks.

The real server's request and reply code (ReplayServer._on_learner_message and _serve_pending, on a
server object without sockets) answers the real ReplayBatches, through the real encoding: batches
through the mirror must be bit-identical to those with the frames in the message and to those read
from the shared ring, while the ring wraps; a learner with a fresh mirror (new, reconnected, or one
that lost a reply) gets every frame it needs; malformed or semantically wrong replies are refused."""

import functools
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest

import replay_server.server as server_module
from common.config import Config
from common.log_limit import LogLimit
from common.protocol import ProtocolError, decode, decode_parts, encode, encode_parts
from common.shared_frames import stores_in_order
from common.records import ReplayStats
from learner.replay_batches import FrameMirror, ReplayBatches
from replay_server.rate_limit import RateLimiter
from replay_server.server import MAX_MIRRORS, Mirrors, ReplayServer
from tests.conftest import TEST_FRAME_SIZE
from tests.test_shared_frames import ACTIONS, MAX_BYTES, SIZE, Book, S, fill, insert, make_buffer

B = 8
PER_REQUEST = 4 * B
CONFIG = Config(frame_size=SIZE, frame_stack=S, num_actions=ACTIONS, batch_size=B)
FIELDS = ("ids", "frames", "actions", "rewards", "bootstraps", "weights")


def replay_server(buffer, seed: int = 7) -> ReplayServer:
    """A ReplayServer without sockets: its replies are kept in `sent` (and `lose` makes _send fail)."""
    server = ReplayServer.__new__(ReplayServer)
    server.config, server.buffer = CONFIG, buffer
    server.rng = np.random.default_rng(seed)
    server.limiter = RateLimiter(1, 0.0, 0.0, False)
    server.limiter.observe(len(buffer), buffer.inserted)
    server.pending, server._paused_since = deque(), None
    server.counters = {k: 0 for k in ("episodes", "env_steps", "sampled", "dropped", "batches", "undeliverable")}
    server.best_reward, server.actors = float("-inf"), 1
    server.mirrors = Mirrors(buffer.frame_capacity)
    server._drop_log, server.rt = LogLimit(), SimpleNamespace(log=lambda text: None)
    server.sent, server.lose = [], False

    def send(identity, parts):
        if server.lose:
            server.counters["undeliverable"] += 1
            return False
        server.sent.append([bytes(p) for p in parts])
        return True

    server._send = send
    return server


def ask(server: ReplayServer, request: bytes, peer: bytes = b"learner") -> dict:
    """One request through the server; the decoded reply (None if it could not be sent)."""
    before = len(server.sent)
    server._drain(FakeSocket([[peer, request]]), server._on_learner_message, limit=1)
    assert server.counters["dropped"] == 0
    server._serve_pending()
    if len(server.sent) == before:
        return None
    return decode_parts(server.sent[-1], MAX_BYTES, expect=("batch", "batch_shared", "batch_mirror"))


class FakeSocket:
    def __init__(self, messages):
        self.messages = list(messages)

    def recv_multipart(self, flags, copy=True):
        import zmq

        if not self.messages:
            raise zmq.Again()
        return self.messages.pop(0)


def learner(kind: str, buffer=None, seed: int = 0) -> ReplayBatches:
    batches = ReplayBatches(B, PER_REQUEST, S, SIZE, use_shared=kind == "shared", log=lambda t: None, seed=seed)
    batches.use_mirror = kind == "mirror"
    if kind == "shared":
        batches.on_frame_ring(decode(encode("frame_ring", **buffer.ring.describe()), MAX_BYTES))
        assert batches.ring is not None
    return batches


def taken(batches: ReplayBatches, msg: dict) -> list[dict]:
    return [{k: b[k].copy() for k in FIELDS} for b in batches.batches(msg)]


def twins(seed: int = 4):
    """Two buffers filled alike, so servers with the same seed sample alike."""
    out = []
    for _ in range(2):
        rng, book, buffer = np.random.default_rng(seed), Book(), make_buffer(64)
        fill(buffer, rng, book, 25, n=4, extra=2)
        out.append((buffer, rng, book))
    return out


@pytest.mark.parametrize("other", ["batch", "shared"])
def test_mirrored_batches_are_bit_identical_to_the_other_paths_while_the_ring_wraps(other):
    """Same server seed, same learner seed: every batch through the mirror equals, bit for bit, the one
    with frames in the message (or read from the shared ring), and the book's; inserts between requests
    overwrite ring slots, whose new frames then come along. Frames cross about once per write."""
    if other == "shared" and not (stores_in_order() and make_buffer(4).ring.shared):
        pytest.skip("no shared frame ring here")
    (buf_a, rng_a, book), (buf_b, rng_b, book_b) = twins()
    server_a, server_b = replay_server(buf_a), replay_server(buf_b)
    mirrored, reference = learner("mirror"), learner(other, buf_b)
    sent_frames, rounds = 0, 40
    for round_ in range(rounds):
        msg_a = ask(server_a, mirrored.sample_request(0.4))
        msg_b = ask(server_b, reference.sample_request(0.4))
        assert msg_a["t"] == "batch_mirror" and msg_b["t"] == ("batch_shared" if other == "shared" else "batch")
        sent_frames += len(msg_a["new_numbers"])
        got, want = taken(mirrored, msg_a), taken(reference, msg_b)
        assert len(got) == len(want) == PER_REQUEST // B
        for a, b in zip(got, want):
            for key in FIELDS:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (round_, key)
            np.testing.assert_array_equal(a["frames"], book.frames(a["ids"]))
        if round_ % 3 == 2:  # new chunks overwrite the oldest slots of the ring, alike in both
            for buffer, rng, bk in ((buf_a, rng_a, book), (buf_b, rng_b, book_b)):
                insert(buffer, rng, bk, n=4, extra=2)
    assert buf_a._f_head > buf_a.frame_capacity, "the ring wrapped"
    assert mirrored.mirror_frames == sent_frames <= buf_a._f_head, "each frame crossed at most once per write"
    assert sent_frames < rounds * PER_REQUEST * 2 * S / 4, "far fewer frames than the batches name"
    assert mirrored.torn == 0 and mirrored.mirror_restarts == 0


def test_a_learner_with_a_fresh_mirror_gets_every_frame_it_needs():
    """A new learner, the same learner after a reconnection (a new token), and a restarted replay server
    (another ring, numbered from 0 again): each first reply carries every frame its batches name."""
    (buffer, rng, book), _ = twins()
    server = replay_server(buffer)
    first = learner("mirror")
    for _ in range(5):
        taken(first, ask(server, first.sample_request(0.4)))
    assert len(server.mirrors) == 1

    def check_full_reply(batches: ReplayBatches, srv: ReplayServer, bk: Book) -> None:
        msg = ask(srv, batches.sample_request(0.4))
        np.testing.assert_array_equal(msg["new_numbers"], np.unique(msg["frame_numbers"]))
        for b in taken(batches, msg):
            np.testing.assert_array_equal(b["frames"], bk.frames(b["ids"]))

    check_full_reply(learner("mirror", seed=1), server, book)  # a second learner, or a restarted one
    assert len(server.mirrors) == 2
    first.attach_request()  # what the learner does on each (re)connection
    check_full_reply(first, server, book)
    # A restarted replay server: another ring whose frames have the same numbers.
    rng2, book2, buffer2 = np.random.default_rng(99), Book(), make_buffer(64)
    fill(buffer2, rng2, book2, 25, n=4, extra=2)
    assert buffer2.ring.token != buffer.ring.token
    check_full_reply(first, replay_server(buffer2), book2)


def test_a_lost_reply_makes_the_learner_start_a_fresh_mirror():
    """The server counts frames as the mirror's once sent; a reply lost on the way (a dropped connection)
    leaves the mirror without them: the batch that names them is refused (never stale frames), the learner
    takes a new token, and the next reply brings them. A reply the server could not send is forgotten."""
    (buffer, rng, book), _ = twins()
    server = replay_server(buffer)
    batches = learner("mirror")
    ask(server, batches.sample_request(0.4))  # lost: never given to the learner
    lost_token = batches.mirror_token
    for _ in range(30):  # until a batch names a frame only the lost reply carried
        msg = ask(server, batches.sample_request(0.4))
        try:
            got = taken(batches, msg)
        except ProtocolError as exc:
            assert "lacks" in str(exc)
            break
        for b in got:
            np.testing.assert_array_equal(b["frames"], book.frames(b["ids"]))
    else:
        pytest.fail("no batch named a frame of the lost reply")
    assert batches.mirror_token != lost_token and batches.mirror_restarts == 1
    msg = ask(server, batches.sample_request(0.4))
    np.testing.assert_array_equal(msg["new_numbers"], np.unique(msg["frame_numbers"]))
    for b in taken(batches, msg):
        np.testing.assert_array_equal(b["frames"], book.frames(b["ids"]))
    # a reply that cannot be sent: the server forgets that mirror rather than count its frames delivered
    server.lose = True
    assert ask(server, batches.sample_request(0.4)) is None
    assert batches.mirror_token not in server.mirrors._held
    server.lose = False
    msg = ask(server, batches.sample_request(0.4))
    np.testing.assert_array_equal(msg["new_numbers"], np.unique(msg["frame_numbers"]))


def test_the_server_keeps_a_bounded_number_of_mirrors_least_recently_used_first_out():
    mirrors = Mirrors(100)
    numbers = np.arange(16, dtype=np.int64).reshape(2, 8)
    for token in range(1, 3 * MAX_MIRRORS):
        assert len(mirrors.to_send(token, numbers)) == 16
        assert len(mirrors) <= MAX_MIRRORS
    assert len(mirrors.to_send(3 * MAX_MIRRORS - 1, numbers)) == 0  # known: nothing again
    assert len(mirrors.to_send(1, numbers)) == 16  # forgotten long ago: everything again
    assert mirrors._held[1].nbytes == 100 * 8
    # a slot overwritten since (frame 105 took frame 5's slot) is sent again, once
    np.testing.assert_array_equal(mirrors.to_send(1, np.array([[105, 6]])), [105])
    assert len(mirrors.to_send(1, np.array([[105, 6]]))) == 0


def test_frame_mirror_reads_only_the_frames_it_holds():
    mirror = FrameMirror(ring=5, count=10, size=SIZE)
    frames = np.arange(3 * SIZE * SIZE, dtype=np.uint8).reshape(3, SIZE, SIZE)
    mirror.store(np.array([0, 11, 9]), frames)
    out = np.empty((1, 3, SIZE, SIZE), np.uint8)
    assert mirror.gather(np.array([[9, 0, 11]]), out)
    np.testing.assert_array_equal(out[0], frames[[2, 0, 1]])
    assert not mirror.gather(np.array([[1, 0, 11]]), out)  # 1's slot holds 11
    assert not mirror.gather(np.array([[10, 0, 11]]), out)  # never sent


def mirror_reply(buffer, rng, n: int = PER_REQUEST, mirror: int = 1, **override) -> list:
    """A batch_mirror as the server sends it to a fresh mirror `mirror` (all frames along), with fields
    overridden."""
    batch = buffer.sample(n, 0.4, rng, with_frames=False)
    new = np.unique(batch.frame_numbers)
    fields = dict(
        ids=batch.ids,
        actions=batch.actions,
        rewards=batch.rewards,
        bootstraps=batch.bootstraps,
        weights=batch.weights,
        stats=ReplayStats(size=len(buffer)),
        frame_numbers=batch.frame_numbers,
        ring=buffer.ring.token,
        ring_frames=buffer.frame_capacity,
        mirror=mirror,
        new_numbers=new,
    )
    frames = override.pop("frames", buffer.ring.frames[new % buffer.frame_capacity])
    return [bytes(p) for p in encode_parts("batch_mirror", {"frames": frames}, **{**fields, **override})]


def bad_replies(buffer, rng, token: int = 1) -> dict:
    """Malformed or wrong batch_mirror replies to the mirror `token`, by what is wrong."""
    reply = functools.partial(mirror_reply, mirror=token)
    good = reply(buffer, rng)
    numbers = decode_parts(good, MAX_BYTES)["frame_numbers"]
    new = np.unique(numbers)
    frames = buffer.ring.frames[new % buffer.frame_capacity]
    return {
        "frames of another size": reply(buffer, rng, frames=np.zeros((len(new), SIZE, SIZE + 1), np.uint8)),
        "frames int16": reply(buffer, rng, frames=frames.astype(np.int16)),
        "frames 4-d": reply(buffer, rng, frames=frames[:, None]),
        "fewer numbers than frames": reply(buffer, rng, frames=np.concatenate([frames, frames[:1]])),
        "new numbers int32": reply(buffer, rng, new_numbers=np.arange(5, dtype=np.int32)),
        "new numbers 2-d": reply(buffer, rng, new_numbers=np.zeros((1, 1), np.int64)),
        "a frame twice": reply(buffer, rng, new_numbers=np.r_[new[:-1], new[0]], frames=frames),  # and one missing
        "negative numbers": reply(buffer, rng, frame_numbers=np.full((PER_REQUEST, 2 * S), -1, np.int64)),
        "numbers of no one ring": reply(buffer, rng, frame_numbers=numbers + np.arange(2 * S) * 10**6),
        "obs without next obs": reply(buffer, rng, frame_numbers=numbers[:, :S]),
        "numbers int32": reply(buffer, rng, frame_numbers=numbers.astype(np.int32)),
        "one number too many": reply(buffer, rng, frame_numbers=np.vstack([numbers, numbers[:1]])),
        "an empty ring": reply(buffer, rng, ring_frames=0),
        "ring_frames negative": reply(buffer, rng, ring_frames=-5),
        "ring not an integer": reply(buffer, rng, ring="abc"),
        "frames it never got": reply(  # of another ring, which the mirror does not hold
            buffer, rng, ring=buffer.ring.token ^ 1, new_numbers=np.zeros(0, np.int64), frames=frames[:0]
        ),
        "more frames than named": reply(
            buffer,
            rng,
            n=B,
            new_numbers=np.arange(B * 2 * S + 1),
            frames=np.zeros((B * 2 * S + 1, SIZE, SIZE), np.uint8),
        ),
    }


def test_malformed_and_wrong_mirror_replies_raise_protocol_error_and_restart_the_mirror():
    """Each is refused (ProtocolError, which the learner drops and counts), by the decoder or by
    ReplayBatches; one ReplayBatches refused may have lost frames, so it takes a new token; the good
    reply after each still gives right batches."""
    (buffer, rng, book), _ = twins()
    batches = learner("mirror")
    for name in bad_replies(buffer, rng):
        token = batches.mirror_token
        parts = bad_replies(buffer, rng, token)[name]
        with pytest.raises(ProtocolError):
            batches.batches(decode_parts(parts, MAX_BYTES, expect=("batch_mirror",)))
        decoded = True
        try:
            decode_parts(parts, MAX_BYTES)
        except ProtocolError:
            decoded = False
        assert (batches.mirror_token != token) == decoded, name
        for b in taken(batches, decode_parts(mirror_reply(buffer, rng, mirror=batches.mirror_token), MAX_BYTES)):
            np.testing.assert_array_equal(b["frames"], book.frames(b["ids"]))


def test_a_reply_to_an_older_mirror_token_is_dropped_without_starting_yet_another_copy():
    """After a loss the learner takes a new token; replies to the old one still on their way (up to
    prefetch_batches) name frames its copy may lack: each is dropped, but only a reply to the current
    token starts a fresh copy, so one loss costs one full resend."""
    (buffer, rng, _), _ = twins()
    batches = learner("mirror")
    old = batches.mirror_token
    batches.attach_request()  # a reconnection: a new token
    lacking = mirror_reply(
        buffer, rng, mirror=old, new_numbers=np.zeros(0, np.int64), frames=np.zeros((0, SIZE, SIZE), np.uint8)
    )
    with pytest.raises(ProtocolError, match="lacks"):
        taken(batches, decode_parts(lacking, MAX_BYTES))
    assert batches.mirror_restarts == 0
    current = batches.mirror_token
    lacking = mirror_reply(
        buffer, rng, mirror=current, new_numbers=np.zeros(0, np.int64), frames=np.zeros((0, SIZE, SIZE), np.uint8)
    )
    with pytest.raises(ProtocolError, match="lacks"):
        taken(batches, decode_parts(lacking, MAX_BYTES))
    assert batches.mirror_restarts == 1 and batches.mirror_token != current


def test_a_local_learner_asks_for_no_copy_while_its_attach_is_unanswered():
    """A learner on the replay server's machine asks for plain batches until the server says where its
    ring is (a copy would cost memory and a misleading log line); if the ring cannot be mapped, it then
    keeps a copy."""
    (buffer, _, _), _ = twins()
    batches = ReplayBatches(B, PER_REQUEST, S, SIZE, use_shared=True, log=lambda t: None, mirror=True)
    assert decode(batches.attach_request(), MAX_BYTES)["t"] == "attach_frames"
    assert "mirror" not in decode(batches.sample_request(0.4), MAX_BYTES)
    batches.on_frame_ring(decode(encode("frame_ring", **buffer.ring.describe()), MAX_BYTES))
    assert batches.ring is not None and "mirror" not in decode(batches.sample_request(0.4), MAX_BYTES)
    batches.attach_request()
    batches.on_frame_ring(decode(encode("frame_ring", **{**buffer.ring.describe(), "size": SIZE + 1}), MAX_BYTES))
    assert batches.ring is None and decode(batches.sample_request(0.4), MAX_BYTES)["mirror"] == batches.mirror_token


def test_a_mirror_reply_that_arrives_after_the_ring_is_mapped_is_dropped_quietly():
    """A local learner's requests sent before the server said where its ring is may be answered with
    batch_mirror after it mapped the ring: such a stale reply is skipped; before, it made a copy of the ring
    (memory, a "keeping a copy" line) that lacked its frames, and was dropped as a bad message."""
    (buffer, rng, _), _ = twins()
    said = []
    batches = ReplayBatches(B, PER_REQUEST, S, SIZE, use_shared=True, log=said.append, mirror=True)
    batches.attach_request()
    batches.on_frame_ring(decode(encode("frame_ring", **buffer.ring.describe()), MAX_BYTES))
    late = mirror_reply(
        buffer,
        rng,
        mirror=batches.mirror_token,
        new_numbers=np.zeros(0, np.int64),
        frames=np.zeros((0, SIZE, SIZE), np.uint8),
    )
    assert taken(batches, decode_parts(late, MAX_BYTES)) == []
    assert batches.mirror is None and batches.mirror_restarts == 0
    assert not any("keeping a copy" in line for line in said), said


def test_the_server_drops_and_counts_sample_requests_with_a_bad_mirror_token():
    (buffer, _, _), _ = twins()
    server = replay_server(buffer)
    good = decode(encode("sample", batch_size=B, beta=0.4, mirror=5), MAX_BYTES)
    bad = [
        encode("sample", batch_size=B, beta=0.4, mirror=-1),
        encode("sample", batch_size=B, beta=0.4, mirror="x"),
        encode("sample", batch_size=B, beta=0.4, mirror=True),
        encode("sample", batch_size=B, beta=0.4, mirror=2.5),
    ]
    assert good["mirror"] == 5
    server._drain(FakeSocket([[b"x", raw] for raw in bad]), server._on_learner_message, limit=10)
    assert server.counters["dropped"] == len(bad) and not server.pending


def test_batch_mirror_is_sent_by_the_replay_server_in_the_topology():
    from common.topology import CHANNELS

    assert "batch_mirror" in CHANNELS["replay_sample"].binder.sends
    assert server_module.MAX_MIRRORS >= 2


# --- the real learner process against a fake replay server over tcp -------------------------------------
RING_FRAMES = 1000
FAKE_FRAMES = np.random.default_rng(11).integers(0, 256, (2 * 256, TEST_FRAME_SIZE, TEST_FRAME_SIZE), dtype=np.uint8)


def _fake_mirror(first_id: int, full: bool = True, numbers=None, new=None, frames=None, **changes):
    """A batch_mirror of 32 transitions naming frames 0..255 of ring 777 (all of them along when `full`), as a
    FakeReplay answer: a function of the request, whose mirror token it echoes."""
    from tests.test_learner_fuzz import BATCH, STACK2, _fields

    numbers = np.arange(BATCH * STACK2, dtype=np.int64).reshape(BATCH, STACK2) if numbers is None else numbers
    if new is None:
        new = np.arange(BATCH * STACK2, dtype=np.int64) if full else np.zeros(0, np.int64)
    frames = FAKE_FRAMES[: len(new)] if frames is None else frames
    fields = dict(ring=777, ring_frames=RING_FRAMES, **_fields(BATCH, first_id))
    fields.update(changes)
    return lambda request: encode_parts(
        "batch_mirror",
        {"frames": frames},
        frame_numbers=numbers,
        new_numbers=new,
        **{"mirror": request["mirror"], **fields},
    )


@pytest.mark.slow
def test_the_remote_learner_drops_and_counts_bad_mirror_replies_and_trains_on_the_good_ones(launch):
    """The real learner (--role learner --replay, over tcp as from another machine) asks with a mirror
    token and gets batch_mirror replies: each malformed or semantically wrong one is dropped and counted
    in summary.json, it trains on every good one (also on those that bring no frames and rely on its
    copy), and after a reply naming frames its copy lacks it asks with a new token."""
    from tests.test_learner_fuzz import BATCH, STACK2, _script, remote_learner

    numbers = np.arange(BATCH * STACK2, dtype=np.int64).reshape(BATCH, STACK2)
    new = np.arange(BATCH * STACK2, dtype=np.int64)
    bad = [
        _fake_mirror(0, frames=np.zeros((len(new), TEST_FRAME_SIZE, 84), np.uint8)),  # another frame size
        _fake_mirror(0, frames=np.zeros((len(new), TEST_FRAME_SIZE, TEST_FRAME_SIZE), np.int16)),  # not uint8
        _fake_mirror(0, frames=np.zeros((len(new), 1, TEST_FRAME_SIZE, TEST_FRAME_SIZE), np.uint8)),  # 4-d
        _fake_mirror(0, frames=FAKE_FRAMES[: len(new) + 1]),  # a frame more than numbers
        _fake_mirror(0, new=np.r_[new[:-1], new[:1]]),  # a frame twice (and one missing)
        _fake_mirror(0, new=new.astype(np.int32)),  # int32 numbers
        _fake_mirror(0, numbers=numbers.astype(np.int32)),
        _fake_mirror(0, numbers=numbers[:, :4], new=new[:128]),  # obs without next obs
        _fake_mirror(0, numbers=numbers - 1, new=new - 1),  # a negative frame number
        _fake_mirror(0, numbers=numbers * RING_FRAMES, new=new * RING_FRAMES),  # not frames of one ring
        _fake_mirror(0, ring_frames=0),
        _fake_mirror(0, ring=778, full=False),  # frames of another ring it never got
        _fake_mirror(0, weights=np.full(BATCH, np.nan, np.float32)),  # bad values (its frames are kept)
        _fake_mirror(0, actions=np.full(BATCH, 7, np.uint8)),  # no such action
    ]
    with remote_learner(launch) as (run, fake):
        answers, goods = _script(bad, [], _fake_mirror)
        for i in range(3):  # then replies that bring no frames: from its copy
            goods.append(goods[-1] + 100)
            answers.append([_fake_mirror(goods[-1], full=False)])
        fake.serve(
            answers,
            lambda: goods[-1] in fake.trained_ids or run.proc.poll() is not None,
            300,
            "the learner to train on the last good batch",
        )
        assert run.proc.poll() is None, run.output()
        run.interrupt()
        assert run.wait(60) == 130, run.output()
        summary = run.summary()
        assert summary["learner"]["dropped"] == len(bad), (summary["learner"], len(bad), run.output())
        assert summary["updates"] == len(goods), (summary["updates"], len(goods))
        assert set(goods) <= fake.trained_ids, "every good batch was trained on"
        tokens = [r.get("mirror") for r in fake.requests]
        assert all(tokens) and len(set(tokens)) > 1, "it asked with a mirror token, and a new one after a loss"
        assert summary["learner"]["mirror_restarts"] >= 1, summary["learner"]
        assert "keeping a copy of the replay server's frame ring" in run.output()
        assert "exited unexpectedly" not in run.output() and "Traceback" not in run.output()

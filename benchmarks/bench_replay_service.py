"""Replay service vs cpprb: inserts/s, and sampled transitions/s with priority updates at batch 32 and
256. Ours: the real replay server process, fed "transitions" chunks over ZeroMQ, with batches delivered
to a separate learner-side client process (2 "sample" requests in flight, each batch decoded, then its
priorities sent back). cpprb: its PrioritizedReplayBuffer used in-process on the same data shape (stacks
of 4 84x84 uint8 frames, frames stored once via next_of + stack_compress), in the same run.
Ours is measured three ways: over ipc:// with the frames read from the server's shared memory (a learner
on the server's machine); over tcp:// with the frames sent once each to the client's copy of the ring
(a learner on another machine: "batch_mirror"); over tcp:// with the frames in every message (the same,
without the copy). For the tcp ones it also prints the bytes on the wire per sampled transition (both
directions, every message of the phase, the copy's filling included). The frames are random (they do
not compress), and the buffer does not change while it is sampled, so once the copy is full only frame
numbers travel; in a live run each frame is sent once per time it is written (the estimate printed).
Goal: ours >= 1.0x cpprb's transitions/s. cpprb is a benchmark-only dependency (requirements-bench.txt)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time

import numpy as np
import zmq

from actor.chunks import ChunkBuilder
from benchmarks.common import free_base_port, machine, parser, rate
from common.addresses import connect_address
from common.config import Config
from common.protocol import decode_parts, encode

FRAME_SIZE, FRAME_STACK, N_STEP, CHUNK, NUM_ACTIONS = 84, 4, 3, 64, 7
POOL = 16  # distinct pre-encoded chunks, sent round-robin (encoding is not measured)
IN_FLIGHT = 2  # sample requests the client keeps outstanding, like the learner
TRANSITIONS_PER_REQUEST = Config.transitions_per_request  # the learner's default
BETA = 0.4
WARMUP_BATCHES = 5
REPLY_TIMEOUT_S = 60.0


# --- data ---------------------------------------------------------------------------------------
def make_chunks(rng: np.random.Generator) -> list[dict]:
    """POOL actor-like chunks of CHUNK n-step transitions from one long episode (random frames)."""
    builder, chunks = ChunkBuilder(FRAME_STACK, n_step=N_STEP), []
    builder.start_episode(rng.integers(0, 256, (FRAME_SIZE, FRAME_SIZE), dtype=np.uint8))
    while len(chunks) < POOL:
        builder.add(
            rng.integers(0, 256, (FRAME_SIZE, FRAME_SIZE), dtype=np.uint8),
            int(rng.integers(NUM_ACTIONS)),
            float(rng.normal()),
            False,
            False,
        )
        if len(builder) == CHUNK:
            chunks.append(builder.take())
    return chunks


def expected_frames(chunks: list[dict], transition_id: int) -> np.ndarray:
    """The (2S, H, W) obs + next obs of the transition with this global id (chunk g is chunks[g % POOL])."""
    chunk = chunks[(transition_id // CHUNK) % POOL]
    return chunk["frames"][chunk["stack"][transition_id % CHUNK]]


# --- the learner-side client (its own process) ----------------------------------------------------
def sample_client(
    address: str, max_bytes: int, batch_sizes: tuple[int, ...], seconds: float, shared: bool, mirror: bool, conn
) -> None:
    """Keeps IN_FLIGHT "sample" requests outstanding and takes their batches as the learner does
    (learner/replay_batches.py: TRANSITIONS_PER_REQUEST per request, shuffled and split into batches,
    frames from the server's shared memory when `shared`, else from the client's copy of the ring when
    `mirror`, else from the message), and sends their priorities with the next request, as the learner does.
    Each batch size starts a fresh reader (a fresh copy of the ring, filled as it goes).

    Waits for "go" on conn, then sends back {batch_size: transitions/s}, {("bytes", batch_size): bytes
    on the wire per sampled transition} plus the first batch's ids and frames (for a correctness check)."""
    from learner.replay_batches import ReplayBatches

    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    dealer.setsockopt(zmq.SNDHWM, 100)
    dealer.setsockopt(zmq.RCVHWM, 100)
    dealer.connect(address)
    rng = np.random.default_rng(1)

    wire = [0]  # bytes of the messages both ways

    def receive(expect: tuple[str, ...]) -> dict:
        if not dealer.poll(int(REPLY_TIMEOUT_S * 1000), zmq.POLLIN):
            raise RuntimeError(f"no answer from the replay server within {REPLY_TIMEOUT_S:.0f} s")
        parts = [f.buffer for f in dealer.recv_multipart(copy=False)]
        wire[0] += sum(p.nbytes for p in parts)
        return decode_parts(parts, max_bytes, expect=expect)

    def send(raw: bytes) -> None:
        wire[0] += len(raw)
        dealer.send(raw)

    def reader(batch_size: int) -> ReplayBatches:
        told: list[str] = []  # what the learner would log
        batches = ReplayBatches(
            batch_size, TRANSITIONS_PER_REQUEST, FRAME_STACK, FRAME_SIZE, shared, told.append, mirror=mirror
        )
        if shared:
            dealer.send(batches.attach_request())
            batches.on_frame_ring(receive(("frame_ring",)))
            if batches.ring is None:
                raise RuntimeError(f"could not map the replay server's frame ring: {told[-1] if told else '?'}")
        return batches

    conn.send("ready")
    try:
        if conn.recv() != "go":
            return
        results: dict = {"torn": 0}
        for batch_size in batch_sizes:
            batches = reader(batch_size)
            wire[0], began = 0, time.perf_counter()
            for _ in range(IN_FLIGHT):
                send(batches.sample_request(BETA))
            in_flight, received, counted, start, last, warm = IN_FLIGHT, 0, 0, 0.0, 0.0, False
            while in_flight:
                msg = receive(("batch", "batch_shared", "batch_mirror"))
                if mirror and msg["t"] != "batch_mirror":
                    raise RuntimeError(f"asked for batches for a copy of the ring, got {msg['t']}")
                in_flight -= 1
                check = warm and "ids" not in results  # one batch read after the warm-up is checked
                taken = [(b["ids"], b["frames"].copy() if check else None) for b in batches.batches(msg)]
                if not taken:
                    send(batches.sample_request(BETA))
                    in_flight += 1
                    continue
                now = time.perf_counter()
                ids = np.concatenate([b_ids for b_ids, _ in taken])
                priorities = rng.random(len(ids)) + 1e-3
                if check:
                    results["ids"], results["frames"] = taken[0][0].copy(), taken[0][1]
                    if results["frames"].shape != (batch_size, 2 * FRAME_STACK, FRAME_SIZE, FRAME_SIZE):
                        raise RuntimeError(f"batch frames have shape {results['frames'].shape}")
                received += 1
                if warm:
                    counted, last = counted + len(ids), now
                elif received >= WARMUP_BATCHES and (
                    # a copy of the ring fills first: until a reply brings frames for under 1% of those it names
                    not mirror or len(msg["new_numbers"]) < 0.01 * msg["frame_numbers"].size or now - began > 60
                ):
                    warm, start = True, now
                    results["fill", batch_size] = (now - began, wire[0], batches.mirror_frames)
                    wire[0] = 0  # from here on, the timed messages
                if not warm or now - start < seconds or counted < 3 * len(ids):
                    # keep IN_FLIGHT requests outstanding until time is up; they carry the priorities
                    send(batches.sample_request(BETA, ids, priorities))
                    in_flight += 1
                else:
                    send(encode("priorities", ids=ids, priorities=priorities))
            results[batch_size] = counted / (last - start)
            results["bytes", batch_size] = wire[0] / counted
            results["torn"] += batches.torn
            batches.close()
        conn.send(results)
    finally:
        dealer.close(linger=0)
        context.term()


# --- ours: the replay server process ----------------------------------------------------------------
class Poller:
    """Asks the server for a 1-transition batch to read its stats (its "inserted" count)."""

    def __init__(self, context: zmq.Context, config: Config, server: mp.Process):
        self.config, self.server = config, server
        self.dealer = context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(connect_address(config, "replay_sample"))
        self.request = encode("sample", batch_size=1, beta=BETA)

    def inserted(self) -> int:
        self.dealer.send(self.request)
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while not self.dealer.poll(100, zmq.POLLIN):
            if not self.server.is_alive():
                raise RuntimeError(f"the replay server exited (exit code {self.server.exitcode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replay server did not answer within {REPLY_TIMEOUT_S:.0f} s")
        parts = [f.buffer for f in self.dealer.recv_multipart(copy=False)]
        return int(decode_parts(parts, self.config.max_message_bytes, expect=("batch",))["stats"].inserted)


def bench_ours(capacity: int, seconds: float, chunks: list[dict], shared: bool, mirror: bool = False) -> dict:
    """The replay server and a sample client: over ipc:// reading shared memory (`shared`), else over
    loopback tcp:// (as from another machine, without keys), with a copy of the ring (`mirror`) or not."""
    from common.runtime import role_entry

    config = Config(
        local_ipc=shared,
        base_port=free_base_port(),
        replay_capacity=capacity,
        learning_starts=CHUNK,
        samples_per_insert=0.0,
        chunk_size=CHUNK,
        n_step=N_STEP,
        frame_size=FRAME_SIZE,
        frame_stack=FRAME_STACK,
        num_actions=NUM_ACTIONS,
    )
    messages = [encode("transitions", actor=0, **c) for c in chunks]
    total_chunks = math.ceil(capacity / CHUNK)  # fills the buffer (plus the warm-up chunk)
    run_dir = tempfile.mkdtemp(prefix="bench_replay_service_")
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    server = ctx.Process(
        target=role_entry,
        name="replay",
        daemon=True,
        args=("replay", 0, config.to_dict(), run_dir, stop, os.getpid(), {}),
    )
    parent_conn, child_conn = ctx.Pipe()
    client = ctx.Process(
        target=sample_client,
        name="sample-client",
        daemon=True,
        args=(
            connect_address(config, "replay_sample"),
            config.max_message_bytes,
            (32, 256),
            seconds,
            shared,
            mirror,
            child_conn,
        ),
    )
    context = zmq.Context()
    result = {}
    try:
        server.start()
        client.start()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 64)
        push.connect(connect_address(config, "replay_in"))
        poller = Poller(context, config, server)
        if not parent_conn.poll(REPLY_TIMEOUT_S) or parent_conn.recv() != "ready":
            raise RuntimeError("the sample client did not start")
        # Warm-up: one chunk in and a batch out prove the server is up before the clock starts.
        push.send(messages[0], copy=False)
        if poller.inserted() != CHUNK:
            raise RuntimeError("the replay server did not store the warm-up chunk")
        target = (1 + total_chunks) * CHUNK
        start = time.perf_counter()
        for g in range(1, 1 + total_chunks):
            push.send(messages[g % POOL], copy=False)
        while poller.inserted() < target:
            time.sleep(0.002)
        result["insert"] = total_chunks * CHUNK / (time.perf_counter() - start)

        parent_conn.send("go")
        if not parent_conn.poll(2 * seconds + REPLY_TIMEOUT_S):
            raise RuntimeError("the sample client did not report")
        sampled = parent_conn.recv()
        for i, transition_id in enumerate(sampled["ids"]):  # the delivered stacks are the ones sent
            if not np.array_equal(sampled["frames"][i], expected_frames(chunks, int(transition_id))):
                raise RuntimeError(f"ours: transition {transition_id} came back with the wrong frames")
        result.update({k: v for k, v in sampled.items() if k not in ("ids", "frames")})
        result["torn"] = sampled["torn"]
        return result
    finally:
        stop.set()
        for proc in (client, server):
            if proc.pid is None:
                continue
            proc.join(10.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
        context.destroy(linger=0)
        parent_conn.close()
        child_conn.close()
        shutil.rmtree(run_dir, ignore_errors=True)


# --- cpprb, in-process --------------------------------------------------------------------------------
def import_cpprb():
    """cpprb, imported here only (the spawned processes never load it); exits with a hint if missing."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # cpprb imports gym, which prints a deprecation banner
            import cpprb
    except ImportError:
        raise SystemExit("bench_replay_service needs cpprb: .venv/bin/pip install -r requirements-bench.txt") from None
    return cpprb


def bench_cpprb(cpprb, capacity: int, seconds: float, rng: np.random.Generator) -> tuple[dict, str]:
    # One episode of POOL * CHUNK steps: obs_t = frames t..t+3, next obs_t = obs_(t+1). stack_compress
    # needs the stack on the LAST axis: with (4, 84, 84) it silently rebuilds wrong stacks.
    frames = rng.integers(0, 256, (POOL * CHUNK + FRAME_STACK, FRAME_SIZE, FRAME_SIZE), dtype=np.uint8)
    obs = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(frames, FRAME_STACK, axis=0))
    actions = rng.integers(0, NUM_ACTIONS, POOL * CHUNK).astype(np.uint8)
    rewards = np.arange(POOL * CHUNK, dtype=np.float32)  # each transition's position, for the check
    dones = np.zeros(CHUNK, dtype=np.float32)
    rb = cpprb.PrioritizedReplayBuffer(
        capacity,
        {
            "obs": {"shape": obs.shape[1:], "dtype": np.uint8},
            "act": {"dtype": np.uint8},
            "rew": {"dtype": np.float32},
            "done": {"dtype": np.float32},
        },
        alpha=0.6,
        next_of="obs",
        stack_compress="obs",
    )

    def add(g: int) -> None:
        c = g % POOL
        s = slice(c * CHUNK, (c + 1) * CHUNK)
        rb.add(
            obs=obs[s], act=actions[s], rew=rewards[s], next_obs=obs[c * CHUNK + 1 : (c + 1) * CHUNK + 1], done=dones
        )
        if c == POOL - 1:
            rb.on_episode_end()  # the pool wraps around: the next chunk starts a new episode

    total_chunks = math.ceil(capacity / CHUNK)
    add(0)
    start = time.perf_counter()
    for g in range(1, 1 + total_chunks):
        add(g)
    result = {"insert": total_chunks * CHUNK / (time.perf_counter() - start)}

    check = rb.sample(64, beta=BETA)  # obs and next_obs come back rebuilt as full arrays
    for i, position in enumerate(check["rew"].ravel().astype(np.int64)):
        if not (
            np.array_equal(check["obs"][i], obs[position]) and np.array_equal(check["next_obs"][i], obs[position + 1])
        ):
            raise RuntimeError(f"cpprb: transition {position} came back with the wrong frames")
    layout = f"obs + next_obs {check['obs'].shape[1:]} each"
    for batch_size in (32, 256):

        def sample_and_update():
            batch = rb.sample(batch_size, beta=BETA)
            rb.update_priorities(batch["indexes"], rng.random(batch_size) + 1e-3)

        result[batch_size] = rate(sample_and_update, seconds) * batch_size
    return result, f"cpprb {importlib.metadata.version('cpprb')} PrioritizedReplayBuffer, {layout}"


def main() -> None:
    args = parser(__doc__).parse_args()
    capacity = 5_000 if args.smoke else 100_000
    seconds = 1.0 if args.smoke else 5.0
    cpprb = import_cpprb()
    print(f"machine: {machine()}")
    rng = np.random.default_rng(0)
    chunks = make_chunks(rng)
    ours = bench_ours(capacity, seconds, chunks, shared=True)
    remote = bench_ours(capacity, seconds, chunks, shared=False, mirror=True)
    plain = bench_ours(capacity, seconds, chunks, shared=False, mirror=False)
    theirs, cpprb_layout = bench_cpprb(cpprb, capacity, seconds, rng)
    print(
        f"replay service vs cpprb: capacity {capacity:,}, {FRAME_STACK}x{FRAME_SIZE}x{FRAME_SIZE} uint8 stacks, "
        f"frames stored once; ours: server process, chunks of {CHUNK} ({N_STEP}-step) over ZeroMQ, batches "
        f"(B, {2 * FRAME_STACK}, {FRAME_SIZE}, {FRAME_SIZE}) to a client process that reads their frames from the "
        f"server's shared memory as a learner on this machine does; {cpprb_layout}, in-process"
    )
    missed = []
    for key, label in (("insert", "inserts:"), (32, "sample+update batch  32:"), (256, "sample+update batch 256:")):
        ratio = ours[key] / theirs[key]
        if ratio < 1.0:
            missed.append(label.rstrip(":"))
        print(
            f"{label:<25} ours {ours[key]:9.0f} transitions/s   cpprb {theirs[key]:9.0f} transitions/s   "
            f"ours/cpprb {ratio:5.2f}x"
        )
    print(f"goal >= 1.0: {'met on every figure' if not missed else 'missed on ' + ', '.join(missed)}")
    print(f"torn batches (frames overwritten while read, dropped): {ours['torn']}")
    print(
        "a learner on another machine (tcp://, each frame sent once to the client's copy of the ring; timed once "
        "the copy is filled, as the cpprb figures are with a filled buffer):"
    )
    missed = []
    for b in (32, 256):
        ratio = remote[b] / theirs[b]
        if ratio < 1.0:
            missed.append(f"batch {b}")
        label = f"tcp sample+update batch {b:3d}:"
        print(
            f"{label:<29} ours {remote[b]:9.0f} transitions/s   cpprb {theirs[b]:9.0f} transitions/s   "
            f"ours/cpprb {ratio:5.2f}x   {remote['bytes', b]:5.0f} bytes/transition on the wire"
        )
    print(f"tcp goal >= 1.0: {'met on every figure' if not missed else 'missed on ' + ', '.join(missed)}")
    print(
        "filling the copy first (a fresh one per batch size, random frames, uncompressible): "
        + ", ".join(
            f"batch {b} {remote['fill', b][0]:.1f} s, {remote['fill', b][1] / 1e6:.0f} MB, {remote['fill', b][2]:,} frames"
            for b in (32, 256)
        )
        + f"; torn batches {remote['torn']}"
    )
    frames_per_insert = sum(len(c["frames"]) for c in chunks) / sum(len(c["actions"]) for c in chunks)
    live = {r: frames_per_insert * FRAME_SIZE * FRAME_SIZE / r + remote["bytes", 256] for r in (4, 8)}
    print(
        f"in a live run each frame crosses once per time it is written ({frames_per_insert:.2f} frames per inserted "
        f"transition): at 4 / 8 sampled transitions per inserted one, about {live[4]:.0f} / {live[8]:.0f} bytes "
        "per sampled transition (the batch 256 figure above included)"
    )
    print(
        "frames in every message instead (tcp://, no copy): "
        + ", ".join(
            f"batch {b} {plain[b]:.0f} transitions/s ({plain[b] / theirs[b]:.2f}x, {plain['bytes', b]:.0f} bytes/transition)"
            for b in (32, 256)
        )
    )


if __name__ == "__main__":
    main()

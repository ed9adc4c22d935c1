"""The whole pipeline, as separate processes like a real run:
1. learner starvation: learner updates/s and wait fraction of real launcher runs on the test env at
   batch 32 and 256 (goal: wait fraction < 5%);
2. weight broadcast latency: learner publishes -> an actor acts with the new weights, over a real
   PUB socket and a CONFLATE SUB socket on loopback (goal: < 50 ms);
3. replay memory: resident bytes of a replay buffer process per stored transition at two capacities
   (goal: 1,000,000 transitions fit in 8 GiB);
4. scaling: total env steps/s of real launcher runs on Super Mario Bros 1-1 with 1 and 2 actors (`--ray`:
   each also placed by the --cluster backend on a Ray cluster of this machine, interleaved).

Run with `.venv/bin/python -m benchmarks.bench_pipeline` (3-5 minutes; `--smoke` under a minute).
Rates of launcher runs come from the TensorBoard scalars the processes write once a second
(wall time and counter of each point), because summary.json holds final counters only.
"""

from __future__ import annotations

import glob
import json
import multiprocessing as mp
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a file path: make the repository importable
    sys.path.insert(0, str(REPO))

# Light imports only at module level: the spawned children re-import this module, and the memory
# child's RSS must not include torch.
from benchmarks.common import free_base_port, machine, parser  # noqa: E402

TEST_ENV = "MarioApexTest-v0"
MARIO_ENV = "SuperMarioBros-1-1-v0"
GiB = 1 << 30
MEMORY_GOAL_BYTES = 8 * GiB
MEMORY_NEEDED_FOR_1M = 10 * 10**9  # MemAvailable needed before filling 1,000,000 transitions
WARMUP_S = 3.0  # actor rate: points in the first seconds are start-up (learner importing torch)


# --- helpers ---------------------------------------------------------------------------------------


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/<pid>/status")


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def scalar_points(run_dir: str, suffix: str, tag: str) -> list[tuple[float, int]]:
    """(wall time, step) of every point of one TensorBoard scalar in the event files ending in suffix."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for path in glob.glob(os.path.join(run_dir, f"events.out.tfevents.*{suffix}")):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            points += [(e.wall_time, e.step) for e in acc.Scalars(tag)]
    return sorted(points)


def slope(points: list[tuple[float, int]], skip_s: float = 0.0) -> tuple[float, float]:
    """(counter per second, seconds covered) between the first point after skip_s and the last one."""
    if points:
        later = [p for p in points if p[0] >= points[0][0] + skip_s]
        points = later if len(later) >= 2 else points
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return float("nan"), 0.0
    (t0, s0), (t1, s1) = points[0], points[-1]
    return (s1 - s0) / (t1 - t0), t1 - t0


def run_launcher(args: list[str], timeout: float, live: bool = False) -> dict:
    """Run launch.py headless and without videos (`live`: with its window and video, on $DISPLAY) in a
    temporary runs folder on free ports; returns summary.json plus the TensorBoard points read before
    the folder is removed. Nothing survives it."""
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        cmd = [
            sys.executable,
            "launch.py",
            *([] if live else ["--headless", "--no-video"]),
            "--runs-dir",
            os.path.join(tmp, "runs"),
            "--base-port",
            str(free_base_port()),
            *args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if not live:
            env.pop("DISPLAY", None)
        out_path = os.path.join(tmp, "launcher.out")
        started = time.monotonic()
        with open(out_path, "w") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )  # its own process group
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGINT)  # a clean stop first, as Ctrl+C would
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    pass
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # anything of this run still alive
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        wall = time.monotonic() - started
        output = Path(out_path).read_text(errors="replace")
        runs = sorted(glob.glob(os.path.join(tmp, "runs", "*_run")))
        summary_path = os.path.join(runs[0], "summary.json") if runs else ""
        if not summary_path or not os.path.exists(summary_path):
            raise RuntimeError(f"launcher run wrote no summary.json (exit {proc.returncode}):\n{output[-3000:]}")
        with open(summary_path) as f:
            summary = json.load(f)
        if summary.get("exit_code") != 0:
            raise RuntimeError(f"launcher run failed ({summary.get('stop_reason')}):\n{output[-3000:]}")
        run_dir = runs[0]
        actors = len(summary.get("actors") or {})
        return {
            "summary": summary,
            "wall": wall,
            "output": output,
            "learner": scalar_points(run_dir, ".learner", "Learner/UpdatesPerSec"),
            "actors": [scalar_points(run_dir, f".actor{i}", "Actor/StepsPerSec") for i in range(actors)],
        }


# --- 1. learner starvation -------------------------------------------------------------------------
def learner_starvation(smoke: bool, actor_counts: list[int]) -> None:
    steps = 2_500 if smoke else 60_000  # the test env's actor makes 1,000-3,500 steps/s
    starts = 500 if smoke else 1_000
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"\n1. learner starvation: real launcher runs, {TEST_ENV}, 1 actor, {steps:,} env steps, "
        f"learning_starts {starts:,}, checkpoints and evaluations off; the actor, replay server and learner "
        f"share the {os.cpu_count()} cores (learner device: {device}). Goal: wait fraction < 5%"
    )
    for batch_size in (32,) if smoke else (32, 256):  # smoke: the same loop, once
        run = run_launcher(
            [
                "--env",
                TEST_ENV,
                "--max-steps",
                str(steps),
                "--set",
                f"learning_starts={starts}",
                "--set",
                f"batch_size={batch_size}",
                "--set",
                "checkpoint_every=0",
                "--set",
                "eval_every_episodes=0",
                "--device",
                device,
            ],
            timeout=60 if smoke else 180,
        )
        s = run["summary"]
        per_s, seconds = slope(run["learner"])
        wait = s["learner"].get("wait_fraction", float("nan"))
        actor_rate = sum(slope(points, WARMUP_S)[0] for points in run["actors"])
        verdict = "PASS" if wait < 0.05 else "MISS"
        print(
            f"learner batch {batch_size:>3}: {per_s:7.2f} updates/s ({per_s * batch_size:6.0f} samples/s over "
            f"{seconds:.0f} s of training), wait fraction {wait:6.2%}: {verdict}; {s['updates']:,} updates, "
            f"replay sampled {s['replay'].get('sampled', 0):,} of {s['replay'].get('inserted', 0):,} inserted, "
            f"actor alongside at {actor_rate:,.0f} steps/s"
        )


# --- 2. weight broadcast latency ---------------------------------------------------------------------
def _weights_subscriber(address: str, ready, done, conn, step_s: float) -> None:
    """An actor's side: SUB with CONFLATE, polled without waiting between simulated env steps."""
    import torch
    import zmq
    from actor.acting_network import choose_precision, make_policy
    from common.config import Config
    from common.network import build_network, network_from_arrays
    from common.protocol import decode
    from common.topology import connect_socket
    from common.transport import Transport

    torch.set_num_threads(1)  # as actor.main does
    config = Config()
    transport = Transport(config.max_message_bytes)
    try:
        sub = connect_socket(transport, config, "weights", address)  # as the actor's (CONFLATE)
        precision, _ = choose_precision(build_network(config).eval(), config)
        records = []
        while not done.is_set():
            try:
                payload = sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                payload = None
            if payload is not None:
                t_recv = time.monotonic_ns()
                msg = decode(payload, config.max_message_bytes, expect=("weights",))
                make_policy(network_from_arrays(config, msg["tensors"]), precision)  # as Actor._poll_weights
                t_acting = time.monotonic_ns()  # the next action uses these weights
                if msg["weights_version"] == 0:
                    ready.set()
                else:
                    records.append((msg["weights_version"], t_recv, t_acting))
            end = time.perf_counter() + step_s  # one env step: the emulator keeps a core busy
            while time.perf_counter() < end:
                pass
        conn.send(records)
    finally:
        transport.close()


def _weights_publisher(address: str, ready, conn, count: int, seed: int) -> None:
    """The learner's side: PUB (bound, hwm 2 as the learner), real "weights" messages; the publish
    time (monotonic ns, one clock for every process on Linux) travels in the 'updates' field."""
    import torch
    import zmq
    from common.config import Config
    from common.network import build_network, weights_to_arrays
    from common.protocol import encode
    from common.transport import Transport

    torch.set_num_threads(1)
    config = Config()
    transport = Transport(config.max_message_bytes)
    try:
        pub = transport.socket(zmq.PUB, bind=address, hwm=2)
        net = build_network(config)
        deadline = time.monotonic() + 60
        while not ready.is_set():  # slow joiner: version 0 until the subscriber has one
            if time.monotonic() > deadline:
                raise RuntimeError("the subscriber never received weights")
            pub.send(encode("weights", weights_version=0, weights_updates=0, tensors=weights_to_arrays(net)))
            ready.wait(0.05)
        time.sleep(0.2)
        rng = random.Random(seed)
        sent = []
        for version in range(1, count + 1):
            time.sleep(rng.uniform(0.05, 0.15))  # not in step with the subscriber's 6 ms steps
            t_publish = time.monotonic_ns()  # LearnerService.publish(): weights_to_arrays, encode, send
            payload = encode(
                "weights", weights_version=version, weights_updates=t_publish, tensors=weights_to_arrays(net)
            )
            pub.send(payload)
            sent.append((version, t_publish, time.monotonic_ns(), len(payload)))
        conn.send(sent)
    finally:
        transport.close()


def weight_broadcast(smoke: bool, actor_counts: list[int]) -> None:
    count, step_s = (10 if smoke else 50), 0.006
    address = f"tcp://127.0.0.1:{free_base_port() + 2}"
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    sub_recv, sub_send = ctx.Pipe(duplex=False)
    pub_recv, pub_send = ctx.Pipe(duplex=False)
    sub = ctx.Process(target=_weights_subscriber, args=(address, ready, done, sub_send, step_s), daemon=True)
    pub = ctx.Process(target=_weights_publisher, args=(address, ready, pub_send, count, 0), daemon=True)
    sent, received = [], []
    sub.start()
    pub.start()
    try:
        if pub_recv.poll(120):
            sent = pub_recv.recv()
        time.sleep(0.5)  # let the last publication land
        done.set()
        if sub_recv.poll(30):
            received = sub_recv.recv()
    finally:
        done.set()
        for proc in (pub, sub):
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if not sent or not received:
        raise RuntimeError("weight broadcast benchmark got no results")
    by_version = {v: (t_pub, t_sent, size) for v, t_pub, t_sent, size in sent}
    latency, encode_send, transfer, load = [], [], [], []
    for version, t_recv, t_acting in received:
        t_pub, t_sent, _ = by_version[version]
        latency.append((t_acting - t_pub) / 1e6)
        encode_send.append((t_sent - t_pub) / 1e6)
        transfer.append((t_recv - t_sent) / 1e6)
        load.append((t_acting - t_recv) / 1e6)
    latency.sort()
    p95 = latency[min(len(latency) - 1, round(0.95 * (len(latency) - 1)))]
    median = statistics.median(latency)
    size_mb = sent[0][3] / 1e6
    print(
        f"\n2. weight broadcast: learner publishes -> actor acts with the weights; PUB (hwm 2) -> SUB with "
        f"CONFLATE on loopback, {size_mb:.1f} MB 'weights' messages every 50-150 ms, subscriber polls "
        f"between {step_s * 1000:.0f} ms simulated env steps, then decodes, builds the network and its acting "
        f"policy. Goal: < 50 ms"
    )
    print(
        f"weights publish->act: median {median:6.1f} ms, p95 {p95:6.1f} ms, max {latency[-1]:6.1f} ms over "
        f"{len(received)} of {len(sent)} publications: {'PASS' if p95 < 50 else 'MISS'}"
    )
    print(
        f"  medians: weights_to_arrays+encode+send {statistics.median(encode_send):.1f} ms, transfer+wait for "
        f"the next poll {statistics.median(transfer):.1f} ms, decode+network+policy {statistics.median(load):.1f} ms"
    )


# --- 3. replay memory ------------------------------------------------------------------------------
def _actor_like_chunks(rng, count: int) -> list[dict]:
    """Chunks as an actor sends them: ChunkBuilder(4, n_step=3), 64 transitions or the episode's end,
    random 84x84 frames, episodes of a few hundred steps."""
    import numpy as np
    from actor.chunks import ChunkBuilder

    builder, chunks = ChunkBuilder(4, n_step=3), []
    builder.start_episode(rng.integers(0, 256, (84, 84), dtype=np.uint8))
    left = int(rng.integers(200, 800))
    while len(chunks) < count:
        left -= 1
        builder.add(rng.integers(0, 256, (84, 84), dtype=np.uint8), int(rng.integers(7)), 0.1, left == 0, False)
        if len(builder) >= 64 or left == 0:
            chunks.append(builder.take())
        if left == 0:
            builder.start_episode(rng.integers(0, 256, (84, 84), dtype=np.uint8))
            left = int(rng.integers(200, 800))
    return chunks


def _replay_memory_child(capacity: int, conn) -> None:
    """Fill a fresh buffer in this (fresh, spawned) process and report its VmRSS."""
    import numpy as np
    from replay_server.buffer import PrioritizedReplay

    baseline = rss_bytes()
    chunks = _actor_like_chunks(np.random.default_rng(capacity), 16)
    pool = sum(c["frames"].nbytes for c in chunks)
    buffer = PrioritizedReplay(capacity, 84, 4, alpha=0.6, num_actions=7)
    started, i = time.perf_counter(), 0

    def insert():
        nonlocal i
        c = chunks[i % len(chunks)]
        i += 1
        buffer.add_chunk(c["frames"], c["stack"], c["actions"], c["rewards"], c["bootstraps"])

    while buffer.inserted < capacity:
        insert()
    at_capacity = (rss_bytes(), len(buffer))
    # Steady state: go on until every slot of the frame ring (capacity * 9/8 frames) has been written.
    while getattr(buffer, "_f_head", float("inf")) < buffer.frame_capacity:
        insert()
    conn.send(
        {
            "baseline": baseline,
            "pool": pool,
            "at_capacity": at_capacity,
            "steady": (rss_bytes(), len(buffer)),
            "inserted": buffer.inserted,
            "nbytes": buffer.nbytes(),
            "seconds": time.perf_counter() - started,
        }
    )


def replay_memory(smoke: bool, actor_counts: list[int]) -> None:
    capacities = (5_000, 20_000) if smoke else (100_000, 1_000_000)
    print(
        "\n3. replay memory: VmRSS of a fresh process holding one PrioritizedReplay (84x84 frames stored once, "
        "frame ring capacity * 9/8), filled with actor-like chunks (ChunkBuilder(4, n_step=3), 64 transitions, "
        "random frames). Goal: 1,000,000 transitions fit in 8 GiB"
    )
    ctx = mp.get_context("spawn")
    for capacity in capacities:
        need = capacity * 84 * 84 * 9 // 8
        if capacity >= 1_000_000 or need > 2 * 10**9:
            available = mem_available_bytes()
            if available < MEMORY_NEEDED_FOR_1M:
                print(
                    f"replay {capacity:>9,}: SKIPPED: MemAvailable is {available / 1e9:.1f} GB, filling needs about "
                    f"{need / 1e9:.1f} GB and this benchmark asks for {MEMORY_NEEDED_FOR_1M / 1e9:.0f} GB free"
                )
                continue
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_replay_memory_child, args=(capacity, send), daemon=True)
        proc.start()
        try:
            result = recv.recv() if recv.poll(600) else None
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if result is None:
            raise RuntimeError(f"replay memory child for capacity {capacity:,} gave no result (exit {proc.exitcode})")
        steady_rss, stored = result["steady"]
        cap_rss, cap_stored = result["at_capacity"]
        verdict = ""
        if capacity == 1_000_000:
            verdict = f": {'PASS' if steady_rss < MEMORY_GOAL_BYTES else 'MISS'} (goal < 8 GiB = 8.59 GB)"
        print(
            f"replay {capacity:>9,}: {steady_rss / stored:6.0f} bytes/stored transition, RSS {steady_rss / 1e9:5.2f} GB "
            f"({steady_rss / GiB:5.2f} GiB) holding {stored:,} after {result['inserted']:,} inserts{verdict}"
        )
        print(
            f"  at the first fill (inserted >= capacity): {cap_rss / cap_stored:.0f} bytes/transition, "
            f"{cap_rss / 1e9:.2f} GB; arrays {result['nbytes'] / 1e9:.2f} GB, process before the buffer "
            f"{result['baseline'] / 1e6:.0f} MB, chunk pool {result['pool'] / 1e6:.0f} MB; "
            f"filled in {result['seconds']:.1f} s"
        )


# --- 4. scaling ------------------------------------------------------------------------------------
def scaling(smoke: bool, actor_counts: list[int], ray_cluster: str = "") -> None:
    # about 20 s of play per run; smoke: the same loop, once
    steps = {2: 300} if smoke else {n: 4_000 if n == 1 else 3_500 * n for n in actor_counts}
    # Full mode keeps the learner idle, so the curve is the actors' own. Smoke mode lets it train from
    # 200 transitions, so its one short run also checks a learner training beside two Mario actors.
    starts = 200 if smoke else 100_000
    learner = (
        "learner training from 200 transitions"
        if smoke
        else "learner idle (learning_starts=100000: it never trains; actors, replay server and launcher work)"
    )
    print(
        f"\n4. scaling: real launcher runs on {MARIO_ENV}, headless, no video, {learner}; "
        f"this machine has {os.cpu_count()} cores. Total env steps/s after {WARMUP_S:.0f} s of start-up"
        f"{'; each count also on the --cluster backend (a Ray cluster on this machine), interleaved' if ray_cluster else ''}:"
    )
    backends = {"": []}
    if ray_cluster:
        backends["ray"] = ["--cluster", ray_cluster, "--learner-resource", RAY_LEARNER_RESOURCE]
    base = {}
    for actors, n in steps.items():
        totals = {}
        for backend, extra in backends.items():
            run = run_launcher(
                [
                    "--env",
                    MARIO_ENV,
                    "--actors",
                    str(actors),
                    "--max-steps",
                    str(n),
                    "--set",
                    f"learning_starts={starts}",
                ]
                + extra,
                timeout=90 if smoke else 180,
            )
            rates = [slope(points, WARMUP_S)[0] for points in run["actors"]]
            total = totals[backend] = sum(rates)
            base[backend] = base.get(backend) or total
            s = run["summary"]
            against = f"; {total / totals['']:.2f} of plain --actors {actors}" if backend else ""
            print(
                f"{'on Ray ' if backend else ''}actors {actors}: {total:6.0f} steps/s ({total / base[backend]:.2f}x"
                f"{against}; per actor {', '.join(f'{r:.0f}' for r in rates)}; {s['env_steps']:,} env steps, "
                f"{s['replay'].get('inserted', 0):,} stored, run {run['wall']:.0f} s wall)",
                flush=True,
            )


RAY_LEARNER_RESOURCE = "mario_learner"


def local_ray_cluster():
    """A one-node Ray cluster for the scaling part's --ray runs: every core, and the learner's resource."""
    from ray.cluster_utils import Cluster

    return Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": os.cpu_count(),
            "resources": {RAY_LEARNER_RESOURCE: 1},
            "include_dashboard": False,
            "no_monitor": True,
        },
    )


PARTS = {"starvation": learner_starvation, "broadcast": weight_broadcast, "memory": replay_memory, "scaling": scaling}


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"which parts to run, comma-separated: {', '.join(PARTS)}")
    p.add_argument(
        "--actors", default="1,2", help="actor counts for the scaling curve (e.g. 1,2,4,8,16 on a bigger machine)"
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help="scaling: run each actor count also with --cluster on a Ray cluster of this machine, which the "
        "benchmark starts and stops (needs requirements-cluster.txt): the cost of Ray's placement",
    )
    args = p.parse_args()
    try:
        parts = [PARTS[name] for name in args.parts.split(",")]
        actor_counts = [int(n) for n in args.actors.split(",")]
    except (KeyError, ValueError) as exc:
        p.error(f"bad --parts or --actors ({exc})")
    started = time.monotonic()
    print(
        f"machine: {machine()}; MemAvailable {mem_available_bytes() / 1e9:.1f} GB, "
        f"1-min load average {os.getloadavg()[0]:.2f} before starting"
        f"{'; smoke mode (figures are not meaningful)' if args.smoke else ''}",
        flush=True,
    )
    cluster = local_ray_cluster() if args.ray else None
    try:
        for part in parts:
            if part is scaling and cluster is not None:
                part(args.smoke, actor_counts, cluster.address)
            else:
                part(args.smoke, actor_counts)
            sys.stdout.flush()
    finally:
        if cluster is not None:
            cluster.shutdown()
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()

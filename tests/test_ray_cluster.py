"""--cluster on a real multi-node Ray cluster started here (ray.cluster_utils.Cluster: each node its own
raylet and workers; a custom resource stands in for the GPU node): the run trains, the roles go where
they are meant to, an actor whose node dies is restarted on another node, and Ctrl+C leaves nothing
running on any node."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
import zmq

from tests.conftest import FAST_TEST_ENV
from tests.harness import REPO, LaunchedRun, alive, descendants_of

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")

LEARNER_RESOURCE = "mario_learner"


def cluster_processes() -> dict[int, str]:
    """pid -> name of the role processes and Ray role hosts under this test process (the cluster's nodes
    are its children), zombies aside."""
    found = {}
    for pid in alive(descendants_of(os.getpid())):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name = comm if comm.startswith("mario-") else cmdline
        if name.startswith("mario-") or "RoleHost" in name:
            found[pid] = name
    return found


def placed(run: LaunchedRun, name: str) -> list[str]:
    """The node ids (8 hex digits, "-" for none) the launcher printed for `name`, in order."""
    return re.findall(rf"mario-apex: {name} on node (\S+) at", run.output())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def cluster():
    """A head with no CPU (and Ray Client's server), a learner node (1 CPU and the learner resource) and two
    worker nodes (1 CPU each): actor 1 must go to a worker node, and after that node dies, to the other one."""
    client_port = free_port()
    c = ray_cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "no_monitor": True,
            "ray_client_server_port": client_port,
        },
    )
    nodes = {
        "learner": c.add_node(num_cpus=1, resources={LEARNER_RESOURCE: 1}),
        "w1": c.add_node(num_cpus=1),
        "w2": c.add_node(num_cpus=1),
    }
    c.wait_for_nodes()
    yield c, nodes, client_port
    c.shutdown()


@pytest.mark.slow
def test_cluster_run_places_restarts_and_stops(tmp_path, cluster, monkeypatch):
    c, nodes, client_port = cluster
    short = {name: node.node_id[:8] for name, node in nodes.items()}
    # --cluster auto finds the cluster in RAY_ADDRESS, as Ray's own tools do; it has no GPU node
    monkeypatch.setenv("RAY_ADDRESS", c.address)
    result = subprocess.run(
        [sys.executable, "launch.py", "--cluster", "auto", "--runs-dir", str(tmp_path / "none"), *FAST_TEST_ENV],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "no node in the Ray cluster has the resource 'GPU'" in result.stderr, result
    too_many = ["--learner-resource", LEARNER_RESOURCE, "--actors", "9"]  # 3 CPUs: the learner and 2 actors
    result = subprocess.run(
        [
            sys.executable,
            "launch.py",
            "--cluster",
            "auto",
            "--runs-dir",
            str(tmp_path / "none"),
            *FAST_TEST_ENV,
            *too_many,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "the Ray cluster has 3 free CPUs; this run needs 9" in result.stderr, result
    assert not (tmp_path / "none").exists()
    # the run itself from "another machine", through Ray Client (ray://)
    run = LaunchedRun(
        tmp_path,
        "--cluster",
        f"ray://127.0.0.1:{client_port}",
        "--learner-resource",
        LEARNER_RESOURCE,
        "--actors",
        "2",
        *FAST_TEST_ENV,
        "--set",
        "actor_restarts=3",
        "--set",
        "samples_per_insert=1",  # actor 0, here from the start, waits for the learner instead of flooding it
    )
    try:
        run.wait_for_updates(1, timeout=180)
        assert placed(run, "replay") == [short["learner"]], run.output()
        assert placed(run, "learner") == [short["learner"]], run.output()
        first = placed(run, "actor-1")
        assert len(first) == 1 and first[0] in (short["w1"], short["w2"]), run.output()
        assert placed(run, "actor-0") and placed(run, "actor-0")[0] not in short.values(), run.output()  # the head
        # actor 1 is on another node: it reaches the learner over TCP, with this run's keys; no one else does
        replay_in = re.search(r"\[replay\] listening on (tcp://\S+:\d+)", run.output())
        assert replay_in, run.output()
        run.wait_for(lambda: re.search(r"actors \d+/[1-9]\d* steps/s", run.output()), 120, "steps from actor 1")
        context = zmq.Context()
        stranger = context.socket(zmq.PUSH)
        stranger.connect(replay_in.group(1))
        run.wait_for(
            lambda: "[replay] refused a connection to replay-in" in run.output(), 60, "a keyless client refused"
        )
        context.destroy(linger=0)

        doomed = next(name for name in ("w1", "w2") if short[name] == first[0])
        c.remove_node(nodes[doomed], allow_graceful=False)
        run.wait_for(lambda: "actor-1 exited unexpectedly" in run.output(), 120, "actor 1's loss to be seen")
        assert "its Ray host went away" in run.output() and "restarting it (1 of 3)" in run.output(), run.output()
        other = short["w2" if doomed == "w1" else "w1"]
        run.wait_for(lambda: placed(run, "actor-1")[1:] == [other], 120, "actor 1 on the other worker node")
        run.wait_for(lambda: run.output().count("[actor-1] acting") >= 2, 120, "actor 1 to play again")

        roles = cluster_processes()
        assert {name for name in roles.values() if name.startswith("mario-")} >= {"mario-replay", "mario-learner"}
        run.interrupt()
        run.wait_gone(set(roles), 10)  # every role and host on every node, within 10 s of Ctrl+C
        assert run.wait(15) == 130, run.output()
        summary = run.summary()
        assert summary["stop_reason"] == "interrupted (Ctrl+C)"
        assert summary["stop_seconds"] < 10, summary
        assert summary["placement"]["learner"].startswith(short["learner"])
        assert summary["placement"]["actor-1"].startswith(other)
        assert (run.run_dir / "checkpoint_final.pth").exists()
        assert "did not stop in time" not in run.output()
        left = cluster_processes()
        assert not left, f"still running on the cluster's nodes: {left}"
    finally:
        run.cleanup()


def test_cluster_refuses_what_it_decides_itself():
    for extra in (["--role", "learner"], ["--keys", "k"], ["--bind", "0.0.0.0"], ["--resume", "x"]):
        result = subprocess.run(
            [sys.executable, "launch.py", "--cluster", "auto", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result
        assert "--cluster places every role" in result.stderr and extra[0] in result.stderr, result.stderr


def test_cluster_without_a_cluster_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "launch.py", "--cluster", "127.0.0.1:1", "--runs-dir", str(tmp_path), *FAST_TEST_ENV],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2, result
    assert "cannot connect to the Ray cluster at 127.0.0.1:1" in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())  # no run folder


def test_default_launch_does_not_import_ray():
    code = "import sys, launch, launcher.cli, launcher.supervisor\nprint('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result


def test_learner_resource_needs_cluster():
    result = subprocess.run(
        [sys.executable, "launch.py", "--learner-resource", "x"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "--learner-resource is for --cluster" in result.stderr, result.stderr


def test_ray_client_server_dying_at_start_is_tried_again(monkeypatch, capsys):
    """Ray's head sometimes loses the per-client server it forks for a ray:// connection (ray-project/ray#63202):
    the launcher connects again, up to CLIENT_TRIES times, and says why; other failures are one line at once."""
    from launcher import ray_backend
    from launcher.supervisor import StartError

    failure = ConnectionAbortedError(
        f"Initialization failure from server:\n{ray_backend.CLIENT_SERVER_FAILED}. See `ray_client_server_23000.err`"
    )
    calls = []

    def init(**kwargs):
        calls.append(kwargs["address"])
        if len(calls) < ray_backend.CLIENT_TRIES:
            raise failure

    monkeypatch.setattr(ray_backend.ray, "init", init)
    monkeypatch.setattr(ray_backend.ray, "shutdown", lambda: None)
    ray_backend.ClusterSupervisor._connect("ray://head:10001")
    assert calls == ["ray://head:10001"] * ray_backend.CLIENT_TRIES
    assert capsys.readouterr().out.count("ray-project/ray#63202") == ray_backend.CLIENT_TRIES - 1

    calls.clear()
    monkeypatch.setattr(ray_backend.ray, "init", lambda **kwargs: (calls.append(1), _raise(failure)))
    with pytest.raises(StartError, match="cannot connect to the Ray cluster at ray://head:10001"):
        ray_backend.ClusterSupervisor._connect("ray://head:10001")
    assert len(calls) == ray_backend.CLIENT_TRIES

    calls.clear()
    monkeypatch.setattr(ray_backend.ray, "init", lambda **kwargs: (calls.append(1), _raise(ConnectionError("refused"))))
    with pytest.raises(StartError, match="refused"):
        ray_backend.ClusterSupervisor._connect("ray://head:10001")
    assert len(calls) == 1


def _raise(exc: Exception):
    raise exc

"""`--cluster`: the same run, with its roles placed on a Ray cluster instead of started here.

Ray does the placement, the start-up on each node, and the cleanup when the launcher goes away; the
run itself is unchanged. The replay server and the learner go together on a node with a GPU (or with
the resource --learner-resource names), actors 1..N-1 spread over the cluster's CPUs (one each), and
actor 0, with the window and mario_run.mp4, runs here as a plain child, as without a cluster.
ZeroMQ stays the data plane: the learner's node binds its own address with fresh CurveZMQ keys made
for this run, and every actor connects to it with them (ipc only between roles on one node).

Each role on the cluster runs in a RoleHost (launcher/ray_host.py); here a RemoteProcess stands for
it with multiprocessing.Process's interface, so the Supervisor starts, watches, restarts and stops
it exactly as a local child. A thread of its own waits for Ray to place the host, starts the role
there, then relays: the stop events out, the role's reports and its exit in (through a queue the
launcher drains with its own reports). The launcher's loop never waits on Ray, so Ctrl+C is served
at once even while a host waits for a free CPU. A host that dies with its node, or that Ray cannot
place, ends as a crashed child, and a crashed actor is started again wherever Ray finds a free CPU
(up to actor_restarts times, as on one machine).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import socket
import threading
from typing import Callable

import ray
import zmq
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from common.addresses import AddressError, parse_endpoint
from common.config import Config
from common.keys import CurveKeys
from common.records import ActorStart
from launcher.ray_host import RoleHost
from launcher.supervisor import REPORTS_PER_DRAIN, STOP_ORDER, StartError, Supervisor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = ["common", "actor", "learner", "replay_server", "launcher"]  # what the nodes get: these packages only
POLL_S = 0.2
CALL_TIMEOUT_S = 30.0  # a host that answers no call for this long is taken for gone
PLACE_TIMEOUT_S = 120.0  # a host Ray cannot place (no free CPU, no learner node) is given up after this
CLOSE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
CLIENT_TRIES = 3  # Ray Client's per-client server dies at start now and then (ray-project/ray#63202)
CLIENT_SERVER_FAILED = "Starting Ray client server failed"  # what the head answers then
LOST = -signal.SIGKILL  # the exit code of a role whose host (worker or node) went away
HOST_ENV = ("OMP_NUM_THREADS",)  # Ray sets it to the host's CPUs (1); a role gets the launcher's
RemoteHost = ray.remote(max_concurrency=4)(RoleHost)


class RemoteProcess:
    """A role process in a RoleHost on a cluster node, with the parts of multiprocessing.Process's
    interface the Supervisor uses (start, exitcode, is_alive, terminate, kill, join, name).
    `args_for(node)` gives RoleHost.start's arguments once the node is known."""

    def __init__(self, host, name: str, args_for: Callable[[dict], tuple], events: tuple, inbox: queue.SimpleQueue):
        self.host, self.name, self._args_for = host, name, args_for
        self._role_stop, self._run_stop = events
        self._inbox = inbox  # ("placed", name, node) and ("report", raw) for the launcher's thread
        self.exitcode: int | None = None
        self.lost = ""  # why the host went away, if it did
        self._relay_thread = threading.Thread(target=self._relay, name=f"relay-{name}", daemon=True)

    def start(self) -> None:
        self._relay_thread.start()

    def _relay(self) -> None:
        phase = "placing"
        try:
            node = ray.get(self.host.node.remote(), timeout=PLACE_TIMEOUT_S)
            self._inbox.put(("placed", self.name, node))
            phase = "starting"
            ray.get(self.host.start.remote(*self._args_for(node)), timeout=PLACE_TIMEOUT_S)
            phase = "running"
            sent = (False, False)
            while True:
                now = (self._role_stop.is_set(), self._run_stop.is_set())
                if now != sent:
                    self.host.set_events.remote(*now)
                    sent = now
                exitcode, reports = ray.get(self.host.poll.remote(POLL_S), timeout=POLL_S + CALL_TIMEOUT_S)
                for raw in reports:
                    self._inbox.put(("report", raw))
                if exitcode is not None:
                    self._close_host()
                    self.exitcode = exitcode  # after its last reports: the launcher reads those first
                    return
        except Exception as exc:  # any Ray failure (died, unreachable, unplaceable, a client gone): the
            self.lost = (  # host is replaced, if at all, so make sure it cannot come back
                f"Ray could not place it ({type(exc).__name__})"
                if phase == "placing"
                else f"its Ray host went away while {phase} ({type(exc).__name__})"
            )
            self.kill()
            self.exitcode = LOST

    def _close_host(self) -> None:
        try:
            ray.get(self.host.close.remote(), timeout=CLOSE_TIMEOUT_S)
        except Exception:  # it exited already; the kill below is what counts
            pass
        self.kill()

    def is_alive(self) -> bool:
        return self.exitcode is None

    def terminate(self) -> None:
        try:
            self.host.terminate.remote()
        except Exception:  # a Ray Client gone: kill() follows
            pass

    def kill(self) -> None:
        """At once, even for a host that no longer answers: Ray kills the worker and its child, the role."""
        try:
            ray.kill(self.host, no_restart=True)
        except Exception:  # gone already, or the client connection with it
            pass

    def join(self, timeout: float | None = None) -> None:
        if self._relay_thread.is_alive():
            self._relay_thread.join(timeout)


def fresh_keys() -> tuple[CurveKeys, CurveKeys, bytes]:
    """This run's CurveZMQ keys: the learner node's (server pair, and a client pair for its own link to
    the replay server), the actors' (client pair, the server's public key), and the one client public
    key the server accepts. Made per run, so nothing is copied to the nodes beforehand."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    client = CurveKeys(client_public=client_public, client_secret=client_secret, known_server=server_public)
    server = dataclasses.replace(client, server_public=server_public, server_secret=server_secret)
    return server, client, client_public


class ClusterSupervisor(Supervisor):
    """The Supervisor with the replay server, the learner and actors 1.. placed by Ray."""

    def __init__(self, config: Config, address: str, learner_resource: str):
        self.learner_resource = learner_resource
        self._connect(address)
        self._check_resources(config)
        self.server_keys, self.client_keys, self.authorized = fresh_keys()
        self.placement: dict[str, dict] = {}
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._here = self._local_node_id()
        self._place_learner_node()
        super().__init__(dataclasses.replace(config, runs_dir=os.path.abspath(config.runs_dir)))

    @staticmethod
    def _connect(address: str) -> None:
        if address != "auto" and "://" not in address:  # a head's HOST:PORT: Ray would retry it for minutes
            try:
                host, port = parse_endpoint(address, 6379, "--cluster")
                socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
            except (AddressError, OSError) as exc:
                raise StartError(
                    f"cannot connect to the Ray cluster at {address}: {getattr(exc, 'strerror', None) or exc}"
                ) from None
        for attempt in range(1, CLIENT_TRIES + 1):
            try:
                ray.init(
                    address=address,  # "auto": RAY_ADDRESS, or this machine's cluster; never a new one
                    runtime_env={
                        "py_modules": [os.path.join(REPO, package) for package in CODE],
                        "excludes": ["__pycache__"],
                    },
                    logging_level="WARNING",
                    configure_logging=True,
                )
                return
            except (ConnectionError, RuntimeError, ValueError) as exc:
                if CLIENT_SERVER_FAILED in str(exc) and attempt < CLIENT_TRIES:
                    # a race in Ray: the head forks the client's server while gRPC runs; another try gets another
                    print(
                        f"mario-apex: Ray Client's server for this launcher died at start on the head (a known "
                        f"Ray race, ray-project/ray#63202); connecting again ({attempt + 1} of {CLIENT_TRIES})",
                        flush=True,
                    )
                    ray.shutdown()
                    continue
                where = "RAY_ADDRESS or a local `ray start`" if address == "auto" else address
                raise StartError(f"cannot connect to the Ray cluster at {where}: {exc}") from None

    def _check_resources(self, config: Config) -> None:
        """Fail in one line before starting anything if the cluster cannot hold the run."""
        total, free = ray.cluster_resources(), ray.available_resources()
        if total.get(self.learner_resource, 0) < 1:
            raise StartError(
                f"no node in the Ray cluster has the resource {self.learner_resource!r} for the learner "
                f"(the cluster has: {', '.join(sorted(k for k in total if not k.startswith('node:')))}); "
                "start one with `ray start --num-gpus 1` or `--resources '{\"NAME\": 1}'` and pass --learner-resource NAME"
            )
        needed = config.actors  # the learner, and actors 1..N-1 (actor 0 runs here)
        if free.get("CPU", 0) < needed:
            raise StartError(
                f"the Ray cluster has {free.get('CPU', 0):g} free CPUs; this run needs {needed} "
                f"(the learner and {config.actors - 1} actor(s) beside actor 0 here)"
            )

    @staticmethod
    def _local_node_id() -> str:
        """This machine's node id, or "" under Ray Client (ray://), where the launcher is not a node."""
        return "" if ray.util.client.ray.is_connected() else ray.get_runtime_context().get_node_id()

    def _check_env_and_device(self) -> None:
        self._check_env()  # the learner's device is checked where it runs

    def _check_ports(self) -> None:
        pass  # bound on the learner's node; one in use there fails the learner with the reason

    def _place_learner_node(self) -> None:
        """Create the learner's host first: where Ray puts it decides the replay server's node and the
        address every actor connects to."""
        resource = {"num_gpus": 1} if self.learner_resource == "GPU" else {"resources": {self.learner_resource: 1}}
        self._learner_host = RemoteHost.options(num_cpus=1, **resource).remote()
        try:
            self.learner_node = ray.get(self._learner_host.node.remote(), timeout=PLACE_TIMEOUT_S)
        except (RayError, GetTimeoutError) as exc:
            ray.kill(self._learner_host, no_restart=True)
            raise StartError(
                f"Ray could not place the learner on a node with {self.learner_resource!r} ({type(exc).__name__})"
            ) from None

    def _role_config(self, role: str, node_id: str) -> Config:
        """The learner's node binds its own address (ipc between its replay server and learner); an
        actor connects there, by ipc if it is on that node."""
        if role in ("replay", "learner"):
            return dataclasses.replace(self.config, bind=self.learner_node["ip"], local_ipc=True)
        return dataclasses.replace(
            self.config,
            learner=f"{self.learner_node['ip']}:{self.config.base_port}",
            local_ipc=node_id == self.learner_node["node_id"],
        )

    def _settings_for(self, role: str) -> tuple[Config, dict | None]:
        return self._role_config(role, self._here), self.client_keys.to_dict()  # actor 0, here

    def _new_process(self, name: str, role: str, index: int, start: ActorStart | str):
        if role == "actor" and index == 0:  # here, with the window and the run video
            self._placed(name, {"node_id": self._here, "ip": "this machine", "hostname": ""})
            return super()._new_process(name, role, index, start)
        env = {name: os.environ.get(name) for name in HOST_ENV}
        keys, authorized = (self.client_keys, []) if role == "actor" else (self.server_keys, [self.authorized])

        def args_for(node: dict) -> tuple:
            config = self._role_config(role, node["node_id"]).to_dict()
            return (role, index, config, self.run_dir, start, keys.to_dict(), authorized, env)

        events = (self.stop_events[role], self.stop_events[STOP_ORDER[0]])
        return RemoteProcess(self._host(role), name, args_for, events, self._inbox)

    def _host(self, role: str):
        if role == "learner":
            return self._learner_host
        if role == "replay":
            pin = NodeAffinitySchedulingStrategy(self.learner_node["node_id"], soft=False)
            return RemoteHost.options(num_cpus=0, scheduling_strategy=pin).remote()
        return RemoteHost.options(num_cpus=1, scheduling_strategy="SPREAD").remote()

    def _placed(self, name: str, node: dict) -> None:
        self.placement[name] = node
        where = node["ip"] + (f" ({node['hostname']})" if node["hostname"] else "")
        print(f"mario-apex: {name} on node {node['node_id'][:8] or '-'} at {where}", flush=True)

    def _drain_reports(self, timeout_ms: int) -> None:
        """What the relays passed on (placements, the remote roles' reports), then actor 0's reports."""
        for _ in range(REPORTS_PER_DRAIN):
            try:
                kind, *item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "placed":
                self._placed(*item)
            else:
                self._handle_report(*item)
        super()._drain_reports(timeout_ms)

    def _stop_all(self) -> None:
        """Tell every host at once that the stop has begun (and the actors to stop): each relay would pass
        it on only after its current poll, a round trip that a loaded machine or Ray Client makes long."""
        for name, proc in self.processes.items():
            if isinstance(proc, RemoteProcess) and proc.is_alive():
                try:
                    proc.host.set_events.remote(name.startswith("actor"), True)
                except Exception:  # a Ray Client gone: the deadlines below still hold
                    pass
        super()._stop_all()

    def _reason(self, name: str) -> str:
        proc = self.processes.get(name)
        lost = getattr(proc, "lost", "")
        return f": {lost}" if lost else super()._reason(name)

    def _finish(self) -> None:
        self.extra_summary["placement"] = {name: node["node_id"] for name, node in self.placement.items()}
        try:
            super()._finish()
        finally:
            ray.shutdown()  # the hosts are owned by this driver: Ray removes any left

"""The Ray actor that runs one role process on a cluster node (`--cluster`, launcher/ray_backend.py).

A role process needs a process of its own (it sets signal handlers and ends with os._exit), so the
host spawns it exactly as the launcher does on one machine and only relays: the launcher's stop
events, SIGTERM, and the role's reports, which it collects on a private ipc socket and hands out on
each `poll` (so no port opens towards the launcher's machine, which a cluster often cannot reach).
If the host dies (its node went away, or the launcher killed it), the role process sees its parent
gone and stops by itself (RoleRuntime.orphaned).

It imports Ray only where it runs in a Ray worker, and nothing of the launcher's supervisor.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile

import zmq

from common.runtime import process_name, role_entry

REPORTS_PER_POLL = 1000
SCRATCH_PREFIX = "mario-apex-host-"


def _remove_stale_scratch() -> None:
    """The folders of hosts that were killed (ray.kill, a lost node) before they could remove their own:
    each is named for its host's pid."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        if not name.startswith(SCRATCH_PREFIX):
            continue
        pid = name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


class RoleHost:
    """Wrapped with ray.remote(max_concurrency=...) by the launcher: `poll` blocks while `set_events`
    and `terminate` must still get through."""

    def __init__(self):
        self._process: mp.Process | None = None
        self._context = zmq.Context()
        self._reports: zmq.Socket | None = None
        _remove_stale_scratch()
        self._scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")  # 0700: this user only

    def node(self) -> dict:
        """Where this host runs: Ray's node id and address (for placement, --learner and printing)."""
        import ray  # already loaded in a Ray worker; imported here so the role processes never need it

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(),
        }

    def start(
        self,
        role: str,
        index: int,
        config_dict: dict,
        run_dir: str,
        start,
        keys: dict | None,
        authorized_keys: list[bytes],
        env: dict[str, str | None],
    ) -> int:
        """Spawn the role process; returns its pid. `authorized_keys` (client public keys) are written
        here, on the node, where the role's authenticator reads them; `env` sets (or, None, unsets)
        variables Ray gives its workers (OMP_NUM_THREADS=1) that the role should not inherit."""
        os.makedirs(run_dir, exist_ok=True)
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if keys is not None and authorized_keys:
            keys = {**keys, "authorized_dir": self._write_authorized(authorized_keys)}
        self._reports = self._context.socket(zmq.PULL)
        self._reports.setsockopt(zmq.LINGER, 0)
        address = f"ipc://{os.path.join(self._scratch, 'reports')}"
        self._reports.bind(address)
        context = mp.get_context("spawn")
        self._role_stop, self._run_stop = context.Event(), context.Event()
        self._process = context.Process(
            target=role_entry,
            name=process_name(role, index),
            daemon=False,
            args=(
                role,
                index,
                config_dict,
                run_dir,
                self._role_stop,
                os.getpid(),
                start,
                address,
                keys,
                self._run_stop,
            ),
        )
        self._process.start()
        return self._process.pid

    def _write_authorized(self, public_keys: list[bytes]) -> str:
        """A folder of client public keys in zmq.auth's certificate format (what --keys DIR holds)."""
        import zmq.auth

        folder = os.path.join(self._scratch, "authorized_clients")
        os.makedirs(folder, exist_ok=True)
        for i, public in enumerate(public_keys):
            with open(os.path.join(folder, f"client{i}.key"), "w", encoding="ascii") as f:
                f.write(f'metadata\ncurve\n    public-key = "{public.decode("ascii")}"\n')
        zmq.auth.load_certificates(folder)  # fails here, not in the role, if the format is wrong
        return folder

    def poll(self, timeout_s: float) -> tuple[int | None, list[bytes]]:
        """The role's exit code (None while it runs) and the reports it sent since the last poll,
        waiting up to `timeout_s` for the first one."""
        reports: list[bytes] = []
        if self._reports is not None and self._reports.poll(int(timeout_s * 1000), zmq.POLLIN):
            while len(reports) < REPORTS_PER_POLL:
                try:
                    reports.append(self._reports.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        exitcode = self._process.exitcode if self._process is not None else None
        if exitcode is not None and self._reports is not None:  # its last words, sent just before it exited
            while len(reports) < REPORTS_PER_POLL and self._reports.poll(50, zmq.POLLIN):
                reports.append(self._reports.recv())
        return exitcode, reports

    def set_events(self, role_stop: bool, run_stop: bool) -> None:
        """Mirror the launcher's stop events: the run's stop has begun, and this role's turn to stop."""
        if run_stop:
            self._run_stop.set()
        if role_stop:
            self._role_stop.set()

    def terminate(self) -> None:
        """SIGTERM to a role that did not stop in time (the launcher's STOP_GRACE_S)."""
        if self._process is not None and self._process.exitcode is None:
            os.kill(self._process.pid, signal.SIGTERM)

    def close(self) -> None:
        """SIGKILL the role if it still runs, and drop this host's files (before ray.kill)."""
        if self._process is not None and self._process.exitcode is None:
            self._process.kill()
            self._process.join(2)
        self._context.destroy(linger=0)
        shutil.rmtree(self._scratch, ignore_errors=True)

"""Runs the real launcher as a user would (its own process group, like a terminal job) and
inspects what it leaves behind: run folder, processes, exit status, output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import free_base_port  # noqa: F401  (the tests import it from here)

REPO = Path(__file__).resolve().parent.parent
# Bounds in the tests are what the launcher is allowed; the harness waits this much longer, since on a loaded
# 2-core machine the test process itself may not run for seconds. A promise about how fast the launcher stops
# (README: every process gone within 10 s of Ctrl+C) is held by the launcher's own clock: it kills stragglers
# after STOP_GRACE_S and says "did not stop in time" (test_shutdown.py checks that it never does).
SCHEDULING_MARGIN_S = 30.0


def process_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, state, process group) for every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            table[int(entry)] = (int(fields[1]), fields[0], int(fields[2]))
        except (OSError, IndexError):
            continue
    return table


def group_alive(group: int) -> set[int]:
    """The processes of process group `group` that exist and are not zombies."""
    return {pid for pid, (_, state, pgrp) in process_table().items() if pgrp == group and state != "Z"}


def descendants_of(root: int) -> set[int]:
    """Every process below `root` (children, their children, ...), zombies included."""
    table = process_table()
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - found
        found |= children
        frontier = children
    return found


def alive(pids) -> set[int]:
    """The pids that still exist and are not zombies."""
    table = process_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


class LaunchedRun:
    def __init__(
        self,
        tmp_path: Path,
        *args: str,
        base_port: int | None = None,
        display: str | None = None,
        python: str = sys.executable,
        prefix: tuple[str, ...] = (),
    ):
        """`python` runs launch.py (another virtual environment); `prefix` wraps the command
        (e.g. `ip netns exec NS`)."""
        self.tmp_path = tmp_path
        self.runs_dir = tmp_path / "runs"
        self.base_port = base_port or free_base_port()
        self.cmd = [
            *prefix,
            python,
            "launch.py",
            "--runs-dir",
            str(self.runs_dir),
            "--base-port",
            str(self.base_port),
            *args,
        ]
        self._out = open(tmp_path / "launcher.out", "w+")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("DISPLAY", None)
        if display:
            env["DISPLAY"] = display
        self.tmpdir = env.get("TMPDIR") or tempfile.gettempdir()  # where the run's ipc sockets are
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=REPO,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        self.seen_pids: set[int] = set()

    # --- observing ---------------------------------------------------------------------------
    def channel_path(self, offset: int) -> str:
        """The Unix socket of the channel at base port + offset (0 replay-in, 1 replay-sample, 2 weights):
        on loopback the run opens no TCP port, only these, in this user's 0700 folder."""
        return os.path.join(self.tmpdir, f"mario-apex-{os.getuid()}", f"{self.base_port + offset}.sock")

    def output(self) -> str:
        self._out.flush()
        return (self.tmp_path / "launcher.out").read_text()

    def wait_for(self, predicate, timeout: float, what: str):
        """Poll a condition until it holds; fail with the launcher's output if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.track_processes()
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher exited ({self.proc.returncode}) before {what}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{self.output()}")

    @property
    def run_dir(self) -> Path:
        dirs = sorted(self.runs_dir.glob("*_run")) if self.runs_dir.exists() else []
        assert len(dirs) == 1, f"expected one run folder, found {dirs}"
        return dirs[0]

    def log_lines(self) -> list[str]:
        dirs = sorted(self.runs_dir.glob("*_run/log.txt")) if self.runs_dir.exists() else []
        return dirs[0].read_text().splitlines() if dirs else []

    def wait_for_episodes(self, n: int, timeout: float = 90) -> None:
        self.wait_for(lambda: len(self.log_lines()) >= n, timeout, f"{n} episodes in log.txt")

    def status_value(self, name: str) -> int:
        """The latest value of one counter in the launcher's status lines (e.g. "updates")."""
        found = re.findall(rf"\| {name} ([\d,]+)", self.output())
        return int(found[-1].replace(",", "")) if found else 0

    def wait_for_updates(self, n: int = 1, timeout: float = 90) -> None:
        self.wait_for(lambda: self.status_value("updates") >= n, timeout, f"{n} learner updates")

    def descendants(self) -> set[int]:
        return descendants_of(self.proc.pid)

    def role_pids(self) -> dict[str, int]:
        """Process name (replay, learner, actor-0, ...) -> pid, for this launcher's role processes: its
        direct children (a replay snapshot's fork or a window process has the same or a similar name)."""
        table = process_table()
        found = {}
        for pid in (pid for pid, (ppid, _, _) in table.items() if ppid == self.proc.pid):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name.startswith("mario-"):
                found.setdefault(name[len("mario-") :], pid)
        return found

    def track_processes(self) -> None:
        self.seen_pids |= self.descendants()

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    # --- acting ------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Ctrl+C in a terminal: SIGINT to the whole foreground process group."""
        self.track_processes()
        os.killpg(self.proc.pid, signal.SIGINT)

    def signal_launcher(self, signum: int) -> None:
        self.track_processes()
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        """The launcher's exit status, once it exits; fails if it runs `timeout` s plus SCHEDULING_MARGIN_S."""
        try:
            return self.proc.wait(timeout + SCHEDULING_MARGIN_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"launcher still running after {timeout} + {SCHEDULING_MARGIN_S:.0f} s "
                f"(allowed, scheduling margin):\n{self.output()}"
            ) from None

    def wait_gone(self, pids: set[int], timeout: float) -> None:
        """Poll until none of `pids` is alive; fails after `timeout` s plus SCHEDULING_MARGIN_S."""
        deadline = time.monotonic() + timeout + SCHEDULING_MARGIN_S
        while alive(pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pids), (
            f"processes still alive after {timeout} + {SCHEDULING_MARGIN_S:.0f} s: {alive(pids)}\n{self.output()}"
        )

    def cleanup(self) -> None:
        """Leave nothing running, whatever the test did."""
        self.track_processes()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in alive(self.seen_pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self._out.close()

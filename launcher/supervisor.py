"""Starts the role processes with multiprocessing's spawn, watches them, and stops them together.

Which processes: `--role all` (default) runs the replay server, the learner and the actors here;
`learner` the replay server and the learner (or the learner alone, with --replay); `replay` the
replay server; `actor` the actors. Each launcher owns what it started. A crashed actor is
restarted (up to actor_restarts times each, with the reason printed); anything else that dies stops
this launcher's run.

Stop protocol: on Ctrl+C, SIGTERM, a reached --max-episodes/--max-steps/--max-minutes, or a failed child, the
launcher sets one shared stop event. Every role checks it between steps (and also stops if the
launcher itself disappears), flushes what it holds, closes its files (the learner writes
checkpoint_final.pth) and exits 0. Stragglers get SIGTERM after STOP_GRACE_S and SIGKILL after
STOP_KILL_S, so everything is gone within 10 s. A second Ctrl+C skips the grace period.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from datetime import datetime

import zmq

from common.addresses import LOCAL_FOR_ANY, bind_addresses, bind_endpoint, connect_address, ipc_only
from common.config import ACTION_SETS, Config
from common.keys import CurveKeys
from common.log_limit import LogLimit
from common.protocol import ProtocolError, check_report, decode
from common.records import ActorStart
from common.runtime import process_name, role_entry
from common.topology import bind_socket, bound_by
from common.transport import ADDRESS_IN_USE, Transport, TransportError
from launcher.console import Console
from launcher.episode_log import EpisodeLog
from launcher.resume import ResumePlan
from launcher.status import RunStatus

STOP_GRACE_S = 7.0
STOP_KILL_S = 8.5
STOP_ORDER = ("actor", "learner", "replay")
STOP_SHARE = {"actor": 0.3, "learner": 0.9, "replay": 1.0}  # cumulative shares of STOP_GRACE_S
POLL_MS = 200
REPORTS_PER_DRAIN = 1000  # then the launcher looks at its children and limits again


ROLES = {
    "all": ("replay", "learner", "actor"),
    "learner": ("replay", "learner"),
    "replay": ("replay",),
    "actor": ("actor",),
}
"""The processes each --role starts (learner without replay when --replay names a separate one)."""


def role_processes(role: str, config: Config) -> tuple[str, ...]:
    if role == "learner" and config.replay:
        return ("learner",)
    return ROLES[role]


def limits_line(c: Config) -> str:
    """This launch's stop limits in words ("" for none), said at the start so that none comes as a surprise."""
    parts = [
        f"{c.max_steps:,} env steps" if c.max_steps else "",
        f"{c.max_episodes:,} episodes" if c.max_episodes else "",
        f"{c.max_minutes:g} minutes" if c.max_minutes else "",
    ]
    limits = " or ".join(part for part in parts if part)
    return f"stops after {limits}" if limits else ""


class StartError(RuntimeError):
    """The run cannot start (bad env id, device, ports, run folder); one-line message."""


def make_run_dir(runs_dir: str) -> str:
    """Create <runs_dir>/YYYY-MM-DD_HH-MM-SS_run (waiting for the next second if it exists)."""
    try:
        os.makedirs(runs_dir, exist_ok=True)
    except OSError as exc:
        raise StartError(f"cannot create runs folder {runs_dir}: {exc.strerror}") from None
    for _ in range(50):
        path = os.path.join(runs_dir, datetime.now().strftime("%Y-%m-%d_%H-%M-%S_run"))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            time.sleep(0.1)
        except OSError as exc:
            raise StartError(f"cannot create run folder {path}: {exc.strerror}") from None
    raise StartError(f"cannot create a new run folder in {runs_dir}")


def _tcp_in_use(host: str, port: int) -> str:
    """Why (host, port) cannot be bound ("" if it can)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds: a just-stopped
            probe.bind((host, port))  # run's TIME_WAIT is no conflict
    except OSError as exc:
        return ADDRESS_IN_USE if exc.errno == errno.EADDRINUSE else exc.strerror
    return ""


def _ipc_in_use(path: str) -> str:
    """ADDRESS_IN_USE if a live socket answers at `path` ("" for none, or a stale file, which ZeroMQ replaces)."""
    if not os.path.exists(path):
        return ""
    with socket.socket(socket.AF_UNIX) as probe:
        return ADDRESS_IN_USE if probe.connect_ex(path) == 0 else ""


class Supervisor:
    def __init__(
        self, config: Config, resume: ResumePlan | None = None, role: str = "all", keys: CurveKeys | None = None
    ):
        self.config = config
        self.resume = resume or ResumePlan()
        self.role = role
        self.roles = role_processes(role, config)
        self.keys = keys.to_dict() if keys else None
        self._check_env_and_device()
        self._check_ports()
        self.run_dir = self.resume.run_dir or make_run_dir(config.runs_dir)
        config.save(os.path.join(self.run_dir, "config.json"))
        self.transport = Transport(config.max_message_bytes)
        self._reports_dir: str | None = None
        self.reports, self.reports_address = self._bind_reports()
        self._drop_log = LogLimit()
        self.status = RunStatus(config.replay_capacity, before=self.resume.counters)
        self.episode_log = EpisodeLog(os.path.join(self.run_dir, "log.txt"))
        if self.resume.checkpoint and "actor" in self.roles:
            self.status.evaluations = self.episode_log.last_eval_number()
            self.episode_log.write_resumed(os.path.basename(self.resume.checkpoint), self.resume.counters)
        self.processes: dict[str, mp.Process] = {}
        self.restarts: dict[str, int] = {}
        self.failures: dict[str, str] = {}
        self.stop_reason: str | None = None
        self.signal_count = 0
        self.stop_seconds: float | None = None  # from the stop to the last process gone (summary.json)
        self.exit_code = 0
        self.console: Console | None = None
        self.extra_summary: dict = {}  # more for summary.json (the cluster backend's placement)

    def _bind_reports(self) -> tuple[zmq.Socket, str]:
        """The report channel: an ipc socket in a fresh directory that only this user may enter (0700,
        removed in _finish), so no one else on the machine can send this launcher reports. Where
        ZeroMQ has no ipc, a loopback port the system picks (reachable by every local user)."""
        if not zmq.has("ipc"):
            sock = bind_socket(self.transport, self.config, "reports", "tcp://127.0.0.1:*")
            return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._reports_dir = tempfile.mkdtemp(prefix="mario-apex-reports-")
        address = f"ipc://{os.path.join(self._reports_dir, 'reports')}"
        try:
            return bind_socket(self.transport, self.config, "reports", address), address
        except TransportError as exc:  # e.g. a TMPDIR too long for a socket path
            shutil.rmtree(self._reports_dir, ignore_errors=True)
            raise StartError(f"{exc} (the launcher's report socket; try a shorter TMPDIR)") from None

    def _check_env_and_device(self) -> None:
        """The env where actors run (gym is imported only there), the device where the learner runs."""
        if "actor" in self.roles:
            self._check_env()
        if "learner" in self.roles and self.config.device not in ("auto", "cpu"):  # those never fail; torch
            from learner.device import DeviceError, pick_device  # takes seconds to import, so only when asked

            try:
                pick_device(self.config.device)
            except DeviceError as exc:
                raise StartError(str(exc)) from None

    def _check_ports(self) -> None:
        """Every address this launcher's processes will bind is free: else one clear line before starting.
        (ZeroMQ would silently take over a live ipc:// socket file, so those are checked too.)"""
        for role in self.roles:
            for channel in bound_by(role):
                for address in bind_addresses(self.config, channel):
                    reason = (
                        _tcp_in_use(*bind_endpoint(self.config, channel))
                        if address.startswith("tcp://")
                        else _ipc_in_use(address[len("ipc://") :])
                    )
                    if reason:
                        raise StartError(f"cannot bind {address}: {reason}")

    def _check_env(self) -> None:
        from actor.envs import refused_settings, unknown_env_ids

        unknown = unknown_env_ids(self.config.env)
        if unknown:
            raise StartError(
                f"unknown env id {unknown[0]!r}: use a gym-super-mario-bros id such as "
                "SuperMarioBros-1-1-v0 (or several, comma-separated), or MarioApexTest-v0"
            )
        c = self.config
        refused = refused_settings(c)
        if refused:
            raise StartError(refused)
        if c.num_actions != ACTION_SETS[c.action_set]:
            raise StartError(
                f"num_actions is {c.num_actions} but the env's action set "
                f"({c.action_set}) has {ACTION_SETS[c.action_set]}"
            )

    # --- start ---------------------------------------------------------------------------------
    def _start_all(self) -> None:
        self._mp = mp.get_context("spawn")
        self.stop_events = {role: self._mp.Event() for role in STOP_ORDER}
        for role in ("replay", "learner"):
            if role in self.roles and self.stop_reason is None:  # Ctrl+C during start-up: start no more
                self._start(role, 0, self.resume.for_role(role))
        if "actor" in self.roles:
            # An actor side of its own joins a learner that may have been running for a while.
            start = dataclasses.replace(self.resume.for_role("actor", self.config.actors), join=self.role == "actor")
            for i in range(self.config.actors):
                if self.stop_reason is None:
                    self._start("actor", i, start)

    def _start(self, role: str, index: int, start: ActorStart | str) -> None:
        """Spawn one role process; `start` is what it continues from (see ResumePlan.for_role)."""
        name = process_name(role, index)
        proc = self._new_process(name, role, index, start)
        self._spawn_holding_ctrl_c(proc)
        self.processes[name] = proc

    def _new_process(self, name: str, role: str, index: int, start: ActorStart | str):
        """The process of one role on this machine (the cluster backend places some elsewhere)."""
        config, keys = self._settings_for(role)
        return self._mp.Process(
            target=role_entry,
            name=name,
            daemon=False,
            args=(
                role,
                index,
                config.to_dict(),
                self.run_dir,
                self.stop_events[role],
                os.getpid(),
                start,
                self.reports_address,
                keys,
                self.stop_events[STOP_ORDER[0]],  # the first one set: every role learns the stop has begun
            ),
        )

    def _settings_for(self, role: str) -> tuple[Config, dict | None]:
        """The config and keys a role process here gets (the same for all, but on a cluster)."""
        return self.config, self.keys

    @staticmethod
    def _spawn_holding_ctrl_c(proc: mp.Process) -> None:
        """Start `proc` with SIGINT blocked in this thread: the child inherits the blocked mask (it survives
        fork and exec), so a Ctrl+C waits in it until run_role ignores SIGINT (the launcher coordinates the
        stop). The launcher only blocks SIGINT, never ignores it: an ignored Ctrl+C that another of its
        threads (numpy's OpenBLAS one) took was discarded, and the run went on as if none had come."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _on_signal(self, signum, frame) -> None:
        self.signal_count += 1
        if self.stop_reason is None:
            self.stop_reason = "interrupted (Ctrl+C)" if signum == signal.SIGINT else "terminated (SIGTERM)"
            self.exit_code = 130 if signum == signal.SIGINT else 0

    # --- run -------------------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        print(f"mario-apex: run folder {self.run_dir}", flush=True)
        if self.resume.checkpoint:
            c = self.resume.counters
            print(
                f"mario-apex: resuming from {os.path.basename(self.resume.checkpoint)}: {c.episodes:,} "
                f"episodes, {c.env_steps:,} env steps, {c.updates:,} updates",
                flush=True,
            )
        self._print_role()
        if limits := limits_line(self.config):
            print(f"mario-apex: {limits}", flush=True)
        self.console = Console(self.config.max_steps)
        try:
            self._start_all()
            self._monitor()
        except Exception as exc:  # summary.json says so, not "stop_reason: null, exit_code: 0"
            self.stop_reason = self.stop_reason or f"launcher error ({type(exc).__name__}: {exc})"
            self.exit_code = 1
            raise
        finally:
            self._stop_all()
            self._finish()
        return self.exit_code

    def _print_role(self) -> None:
        c = self.config
        if self.role == "all":
            print(f"mario-apex: env {c.env}, {c.actors} actor(s); Ctrl+C stops everything cleanly", flush=True)
            return
        if self.role != "actor":
            what = " and ".join(r if r == "learner" else "replay server" for r in self.roles)
            where = bind_addresses(c, "replay_in" if "replay" in self.roles else "weights")[0]
            keys = (
                "this machine only: this user's ipc sockets"
                if ipc_only(c)
                else "CurveZMQ keys"
                if self.keys
                else "no keys"
            )
            print(f"mario-apex: {what} on {where} ({keys}); actors join with: {self._join_command()}", flush=True)
            print("mario-apex: Ctrl+C stops this side (final checkpoint; connected actors play on)", flush=True)
        else:
            target = c.learner or f"this machine ({connect_address(c, 'replay_in')})"
            print(
                f"mario-apex: env {c.env}, {c.actors} actor(s) feeding the learner side at {target}; "
                "Ctrl+C stops this side (the learner keeps running and waits)",
                flush=True,
            )

    def _join_command(self) -> str:
        """The actor side's command line for this learner side."""
        c = self.config
        host = "<this machine's address>" if c.bind in LOCAL_FOR_ANY else f"[{c.bind}]" if ":" in c.bind else c.bind
        here = f"{host}:{c.base_port}"
        if self.role == "replay":
            where = f"--replay {here} --learner <the learner's address>"
        elif c.replay:
            where = f"--learner {here} --replay {c.replay}"
        else:
            where = f"--learner {here}"
        return f"python launch.py --role actor {where}{' --keys <DIR>/actor' if self.keys else ''}"

    def _monitor(self) -> None:
        while self.stop_reason is None:
            self._drain_reports(POLL_MS)
            self._check_children()
            if self.stop_reason is None:
                self.stop_reason = self._limit_reached()
            self.console.update(self.status)

    def _limit_reached(self) -> str | None:
        """Why the run is complete, if it is. Step and episode limits count where the actors run."""
        c, status = self.config, self.status
        if c.max_minutes and time.monotonic() - status.started >= c.max_minutes * 60:
            return "reached --max-minutes"
        if "actor" not in self.roles:
            return None
        if status.done_actors >= set(range(c.actors)):
            return (
                "reached --max-steps"
                if c.max_steps and status.session_steps >= c.max_steps
                else "reached --max-episodes"
                if c.max_episodes
                else "actors finished"
            )
        if c.max_episodes and status.episodes >= c.max_episodes:
            return "reached --max-episodes"
        if c.max_steps and status.session_steps >= c.max_steps:
            return "reached --max-steps"
        return None

    def _drain_reports(self, timeout_ms: int) -> None:
        """Handle the waiting reports. A bad one is dropped and counted, never raised: this also runs
        in _stop_all, where an exception would leave the children running and the launcher waiting."""
        if not self.reports.poll(timeout_ms, zmq.POLLIN):
            return
        for _ in range(REPORTS_PER_DRAIN):
            try:
                raw = self.reports.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle_report(raw)

    def _handle_report(self, raw: bytes) -> None:
        try:
            self._on_report(decode(raw, self.config.max_message_bytes, expect=("report",)))
        except Exception as exc:  # ProtocolError, or one no check foresaw: that report is lost, not the run
            self._drop_report(str(exc) if isinstance(exc, ProtocolError) else f"{type(exc).__name__}: {exc}")

    def _on_report(self, msg: dict) -> None:
        msg = check_report(msg)
        role, index = msg["role"], msg["index"]
        if role not in self.roles or index >= (self.config.actors if role == "actor" else 1):
            raise ProtocolError(f"report from {role} {index}, which this launcher did not start")
        name = process_name(role, index)
        if msg["kind"] == "failed":
            self.failures[name] = msg.get("text", "")
        elif msg["kind"] == "log":
            self.console.say(f"[{name}] {msg.get('text', '')}")
        else:
            self.status.on_report(msg)
            error = None
            if msg["kind"] == "episode":
                error = self.episode_log.write(self.status.total_episodes, msg["values"])
            elif msg["kind"] == "eval":  # its actor_steps are the actor's own: log.txt gives the run's
                at = self.status.env_steps_at(index, msg["values"].actor_steps)
                error = self.episode_log.write_eval(self.status.evaluations, msg["values"], at)
            if error:
                self.console.say(f"mario-apex: {error}", error=True)

    def _drop_report(self, reason: str) -> None:
        """Count a bad report (summary.json: dropped_reports); say so for the first one, then at most
        every 30 s (LogLimit)."""
        self.status.dropped_reports += 1
        if self._drop_log.due():
            self.console.say(
                f"mario-apex: dropped a bad report ({reason[:200]}); {self.status.dropped_reports} dropped so far",
                error=True,
            )

    def _check_children(self) -> None:
        for name, proc in list(self.processes.items()):
            if proc.exitcode is None:
                continue
            self._drain_reports(300)  # its last words may still be on the way
            if (
                name.startswith("actor-")
                and self.stop_reason is None
                and self.restarts.get(name, 0) < self.config.actor_restarts
            ):
                self._restart_actor(name, proc)
                continue
            if self.stop_reason is None:
                self.stop_reason = f"{name} stopped unexpectedly"
            self.console.say(
                f"mario-apex: {name} exited unexpectedly ({_describe_exit(proc.exitcode)}){self._reason(name)}",
                error=True,
            )
            self.exit_code = 1
            return

    def _restart_actor(self, name: str, proc: mp.Process) -> None:
        """Start a crashed actor again, continuing its counters; the other processes go on as they are."""
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self.console.say(
            f"mario-apex: {name} exited unexpectedly ({_describe_exit(proc.exitcode)}){self._reason(name)}; "
            f"restarting it ({self.restarts[name]} of {self.config.actor_restarts})",
            error=True,
        )
        self.failures.pop(name, None)
        index = int(name.split("-")[1])
        start = self.resume.for_role("actor", self.config.actors)
        now = self.status.actor_counters(index)
        restart = dataclasses.replace(
            start,  # a reset exploration keeps its origin
            actor_steps=max(start.actor_steps, now.actor_steps),
            session_steps=now.session_steps,
            episodes=now.episodes,
            level=now.level,
            restarts=self.restarts[name],  # its seed: not the same episodes again
        )
        self._start("actor", index, restart)

    def _reason(self, name: str) -> str:
        """ ": <the reason it reported>" for a failed child, or nothing."""
        return f": {self.failures[name]}" if name in self.failures else ""

    # --- stop --------------------------------------------------------------------------------------
    def _stop_all(self) -> None:
        if not self.processes:
            return
        self.console.say(f"mario-apex: stopping: {self.stop_reason or 'launcher error'} ...")
        started = time.monotonic()
        for role in STOP_ORDER:  # actors first (they flush), the learner (its final checkpoint needs
            self.stop_events[role].set()  # the replay server), then the replay server
            group = [p for name, p in self.processes.items() if name.split("-")[0] == role]
            deadline = started + STOP_GRACE_S * STOP_SHARE[role]
            while any(p.is_alive() for p in group) and time.monotonic() < deadline and self.signal_count < 2:
                self._drain_reports(100)  # a second Ctrl+C skips the waiting
        stragglers = [p for p in self.processes.values() if p.is_alive()]
        for proc in stragglers:
            self.console.say(f"mario-apex: {proc.name} did not stop in time; terminating it", error=True)
            proc.terminate()
        while any(p.is_alive() for p in stragglers) and time.monotonic() < started + STOP_KILL_S:
            time.sleep(0.05)  # the deadlines count from the stop, however slowly this loop runs
        for proc in stragglers:
            if proc.is_alive():
                proc.kill()  # all at once: a loaded machine must not make them queue for it
        for proc in stragglers:
            proc.join(max(0.1, started + STOP_KILL_S + 0.5 - time.monotonic()))
        self.stop_seconds = time.monotonic() - started
        self._drain_reports(50)
        for name, proc in self.processes.items():
            if proc.exitcode not in (0, None) and self.exit_code == 0 and proc not in stragglers:
                self.console.say(
                    f"mario-apex: {name} exited with {_describe_exit(proc.exitcode)}{self._reason(name)}", error=True
                )
                self.exit_code = 1

    def _finish(self) -> None:
        summary = {
            "stop_reason": self.stop_reason,
            "exit_code": self.exit_code,
            "stop_seconds": self.stop_seconds,
            **self.status.summary(),
            **self.extra_summary,
        }
        try:
            with open(os.path.join(self.run_dir, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2)
        except OSError as exc:
            print(f"mario-apex: could not write summary.json: {exc.strerror}", file=sys.stderr)
        self.transport.close()
        if self._reports_dir is not None:
            shutil.rmtree(self._reports_dir, ignore_errors=True)
        if self.console is not None:
            self.console.update(self.status, force=True)
            self.console.close()
        print(f"mario-apex: {self.status.line(whole_run=True)}", flush=True)
        if self._nothing_ran():
            shutil.rmtree(self.run_dir, ignore_errors=True)
            print(f"mario-apex: stopped: {self.stop_reason}, before anything ran; removed {self.run_dir}", flush=True)
            return
        print(f"mario-apex: stopped: {self.stop_reason}; results in {self.run_dir}", flush=True)

    def _nothing_ran(self) -> bool:
        """A new run stopped during start-up (Ctrl+C, a lost port race): no step, episode or update (a
        final checkpoint of the untrained network is no loss) and no dropped report to read about in
        summary.json: its folder would only clutter the runs folder (a failed role's reason is on the
        terminal)."""
        s = self.status
        return (
            not self.resume.checkpoint
            and s.env_steps == 0
            and s.episodes == 0
            and s.updates == 0
            and s.dropped_reports == 0
        )


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"

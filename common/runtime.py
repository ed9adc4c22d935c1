"""What every role process shares: its stop conditions, its ZeroMQ transport and its reports.

A role stops when the launcher sets its role's stop event, when it gets SIGTERM, or when its
parent (the launcher) disappears, e.g. after a SIGKILL. SIGINT is ignored in role processes: on
Ctrl+C the terminal signals the whole process group, and the launcher alone decides the order in
which things stop. Reports (progress, episodes, a failure's last words) go to the launcher over
a PUSH socket and never block.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback

import zmq

from common.config import Config
from common.keys import CurveKeys
from common.protocol import encode
from common.records import ActorStart
from common.topology import connect_socket
from common.transport import Transport, TransportError

REFUSAL_LOG_S = 30.0


def process_name(role: str, index: int) -> str:
    """How the launcher and its messages name a role process: replay, learner, actor-0, actor-1, ..."""
    return f"{role}-{index}" if role == "actor" else role


class RoleRuntime:
    def __init__(
        self,
        role: str,
        index: int,
        config: Config,
        stop_event,
        parent_pid: int,
        start: ActorStart | str | None = None,
        reports_address: str = "",
        keys: dict | None = None,
        run_stop_event=None,
    ):
        self.role, self.index, self.config = role, index, config
        # What this role continues from (launcher/resume.py's ResumePlan.for_role): an ActorStart for an actor,
        # the checkpoint (learner) or replay snapshot (replay server) to restore, "" for none.
        self.start = (ActorStart() if role == "actor" else "") if start is None else start
        self.name = process_name(role, index)
        self._stop_event = stop_event
        self._run_stop_event = run_stop_event  # set when the launcher begins the stop (None: not told)
        self._parent_pid = parent_pid
        self._terminated = False
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        threading.excepthook = self._on_thread_error
        self.transport = Transport(config.max_message_bytes, CurveKeys.from_dict(keys))
        self._reports = connect_socket(self.transport, config, "reports", reports_address)
        self._last_progress = 0.0
        self._refusals: dict[str, tuple[float, int]] = {}  # link -> (last logged, refusals since)

    def _on_sigterm(self, signum, frame) -> None:
        self._terminated = True

    def _on_thread_error(self, args) -> None:
        """A library's background thread died (e.g. on a full disk): one line, not a traceback. One the role
        cannot run without (the ZAP authenticator) also stops it: check_links() raises, with the reason."""
        self.log(
            f"background thread {args.thread.name if args.thread else '?'} stopped: "
            f"{args.exc_type.__name__}: {args.exc_value}"
        )

    def should_stop(self) -> bool:
        return self._terminated or self._stop_event.is_set() or self.orphaned()

    def run_stopping(self) -> bool:
        """The launcher has begun to stop the run (the actors first): this role may still be running."""
        return self.should_stop() or (self._run_stop_event is not None and self._run_stop_event.is_set())

    def orphaned(self) -> bool:
        """The launcher is gone (e.g. SIGKILLed): stop fast, with no help from the other roles."""
        return os.getppid() != self._parent_pid

    def report(self, kind: str, values, text: str | None = None) -> None:
        """Tell the launcher: `values` is the record common/protocol.py REPORTS names for this kind ({} for
        "log" and "failed", which carry `text`)."""
        fields = {"role": self.role, "index": self.index, "kind": kind, "values": values}
        if text is not None:
            fields["text"] = text
        try:
            self._reports.send(encode("report", **fields), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the launcher is gone or slow; reports are best effort

    def progress_due(self) -> bool:
        """True once per report interval: time to send a progress report."""
        now = time.monotonic()
        if now - self._last_progress >= self.config.report_interval_s:
            self._last_progress = now
            return True
        return False

    def check_links(self) -> None:
        """Count the links' connections and tell the user about refused ones (wrong or missing keys):
        the first at once, then at most one line per link and reason every REFUSAL_LOG_S seconds (so a
        refused impostor is not hidden behind another reason's lines). Raises TransportError
        (the role stops, a failure the launcher names) if the authenticator thread has died."""
        now = time.monotonic()
        for refusal in self.transport.check_links():
            key = f"{refusal.channel} {refusal.endpoint} {refusal.reason}"
            last, count = self._refusals.get(key, (-REFUSAL_LOG_S, 0))
            count += 1
            if now - last >= REFUSAL_LOG_S:
                self.log(refusal.message() + (f" ({count} times)" if count > 1 else ""))
                last, count = now, 0
            self._refusals[key] = (last, count)

    def log(self, message: str) -> None:
        """A line for the user; the launcher prints it (so nothing draws over its status bar)."""
        self.report("log", {}, text=message)

    def close(self) -> None:
        self.transport.close()


def run_role(
    main,
    role: str,
    index: int,
    config_dict: dict,
    run_dir: str,
    stop_event,
    parent_pid: int,
    start: ActorStart | str | None = None,
    reports_address: str = "",
    keys: dict | None = None,
    run_stop_event=None,
) -> None:
    """Process entry point: build the runtime, run `main(runtime, run_dir)`, turn failures into a report.

    Exit status 0 on a clean stop, 1 on failure (the launcher prints the reason it was sent).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_process_name(f"mario-{process_name(role, index)}")
    runtime = None
    try:
        config = Config.from_dict(config_dict).for_role(role)
        runtime = RoleRuntime(role, index, config, stop_event, parent_pid, start, reports_address, keys, run_stop_event)
        main(runtime, run_dir)
    except TransportError as exc:
        _fail(runtime, role, str(exc), show_traceback=False)
    except Exception as exc:  # any crash: say which and why, once, then exit non-zero
        _fail(runtime, role, f"{type(exc).__name__}: {exc}", show_traceback=True)
    finally:
        if runtime is not None:
            runtime.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # all is closed by now; the interpreter's own teardown (torch, the emulators) took 1-2 s a stop


def _role_main(role: str):
    """The process body of a role, imported lazily so each process loads only what it needs."""
    if role == "replay":
        from replay_server.server import main
    elif role == "learner":
        from learner.service import main
    else:
        from actor.actor import main
    return main


def role_entry(role: str, *args) -> None:
    """What the launcher spawns: run_role with the role's process body, `args` being run_role's after `role`.
    It lives here, not in the launcher, so a role process does not import the launcher (replay snapshots,
    numba: ~2 s each)."""
    run_role(_role_main(role), role, *args)


def _set_process_name(name: str) -> None:
    """Show the role in ps/top (Linux; elsewhere a no-op)."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def _fail(runtime, role, reason: str, show_traceback: bool) -> None:
    if show_traceback:
        traceback.print_exc()
    if runtime is not None:
        runtime.report("failed", {}, text=reason)
        runtime.close()
    else:
        print(f"[{role}] {reason}", file=sys.stderr, flush=True)
    os._exit(1)

"""ZeroMQ plumbing shared by every role: one context per process, sockets with safe options.

Every socket gets a short LINGER (so closing never hangs on exit) and, where it receives from
the network, a maximum message size (ZeroMQ drops the peer that sends more). Sockets that link
machines (`link="..."`) are also encrypted and authenticated with CurveZMQ when keys are given
(see common/keys.py), and monitored: `check_links()` counts open connections and returns refusals.
"""

from __future__ import annotations

import logging
from collections import deque
import os
import stat
import time
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.addresses import private_ipc_dir
from common.keys import CurveKeys

LINGER_MS = 500
SETTLED_S = 1.0  # a connection open this long passed its handshake: refused ones close within milliseconds
AUTHENTICATOR_THREAD = "zap-authenticator"
ADDRESS_IN_USE = "address already in use (is another run using these ports? try --base-port or --bind)"
_REFUSALS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the key is not authorized (wrong --keys?)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "a ZeroMQ protocol error: another program or version at that address, "
    "or a security mismatch (--keys)",
    # A client learns no more than this when the server closes its handshake, whether for a wrong key or for a
    # socket of the wrong type (e.g. an address that is another channel's port): both causes are named.
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed: missing or wrong keys (--keys), or the other side "
    "is not this link's kind of socket (another channel's address or port?)",
}
_PROTOCOL_ERRORS = {  # what EVENT_HANDSHAKE_FAILED_PROTOCOL's value tells, where it tells more
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "security mismatch: one side has CurveZMQ keys and the other has "
    "none (--keys)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "the client has a different server key (keys from another --keys folder?)",
    zmq.PROTOCOL_ERROR_ZMTP_INVALID_METADATA: "the other side is not this link's kind of socket (another channel's "
    "address or port?)",
}
_WATCHED = (
    zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_REFUSALS)
)


@dataclass
class Refusal:
    """A connection on a link that failed its security handshake."""

    channel: str
    endpoint: str
    bound: bool  # we are the server side of the link
    reason: str
    peer: str = ""  # the refused client's address, where the authenticator turned it away ("" if unknown)

    def message(self) -> str:
        if self.bound:
            source = f" from {self.peer}" if self.peer else ""
            return f"refused a connection to {self.channel} ({self.endpoint}){source}: {self.reason}"
        return f"{self.endpoint} ({self.channel}) refused this connection: {self.reason}; retrying"


@dataclass
class _Link:
    channel: str
    bound: bool
    monitor: zmq.Socket
    opened: dict = field(default_factory=dict)  # file descriptor -> when the open connection was made
    connects: int = 0  # handshakes passed so far


class Transport:
    """Owns the process's single zmq.Context and every socket made from it."""

    def __init__(self, max_message_bytes: int, keys: CurveKeys | None = None):
        self.context = zmq.Context()
        self.max_message_bytes = max_message_bytes
        self.keys = keys
        self._sockets: list[zmq.Socket] = []
        self._links: dict[zmq.Socket, _Link] = {}
        self._authenticator = None
        self._ipc_files: dict[str, int] = {}  # ipc socket file bound here -> its inode, removed at close

    def socket(
        self,
        kind: int,
        *,
        bind: str | list[str] | None = None,
        connect: str | None = None,
        hwm: int | None = None,
        options: tuple[tuple[int, int | bytes], ...] = (),
        link: str | None = None,
    ) -> zmq.Socket:
        """A configured socket, bound or connected. `link` names a channel between roles (possibly
        between machines): such a socket uses the Curve keys, if any, and is monitored. `bind` may
        list several addresses (tcp for other machines, ipc for this one). `options` are set in order,
        before bind and connect (CONFLATE must be); common/topology.py gives each channel's."""
        binds = [bind] if isinstance(bind, str) else list(bind or [])
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        if hwm is not None:
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
        for option, value in options:
            sock.setsockopt(option, value)
        self._sockets.append(sock)
        if link is not None:
            if self.keys is not None:
                self._secure(sock, server=bool(binds))
            self._links[sock] = _Link(link, bool(binds), sock.get_monitor_socket(_WATCHED))
        for where in binds + [connect]:
            if where and where.startswith("ipc://") and os.path.dirname(where[len("ipc://") :]) == private_ipc_dir():
                keep_private(private_ipc_dir())
        where = connect
        try:
            for where in binds:
                sock.bind(where)
                if where.startswith("ipc://"):
                    self._ipc_files[where[len("ipc://") :]] = os.stat(where[len("ipc://") :]).st_ino
            if connect:
                where = connect
                sock.connect(connect)
        except zmq.ZMQError as exc:
            reason = ADDRESS_IN_USE if exc.errno == zmq.EADDRINUSE else exc.strerror
            raise TransportError(f"cannot {'connect' if where == connect else 'bind'} {where}: {reason}") from None
        return sock

    def _secure(self, sock: zmq.Socket, server: bool) -> None:
        keys = self.keys
        if server:
            if keys.server_secret is None:
                raise TransportError("CurveZMQ: no server keys for a bound socket (--keys: the learner/ folder)")
            if self._authenticator is None:  # ZAP: only the authorized client keys get in
                quiet = logging.getLogger("mario_apex.zap")
                quiet.addHandler(logging.NullHandler())
                quiet.propagate = False
                self._authenticator = _authenticator(self.context, quiet)
                self._authenticator.start()
                self._authenticator.thread.name = AUTHENTICATOR_THREAD
                self._authenticator.configure_curve(domain="*", location=keys.authorized_dir)
            sock.curve_secretkey, sock.curve_publickey, sock.curve_server = keys.server_secret, keys.server_public, True
        else:
            if keys.client_secret is None:
                raise TransportError("CurveZMQ: no client keys for a connecting socket (--keys: the actor/ folder)")
            sock.curve_secretkey, sock.curve_publickey = keys.client_secret, keys.client_public
            sock.curve_serverkey = keys.known_server

    def check_links(self) -> list[Refusal]:
        """Update the connections of the links; returns the refused handshakes since the last call
        (never blocks). Handshake events name no connection, so peers() counts the connections still
        open SETTLED_S after this call first saw them: a refused one (wrong or no key) closes within
        milliseconds. Raises TransportError once the authenticator thread has died: without it the
        keys would no longer be checked, so the role must stop rather than run on unprotected."""
        if self._authenticator is not None and not self._authenticator.is_alive():
            raise TransportError(
                f"the CurveZMQ authenticator thread ({AUTHENTICATOR_THREAD}) stopped, so keys "
                "would no longer be checked: stopping"
            )
        refusals = []
        for link in self._links.values():
            while link.monitor.poll(0):
                try:
                    event = recv_monitor_message(link.monitor, zmq.NOBLOCK)
                except zmq.ZMQError:
                    break
                kind, value = event["event"], event["value"]
                if kind in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
                    link.opened[value] = time.monotonic()
                elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    link.connects += 1
                elif kind == zmq.EVENT_DISCONNECTED:
                    link.opened.pop(value, None)
                elif kind in _REFUSALS:
                    endpoint = event["endpoint"].decode(errors="replace") if event.get("endpoint") else "?"
                    protocol = kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    reason = _PROTOCOL_ERRORS.get(value, _REFUSALS[kind]) if protocol else _REFUSALS[kind]
                    peer = self._turned_away() if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH and link.bound else ""
                    refusals.append(Refusal(link.channel, endpoint, link.bound, reason, peer))
        return refusals

    def _turned_away(self) -> str:
        """The address of the oldest client the authenticator turned away and no refusal named yet."""
        try:
            return self._authenticator.turned_away.popleft()
        except (AttributeError, IndexError):
            return ""

    def peers(self, sock: zmq.Socket) -> int:
        """Settled open connections of a monitored socket, as of the last check_links() call."""
        settled = time.monotonic() - SETTLED_S
        return sum(1 for opened in self._links[sock].opened.values() if opened <= settled)

    def connects(self, sock: zmq.Socket) -> int:
        """Handshakes a monitored socket has passed so far (a reconnection counts again)."""
        return self._links[sock].connects

    def close(self) -> None:
        for sock, link in self._links.items():
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            link.monitor.close(linger=0)
        self._links.clear()
        for sock in self._sockets:
            sock.close()  # with its own LINGER: LINGER_MS unless its channel sets one (common/topology.py)
        self._sockets.clear()
        if self._authenticator is not None:
            if not self._authenticator.is_alive() and self._authenticator.pipe is not None:
                self._authenticator.pipe.close(linger=0)  # stop() would wait forever on a dead thread's pipe
                self._authenticator.pipe = None
            self._authenticator.stop()
            self._authenticator = None
        self.context.term()
        for path, inode in self._ipc_files.items():  # ZeroMQ leaves them; not one a later bind replaced
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass
        self._ipc_files.clear()


def keep_private(folder: str) -> None:
    """Make `folder` (the channels' ipc folder) or check it is this user's alone: mode 0700, owned by this
    user. A folder of another user's could hold sockets that impersonate a run's roles: refused."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise TransportError(f"cannot make {folder} for this run's sockets: {exc.strerror or exc}") from None
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise TransportError(
            f"{folder} is not a folder of this user's (another user may have made it to intercept "
            "this run's sockets): remove it, or set TMPDIR to another folder"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700)


class TransportError(RuntimeError):
    """A socket could not be set up; the message is one line, fit for the user."""


def _authenticator(context: zmq.Context, log):
    """ZAP: only the authorized client keys get in. It keeps the addresses of the clients it turned away
    (`turned_away`), which ZeroMQ's refusal events do not name, so a refusal line can say who it was."""
    from zmq.auth.thread import ThreadAuthenticator

    class Authenticator(ThreadAuthenticator):
        def __init__(self):
            super().__init__(context, log=log)
            self.turned_away: deque[str] = deque(maxlen=100)
            self._address = ""

        async def handle_zap_message(self, msg: list[bytes]) -> None:
            self._address = msg[3].decode(errors="replace") if len(msg) > 3 else ""  # (version, id, domain, address)
            await super().handle_zap_message(msg)

        def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous") -> None:
            if status_code != b"200":
                self.turned_away.append(self._address)
            super()._send_zap_reply(request_id, status_code, status_text, user_id)

    return Authenticator()

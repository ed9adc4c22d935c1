"""ZeroMQ plumbing shared by every role: one context per process, sockets with safe options.

Every socket gets a short LINGER (so closing never hangs on exit) and, where it receives from
the network, a maximum message size (ZeroMQ drops the peer that sends more).
"""
from __future__ import annotations

import zmq

LINGER_MS = 500


class Transport:
    """Owns the process's single zmq.Context and every socket made from it."""

    def __init__(self, max_message_bytes: int):
        self.context = zmq.Context()
        self.max_message_bytes = max_message_bytes
        self._sockets: list[zmq.Socket] = []

    def socket(self, kind: int, *, bind: str | None = None, connect: str | None = None,
               hwm: int | None = None, conflate: bool = False, subscribe: bool = False) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        if hwm is not None:
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
        if conflate:
            sock.setsockopt(zmq.CONFLATE, 1)
        if subscribe:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sockets.append(sock)
        try:
            if bind:
                sock.bind(bind)
            if connect:
                sock.connect(connect)
        except zmq.ZMQError as exc:
            where = bind or connect
            reason = "address already in use (is another run using these ports? try --base-port)" \
                if exc.errno == zmq.EADDRINUSE else exc.strerror
            raise TransportError(f"cannot {'bind' if bind else 'connect'} {where}: {reason}") from None
        return sock

    def close(self) -> None:
        for sock in self._sockets:
            sock.close(linger=LINGER_MS)
        self._sockets.clear()
        self.context.term()


class TransportError(RuntimeError):
    """A socket could not be set up; the message is one line, fit for the user."""

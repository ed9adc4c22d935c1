"""The channels between processes, in one table: who binds, who connects, with which sockets, what flows.

Roles open their sockets by channel name (`bind_socket`, `connect_socket`), so a channel's socket types,
high-water marks and options are written here only; the addresses come from common/addresses.py, whose
PORT_OFFSETS is derived from this table. README.md's diagram ("How it works") draws the same table, and
tests/test_topology.py fails when the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import zmq

    from common.config import Config
    from common.transport import Transport


@dataclass(frozen=True)
class Side:
    """One end of a channel: the roles there, the socket each of them opens and the messages they send."""

    roles: tuple[str, ...]  # process roles (common/runtime.py process_name), or "launcher"
    socket: str  # ZeroMQ socket type, as zmq names it
    hwm: int | Callable[[Config], int] | None = None  # SNDHWM and RCVHWM in messages; None: ZeroMQ's 1000
    options: tuple[tuple[str, int | bytes], ...] = ()  # further zmq options, set in order before bind/connect
    sends: tuple[str, ...] = ()  # message kinds of common/protocol.py these roles send on it


@dataclass(frozen=True)
class Channel:
    """One channel: one role binds, the others connect."""

    name: str
    port_offset: int | None  # port base_port + this (or <port>.sock over ipc); None: the launcher's own socket
    binder: Side
    connectors: Side
    # Config fields that name the binder's machine for the connectors (--replay, --learner): the first one
    # set wins; none set: this machine.
    remote: tuple[str, ...] = ()

    @property
    def link(self) -> str | None:
        """The name monitors and refusal messages use; only a networked channel is a link (keys, monitor)."""
        return self.name.replace("_", "-") if self.port_offset is not None else None


# How long a stopping actor's socket keeps trying to deliver its last queued chunks (the replay server takes
# them all once the stop has begun); within the actors' share of the launcher's stop.
LAST_CHUNKS_LINGER_MS = 1500


def _actor_queue(c: Config) -> int:
    return c.actor_queue_chunks()


def _reply_queue(c: Config) -> int:
    """Replies the replay server queues for one peer: the learner reads its prefetch_batches and the odd
    snapshot or stats answer at once; a peer that asks and never reads gets no more than this (each reply
    at most max_message_bytes), the rest are counted as undeliverable."""
    return c.prefetch_batches + 8


CHANNELS: dict[str, Channel] = {
    ch.name: ch
    for ch in (
        # Experience: actors push chunks of transitions and finished episodes; a short queue with the replay
        # ratio pinned (actors then wait), else a long one that rides out an outage of the learner side.
        Channel(
            "replay_in",
            0,
            binder=Side(("replay",), "PULL", hwm=_actor_queue),
            connectors=Side(
                ("actor",),
                "PUSH",
                hwm=_actor_queue,
                options=(("LINGER", LAST_CHUNKS_LINGER_MS),),
                sends=("transitions", "episode"),
            ),
            remote=("replay", "learner"),
        ),
        # Sampling: the learner's requests (with the previous batch's priorities) and the server's replies.
        # ROUTER_MANDATORY: a reply to a gone peer raises (and is counted) instead of vanishing.
        Channel(
            "replay_sample",
            1,
            binder=Side(
                ("replay",),
                "ROUTER",
                hwm=_reply_queue,
                options=(("ROUTER_MANDATORY", 1),),
                sends=("batch", "batch_shared", "batch_mirror", "frame_ring", "snapshot_done", "stats"),
            ),
            connectors=Side(
                ("learner",),
                "DEALER",
                hwm=100,
                sends=("sample", "priorities", "attach_frames", "snapshot", "ask_stats"),
            ),
            remote=("replay",),
        ),
        # Weights: only the newest matters, so a tiny queue on the PUB and CONFLATE on each actor's SUB.
        Channel(
            "weights",
            2,
            binder=Side(("learner",), "PUB", hwm=2, sends=("weights", "bye")),
            connectors=Side(("actor",), "SUB", options=(("CONFLATE", 1), ("SUBSCRIBE", b""))),
            remote=("learner",),
        ),
        # Reports to this machine's launcher (progress, episodes, last words): an ipc socket in a folder of
        # its own (launcher/supervisor.py), never between machines, so no port, keys or monitor.
        Channel(
            "reports",
            None,
            binder=Side(("launcher",), "PULL", hwm=100_000),
            connectors=Side(("actor", "learner", "replay"), "PUSH", hwm=10_000, sends=("report",)),
        ),
    )
}


def bound_by(role: str) -> list[str]:
    """The networked channels `role` binds (whose addresses must be free before it starts)."""
    return [ch.name for ch in CHANNELS.values() if ch.port_offset is not None and role in ch.binder.roles]


def bind_socket(transport: Transport, config: Config, name: str, address: str | None = None) -> zmq.Socket:
    """The binding side's socket of channel `name`, bound at the config's addresses (or `address`)."""
    from common.addresses import bind_addresses  # (it builds on this table)

    return _open(transport, config, CHANNELS[name], True, bind_addresses(config, name) if address is None else address)


def connect_socket(transport: Transport, config: Config, name: str, address: str | None = None) -> zmq.Socket:
    """A connecting side's socket of channel `name`, connected to the config's address (or `address`)."""
    from common.addresses import connect_address  # (it builds on this table)

    return _open(
        transport, config, CHANNELS[name], False, connect_address(config, name) if address is None else address
    )


def _open(transport: Transport, config: Config, channel: Channel, bound: bool, where) -> zmq.Socket:
    import zmq  # here, not at the top: common.config imports this module and stays free of zmq

    side = channel.binder if bound else channel.connectors
    hwm = side.hwm(config) if callable(side.hwm) else side.hwm
    options = tuple((getattr(zmq, option), value) for option, value in side.options)
    return transport.socket(
        getattr(zmq, side.socket),
        bind=where if bound else None,
        connect=None if bound else where,
        hwm=hwm,
        options=options,
        link=channel.link,
    )

"""Where each channel of common/topology.py is bound and reached, from a Config's host, ports and --learner /
--replay (HOST[:PORT] texts, parsed here): ipc sockets in this user's folder between roles on one machine, tcp
between machines."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from common.topology import CHANNELS

if TYPE_CHECKING:
    from common.config import Config

PORT_OFFSETS = {name: ch.port_offset for name, ch in CHANNELS.items() if ch.port_offset is not None}
"""Networked channels' ports relative to base_port."""
LOCAL_FOR_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1"}
"""Bound to every interface: this machine's own roles connect over loopback."""
LOOPBACK = ("localhost", "::1")


class AddressError(ValueError):
    """A HOST[:PORT] that cannot be used, with a one-line message naming the setting."""


def parse_endpoint(text: str, default_port: int, what: str = "address") -> tuple[str, int]:
    """ "HOST", "HOST:PORT", "[IPV6]:PORT" or "IPV6" -> (host, port); AddressError if unusable."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise AddressError(f"{what}: expected HOST[:PORT], got {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        port = int(port)
    except ValueError:
        raise AddressError(f"{what}: the port in {text!r} is not a number") from None
    if not valid_host(host) or not 1 <= port <= 65_533:
        raise AddressError(f"{what}: expected HOST[:PORT] with a port between 1 and 65533, got {text!r}")
    return host, port


def valid_host(host: str) -> bool:
    """A host name or IP address, not a URL, a path or a wildcard."""
    return bool(host) and not any(ch in host for ch in "/ []*")


def tcp_address(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def private_ipc_dir() -> str:
    """This user's folder for the channels' ipc sockets (kept 0700 by common/transport.py): a Unix socket in it
    can be reached by this user only, so links between roles on one machine need no keys."""
    return os.path.join(tempfile.gettempdir(), f"mario-apex-{os.getuid() if hasattr(os, 'getuid') else 0}")


def has_ipc() -> bool:
    import zmq

    return bool(zmq.has("ipc"))


def bind_endpoint(config: Config, channel: str) -> tuple[str, int]:
    """(host, port) where this machine's binder of a networked channel binds."""
    return config.bind, config.base_port + PORT_OFFSETS[channel]


def bind_address(config: Config, channel: str) -> str:
    return tcp_address(*bind_endpoint(config, channel))


def local_address(config: Config, channel: str, base_port: int | None = None) -> str:
    """The ipc:// address of a channel for roles on this machine (of this run's ports, or base_port's)."""
    port = (config.base_port if base_port is None else base_port) + PORT_OFFSETS[channel]
    return f"ipc://{private_ipc_dir()}/{port}.sock"


def ipc_only(config: Config) -> bool:
    """A loopback host: every role is on this machine, so channels are ipc sockets only, no TCP port."""
    return config.local_ipc and is_loopback(config.bind) and has_ipc()


def bind_addresses(config: Config, channel: str) -> list[str]:
    """Everything a channel's socket binds: ipc only for a loopback host; else tcp (other machines)
    and, with local_ipc, ipc (this one)."""
    if ipc_only(config):
        return [local_address(config, channel)]
    here = [local_address(config, channel)] if config.local_ipc and has_ipc() else []
    return [bind_address(config, channel)] + here


def connect_address(config: Config, channel: str) -> str:
    """Where a role connects to reach a channel: on the machine given by --learner / --replay
    (tcp; ipc for a loopback one), or on this machine (ipc, or tcp to the own bind address without local_ipc)."""
    remote = next((getattr(config, f) for f in CHANNELS[channel].remote if getattr(config, f)), "")
    if remote:
        host, port = parse_endpoint(remote, config.base_port, channel)
        if config.local_ipc and is_loopback(host) and has_ipc():  # another launcher on this machine
            return local_address(config, channel, port)
        return tcp_address(host, port + PORT_OFFSETS[channel])
    if config.local_ipc and has_ipc():
        return local_address(config, channel)
    return tcp_address(LOCAL_FOR_ANY.get(config.bind, config.bind), config.base_port + PORT_OFFSETS[channel])

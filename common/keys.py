"""CurveZMQ keys: who may talk to a learner machine across the network.

`python launch.py keys DIR` writes two folders, one per side, so secret keys never travel:

    DIR/learner/server.key_secret         the learner side's server key pair (server.key beside it)
    DIR/learner/client.key_secret         its client key pair, for its own link to a replay server
    DIR/learner/authorized_clients/*.key  the client public keys it accepts (actor.key, learner.key)
    DIR/actor/client.key_secret           the actor side's client key pair (client.key beside it)
    DIR/actor/server.key                  the learner side's public key, to know it is real

Copy DIR/learner to the learner machine and DIR/actor to the actor machine and pass each to
--keys (a launcher that runs every role on one machine takes DIR itself). Bound sockets then
accept only authorized clients (ZAP, checked by pyzmq's authenticator thread), and all traffic is
encrypted. More actor machines: add their client.key files to authorized_clients and restart the
learner side (the keys are read at start).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass


class KeysError(ValueError):
    """Keys missing or unreadable; one-line message."""


@dataclass
class CurveKeys:
    """What one launcher's processes need; a side it does not play may be missing (None)."""

    server_public: bytes | None = None
    server_secret: bytes | None = None
    authorized_dir: str | None = None
    client_public: bytes | None = None
    client_secret: bytes | None = None
    known_server: bytes | None = None  # the server public key a client expects

    def to_dict(self) -> dict:
        """For the spawned processes (plain bytes and strings)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict | None) -> "CurveKeys | None":
        return cls(**data) if data else None


def create_keys(folder: str) -> list[str]:
    """Write a new learner/actor key set under `folder` (which must not hold one yet); returns the
    folders written."""
    import zmq.auth

    learner, actor = os.path.join(folder, "learner"), os.path.join(folder, "actor")
    for path in (learner, actor):
        if os.path.exists(path):
            raise KeysError(f"{path} already exists: keys are never overwritten; choose a new folder")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            for name in ("server", "actor", "learner"):
                zmq.auth.create_certificates(scratch, name)
            authorized = os.path.join(learner, "authorized_clients")
            os.makedirs(authorized)
            os.makedirs(actor)
            for side in ("learner", "actor"):
                destination = os.path.join(folder, side)
                shutil.copy(os.path.join(scratch, f"{side}.key"), os.path.join(destination, "client.key"))
                shutil.copy(os.path.join(scratch, f"{side}.key_secret"), os.path.join(destination, "client.key_secret"))
                shutil.copy(os.path.join(scratch, f"{side}.key"), authorized)
                shutil.copy(os.path.join(scratch, "server.key"), destination)
            shutil.copy(os.path.join(scratch, "server.key_secret"), learner)
        for path in (learner, actor):
            os.chmod(path, 0o700)
            for name in ("server.key_secret", "client.key_secret"):
                if os.path.exists(os.path.join(path, name)):
                    os.chmod(os.path.join(path, name), 0o600)  # stays private when the folder is copied
    except OSError as exc:
        raise KeysError(f"cannot write keys in {folder}: {exc.strerror}") from None
    return [learner, actor]


def load_keys(folder: str, server: bool, client: bool) -> CurveKeys:
    """The keys a launcher needs from `folder` (a side's folder, or the DIR holding both):
    server=True for bound sockets, client=True for connecting ones. KeysError names what is missing."""
    if not os.path.isdir(folder):
        raise KeysError(f"--keys {folder}: no such folder (create keys with: python launch.py keys DIR)")
    keys = CurveKeys()
    if server:
        secret = _find(folder, "learner", "server.key_secret")
        keys.server_public, keys.server_secret = _load(secret, need_secret=True)
        authorized = _find(folder, "learner", "authorized_clients")
        if not any(name.endswith(".key") for name in os.listdir(authorized)):
            raise KeysError(f"{authorized}: no client public keys (*.key) to accept")
        keys.authorized_dir = os.path.abspath(authorized)
    if client:
        secret = _find(folder, "actor", "client.key_secret")
        keys.client_public, keys.client_secret = _load(secret, need_secret=True)
        keys.known_server = _load(_find(folder, "actor", "server.key"), need_secret=False)[0]
    return keys


def _find(folder: str, side: str, name: str) -> str:
    for path in (os.path.join(folder, name), os.path.join(folder, side, name)):
        if os.path.exists(path):
            return path
    role = "learner side (bound sockets)" if side == "learner" else "actor side (connecting sockets)"
    raise KeysError(
        f"--keys {folder}: no {name} for the {role}; use the {side}/ folder that `python launch.py keys DIR` wrote"
    )


def _load(path: str, need_secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError, KeyError) as exc:
        raise KeysError(f"{path}: not a readable CurveZMQ key file ({exc})") from None
    if need_secret and not secret:
        raise KeysError(f"{path}: holds no secret key")
    return public, secret

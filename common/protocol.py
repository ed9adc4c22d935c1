"""The wire protocol: versioned msgpack messages, numpy arrays as raw bytes, strict decoding.

Every message is a msgpack map {"v": PROTOCOL_VERSION, "t": type, ...fields}. Arrays travel as
{"dtype", "shape", "data"} with the raw buffer, never pickled. `decode` checks sizes, the version,
the message type, every field's type, each array's dtype and number of dimensions against its
field's, shapes against the data length, and that per-transition arrays agree in length; anything
wrong raises ProtocolError. So a handler gets only arrays it can index: a 0-d `actions` never
reaches `len()`.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import msgpack
import numpy as np

from common.records import (
    RECORDS,
    ActorDone,
    ActorProgress,
    EpisodeReport,
    EvalResult,
    LearnerProgress,
    ReplayStats,
    as_map,
    field_kinds,
)

PROTOCOL_VERSION = 4  # 2: batch_mirror (a learner's copy of the frame ring); 3: typed records; 4: weights_version
# and weights_updates, the names the counters have everywhere; both sides must agree

ALLOWED_DTYPES = frozenset({"uint8", "int8", "int16", "int32", "int64", "float32", "float64", "bool"})
MAX_ARRAY_DIMS = 4


class ProtocolError(ValueError):
    """A message that cannot be used: malformed, truncated, oversized or of the wrong type."""


# Field kinds: "int", "count" (an int >= 0), "float" (finite), "str", "bool", "numbers" (a map of
# name -> int/finite float/bool; small metrics blobs), "array DTYPES NDIM" (one array: DTYPES is one
# dtype or several joined by "|") and "arrays DTYPES" (a map of name -> array, any NDIM up to
# MAX_ARRAY_DIMS), "record NAME" (a map with exactly the fields of the dataclass NAME in
# common/records.py; decoded into that record). Optional fields end in "?".
SCHEMAS: dict[str, dict[str, str]] = {
    # actor -> replay server: a chunk of n-step transitions from one episode (see actor/chunks.py).
    # frames (m, H, W) uint8; stack (n, 2S) int32 indices into frames: obs = stack[:, :S],
    # next obs = stack[:, S:]; actions (n,) uint8; rewards (n,) float32 discounted n-step returns;
    # bootstraps (n,) float32: gamma^k for the next obs k steps on, 0 after a terminal step.
    "transitions": {
        "actor": "count",
        "frames": "array uint8 3",
        "stack": "array int32 2",
        "actions": "array uint8 1",
        "rewards": "array float32 1",
        "bootstraps": "array float32 1",
    },
    # actor -> replay server and launcher: one finished episode.
    "episode": {
        "actor": "count",
        "episode": "count",
        "reward": "float",
        "steps": "count",
        "x_pos": "count",
        "flag": "bool",
        "epsilon": "float",
        "actor_steps": "count",
    },
    # learner -> replay server: ask for a batch; the reply is "batch", or "batch_shared" when asked
    # by a learner that maps the server's frame ring (see common/shared_frames.py), or "batch_mirror"
    # when asked with `mirror`, the token of the learner's copy of the ring (learner/replay_batches.py).
    # It may carry the previous batch's new priorities (as "priorities" does): one message instead of
    # two per batch.
    "sample": {
        "batch_size": "count",
        "beta": "float",
        "shared?": "bool",
        "mirror?": "count",
        "ids?": "array int64 1",
        "priorities?": "array float32|float64 1",
    },
    # replay server -> learner
    # frames (B, 2S, H, W): obs = [:, :S], next obs = [:, S:]
    "batch": {
        "ids": "array int64 1",
        "frames": "array uint8 4",
        "actions": "array uint8 1",
        "rewards": "array float32 1",
        "bootstraps": "array float32 1",
        "weights": "array float32 1",
        "stats": "record ReplayStats",
    },
    # the same without frames: frame_numbers (B, 2S) int64 say which frames of the ring `ring` (its token)
    "batch_shared": {
        "ids": "array int64 1",
        "frame_numbers": "array int64 2",
        "ring": "int",
        "actions": "array uint8 1",
        "rewards": "array float32 1",
        "bootstraps": "array float32 1",
        "weights": "array float32 1",
        "stats": "record ReplayStats",
    },
    # the same for a learner on another machine, which keeps a copy of the ring (its mirror): frame_numbers
    # (B, 2S) int64 name the batch's frames in ring `ring` of `ring_frames` frames; of those, the ones this
    # mirror was not sent yet (or whose slot was overwritten since) come along: new_numbers (k,) int64
    # and their frames (k, H, W) uint8, in the same order. Each frame travels once per time it is written.
    # `mirror` echoes the request's token, so a reply meant for an older copy is told apart.
    "batch_mirror": {
        "ids": "array int64 1",
        "frame_numbers": "array int64 2",
        "ring": "int",
        "ring_frames": "count",
        "mirror": "count",
        "new_numbers": "array int64 1",
        "frames": "array uint8 3",
        "actions": "array uint8 1",
        "rewards": "array float32 1",
        "bootstraps": "array float32 1",
        "weights": "array float32 1",
        "stats": "record ReplayStats",
    },
    # learner -> replay server: where is your frame ring? The reply, "frame_ring", is what
    # SharedFrames needs to map it (fd -1: not shared).
    "attach_frames": {},
    "frame_ring": {"pid": "int", "fd": "int", "token": "int", "frames": "count", "size": "count"},
    # learner -> replay server: new priorities for the transitions with these ids.
    "priorities": {"ids": "array int64 1", "priorities": "array float32|float64 1"},
    # learner -> replay server: snapshot the buffer now into <run folder>/<name> (a plain file name);
    # answered with "snapshot_done" once the file is complete.
    "snapshot": {"name": "str"},
    "snapshot_done": {"name": "str", "ok": "bool", "stats": "record ReplayStats", "text?": "str"},
    # learner -> replay server, while no batch comes yet (before learning_starts): how far is the run? The
    # reply, "stats", lets the learner keep its checkpoint schedule before training starts.
    "ask_stats": {},
    "stats": {"stats": "record ReplayStats"},
    # learner -> actors: network weights after `updates` learner updates, and the run's counters as the
    # replay server counted them (episodes, env_steps, best_reward): what a joining actor continues from.
    "weights": {
        "weights_version": "count",
        "weights_updates": "count",
        "tensors": "arrays float32",
        "run?": "record RunCounters",
    },
    # learner -> actors: the learner is stopping (after writing `checkpoint`); actors play on.
    "bye": {"checkpoint": "str"},
    # any process -> launcher: progress, the last words of a failing process, or a stop request.
    "report": {"role": "str", "index": "count", "kind": "str", "values": "numbers", "text?": "str"},
}

# Arrays with one entry per transition (or per sampled one): their first dimensions must agree.
SAME_LENGTH: dict[str, tuple[str, ...]] = {
    "transitions": ("stack", "actions", "rewards", "bootstraps"),
    "sample": ("ids", "priorities"),
    "batch": ("ids", "frames", "actions", "rewards", "bootstraps", "weights"),
    "batch_shared": ("ids", "frame_numbers", "actions", "rewards", "bootstraps", "weights"),
    "batch_mirror": ("ids", "frame_numbers", "actions", "rewards", "bootstraps", "weights"),
    "priorities": ("ids", "priorities"),
}
# A second group of arrays that must agree in length: one entry per frame sent along.
SAME_LENGTH_FRAMES: dict[str, tuple[str, ...]] = {"batch_mirror": ("new_numbers", "frames")}
MAX_COUNT = 2**63 - 1

# The record a report's values hold, by kind and sending role (see RoleRuntime.report and its callers);
# "log" and "failed" carry only their text.
REPORTS: dict[tuple[str, str], type | None] = {
    ("progress", "actor"): ActorProgress,
    ("progress", "learner"): LearnerProgress,
    ("progress", "replay"): ReplayStats,
    ("episode", "actor"): EpisodeReport,
    ("eval", "actor"): EvalResult,
    ("done", "actor"): ActorDone,
    **{(kind, role): None for kind in ("log", "failed") for role in ("actor", "learner", "replay")},
}


def encode(msg_type: str, **fields) -> bytes:
    """Pack one message; numpy arrays become {"dtype", "shape", "data"} maps."""
    if msg_type not in SCHEMAS:
        raise ProtocolError(f"unknown message type {msg_type!r}")
    body = {"v": PROTOCOL_VERSION, "t": msg_type}
    for name, value in fields.items():
        if isinstance(value, np.ndarray):
            value = _pack_array(value)
        elif dataclasses.is_dataclass(value):
            value = as_map(value)
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            value = {k: _pack_array(v) for k, v in value.items()}
        body[name] = value
    return msgpack.packb(body, use_bin_type=True)


def encode_parts(msg_type: str, out_of_band: dict[str, np.ndarray], **fields) -> list:
    """Like encode, but the big arrays in `out_of_band` travel as extra ZeroMQ message parts after the
    header (sent with copy=False, received as buffers: no packing or unpacking copies)."""
    arrays = [np.asarray(a, dtype=a.dtype.newbyteorder("="), order="C") for a in out_of_band.values()]
    refs = {
        name: {"dtype": a.dtype.name, "shape": list(a.shape), "part": i + 1}
        for i, (name, a) in enumerate(zip(out_of_band, arrays))
    }
    return [encode(msg_type, **fields, **refs)] + [a.data for a in arrays]


def decode(raw: bytes, max_bytes: int, expect: tuple[str, ...] | None = None) -> dict:
    """Unpack and check one single-part message; returns its fields plus "t". Raises ProtocolError."""
    return decode_parts([raw], max_bytes, expect)


def decode_parts(parts: list, max_bytes: int, expect: tuple[str, ...] | None = None) -> dict:
    """Unpack and check a message: a header, then the raw parts its arrays name (see encode_parts).
    Every part must be used exactly once. Raises ProtocolError."""
    if not parts or not all(isinstance(p, (bytes, bytearray, memoryview)) for p in parts):
        raise ProtocolError("message is not bytes")
    try:
        parts = [memoryview(p).cast("B") for p in parts]  # flat bytes, whatever shape was sent
    except TypeError:
        raise ProtocolError("message part is not contiguous bytes") from None
    total = sum(p.nbytes for p in parts)
    if total > max_bytes:
        raise ProtocolError(f"message of {total} bytes exceeds the {max_bytes}-byte limit")
    raw = parts[0]
    try:
        body = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_bytes,
            max_str_len=1 << 16,
            max_array_len=64,
            max_map_len=256,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"undecodable message ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise ProtocolError("message is not a map")
    if type(body.get("v")) is not int or body["v"] != PROTOCOL_VERSION:  # not 1.0 or True
        raise ProtocolError(f"protocol version {body.get('v')!r}, expected {PROTOCOL_VERSION}")
    msg_type = body.get("t")
    if not isinstance(msg_type, str) or msg_type not in SCHEMAS:
        raise ProtocolError(f"unknown message type {msg_type!r}")
    if expect is not None and msg_type not in expect:
        raise ProtocolError(f"unexpected message type {msg_type!r}")
    out, used = {"t": msg_type}, set()
    schema = SCHEMAS[msg_type]
    extra = set(body) - {"v", "t"} - {k.rstrip("?") for k in schema}
    if extra:
        raise ProtocolError(f"{msg_type}: unexpected field(s) {sorted(map(str, extra))}")
    for key, kind in schema.items():
        name, optional = key.rstrip("?"), key.endswith("?")
        if name not in body:
            if optional:
                continue
            raise ProtocolError(f"{msg_type}: missing field {name!r}")
        out[name] = _check_field(msg_type, name, kind, body[name], parts, used)
    if len(used) != len(parts) - 1:
        raise ProtocolError(f"{msg_type}: {len(parts) - 1 - len(used)} message part(s) not used by any field")
    for groups, what in ((SAME_LENGTH, "per-transition"), (SAME_LENGTH_FRAMES, "per-frame")):
        lengths = {name: len(out[name]) for name in groups.get(msg_type, ()) if name in out}
        if len(set(lengths.values())) > 1:
            raise ProtocolError(f"{msg_type}: {what} arrays differ in length {lengths}")
    return out


def check_report(msg: dict) -> dict:
    """A decoded report as one REPORTS knows it: its values decoded into that kind's record (exactly its
    fields), None for "log" and "failed"; an actor's episode or eval names that actor. Raises ProtocolError."""
    key = (msg["kind"], msg["role"])
    if key not in REPORTS:
        raise ProtocolError(f"report: unknown kind {msg['kind'][:40]!r} from role {msg['role'][:40]!r}")
    cls = REPORTS[key]
    values = None if cls is None else _record("report", "values", cls, msg["values"])
    if getattr(values, "actor", msg["index"]) != msg["index"]:
        raise ProtocolError(f"report: {msg['kind']} of actor {values.actor} sent as actor {msg['index']}")
    return {**msg, "values": values}


def _check_field(msg_type: str, name: str, kind: str, value, parts: list, used: set):
    where = f"{msg_type}.{name}"
    if kind in ("int", "count"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"{where} must be an integer")
        if kind == "count" and not 0 <= value <= MAX_COUNT:
            raise ProtocolError(f"{where} must be a count (0 to 2**63 - 1), got {value}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProtocolError(f"{where} must be a finite number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ProtocolError(f"{where} must be a boolean")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ProtocolError(f"{where} must be a string")
        return value
    if kind == "numbers":
        if not isinstance(value, dict):
            raise ProtocolError(f"{where} must be a map of numbers")
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, (int, float, bool)):
                raise ProtocolError(f"{where} must map names to numbers")
            if isinstance(v, float) and not math.isfinite(v):
                raise ProtocolError(f"{where}.{k} must be finite")
        return value
    if kind.startswith("record "):
        return _record(msg_type, name, RECORDS[kind.split()[1]], value)
    base, dtypes, ndim = _array_kind(kind)
    if base == "array":
        return _typed(where, _unpack_array(where, value, parts, used), dtypes, ndim)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProtocolError(f"{where} must be a map of arrays")
    return {
        k: _typed(f"{where}.{k}", _unpack_array(f"{where}.{k}", v, parts, used), dtypes, ndim) for k, v in value.items()
    }


def _record(msg_type: str, name: str, cls: type, value):
    """A map with exactly the record's fields, each of its kind, as that record."""
    kinds = field_kinds(cls)
    if not isinstance(value, dict):
        raise ProtocolError(f"{msg_type}.{name} must be a map")
    missing, extra = set(kinds) - set(value), set(value) - set(kinds)
    if missing or extra:
        raise ProtocolError(
            f"{msg_type}.{name} is not a {cls.__name__}: missing {sorted(missing)}, unexpected {sorted(map(str, extra))}"
        )
    return cls(**{k: _check_field(msg_type, f"{name}.{k}", kinds[k], value[k], [], set()) for k in kinds})


@lru_cache(maxsize=None)
def _array_kind(kind: str) -> tuple[str, frozenset[str], int | None]:
    """ "array uint8 3" -> ("array", {"uint8"}, 3); "arrays float32" -> ("arrays", {"float32"}, None: any)."""
    words = kind.split()
    if (
        not 2 <= len(words) <= 3
        or words[0] not in ("array", "arrays")
        or not set(words[1].split("|")) <= ALLOWED_DTYPES
    ):
        raise AssertionError(f"bad schema kind {kind}")
    return words[0], frozenset(words[1].split("|")), int(words[2]) if len(words) == 3 else None


def _typed(where: str, array: np.ndarray, dtypes: frozenset[str], ndim: int | None) -> np.ndarray:
    if array.dtype.name not in dtypes:
        raise ProtocolError(f"{where} must be {' or '.join(sorted(dtypes))}, got {array.dtype.name}")
    if ndim is not None and array.ndim != ndim:
        raise ProtocolError(f"{where} must have {ndim} dimension(s), got shape {array.shape}")
    return array


def _pack_array(array: np.ndarray) -> dict:
    # C order and native byte order (the dtype name does not say which); 0-d arrays stay 0-d.
    array = np.asarray(array, dtype=array.dtype.newbyteorder("="), order="C")
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.data}


def _unpack_array(where: str, value, parts: list, used: set) -> np.ndarray:
    """An array given inline ("data") or as a reference to a later message part ("part")."""
    if isinstance(value, dict) and set(value) == {"dtype", "shape", "part"}:
        part = value["part"]
        if isinstance(part, bool) or not isinstance(part, int) or not 1 <= part < len(parts) or part in used:
            raise ProtocolError(f"{where} names a missing or already used message part")
        used.add(part)
        value = {"dtype": value["dtype"], "shape": value["shape"], "data": parts[part]}
    elif not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
        raise ProtocolError(f"{where} must be an array")
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"{where} has disallowed dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_ARRAY_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape)
    ):
        raise ProtocolError(f"{where} has a bad shape")
    if not isinstance(data, (bytes, memoryview)):
        raise ProtocolError(f"{where} data must be bytes")
    itemsize = np.dtype(dtype).itemsize
    if math.prod(shape) * itemsize != len(data):
        raise ProtocolError(f"{where} shape {shape} does not match {len(data)} data bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape)

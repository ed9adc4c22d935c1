"""The wire protocol: every message round-trips; every malformed input raises ProtocolError, nothing else."""

import math
import random

import msgpack
import numpy as np
import pytest

from common.protocol import (
    ALLOWED_DTYPES,
    MAX_ARRAY_DIMS,
    PROTOCOL_VERSION,
    SAME_LENGTH,
    SAME_LENGTH_FRAMES,
    SCHEMAS,
    ProtocolError,
    decode,
    decode_parts,
    encode,
    encode_parts,
)
from common.records import RECORDS, ReplayStats, RunCounters, field_kinds

MAX = 1 << 22  # max_bytes for decode in these tests (4 MiB)
RNG = np.random.default_rng(1234)


def _frames(n: int, size: int = 84) -> np.ndarray:
    return RNG.integers(0, 256, (n, size, size), dtype=np.uint8)


# Realistic messages, as the actor, replay server, learner and launcher send them.
EXAMPLES = {
    "transitions": dict(
        actor=3,
        frames=_frames(8),
        stack=np.arange(32, dtype=np.int32).reshape(4, 8) % 8,
        actions=np.array([0, 2, 6, 4], np.uint8),
        rewards=np.array([0.5, -1.0, 0.0, 1.0], np.float32),
        bootstraps=np.array([0.97, 0.97, 0.99, 0.0], np.float32),
    ),
    "episode": dict(
        actor=0, episode=17, reward=12.5, steps=400, x_pos=1234, flag=False, epsilon=0.37, actor_steps=123_456
    ),
    "sample": dict(
        batch_size=32, beta=0.4, shared=True, ids=np.array([3, 4], np.int64), priorities=np.array([0.5, 2.0])
    ),
    "batch": dict(
        ids=np.array([5, 99, 100_000, 2**40], np.int64),
        frames=RNG.integers(0, 256, (4, 8, 84, 84), dtype=np.uint8),
        actions=np.array([1, 2, 3, 0], np.uint8),
        rewards=np.array([0.1, 0, -1, 1], np.float32),
        bootstraps=np.array([0.0, 0.97, 0.97, 0.0], np.float32),
        weights=np.array([1, 0.5, 0.25, 0.125], np.float32),
        stats=ReplayStats(size=1000, inserted=5000, actors=2, episodes=7, env_steps=5000, best_reward=-0.5),
    ),
    "batch_shared": dict(
        ids=np.array([5, 99], np.int64),
        frame_numbers=np.arange(16, dtype=np.int64).reshape(2, 8),
        ring=2**55 + 3,
        actions=np.array([1, 2], np.uint8),
        rewards=np.array([0.1, 0], np.float32),
        bootstraps=np.array([0.0, 0.97], np.float32),
        weights=np.array([1, 0.5], np.float32),
        stats=ReplayStats(size=1000),
    ),
    "batch_mirror": dict(
        ids=np.array([5, 99], np.int64),
        frame_numbers=np.arange(16, dtype=np.int64).reshape(2, 8),
        ring=2**55 + 3,
        ring_frames=112_501,
        mirror=2**40 + 1,
        new_numbers=np.array([3, 7, 12], np.int64),
        frames=RNG.integers(0, 256, (3, 84, 84), dtype=np.uint8),
        actions=np.array([1, 2], np.uint8),
        rewards=np.array([0.1, 0], np.float32),
        bootstraps=np.array([0.0, 0.97], np.float32),
        weights=np.array([1, 0.5], np.float32),
        stats=ReplayStats(size=1000),
    ),
    "attach_frames": dict(),
    "ask_stats": dict(),
    "stats": dict(stats=ReplayStats(size=10, episodes=2, env_steps=300)),
    "frame_ring": dict(pid=1234, fd=7, token=2**55 + 3, frames=112_501, size=84),
    "priorities": dict(ids=np.array([3, 1, 4], np.int64), priorities=np.array([1e-6, 0.5, 12.25], np.float64)),
    "weights": dict(
        weights_version=3,
        weights_updates=300,
        tensors={
            "features.0.weight": RNG.standard_normal((32, 4, 8, 8)).astype(np.float32),
            "head.2.bias": RNG.standard_normal(7).astype(np.float32),
        },
        run=RunCounters(episodes=12, env_steps=3400, best_reward=7.5),
    ),
    "bye": dict(checkpoint="checkpoint_final.pth"),
    "snapshot": dict(name="checkpoint-1795622647063481164.replay.npz"),
    "snapshot_done": dict(
        name="checkpoint_final-17.replay.npz",
        ok=False,
        stats=ReplayStats(size=10, episodes=2),
        text="writing checkpoint_final-17.replay.npz failed (disk full?)",
    ),
    "report": dict(
        role="actor", index=2, kind="failed", values={"steps": 10, "rate": 1.5, "ok": True}, text="RuntimeError: boom ✓"
    ),
}
EMPTY_TRANSITIONS = dict(
    actor=0,
    frames=np.zeros((0, 84, 84), np.uint8),
    stack=np.zeros((0, 8), np.int32),
    actions=np.zeros(0, np.uint8),
    rewards=np.zeros(0, np.float32),
    bootstraps=np.zeros(0, np.float32),
)

# A value of each kind, for fields (of a future schema) without a hand-written example.
BY_KIND = {"int": 7, "count": 7, "float": 0.25, "str": "text", "bool": True, "numbers": {"n": 1}}


def array_spec(kind: str) -> tuple[list[str], int | None]:
    """An array kind's dtypes and number of dimensions ("array uint8 3"; "arrays float32": None, any)."""
    words = kind.split()
    return words[1].split("|"), int(words[2]) if len(words) == 3 else None


def tiny_array(kind: str, length: int = 1) -> np.ndarray:
    """A valid array for an "array ..." field (or one map entry of an "arrays ..." field): `length`
    along every dimension, so per-transition lengths agree."""
    dtypes, ndim = array_spec(kind)
    return np.ones((length,) * (1 if ndim is None else ndim), dtypes[0])


def value_for(kind: str):
    if kind.startswith("record "):
        return RECORDS[kind.split()[1]]()
    if kind.startswith("arrays "):
        return {"a": tiny_array(kind, 2)}
    return tiny_array(kind, 2) if kind.startswith("array ") else BY_KIND[kind]


def fields_for(msg_type: str) -> dict:
    """The example message's fields, filled by kind for any field the example lacks; only schema fields."""
    example = EXAMPLES.get(msg_type, {})
    out = {}
    for key, kind in SCHEMAS[msg_type].items():
        name = key.rstrip("?")
        out[name] = example[name] if name in example else value_for(kind)
    return out


def body_for(msg_type: str) -> dict:
    """The raw msgpack map of a valid message, to corrupt one part of it."""
    return msgpack.unpackb(encode(msg_type, **fields_for(msg_type)), raw=False)


def pack(body) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def assert_same(decoded, sent):
    if isinstance(sent, np.ndarray):
        assert isinstance(decoded, np.ndarray)
        assert decoded.dtype == sent.dtype and decoded.shape == sent.shape
        np.testing.assert_array_equal(decoded, sent)
    elif isinstance(sent, dict):
        assert set(decoded) == set(sent)
        for k in sent:
            assert_same(decoded[k], sent[k])
    else:
        assert type(decoded) is type(sent) and decoded == sent


def small_messages() -> list[bytes]:
    """Valid messages with tiny arrays: structure bytes dominate, which is what fuzzing should hit."""
    out = []
    for msg_type, schema in SCHEMAS.items():
        f = fields_for(msg_type)
        for key, kind in schema.items():
            if kind.startswith("array "):
                f[key.rstrip("?")] = tiny_array(kind)
            elif kind.startswith("arrays "):
                f[key.rstrip("?")] = {"w": tiny_array(kind, 2)}
        out.append(encode(msg_type, **f))
    return out


@pytest.fixture
def probe(monkeypatch):
    """A test-only message type "probe" with one array field of the given kind; returns a function
    that round-trips an array through it."""

    def round_trip(array: np.ndarray, kind: str) -> np.ndarray:
        monkeypatch.setitem(SCHEMAS, "probe", {"a": kind})
        return decode(encode("probe", a=array), max_bytes=MAX)["a"]

    return round_trip


# --- round trips ------------------------------------------------------------------------------------


def test_every_schema_has_an_example():
    """The examples cover every message type in SCHEMAS (so a new type gets a realistic example)."""
    assert set(EXAMPLES) == set(SCHEMAS)


@pytest.mark.parametrize("msg_type", sorted(SCHEMAS))
def test_round_trip_every_message_type(msg_type):
    """decode(encode(...)) gives back the type and every field with the same values, dtypes and shapes."""
    sent = fields_for(msg_type)
    out = decode(encode(msg_type, **sent), max_bytes=MAX)
    assert out.pop("t") == msg_type
    assert set(out) == set(sent)
    for name, value in sent.items():
        assert_same(out[name], value)


def test_round_trip_zero_length_arrays():
    """An empty chunk (0 transitions, 0 frames) survives with its shapes, e.g. (0, 84, 84)."""
    out = decode(encode("transitions", **EMPTY_TRANSITIONS), max_bytes=MAX, expect=("transitions",))
    for name, value in EMPTY_TRANSITIONS.items():
        assert_same(out[name], value)


@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (2, 0, 3), (1, 2, 3, 4)])
def test_round_trip_every_allowed_dtype_and_shape(probe, dtype, shape):
    """Every allowed dtype travels in 0-d to 4-d arrays, empty ones included, bit for bit."""
    array = (np.arange(math.prod(shape)) % 3 - 1).astype(dtype).reshape(shape)
    assert_same(probe(array, f"array {dtype} {len(shape)}"), array)


def test_round_trip_non_contiguous_array(probe):
    """A transposed/strided view is sent as its values, not as its underlying buffer."""
    view = np.arange(24, dtype=np.float32).reshape(4, 6).T[::2]
    assert_same(probe(view, "array float32 2"), view)


@pytest.mark.parametrize("dtype", [">f4", ">i8", ">f8", "<f4"])
def test_round_trip_keeps_values_of_any_byte_order(probe, dtype):
    """A big-endian array is not silently reinterpreted: the receiver gets the same numbers."""
    array = np.array([1.5, -2.0, 3.0e4], dtype=dtype)
    np.testing.assert_array_equal(probe(array, "array float32|int64|float64 1"), array)


def test_optional_field_may_be_left_out():
    """report.text is optional: absent it is simply not in the result."""
    sent = {k: v for k, v in fields_for("report").items() if k != "text"}
    out = decode(encode("report", **sent), max_bytes=MAX)
    assert "text" not in out and out["role"] == "actor"


def test_float_field_accepts_an_integer_and_returns_a_float():
    """beta=1 (an int on the wire) is a valid float field and comes back as 1.0."""
    out = decode(encode("sample", batch_size=4, beta=1), max_bytes=MAX)
    assert out["beta"] == 1.0 and type(out["beta"]) is float


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_decode_accepts_bytes_like(wrap):
    """ZeroMQ frames may arrive as bytes, bytearray or memoryview."""
    raw = encode("sample", batch_size=8, beta=0.5)
    assert decode(wrap(raw), max_bytes=MAX) == {"t": "sample", "batch_size": 8, "beta": 0.5}


def test_expect_accepts_listed_type():
    """expect=(...) lets the listed types through."""
    raw = encode("sample", batch_size=8, beta=0.5)
    assert decode(raw, max_bytes=MAX, expect=("batch", "sample"))["t"] == "sample"


def test_encoded_message_is_a_versioned_map():
    """On the wire: a msgpack map with "v" = PROTOCOL_VERSION, "t" = the type, then the fields."""
    body = body_for("sample")
    body.pop("ids"), body.pop("priorities"), body.pop("mirror")
    assert body == {"v": PROTOCOL_VERSION, "t": "sample", "batch_size": 32, "beta": 0.4, "shared": True}


def test_encode_rejects_unknown_type():
    with pytest.raises(ProtocolError):
        encode("no-such-type", x=1)


# --- rejections --------------------------------------------------------------------------------------


def reject(raw, **kwargs) -> str:
    """decode must raise ProtocolError (and only that); returns the message."""
    with pytest.raises(ProtocolError) as info:
        decode(raw, max_bytes=kwargs.pop("max_bytes", MAX), **kwargs)
    return str(info.value)


@pytest.mark.parametrize("seed", range(300))
def test_random_garbage_is_rejected(seed):
    """Random bytes of random length (0..300) never decode into a message."""
    rng = random.Random(seed)
    reject(rng.randbytes(rng.randrange(301)))


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_every_truncation_of_a_small_message_is_rejected(index):
    """Each proper prefix (every length) of a valid message is refused."""
    raw = small_messages()[index]
    decode(raw, max_bytes=MAX)
    for n in range(len(raw)):
        reject(raw[:n])


@pytest.mark.parametrize("msg_type", ["batch", "weights", "transitions"])
def test_dense_truncations_of_a_large_message_are_rejected(msg_type):
    """Prefixes of a large message, every 97 bytes plus the last 64, are refused."""
    raw = encode(msg_type, **fields_for(msg_type))
    lengths = sorted(set(range(0, len(raw), 97)) | set(range(max(0, len(raw) - 64), len(raw))))
    for n in lengths:
        reject(raw[:n])


def test_message_over_max_bytes_is_rejected_and_exactly_max_is_fine():
    raw = encode("transitions", **EXAMPLES["transitions"])
    assert decode(raw, max_bytes=len(raw))["t"] == "transitions"
    assert "exceeds" in reject(raw, max_bytes=len(raw) - 1)


@pytest.mark.parametrize("value", ["text", None, 12, [b"x"]])
def test_non_bytes_input_is_rejected(value):
    reject(value)


@pytest.mark.parametrize("body", [[1, 2], 1, "transitions", None, b"bytes", 1.5, True, []])
def test_non_map_top_level_is_rejected(body):
    assert "not a map" in reject(pack(body))


@pytest.mark.parametrize("version", [0, 1, 2, 3, 5, -1, "4", None, 4.0, [4]])
def test_wrong_version_is_rejected(version):
    """Only the integer PROTOCOL_VERSION (4) is accepted: not version 3 (the weights' counters named version and
    updates), nor 4.0, which equals 4 in Python."""
    body = body_for("sample")
    body["v"] = version
    assert "version" in reject(pack(body))


def test_missing_version_is_rejected():
    body = body_for("sample")
    del body["v"]
    assert "version" in reject(pack(body))


@pytest.mark.parametrize("msg_type", ["nope", "", "Sample", 5, None, ["sample"], b"sample"])
def test_unknown_type_is_rejected(msg_type):
    body = body_for("sample")
    body["t"] = msg_type
    assert "unknown message type" in reject(pack(body))


def test_missing_type_is_rejected():
    body = body_for("sample")
    del body["t"]
    reject(pack(body))


@pytest.mark.parametrize("msg_type", sorted(SCHEMAS))
def test_unexpected_type_is_rejected(msg_type):
    """A valid message of a type the receiver did not ask for is refused."""
    raw = encode(msg_type, **fields_for(msg_type))
    others = tuple(t for t in SCHEMAS if t != msg_type)
    assert "unexpected message type" in reject(raw, expect=others)
    assert "unexpected message type" in reject(raw, expect=())


REQUIRED = [(t, k) for t, schema in SCHEMAS.items() for k in schema if not k.endswith("?")]


@pytest.mark.parametrize("msg_type,name", REQUIRED)
def test_missing_field_is_rejected(msg_type, name):
    body = body_for(msg_type)
    del body[name]
    assert f"missing field {name!r}" in reject(pack(body))


@pytest.mark.parametrize("msg_type", sorted(SCHEMAS))
@pytest.mark.parametrize("extra", ["bogus", "text?", "V"])
def test_extra_field_is_rejected(msg_type, extra):
    body = body_for(msg_type)
    body[extra] = 1
    assert "unexpected field" in reject(pack(body))


WRONG_BY_KIND = {
    "int": ["3", 3.0, 3.5, True, False, None, [1], {"a": 1}, b"\x03"],
    "count": ["3", 3.0, True, None, [1], -1, -(2**63), 2**63],
    "float": ["0.5", True, None, math.nan, math.inf, -math.inf, [0.5], {"x": 0.5}],
    "bool": [1, 0, "true", None, 1.0, [True]],
    "str": [1, b"bytes", None, ["a"], {"a": "b"}, True],
    "array": [
        5,
        "x",
        b"raw",
        [1, 2],
        None,
        {"dtype": "uint8", "shape": [1]},
        {"dtype": "uint8", "shape": [1], "data": b"\x00", "extra": 1},
    ],
    "arrays": [5, [], "x", {"a": 5}, {"a": None}, {b"a": {"dtype": "uint8", "shape": [1], "data": b"\x00"}}],
    "numbers": [
        5,
        [1],
        "x",
        {"a": "x"},
        {"a": None},
        {"a": [1]},
        {"a": {"b": 1}},
        {b"k": 1},
        {"a": math.nan},
        {"a": math.inf},
        {"a": -math.inf},
    ],
}


def raw_array(array: np.ndarray) -> dict:
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.tobytes()}


def wrong_arrays(kind: str) -> list[dict]:
    """Well-formed arrays that break an array field's type: another dtype, 0-d, one dimension more."""
    dtypes, ndim = array_spec(kind)
    other = sorted(ALLOWED_DTYPES - set(dtypes))[0]
    if ndim is None:
        return [raw_array(np.ones(1, other))]
    arrays = [np.ones((1,) * ndim, other), np.ones((), dtypes[0])]
    if ndim < MAX_ARRAY_DIMS:
        arrays.append(np.ones((1,) * (ndim + 1), dtypes[0]))
    return [raw_array(a) for a in arrays]


def wrong_records(name: str) -> list:
    """Maps that are not the record: a field missing, one too many, a field of the wrong kind."""
    kinds = field_kinds(RECORDS[name])
    whole = {k: (1.5 if kind == "float" else 1) for k, kind in kinds.items()}
    first = next(iter(kinds))
    wrong = [{**whole, first: v} for v in ("1", None, [1], math.nan, math.inf, True)]
    counts = [k for k, kind in kinds.items() if kind == "count"]
    return [5, [1], "x", {}, {k: v for k, v in whole.items() if k != first}, {**whole, "typo": 1}, *wrong] + [
        {**whole, counts[0]: -1},
        {**whole, counts[0]: 2.5},
    ]


def wrong_values(kind: str) -> list:
    base = kind.split()[0]
    if base == "record":
        return wrong_records(kind.split()[1])
    if base == "array":
        return WRONG_BY_KIND[base] + wrong_arrays(kind)
    if base == "arrays":
        return WRONG_BY_KIND[base] + [{"a": a} for a in wrong_arrays(kind)]
    return WRONG_BY_KIND[base]


WRONG_KIND_CASES = [
    (t, k.rstrip("?"), v) for t, schema in SCHEMAS.items() for k, kind in schema.items() for v in wrong_values(kind)
]


@pytest.mark.parametrize(
    "msg_type,name,value", WRONG_KIND_CASES, ids=[f"{t}.{n}={v!r}"[:60] for t, n, v in WRONG_KIND_CASES]
)
def test_field_of_the_wrong_kind_is_rejected(msg_type, name, value):
    """Every field of every message refuses values of the wrong kind, naming message and field."""
    body = body_for(msg_type)
    body[name] = value
    assert f"{msg_type}.{name}" in reject(pack(body))


def test_every_array_field_has_a_dtype_and_a_number_of_dimensions():
    """No array field takes any array: each names its dtype(s) and (single arrays) its dimensions."""
    for msg_type, schema in SCHEMAS.items():
        for key, kind in schema.items():
            words = kind.split()
            if words[0] == "array":
                assert len(words) == 3 and 0 <= int(words[2]) <= MAX_ARRAY_DIMS, (msg_type, key, kind)
            if words[0] in ("array", "arrays"):
                assert set(words[1].split("|")) <= ALLOWED_DTYPES, (msg_type, key, kind)


def test_zero_d_actions_are_rejected():
    """The message that stopped a run: a 0-d actions array with a (1, 8) stack."""
    fields = dict(
        EXAMPLES["transitions"],
        stack=np.zeros((1, 8), np.int32),
        actions=np.array(0, np.uint8),
        rewards=np.zeros(1, np.float32),
        bootstraps=np.ones(1, np.float32),
    )
    assert "transitions.actions must have 1 dimension" in reject(encode("transitions", **fields))


SAME_LENGTH_CASES = [
    (t, name) for group in (SAME_LENGTH, SAME_LENGTH_FRAMES) for t, names in group.items() for name in names
]


@pytest.mark.parametrize("msg_type,name", SAME_LENGTH_CASES)
def test_per_transition_arrays_must_agree_in_length(msg_type, name):
    """One entry too many in any per-transition array is refused."""
    fields = fields_for(msg_type)
    decode(encode(msg_type, **fields), max_bytes=MAX)
    fields[name] = np.concatenate([fields[name], fields[name][:1]])
    assert "differ in length" in reject(encode(msg_type, **fields))


def array_body(**changes) -> dict:
    """A 'priorities' message whose ids array has some parts replaced."""
    body = body_for("priorities")
    body["ids"] = {"dtype": "int64", "shape": [3], "data": np.arange(3, dtype=np.int64).tobytes()}
    decode(pack(body), max_bytes=MAX)  # valid before the change
    body["ids"].update(changes)
    return body


@pytest.mark.parametrize(
    "dtype",
    [
        "object",
        "float16",
        "<U4",
        "complex64",
        "S3",
        "V8",
        "uint64",
        "O",
        "int64 ",
        "INT64",
        "",
        5,
        None,
        b"int64",
        ["int64"],
        {"a": 1},
    ],
)
def test_disallowed_dtype_is_rejected(dtype):
    assert not (isinstance(dtype, str) and dtype in ALLOWED_DTYPES)
    reject(pack(array_body(dtype=dtype, data=b"\x00" * 24)))


@pytest.mark.parametrize("dtype", ["float16", "complex64", "uint64"])
def test_encoding_a_disallowed_dtype_gives_a_message_that_decode_refuses(dtype):
    raw = encode("priorities", ids=np.zeros(3, dtype), priorities=np.zeros(3))
    assert "disallowed dtype" in reject(raw)


@pytest.mark.parametrize(
    "shape", [[-1], [3, -1], [1] * (MAX_ARRAY_DIMS + 1), [3.0], ["3"], [True, 3], [None], [[3]], 3, "3", None, {"0": 3}]
)
def test_bad_shape_is_rejected(shape):
    assert "bad shape" in reject(pack(array_body(shape=shape)))


@pytest.mark.parametrize(
    "shape,data",
    [([4], 24), ([2], 24), ([3], 23), ([3], 25), ([0], 8), ([3, 0], 24), ([2, 2], 24), ([2**63, 2], 24), ([], 24)],
)
def test_shape_and_data_length_mismatch_is_rejected(shape, data):
    """shape x itemsize must equal the number of data bytes (int64: 3 items = 24 bytes)."""
    assert "does not match" in reject(pack(array_body(shape=shape, data=b"\x01" * data)))


@pytest.mark.parametrize("data", ["x" * 24, [0] * 24, None, 24, {"a": 1}])
def test_array_data_that_is_not_bytes_is_rejected(data):
    assert "bytes" in reject(pack(array_body(data=data)))


def test_ext_types_are_rejected():
    """msgpack extension types (e.g. timestamps) are never accepted."""
    body = body_for("sample")
    body["extra"] = msgpack.ExtType(5, b"1234")
    reject(pack(body))
    reject(pack(msgpack.ExtType(1, b"")))


def test_deeply_nested_input_is_rejected():
    """A pathologically nested value cannot crash the decoder."""
    reject(b"\x91" * 100_000 + b"\x00")
    reject(b"\x81\xa1a" * 50_000 + b"\x00")


# --- fuzzing ------------------------------------------------------------------------------------------


def mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and pos < len(data):
            data[pos] ^= 1 << rng.randrange(8)  # flip a bit
        elif op == 1 and pos < len(data):
            data[pos] = rng.randrange(256)  # replace a byte
        elif op == 2:
            data.insert(pos, rng.randrange(256))  # insert a byte
        elif pos < len(data):
            del data[pos]  # delete a byte
    return bytes(data)


def test_fuzzed_messages_raise_only_protocol_error():
    """6000 mutated valid messages (bit flips, replaced/inserted/deleted bytes) either decode to a
    well-formed message or raise ProtocolError, never any other exception."""
    rng = random.Random(20240601)
    seeds = small_messages()
    accepted = rejected = 0
    for i in range(6000):
        raw = mutate(seeds[i % len(seeds)], rng)
        try:
            out = decode(raw, max_bytes=MAX)
        except ProtocolError:
            rejected += 1
            continue
        accepted += 1
        assert out["t"] in SCHEMAS
        required = {k for k in SCHEMAS[out["t"]] if not k.endswith("?")}
        assert required <= set(out) - {"t"}
    # Both outcomes happen, so the loop really explores near-valid inputs.
    assert accepted > 100 and rejected > 1000, (accepted, rejected)


# --- out-of-band array parts (encode_parts / decode_parts) ---------------------------------------


def _batch_parts():
    fields = dict(EXAMPLES["batch"])
    frames = fields.pop("frames")
    return frames, encode_parts("batch", {"frames": frames}, **fields)


def test_parts_round_trip_without_packing_the_frames():
    frames, parts = _batch_parts()
    assert len(parts) == 2 and len(parts[0]) < 2000, "the header stays small: frames are a part of their own"
    out = decode_parts([bytes(parts[0]), bytes(parts[1])], max_bytes=MAX, expect=("batch",))
    assert np.array_equal(out["frames"], frames) and out["frames"].shape == frames.shape
    assert np.array_equal(out["ids"], EXAMPLES["batch"]["ids"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h, f: [h], "missing or already used message part"),  # part missing
        (lambda h, f: [h, f, f], "not used by any field"),  # extra part
        (lambda h, f: [h, f[:-1]], "does not match"),  # truncated part
        (lambda h, f: [h, f + b"x"], "does not match"),  # oversized part
        (lambda h, f: [h.replace(b"\xa4part\x01", b"\xa4part\x00"), f], "missing or already used"),  # part 0
        (lambda h, f: [h, "text"], "not bytes"),
    ],
)
def test_bad_parts_are_refused(mutate, message):
    _, parts = _batch_parts()
    with pytest.raises(ProtocolError, match=message):
        decode_parts(mutate(bytes(parts[0]), bytes(parts[1])), max_bytes=MAX)


def test_parts_count_towards_the_size_limit():
    _, parts = _batch_parts()
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_parts([bytes(p) for p in parts], max_bytes=len(bytes(parts[1])))


def test_a_record_field_decodes_into_its_record_and_a_misspelt_name_fails():
    """What the learner reads off a batch's stats is the record: an attribute, not .get(name, 0)."""
    fields = EXAMPLES["stats"]
    got = decode(encode("stats", **fields), MAX)["stats"]
    assert isinstance(got, ReplayStats) and got == fields["stats"] and got.env_steps == 300
    with pytest.raises(AttributeError):
        got.env_step  # noqa: B018 - the misspelling that used to read as 0
    for schema in SCHEMAS.values():
        for kind in schema.values():
            if kind.startswith("record "):
                assert kind.split()[1] in RECORDS, kind

"""PrioritizedReplay: chunk validation, stack reconstruction, IS weights, priorities, eviction."""
from dataclasses import dataclass

import numpy as np
import pytest

from actor.chunks import ChunkBuilder
from replay_server.buffer import ChunkError, PrioritizedReplay

S = 4              # frame stack
ACTIONS = 7


def make_buffer(capacity: int, alpha: float = 0.6, frame_size: int = 8) -> PrioritizedReplay:
    return PrioritizedReplay(capacity, frame_size=frame_size, frame_stack=S, alpha=alpha,
                             num_actions=ACTIONS)


def fresh_chunk(n: int, frame_size: int = 8) -> dict:
    """A valid chunk of n transitions that starts an episode: n + 1 frames, reset stack first."""
    idx = np.arange(n)[:, None] + np.arange(S + 1)[None, :] - (S - 1)
    return {"frames": np.zeros((n + 1, frame_size, frame_size), np.uint8),
            "stack": np.maximum(idx, 0).astype(np.int32),
            "actions": (np.arange(n) % ACTIONS).astype(np.uint8),
            "rewards": np.linspace(-1, 1, n).astype(np.float32),
            "dones": np.arange(n) == n - 1}


def add(buf: PrioritizedReplay, n: int) -> np.ndarray:
    """Add a fresh chunk of n transitions; returns their ids."""
    first = buf.inserted
    assert buf.add_chunk(**fresh_chunk(n, buf.frame_size)) == n
    return np.arange(first, first + n)


def assert_live_priorities(buf: PrioritizedReplay, priorities) -> None:
    """The buffer's non-zero P(i), as a multiset, are p^alpha / sum p^alpha of `priorities`."""
    probs = buf.probabilities()
    scaled = np.asarray(priorities, dtype=np.float64) ** buf.alpha
    np.testing.assert_allclose(np.sort(probs[probs > 0]), np.sort(scaled / scaled.sum()))


# --- chunk validation ----------------------------------------------------------------------------

def _set(key, value):
    return lambda c: {**c, key: value(c) if callable(value) else value}


def _stack_entry(value):
    def mutate(c):
        stack = c["stack"].copy()
        stack[2, 3] = value
        return {**c, "stack": stack}
    return mutate


MALFORMED = {
    "float frames": _set("frames", lambda c: c["frames"].astype(np.float32)),
    "frames wrong size": _set("frames", lambda c: c["frames"][:, :, :7]),
    "frames with channel axis": _set("frames", lambda c: c["frames"][..., None]),
    "stack index past last frame": _stack_entry(6),
    "negative stack index": _stack_entry(-1),
    "stack too narrow": _set("stack", lambda c: c["stack"][:, :S]),
    "float stack": _set("stack", lambda c: c["stack"].astype(np.float32)),
    "action == num_actions": _set("actions", np.array([0, 1, ACTIONS, 2, 3], np.uint8)),
    "negative action": _set("actions", np.array([0, 1, -1, 2, 3], np.int64)),
    "float actions": _set("actions", lambda c: c["actions"].astype(np.float32)),
    "nan reward": _set("rewards", np.array([0, 0, np.nan, 0, 0], np.float32)),
    "inf reward": _set("rewards", np.array([0, np.inf, 0, 0, 0], np.float32)),
    "integer rewards": _set("rewards", np.zeros(5, np.int64)),
    "non-bool dones": _set("dones", np.zeros(5, np.uint8)),
    "short rewards": _set("rewards", lambda c: c["rewards"][:4]),
    "long dones": _set("dones", np.zeros(6, bool)),
    "stack rows != transitions": _set("stack", lambda c: c["stack"][:4]),
    "no transitions": lambda c: {"frames": c["frames"][:1], "stack": np.zeros((0, S + 1), np.int32),
                                 "actions": np.zeros(0, np.uint8), "rewards": np.zeros(0, np.float32),
                                 "dones": np.zeros(0, bool)},
    "no frames": _set("frames", lambda c: c["frames"][:0]),
    "more than n + S frames": _set("frames", np.zeros((5 + S + 1, 8, 8), np.uint8)),
}


def test_valid_chunk_is_accepted():
    buf = make_buffer(16)
    assert buf.add_chunk(**fresh_chunk(5)) == 5
    assert len(buf) == 5 and buf.inserted == 5


@pytest.mark.parametrize("mutate", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_chunk_raises_chunk_error_and_stores_nothing(mutate):
    buf = make_buffer(16)
    with pytest.raises(ChunkError):
        buf.add_chunk(**mutate(fresh_chunk(5)))
    assert len(buf) == 0 and buf.inserted == 0
    with pytest.raises(ValueError):
        buf.sample(4, 0.4, np.random.default_rng(0))


def test_chunk_larger_than_capacity_is_rejected():
    buf = make_buffer(8)
    with pytest.raises(ChunkError):
        buf.add_chunk(**fresh_chunk(9))


def test_memory_per_transition_at_most_8kb():
    """The project's budget: at most 8 KB per stored transition with 84x84 frames, stack 4."""
    buf = PrioritizedReplay(100_000, frame_size=84, frame_stack=4, alpha=0.6, num_actions=ACTIONS)
    assert buf.nbytes() / buf.capacity <= 8192


# --- stack reconstruction ------------------------------------------------------------------------

@dataclass
class Transition:
    obs: list          # frame numbers the env stacks as the observation
    next: list         # ... and as the next observation
    action: int
    reward: np.float32
    done: bool


# (steps, terminated): one-step episodes, truncated ones (done stays False), chunk cuts mid-episode
EPISODES = [(7, True), (1, True), (12, False), (3, True), (1, False), (9, True), (5, True), (2, True)]
CHUNK_SIZE = 5


def play_episodes(seed: int = 0) -> tuple[list[dict], list[Transition]]:
    """Run the actor's loop over EPISODES with 84x84 frames whose pixels hold their frame number.
    Returns the chunks sent and, independently of ChunkBuilder, what each transition should be
    (reset stacks the first frame S times; stacks never cross episodes). Ids are list positions."""
    rng = np.random.default_rng(seed)
    builder, chunks, expected, k = ChunkBuilder(S), [], [], 0
    for steps, terminated in EPISODES:
        builder.start_episode(np.full((84, 84), k, np.uint8))
        obs = [k] * S
        for t in range(steps):
            k += 1
            action, reward = int(rng.integers(ACTIONS)), np.float32(rng.normal())
            done = terminated and t == steps - 1
            builder.add(np.full((84, 84), k, np.uint8), action, float(reward), done)
            expected.append(Transition(obs, obs[1:] + [k], action, reward, done))
            obs = obs[1:] + [k]
            if t == steps - 1 or len(builder) >= CHUNK_SIZE:
                chunks.append(builder.take())
        k += 1
    assert k < 256
    return chunks, expected


def uniform_frames(numbers: list) -> np.ndarray:
    """The 84x84 frames whose pixels all hold the given frame numbers."""
    return np.broadcast_to(np.array(numbers, np.uint8)[:, None, None], (len(numbers), 84, 84))


def assert_batch_matches(batch, expected: list[Transition]) -> None:
    assert batch.frames.shape == (len(batch.ids), S + 1, 84, 84) and batch.frames.dtype == np.uint8
    for b, i in enumerate(batch.ids):
        want = expected[i]
        obs, nxt = batch.frames[b, :S], batch.frames[b, 1:]
        assert np.array_equal(obs, uniform_frames(want.obs)), (i, obs[:, 0, 0], want.obs)
        assert np.array_equal(nxt, uniform_frames(want.next)), (i, nxt[:, 0, 0], want.next)
        assert (batch.actions[b], batch.rewards[b], batch.dones[b]) == (want.action, want.reward, want.done)


def test_sampled_stacks_match_the_environment():
    """With room for everything, every transition comes back with the env's stacks and values."""
    chunks, expected = play_episodes()
    buf = make_buffer(1000, frame_size=84)
    for chunk in chunks:
        buf.add_chunk(**chunk)
    assert len(buf) == len(expected)
    rng = np.random.default_rng(1)
    buf.update_priorities(np.arange(len(expected)), rng.uniform(0.1, 3.0, len(expected)))
    seen = set()
    for _ in range(10):
        batch = buf.sample(32, 0.4, rng)
        assert_batch_matches(batch, expected)
        seen.update(batch.ids.tolist())
    assert seen == set(range(len(expected)))


def test_sampled_stacks_survive_eviction_and_ring_wraparound():
    """With a capacity of 12 the frame ring wraps many times; every live sample stays correct."""
    chunks, expected = play_episodes(seed=3)
    buf = make_buffer(12, frame_size=84)
    rng = np.random.default_rng(4)
    for chunk in chunks:
        buf.add_chunk(**chunk)
        batch = buf.sample(16, 0.4, rng)
        assert np.all(batch.ids >= buf.inserted - len(buf))
        assert_batch_matches(batch, expected)


# --- importance-sampling weights -----------------------------------------------------------------

def expected_weights(priorities: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """w_i = (N P(i))^-beta / max_j (N P(j))^-beta with P(i) = p_i^alpha / sum p^alpha."""
    probs = priorities ** alpha / np.sum(priorities ** alpha)
    raw = (len(priorities) * probs) ** -beta
    return raw / raw.max()


@pytest.mark.parametrize("alpha, beta", [(0.6, 0.4), (1.0, 1.0), (0.5, 0.0), (0.0, 0.7), (0.7, 0.0)])
def test_importance_weights_are_exact(alpha, beta):
    buf = make_buffer(16, alpha)
    ids = add(buf, 10)
    priorities = np.array([0.5, 1.0, 2.0, 3.0, 0.1, 4.0, 1.5, 2.5, 0.7, 5.0])
    assert buf.update_priorities(ids, priorities) == 10
    assert_live_priorities(buf, priorities)
    batch = buf.sample(256, beta, np.random.default_rng(5))
    assert batch.weights.dtype == np.float32
    np.testing.assert_allclose(batch.weights, expected_weights(priorities, alpha, beta)[batch.ids],
                               rtol=1e-6)
    if beta == 0 or alpha == 0:
        assert np.all(batch.weights == 1.0)
    else:
        assert 4 in batch.ids and batch.weights[batch.ids == 4][0] == pytest.approx(1.0)


def test_importance_weights_normalise_by_buffer_not_batch():
    """The largest weight is that of the buffer's smallest priority even when the batch misses it,
    so a batch without it has all weights below 1."""
    buf = make_buffer(16, alpha=1.0)
    ids = add(buf, 6)
    priorities = np.array([1e-4, 1.0, 2.0, 3.0, 4.0, 5.0])
    buf.update_priorities(ids, priorities)
    batch = buf.sample(8, 1.0, np.random.default_rng(7))
    assert 0 not in batch.ids
    np.testing.assert_allclose(batch.weights, expected_weights(priorities, 1.0, 1.0)[batch.ids],
                               rtol=1e-6)
    assert batch.weights.max() < 1e-3


def test_importance_weights_normalise_by_smallest_live_priority():
    """An evicted chunk's tiny priorities no longer set the largest weight."""
    buf = make_buffer(10, alpha=0.6)
    old, ids = add(buf, 5), add(buf, 5)
    buf.update_priorities(old, np.full(5, 1e-3))
    buf.update_priorities(ids, [1.0, 2.0, 3.0, 4.0, 5.0])
    new = add(buf, 5)                              # evicts `old`; new ones get max priority 5
    live = np.concatenate([ids, new])
    priorities = np.array([1.0, 2.0, 3.0, 4.0, 5.0] + [5.0] * 5)
    batch = buf.sample(200, 0.5, np.random.default_rng(6))
    assert set(batch.ids) <= set(live)
    want = dict(zip(live, expected_weights(priorities, 0.6, 0.5)))
    np.testing.assert_allclose(batch.weights, [want[i] for i in batch.ids], rtol=1e-6)


# --- priorities and eviction ---------------------------------------------------------------------

def test_new_transitions_get_the_largest_priority_seen():
    buf = make_buffer(32, alpha=0.5)
    assert buf.max_priority == 1.0
    first = add(buf, 4)
    assert_live_priorities(buf, [1.0] * 4)
    assert buf.update_priorities(first, [1.0, 2.0, 6.0, 0.5]) == 4
    assert buf.max_priority == 6.0
    assert buf.update_priorities(first[2:3], [3.0]) == 1
    assert buf.max_priority == 6.0, "max_priority never goes down"
    add(buf, 3)
    assert_live_priorities(buf, [1.0, 2.0, 3.0, 0.5, 6.0, 6.0, 6.0])


def test_stale_and_unknown_ids_are_ignored():
    """An id whose slot now holds a newer transition, a future id or a negative id changes
    nothing: not the priorities and not max_priority."""
    buf = make_buffer(8, alpha=0.6)
    old = add(buf, 5)                    # ids 0..4
    new = add(buf, 5)                    # ids 5..9: evicts 0..4, ids 8 and 9 reuse slots of 0 and 1
    assert buf.update_priorities(old, np.full(5, 50.0)) == 0
    assert buf.update_priorities([0, 1, 9, 100, -3], [50.0, 50.0, 2.0, 50.0, 50.0]) == 1
    assert buf.max_priority == 2.0
    assert_live_priorities(buf, [1.0, 1.0, 1.0, 1.0, 2.0])
    assert buf.update_priorities(new, np.full(5, 0.5)) == 5


@pytest.mark.parametrize("ids, priorities", [
    ([0, 1], [1.0]), ([0], [0.0]), ([0], [-1.0]), ([0], [np.nan]), ([0], [np.inf])])
def test_invalid_priority_updates_raise(ids, priorities):
    buf = make_buffer(8)
    add(buf, 3)
    with pytest.raises(ChunkError):
        buf.update_priorities(ids, priorities)
    assert_live_priorities(buf, [1.0] * 3)


def test_eviction_removes_whole_oldest_chunks_only_as_needed():
    """Inserting chunks of mixed sizes (one-step episodes use 2 frames per transition, so the
    frame ring fills first): len() never exceeds capacity, live chunks are always the newest ones,
    a chunk is live entirely or not at all, and a chunk is only evicted when the next older one
    would not fit beside the live ones."""
    buf = make_buffer(10)
    sizes = [3, 4, 1, 5, 2, 1, 1, 1, 1, 1, 6, 3, 10, 2, 1, 4]
    chunks = []                                  # ids per chunk, oldest first
    for n in sizes:
        chunks.append(add(buf, n))
        assert len(buf) <= buf.capacity
        applied = [buf.update_priorities(ids, np.ones(len(ids))) for ids in chunks]
        assert all(a in (0, len(ids)) for a, ids in zip(applied, chunks)), "chunk partially evicted"
        live = [a > 0 for a in applied]
        first_live = live.index(True)
        assert all(live[first_live:]) and not any(live[:first_live])
        assert len(buf) == sum(applied)
        if first_live > 0:                       # the youngest evicted chunk had to go
            n_back = len(chunks[first_live - 1])
            transitions = len(buf) + n_back
            frames = sum(len(ids) + 1 for ids in chunks[first_live - 1:])
            assert transitions > buf.capacity or frames > buf.frame_capacity
    assert buf.inserted == sum(sizes)

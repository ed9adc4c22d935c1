"""PrioritizedReplay: chunk validation, stack reconstruction, IS weights, priorities, eviction."""

from dataclasses import dataclass

import numpy as np
import pytest

from actor.chunks import ChunkBuilder
from common.config import MAX_N_STEP
from replay_server.buffer import ChunkError, PrioritizedReplay

S = 4  # frame stack
ACTIONS = 7
GAMMA = 0.9


def make_buffer(capacity: int, alpha: float = 0.6, frame_size: int = 8) -> PrioritizedReplay:
    return PrioritizedReplay(capacity, frame_size=frame_size, frame_stack=S, alpha=alpha, num_actions=ACTIONS)


def fresh_chunk(n: int, frame_size: int = 8) -> dict:
    """A valid one-step chunk of n transitions that starts an episode and ends it with a terminal
    step: n + 1 frames, reset stack first, next obs one frame on, bootstrap gamma (0 at the end)."""
    obs = np.arange(n)[:, None] + np.arange(S)[None, :] - (S - 1)
    return {
        "frames": np.zeros((n + 1, frame_size, frame_size), np.uint8),
        "stack": np.maximum(np.concatenate([obs, obs + 1], axis=1), 0).astype(np.int32),
        "actions": (np.arange(n) % ACTIONS).astype(np.uint8),
        "rewards": np.linspace(-1, 1, n).astype(np.float32),
        "bootstraps": np.where(np.arange(n) == n - 1, 0.0, GAMMA).astype(np.float32),
    }


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


def _stack_entry(value, column=3):
    def mutate(c):
        stack = c["stack"].copy()
        stack[2, column] = value
        return {**c, "stack": stack}

    return mutate


def _bootstrap(value, dtype=np.float32):
    return _set("bootstraps", np.array([GAMMA, GAMMA, value, GAMMA, 0.0], dtype))


MALFORMED = {
    "float frames": _set("frames", lambda c: c["frames"].astype(np.float32)),
    "frames wrong size": _set("frames", lambda c: c["frames"][:, :, :7]),
    "frames with channel axis": _set("frames", lambda c: c["frames"][..., None]),
    "stack index past last frame": _stack_entry(6),
    "negative stack index": _stack_entry(-1),
    "next-obs index past last frame": _stack_entry(6, column=2 * S - 1),
    "negative next-obs index": _stack_entry(-1, column=S),
    "stack of S columns": _set("stack", lambda c: c["stack"][:, :S]),
    "stack of S + 1 columns (one-step format)": _set("stack", lambda c: c["stack"][:, : S + 1]),
    "stack of 2S - 1 columns": _set("stack", lambda c: c["stack"][:, : 2 * S - 1]),
    "stack of 2S + 1 columns": _set("stack", lambda c: np.concatenate([c["stack"], c["stack"][:, :1]], axis=1)),
    "flat stack": _set("stack", lambda c: c["stack"].ravel()),
    "float stack": _set("stack", lambda c: c["stack"].astype(np.float32)),
    "action == num_actions": _set("actions", np.array([0, 1, ACTIONS, 2, 3], np.uint8)),
    "negative action": _set("actions", np.array([0, 1, -1, 2, 3], np.int64)),
    "float actions": _set("actions", lambda c: c["actions"].astype(np.float32)),
    "nan reward": _set("rewards", np.array([0, 0, np.nan, 0, 0], np.float32)),
    "inf reward": _set("rewards", np.array([0, np.inf, 0, 0, 0], np.float32)),
    "integer rewards": _set("rewards", np.zeros(5, np.int64)),
    "bootstrap above 1": _bootstrap(1.0001),
    "bootstrap 2": _bootstrap(2.0),
    "negative bootstrap": _bootstrap(-0.01),
    "nan bootstrap": _bootstrap(np.nan),
    "inf bootstrap": _bootstrap(np.inf),
    "-inf bootstrap": _bootstrap(-np.inf),
    "integer bootstraps": _set("bootstraps", np.zeros(5, np.int64)),
    "bool bootstraps (old dones)": _set("bootstraps", np.array([False, False, False, False, True])),
    "2-D bootstraps": _set("bootstraps", lambda c: c["bootstraps"][:, None]),
    "short rewards": _set("rewards", lambda c: c["rewards"][:4]),
    "long bootstraps": _set("bootstraps", np.full(6, GAMMA, np.float32)),
    "short bootstraps": _set("bootstraps", np.full(4, GAMMA, np.float32)),
    "stack rows != transitions": _set("stack", lambda c: c["stack"][:4]),
    "0-d actions": _set("actions", np.array(0, np.uint8)),
    "0-d rewards": _set("rewards", np.array(0, np.float32)),
    "0-d frames": _set("frames", np.array(0, np.uint8)),
    "2-D actions": _set("actions", lambda c: c["actions"][:, None]),
    "no transitions": lambda c: {
        "frames": c["frames"][:1],
        "stack": np.zeros((0, 2 * S), np.int32),
        "actions": np.zeros(0, np.uint8),
        "rewards": np.zeros(0, np.float32),
        "bootstraps": np.zeros(0, np.float32),
    },
    "no frames": _set("frames", lambda c: c["frames"][:0]),
    "more than n + S + MAX_N_STEP frames": _set("frames", np.zeros((5 + S + MAX_N_STEP + 1, 8, 8), np.uint8)),
}


def test_valid_chunk_is_accepted():
    buf = make_buffer(16)
    assert buf.add_chunk(**fresh_chunk(5)) == 5
    assert len(buf) == 5 and buf.inserted == 5


@pytest.mark.parametrize(
    "bootstraps",
    [
        np.zeros(5, np.float32),
        np.ones(5, np.float32),
        np.array([1.0, 0.0, GAMMA**3, 1e-30, GAMMA], np.float64),
        np.array([GAMMA] * 4 + [GAMMA**2], np.float16),
    ],
    ids=["all 0", "all 1", "float64 mix", "float16"],
)
def test_bootstraps_anywhere_in_0_1_are_accepted_and_stored(bootstraps):
    """Both ends of [0, 1] are valid (gamma = 1 gives bootstrap 1), whatever the float width."""
    buf = make_buffer(16)
    assert buf.add_chunk(**{**fresh_chunk(5), "bootstraps": bootstraps}) == 5
    batch = buf.sample(64, 0.4, np.random.default_rng(0))
    assert batch.bootstraps.dtype == np.float32
    np.testing.assert_array_equal(batch.bootstraps, bootstraps.astype(np.float32)[batch.ids])


def test_frame_bound_is_n_plus_s_plus_max_n_step():
    """A chunk may carry up to n + S + MAX_N_STEP frames (context for pending n-step transitions),
    not one more."""
    buf = make_buffer(64)
    assert buf.frame_capacity >= 5 + S + MAX_N_STEP + 1
    most = {**fresh_chunk(5), "frames": np.zeros((5 + S + MAX_N_STEP, 8, 8), np.uint8)}
    assert buf.add_chunk(**most) == 5
    with pytest.raises(ChunkError):
        buf.add_chunk(**{**most, "frames": np.zeros((5 + S + MAX_N_STEP + 1, 8, 8), np.uint8)})
    assert len(buf) == 5 and buf.inserted == 5


@pytest.mark.parametrize("mutate", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_chunk_raises_chunk_error_and_stores_nothing(mutate):
    buf = make_buffer(16)
    with pytest.raises(ChunkError):
        buf.add_chunk(**mutate(fresh_chunk(5)))
    assert len(buf) == 0 and buf.inserted == 0
    with pytest.raises(ValueError):
        buf.sample(4, 0.4, np.random.default_rng(0))


def test_malformed_chunk_leaves_earlier_contents_untouched():
    """A rejected chunk after a good one neither evicts nor changes what is stored."""
    buf = make_buffer(8)
    add(buf, 5)
    before = buf.content_hash()
    with pytest.raises(ChunkError):
        buf.add_chunk(**_bootstrap(np.nan)(fresh_chunk(5)))
    assert buf.content_hash() == before and len(buf) == 5 and buf.inserted == 5


def test_chunk_larger_than_capacity_is_rejected():
    buf = make_buffer(8)
    with pytest.raises(ChunkError):
        buf.add_chunk(**fresh_chunk(9))


def test_memory_per_transition_at_most_8kb():
    """The project's budget: at most 8 KB per stored transition with 84x84 frames, stack 4."""
    buf = PrioritizedReplay(100_000, frame_size=84, frame_stack=4, alpha=0.6, num_actions=ACTIONS)
    assert buf.nbytes() / buf.capacity <= 8192


def test_state_arrays_carry_bootstraps_and_round_trip():
    buf = make_buffer(16)
    chunks = [fresh_chunk(5), fresh_chunk(3)]
    for chunk in chunks:
        buf.add_chunk(**chunk)
    state = buf.state_arrays()
    assert "dones" not in state and state["bootstraps"].dtype == np.float32
    np.testing.assert_array_equal(state["bootstraps"], np.concatenate([c["bootstraps"] for c in chunks]))
    assert state["stack"].shape == (8, 2 * S)
    restored = make_buffer(16)
    restored.load_state_arrays(state)
    assert restored.content_hash() == buf.content_hash()
    a, b = (x.sample(32, 0.4, np.random.default_rng(2)) for x in (buf, restored))
    for name in ("ids", "frames", "actions", "rewards", "bootstraps", "weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


# --- stack reconstruction ------------------------------------------------------------------------


@dataclass
class Transition:
    obs: list  # frame numbers the env stacks as the observation
    next: list  # ... and as the observation min(n, steps left) steps later
    action: int
    reward: float  # discounted return over those steps
    bootstrap: float  # gamma^k, 0 when the episode terminated within those k steps


# (steps, how the episode ends): one-step episodes, truncated ones (they still bootstrap), episodes
# shorter and longer than n, chunk cuts mid-episode (the 23-step one has chunks with transitions
# pending at both ends: the most frames a chunk carries); the last one is cut by the actor stopping
# (flush_pending), which counts as a truncation.
EPISODES = [
    (7, "terminated"),
    (1, "terminated"),
    (12, "truncated"),
    (3, "terminated"),
    (1, "truncated"),
    (23, "terminated"),
    (9, "terminated"),
    (5, "terminated"),
    (2, "truncated"),
    (2, "terminated"),
    (8, "stopped"),
]
CHUNK_SIZE = 5


def env_obs(frames: list, t: int) -> list:
    """The env's observation after t steps of an episode whose frames (reset frame first) are `frames`."""
    return [frames[max(0, t - S + 1 + i)] for i in range(S)]


def expected_transitions(frames: list, actions: list, rewards: list, end: str, n_step: int) -> list[Transition]:
    """What each step of one episode should give, worked out from the env's trajectory alone."""
    steps, out = len(actions), []
    for t in range(steps):
        k = min(n_step, steps - t)
        ret = 0.0
        for i in range(k):
            ret += GAMMA**i * float(rewards[t + i])
        ends_inside = end == "terminated" and t + k == steps
        out.append(
            Transition(env_obs(frames, t), env_obs(frames, t + k), actions[t], ret, 0.0 if ends_inside else GAMMA**k)
        )
    return out


def play_episodes(seed: int = 0, n_step: int = 1) -> tuple[list[dict], list[Transition]]:
    """Run the actor's loop over EPISODES with 84x84 frames whose pixels hold their frame number.
    Returns the chunks sent and, independently of ChunkBuilder, what each transition should be
    (reset stacks the first frame S times; stacks never cross episodes). Ids are list positions."""
    rng = np.random.default_rng(seed)
    builder, chunks, expected, k = ChunkBuilder(S, n_step=n_step, gamma=GAMMA), [], [], 0

    def take():
        chunk = builder.take()
        assert len(chunk["frames"]) <= len(chunk["actions"]) + S + n_step - 1
        chunks.append(chunk)

    for steps, end in EPISODES:
        builder.start_episode(np.full((84, 84), k, np.uint8))
        frames, actions, rewards = [k], [], []
        for t in range(steps):
            k += 1
            action, reward = int(rng.integers(ACTIONS)), np.float32(rng.normal())
            last = t == steps - 1
            builder.add(
                np.full((84, 84), k, np.uint8),
                action,
                float(reward),
                terminated=last and end == "terminated",
                truncated=last and end == "truncated",
            )
            frames.append(k)
            actions.append(action)
            rewards.append(reward)
            if last and end == "stopped":
                builder.flush_pending()
            if last or len(builder) >= CHUNK_SIZE:
                take()
        expected += expected_transitions(frames, actions, rewards, end, n_step)
        k += 1
    assert k < 256
    assert max(len(c["frames"]) - len(c["actions"]) for c in chunks) == S + n_step - 1, "the fullest chunk"
    return chunks, expected


def uniform_frames(numbers: list) -> np.ndarray:
    """The 84x84 frames whose pixels all hold the given frame numbers."""
    return np.broadcast_to(np.array(numbers, np.uint8)[:, None, None], (len(numbers), 84, 84))


def assert_batch_matches(batch, expected: list[Transition], exact_rewards: bool = False) -> None:
    """Every sampled transition is the expected one; one-step rewards come back bit for bit."""
    assert batch.frames.shape == (len(batch.ids), 2 * S, 84, 84) and batch.frames.dtype == np.uint8
    assert batch.rewards.dtype == np.float32 and batch.bootstraps.dtype == np.float32
    for b, i in enumerate(batch.ids):
        want = expected[i]
        obs, nxt = batch.frames[b, :S], batch.frames[b, S:]
        assert np.array_equal(obs, uniform_frames(want.obs)), (i, obs[:, 0, 0], want.obs)
        assert np.array_equal(nxt, uniform_frames(want.next)), (i, nxt[:, 0, 0], want.next)
        assert batch.actions[b] == want.action, i
        if exact_rewards:
            assert batch.rewards[b] == np.float32(want.reward), i
        else:
            assert batch.rewards[b] == pytest.approx(want.reward, rel=1e-6, abs=1e-7), i
        assert batch.bootstraps[b] == pytest.approx(want.bootstrap, rel=1e-6, abs=0), i


def test_reference_model_on_a_tiny_episode():
    """Sanity of the independent model itself on a tiny case (n=3, 4 steps, terminated)."""
    got = expected_transitions([10, 11, 12, 13, 14], [0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0], "terminated", 3)
    assert [(t.obs, t.next) for t in got] == [
        ([10, 10, 10, 10], [10, 11, 12, 13]),
        ([10, 10, 10, 11], [11, 12, 13, 14]),
        ([10, 10, 11, 12], [11, 12, 13, 14]),
        ([10, 11, 12, 13], [11, 12, 13, 14]),
    ]
    assert [t.reward for t in got] == pytest.approx(
        [1 + 2 * GAMMA + 3 * GAMMA**2, 2 + 3 * GAMMA + 4 * GAMMA**2, 3 + 4 * GAMMA, 4.0]
    )
    assert [t.bootstrap for t in got] == pytest.approx([GAMMA**3, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("n_step", [1, 3])
def test_sampled_stacks_match_the_environment(n_step):
    """With room for everything, every transition comes back with the env's stacks and values."""
    chunks, expected = play_episodes(n_step=n_step)
    assert len(expected) == sum(steps for steps, _ in EPISODES)
    buf = make_buffer(1000, frame_size=84)
    for chunk in chunks:
        buf.add_chunk(**chunk)
    assert len(buf) == len(expected)
    rng = np.random.default_rng(1)
    buf.update_priorities(np.arange(len(expected)), rng.uniform(0.1, 3.0, len(expected)))
    seen = set()
    for _ in range(20):
        batch = buf.sample(32, 0.4, rng)
        assert_batch_matches(batch, expected, exact_rewards=n_step == 1)
        seen.update(batch.ids.tolist())
    assert seen == set(range(len(expected)))


@pytest.mark.parametrize("n_step", [1, 3])
def test_sampled_stacks_survive_eviction_and_ring_wraparound(n_step):
    """With a capacity of 12 the frame ring wraps many times; every live sample stays correct."""
    chunks, expected = play_episodes(seed=3, n_step=n_step)
    buf = make_buffer(12, frame_size=84)
    rng = np.random.default_rng(4)
    for chunk in chunks:
        buf.add_chunk(**chunk)
        batch = buf.sample(16, 0.4, rng)
        assert np.all(batch.ids >= buf.inserted - len(buf))
        assert_batch_matches(batch, expected, exact_rewards=n_step == 1)
    assert buf.inserted == len(expected)


# --- importance-sampling weights -----------------------------------------------------------------


def expected_weights(priorities: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """w_i = (N P(i))^-beta / max_j (N P(j))^-beta with P(i) = p_i^alpha / sum p^alpha."""
    probs = priorities**alpha / np.sum(priorities**alpha)
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
    np.testing.assert_allclose(batch.weights, expected_weights(priorities, alpha, beta)[batch.ids], rtol=1e-6)
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
    np.testing.assert_allclose(batch.weights, expected_weights(priorities, 1.0, 1.0)[batch.ids], rtol=1e-6)
    assert batch.weights.max() < 1e-3


def test_importance_weights_normalise_by_smallest_live_priority():
    """An evicted chunk's tiny priorities no longer set the largest weight."""
    buf = make_buffer(10, alpha=0.6)
    old, ids = add(buf, 5), add(buf, 5)
    buf.update_priorities(old, np.full(5, 1e-3))
    buf.update_priorities(ids, [1.0, 2.0, 3.0, 4.0, 5.0])
    new = add(buf, 5)  # evicts `old`; new ones get max priority 5
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
    """An id whose slot now holds a newer transition or a future id (from a replay server before its
    restart) changes nothing: not the priorities and not max_priority."""
    buf = make_buffer(8, alpha=0.6)
    old = add(buf, 5)  # ids 0..4
    new = add(buf, 5)  # ids 5..9: evicts 0..4, ids 8 and 9 reuse slots of 0 and 1
    assert buf.update_priorities(old, np.full(5, 50.0)) == 0
    assert buf.update_priorities([0, 1, 9, 100, 2**62], [50.0, 50.0, 2.0, 50.0, 50.0]) == 1
    assert buf.max_priority == 2.0
    assert_live_priorities(buf, [1.0, 1.0, 1.0, 1.0, 2.0])
    assert buf.update_priorities(new, np.full(5, 0.5)) == 5


@pytest.mark.parametrize(
    "ids, priorities",
    [
        ([0, 1], [1.0]),
        ([0], [0.0]),
        ([0], [-1.0]),
        ([0], [np.nan]),
        ([0], [np.inf]),
        ([0, -3], [1.0, 1.0]),
        ([-(2**63)], [1.0]),
    ],
)
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
    chunks = []  # ids per chunk, oldest first
    for n in sizes:
        chunks.append(add(buf, n))
        assert len(buf) <= buf.capacity
        applied = [buf.update_priorities(ids, np.ones(len(ids))) for ids in chunks]
        assert all(a in (0, len(ids)) for a, ids in zip(applied, chunks)), "chunk partially evicted"
        live = [a > 0 for a in applied]
        first_live = live.index(True)
        assert all(live[first_live:]) and not any(live[:first_live])
        assert len(buf) == sum(applied)
        if first_live > 0:  # the youngest evicted chunk had to go
            n_back = len(chunks[first_live - 1])
            transitions = len(buf) + n_back
            frames = sum(len(ids) + 1 for ids in chunks[first_live - 1 :])
            assert transitions > buf.capacity or frames > buf.frame_capacity
    assert buf.inserted == sum(sizes)

"""ChunkBuilder: each frame once per chunk, per-transition stack indices (obs, then next obs),
context across take(), bootstraps at episode ends. The n-step returns themselves are checked
against a brute-force reference in test_nstep.py."""

import numpy as np
import pytest

from actor.chunks import ChunkBuilder

S = 4
GAMMA = 0.9


def frame(k: int) -> np.ndarray:
    """A small frame whose pixels all hold its number k."""
    return np.full((6, 6), k, dtype=np.uint8)


def numbers(frames: np.ndarray) -> list[int]:
    return [int(f[0, 0]) for f in frames]


def env_obs(first: int, t: int) -> list[int]:
    """The frame numbers the environment stacks after t steps of an episode whose reset frame is
    `first` and whose later frames are first+1, first+2, ... (the reset frame repeated S times)."""
    return [first + max(0, t - S + 1 + i) for i in range(S)]


def env_stacks(first: int, count: int, n_step: int = 1, total: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(obs, next obs) frame numbers of the first `count` transitions of an episode of `total` steps
    (default `count`): the next obs is min(n_step, steps left) steps later."""
    total = count if total is None else total
    return [(env_obs(first, t), env_obs(first, t + min(n_step, total - t))) for t in range(count)]


def chunk_stacks(chunk: dict) -> list[tuple[list[int], list[int]]]:
    """(obs, next obs) frame numbers that a chunk's stack indices select."""
    nums = numbers(chunk["frames"])
    rows = [[nums[i] for i in row] for row in chunk["stack"]]
    return [(row[:S], row[S:]) for row in rows]


def play(builder: ChunkBuilder, first: int, steps: int) -> None:
    for k in range(first + 1, first + 1 + steps):
        builder.add(frame(k), action=k % 7, reward=float(k) / 2, terminated=False, truncated=False)


def test_chunk_arrays_and_dtypes():
    builder = ChunkBuilder(S)
    builder.start_episode(frame(0))
    play(builder, 0, 3)
    builder.add(frame(4), action=2, reward=-1.5, terminated=True, truncated=False)
    assert len(builder) == 4
    chunk = builder.take()
    assert set(chunk) == {"frames", "stack", "actions", "rewards", "bootstraps"}
    assert chunk["frames"].dtype == np.uint8 and chunk["frames"].shape == (5, 6, 6)
    assert chunk["stack"].dtype == np.int32 and chunk["stack"].shape == (4, 2 * S)
    assert chunk["actions"].dtype == np.uint8 and chunk["actions"].tolist() == [1, 2, 3, 2]
    assert chunk["rewards"].dtype == np.float32 and chunk["rewards"].tolist() == [0.5, 1.0, 1.5, -1.5]
    assert chunk["bootstraps"].dtype == np.float32
    assert chunk["bootstraps"].tolist() == np.array([0.99, 0.99, 0.99, 0.0], np.float32).tolist()
    assert len(builder) == 0


@pytest.mark.parametrize("terminated, truncated, last", [(True, False, 0.0), (False, True, GAMMA), (True, True, 0.0)])
def test_one_step_bootstrap_is_gamma_unless_terminal(terminated, truncated, last):
    """n_step=1: every transition bootstraps with gamma, except a terminal one (0); a truncated
    episode's last transition still bootstraps, from the obs where it was cut."""
    builder = ChunkBuilder(S, n_step=1, gamma=GAMMA)
    builder.start_episode(frame(0))
    play(builder, 0, 2)
    builder.add(frame(3), action=1, reward=2.0, terminated=terminated, truncated=truncated)
    chunk = builder.take()
    assert chunk["bootstraps"].tolist() == np.array([GAMMA, GAMMA, last], np.float32).tolist()
    assert chunk["rewards"].tolist() == [0.5, 1.0, 2.0]
    assert chunk_stacks(chunk) == env_stacks(0, 3)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 9])
def test_single_chunk_stores_each_frame_once_with_env_stacks(steps):
    """A chunk holds reset frame + one frame per step, each once, and its stack indices rebuild
    exactly the env's stacks (the reset frame repeated S times at the start)."""
    builder = ChunkBuilder(S)
    builder.start_episode(frame(0))
    play(builder, 0, steps)
    chunk = builder.take()
    assert numbers(chunk["frames"]) == list(range(steps + 1))
    assert chunk_stacks(chunk) == env_stacks(0, steps)


@pytest.mark.parametrize("before, after", [(1, 3), (2, 1), (3, 5), (4, 2), (6, 6)])
def test_next_chunk_keeps_only_current_stack_as_context(before, after):
    """After take(), the next chunk starts with the distinct frames of the current stack (at most
    S, oldest first), then its new frames once each, and its indices are remapped onto them."""
    builder = ChunkBuilder(S)
    builder.start_episode(frame(0))
    play(builder, 0, before)
    builder.take()
    play(builder, before, after)
    chunk = builder.take()

    context = sorted(set(env_obs(0, before)))  # distinct frames of the current obs
    assert len(context) <= S
    assert numbers(chunk["frames"]) == context + list(range(before + 1, before + after + 1))
    assert len(chunk["frames"]) <= after + S
    assert chunk_stacks(chunk) == env_stacks(0, before + after)[before:]


def test_many_chunks_in_a_row_rebuild_the_whole_episode():
    """Splitting an episode into chunks of 3 never loses or duplicates a transition."""
    builder = ChunkBuilder(S)
    builder.start_episode(frame(0))
    rebuilt = []
    for start in range(0, 20, 3):
        play(builder, start, min(3, 20 - start))
        chunk = builder.take()
        assert len(set(numbers(chunk["frames"]))) == len(chunk["frames"]), "a frame appears twice"
        rebuilt += chunk_stacks(chunk)
    assert rebuilt == env_stacks(0, 20)


def test_new_episode_drops_the_previous_context():
    """start_episode() begins a fresh chunk: no frame of the previous episode is carried along."""
    builder = ChunkBuilder(S)
    builder.start_episode(frame(0))
    play(builder, 0, 5)
    builder.take()
    builder.start_episode(frame(100))
    play(builder, 100, 2)
    chunk = builder.take()
    assert numbers(chunk["frames"]) == [100, 101, 102]
    assert chunk_stacks(chunk) == env_stacks(100, 2)


# --- n-step: pending transitions ------------------------------------------------------------------


def test_len_counts_only_completed_n_step_transitions():
    """With n_step=3 a transition is complete once 3 rewards are in; an episode end completes all."""
    builder = ChunkBuilder(S, n_step=3, gamma=GAMMA)
    builder.start_episode(frame(0))
    lengths = []
    for k in range(1, 6):
        builder.add(frame(k), action=0, reward=1.0, terminated=False, truncated=False)
        lengths.append(len(builder))
    assert lengths == [0, 0, 1, 2, 3]
    builder.add(frame(6), action=0, reward=1.0, terminated=True, truncated=False)
    assert len(builder) == 6
    chunk = builder.take()
    assert chunk["bootstraps"].tolist() == np.array([GAMMA**3] * 3 + [0.0] * 3, np.float32).tolist()
    assert chunk_stacks(chunk) == env_stacks(0, 6, n_step=3)


@pytest.mark.parametrize("before, after", [(1, 3), (2, 1), (3, 5), (4, 2), (6, 6), (2, 0)])
def test_pending_transitions_keep_their_frames_as_context(before, after):
    """With n_step=3, after take() the next chunk starts with the distinct frames of the current
    stack and of the obs of the (up to 2) transitions still waiting, oldest first, then its new
    frames once each; those waiting transitions come out in it with the env's stacks."""
    n = 3
    builder = ChunkBuilder(S, n_step=n, gamma=GAMMA)
    builder.start_episode(frame(0))
    play(builder, 0, before)
    first = builder.take()
    assert len(first["actions"]) == max(0, before - (n - 1))
    assert chunk_stacks(first) == env_stacks(0, max(0, before - (n - 1)), n_step=n, total=10**6)
    play(builder, before, after)
    builder.flush_pending()  # stop here, as a truncation
    chunk = builder.take()

    waiting = range(max(0, before - (n - 1)), before)  # steps whose transitions were pending
    context = sorted(set(env_obs(0, before)).union(*(env_obs(0, t) for t in waiting)))
    assert len(context) <= S + n - 1
    assert numbers(chunk["frames"]) == context + list(range(before + 1, before + after + 1))
    total = before + after
    assert chunk_stacks(chunk) == env_stacks(0, total, n_step=n)[waiting.start :]
    # flush_pending() bootstraps like a truncation: gamma^k with k the steps that were left
    assert (
        chunk["bootstraps"].tolist()
        == np.array([GAMMA ** min(n, total - t) for t in range(waiting.start, total)], np.float32).tolist()
    )
    assert len(builder) == 0


def test_flush_pending_without_waiting_transitions_adds_nothing():
    builder = ChunkBuilder(S, n_step=3, gamma=GAMMA)
    builder.start_episode(frame(0))
    play(builder, 0, 4)
    builder.add(frame(5), action=0, reward=1.0, terminated=True, truncated=False)
    builder.flush_pending()
    chunk = builder.take()
    assert len(chunk["actions"]) == 5
    assert chunk["bootstraps"].tolist() == np.array([GAMMA**3] * 2 + [0.0] * 3, np.float32).tolist()


def test_new_episode_drops_pending_context():
    """A new episode keeps no frame of the previous one, even of transitions that were pending."""
    builder = ChunkBuilder(S, n_step=3, gamma=GAMMA)
    builder.start_episode(frame(0))
    play(builder, 0, 4)
    builder.add(frame(5), action=0, reward=1.0, terminated=False, truncated=True)
    builder.take()
    builder.start_episode(frame(100))
    play(builder, 100, 4)
    chunk = builder.take()
    assert numbers(chunk["frames"]) == [100, 101, 102, 103, 104]
    assert chunk_stacks(chunk) == env_stacks(100, 2, n_step=3, total=10**6)


def test_new_episode_before_take_is_refused():
    """Finished transitions point at this episode's frames: a reset may not drop those frames."""
    builder = ChunkBuilder(4)
    builder.start_episode(np.zeros((84, 84), np.uint8))
    builder.add(np.ones((84, 84), np.uint8), 1, 0.5, terminated=True, truncated=False)
    with pytest.raises(RuntimeError, match="take"):
        builder.start_episode(np.zeros((84, 84), np.uint8))

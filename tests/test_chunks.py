"""ChunkBuilder: each frame once per chunk, per-transition stack indices, context across take()."""
import numpy as np
import pytest

from actor.chunks import ChunkBuilder

S = 4


def frame(k: int) -> np.ndarray:
    """A small frame whose pixels all hold its number k."""
    return np.full((6, 6), k, dtype=np.uint8)


def numbers(frames: np.ndarray) -> list[int]:
    return [int(f[0, 0]) for f in frames]


def env_stacks(first: int, count: int) -> list[tuple[list[int], list[int]]]:
    """What the environment stacks: (obs, next obs) frame numbers for `count` steps of an
    episode whose reset frame is `first` and whose later frames are first+1, first+2, ..."""
    obs, out = [first] * S, []
    for k in range(first + 1, first + 1 + count):
        nxt = obs[1:] + [k]
        out.append((obs, nxt))
        obs = nxt
    return out


def chunk_stacks(chunk: dict) -> list[tuple[list[int], list[int]]]:
    """(obs, next obs) frame numbers that a chunk's stack indices select."""
    nums = numbers(chunk["frames"])
    rows = [[nums[i] for i in row] for row in chunk["stack"]]
    return [(row[:S], row[1:]) for row in rows]


def play(builder: ChunkBuilder, first: int, steps: int) -> None:
    for k in range(first + 1, first + 1 + steps):
        builder.add(frame(k), action=k % 7, reward=float(k) / 2, terminated=False)


def test_chunk_arrays_and_dtypes():
    builder = ChunkBuilder(S)
    builder.start_episode(frame(0))
    play(builder, 0, 3)
    builder.add(frame(4), action=2, reward=-1.5, terminated=True)
    assert len(builder) == 4
    chunk = builder.take()
    assert chunk["frames"].dtype == np.uint8 and chunk["frames"].shape == (5, 6, 6)
    assert chunk["stack"].dtype == np.int32 and chunk["stack"].shape == (4, S + 1)
    assert chunk["actions"].dtype == np.uint8 and chunk["actions"].tolist() == [1, 2, 3, 2]
    assert chunk["rewards"].dtype == np.float32 and chunk["rewards"].tolist() == [0.5, 1.0, 1.5, -1.5]
    assert chunk["dones"].dtype == np.bool_ and chunk["dones"].tolist() == [False, False, False, True]
    assert len(builder) == 0


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

    context = sorted(set(env_stacks(0, before)[-1][1]))     # distinct frames of the current obs
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

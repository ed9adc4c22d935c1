"""n-step returns built by the actor's ChunkBuilder, against a brute-force reference: discounted
rewards, the next observation n steps later, and bootstrapping at episode ends (none after a
terminal step; a shorter discount after a truncation)."""

import numpy as np
import pytest

from actor.chunks import ChunkBuilder

S = 4
GAMMA = 0.9


def frame(k: int) -> np.ndarray:
    return np.full((2, 2), k, dtype=np.uint8)


def stack_of(frames: list[int], t: int) -> list[int]:
    """The frame numbers in the observation after t steps of an episode (reset repeats frame 0)."""
    return [frames[max(0, t - S + 1 + i)] for i in range(S)]


def reference(rewards, end: str, n: int):
    """Brute force: for each step t, (obs frames, action, R, next frames, bootstrap)."""
    T = len(rewards)
    frames = list(range(T + 1))  # frame k is the frame after k steps
    out = []
    for t in range(T):
        k = min(n, T - t)
        ret = sum(GAMMA**i * rewards[t + i] for i in range(k))
        terminal_inside = end == "terminated" and t + k == T
        bootstrap = 0.0 if terminal_inside else GAMMA**k
        out.append((stack_of(frames, t), t % 7, ret, stack_of(frames, t + k), bootstrap))
    return out


def run_builder(rewards, end: str, n: int, chunk_size: int):
    builder = ChunkBuilder(S, n_step=n, gamma=GAMMA)
    builder.start_episode(frame(0))
    got = []

    def take():
        chunk = builder.take()
        values = chunk["frames"][:, 0, 0]
        for stack, a, r, b in zip(chunk["stack"], chunk["actions"], chunk["rewards"], chunk["bootstraps"]):
            got.append(
                ([int(values[i]) for i in stack[:S]], int(a), float(r), [int(values[i]) for i in stack[S:]], float(b))
            )

    T = len(rewards)
    for t in range(T):
        last = t == T - 1
        builder.add(
            frame(t + 1),
            t % 7,
            rewards[t],
            terminated=last and end == "terminated",
            truncated=last and end == "truncated",
        )
        if last or len(builder) >= chunk_size:
            take()
    return got


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("end", ["terminated", "truncated"])
@pytest.mark.parametrize("length", [1, 2, 3, 4, 7, 13])
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_n_step_transitions_match_the_reference(n, end, length, chunk_size):
    rewards = [((t * 37) % 11 - 5) / 5.0 for t in range(length)]
    expected = reference(rewards, end, n)
    got = run_builder(rewards, end, n, chunk_size)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g[0] == e[0] and g[1] == e[1] and g[3] == e[3]
        assert g[2] == pytest.approx(e[2], rel=1e-6) and g[4] == pytest.approx(e[4], rel=1e-6)


def test_chunk_holds_each_frame_once_and_little_context():
    builder = ChunkBuilder(S, n_step=3, gamma=GAMMA)
    builder.start_episode(frame(0))
    for t in range(40):
        builder.add(frame(t + 1), 1, 0.1, terminated=False, truncated=False)
        if len(builder) == 10:
            chunk = builder.take()
            values = chunk["frames"][:, 0, 0].tolist()
            assert len(values) == len(set(values)), "each frame once"
            assert len(values) <= 10 + S + 3, "context is the current stack plus pending transitions"
    assert len(builder) < 10

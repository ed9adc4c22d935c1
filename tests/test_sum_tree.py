"""SumTree: batched updates, totals and minimum, prefix-sum search, stratified sampling."""

import numpy as np
import pytest

from replay_server.sum_tree import SumTree


def filled_tree(priorities) -> SumTree:
    priorities = np.asarray(priorities, dtype=np.float64)
    tree = SumTree(len(priorities))
    tree.update(np.arange(len(priorities)), priorities)
    return tree


def reference_find(priorities, targets) -> np.ndarray:
    """Leaf i such that sum(p[:i]) <= t < sum(p[:i+1]), skipping zero leaves."""
    return np.searchsorted(np.cumsum(priorities), targets, side="right")


@pytest.mark.parametrize("capacity", [1, 2, 5, 7, 1000, 1025])
def test_totals_min_and_leaves_for_any_capacity(capacity):
    """Integer priorities (exact in float64) make total, min and leaves exact at every capacity."""
    rng = np.random.default_rng(capacity)
    priorities = rng.integers(0, 10, capacity).astype(np.float64)
    priorities[rng.integers(capacity)] = 3.0  # at least one non-zero leaf
    tree = filled_tree(priorities)
    assert tree.total == priorities.sum()
    assert tree.min == priorities[priorities > 0].min()
    np.testing.assert_array_equal(tree.leaves(), priorities)
    np.testing.assert_array_equal(tree.get(np.arange(capacity)), priorities)


def test_batched_updates_keep_total_equal_to_leaf_sum():
    """Many partial batched updates in a row leave the root equal to the sum of the leaves."""
    rng = np.random.default_rng(0)
    tree, expected = SumTree(1000), np.zeros(1000)
    for _ in range(50):
        index = rng.integers(0, 1000, 64)
        value = rng.integers(0, 100, 64).astype(np.float64)
        tree.update(index, value)
        for i, v in zip(index, value):  # sequential reference: the last write wins
            expected[i] = v
        np.testing.assert_array_equal(tree.leaves(), expected)
        assert tree.total == expected.sum()
        assert tree.min == expected[expected > 0].min()


def test_repeated_index_in_one_update_last_write_wins():
    tree = filled_tree([1.0, 1.0, 1.0, 1.0, 1.0])
    tree.update([1, 3, 1, 1, 3], [5.0, 9.0, 7.0, 2.0, 4.0])
    np.testing.assert_array_equal(tree.leaves(), [1.0, 2.0, 1.0, 4.0, 1.0])
    assert tree.total == 9.0
    tree.update([2, 2], [0.5, 0.0])
    assert tree.get(2) == 0.0
    assert tree.min == 1.0, "a leaf cleared by the last write must not count as the minimum"


def test_scalar_value_broadcasts_to_all_indices():
    tree = SumTree(5)
    tree.update([0, 2, 4], 2.5)
    np.testing.assert_array_equal(tree.leaves(), [2.5, 0.0, 2.5, 0.0, 2.5])


def test_min_ignores_cleared_leaves():
    """min is the smallest non-zero leaf; clearing leaves moves it up, and it is inf when empty."""
    tree = filled_tree([3.0, 1.0, 2.0, 0.5, 4.0])
    assert tree.min == 0.5
    tree.update([3], [0.0])
    assert tree.min == 1.0
    tree.update([1, 2], [0.0, 0.0])
    assert tree.min == 3.0
    tree.update([0, 4], [0.0, 0.0])
    assert tree.min == np.inf and tree.total == 0.0


@pytest.mark.parametrize(
    "priorities, targets, expected",
    [
        # prefix sums 0 | 1 | 3 | 6 | 10 (capacity 5, last leaf empty)
        ([1, 2, 3, 4, 0], [0.0, 0.999, 1.0, 2.999, 3.0, 5.999, 6.0, 9.999], [0, 0, 1, 1, 2, 2, 3, 3]),
        # zero leaves in the middle and at the start are skipped, even exactly on their edge
        ([0, 1, 0, 0, 2, 0, 3], [0.0, 0.5, 1.0, 2.999, 3.0, 5.999], [1, 1, 4, 4, 6, 6]),
        ([5.0], [0.0, 2.5, 4.999], [0, 0, 0]),
    ],
)
def test_find_at_segment_edges(priorities, targets, expected):
    tree = filled_tree(priorities)
    np.testing.assert_array_equal(tree.find(np.array(targets)), expected)


@pytest.mark.parametrize("capacity", [5, 1000])
def test_find_at_or_past_total_returns_last_non_zero_leaf(capacity):
    """Targets at the right edge (round-off) never land on an empty padding or cleared leaf."""
    priorities = np.zeros(capacity)
    priorities[[0, capacity - 3]] = [2.0, 1.0]
    tree = filled_tree(priorities)
    edge = [np.nextafter(tree.total, 0), tree.total, tree.total + 1.0]
    np.testing.assert_array_equal(tree.find(np.array(edge)), [capacity - 3] * 3)


def test_find_matches_cumulative_sum_search():
    """On 1000 leaves, find() agrees with a searchsorted reference, including targets exactly
    on every prefix sum (integer priorities keep those sums exact)."""
    rng = np.random.default_rng(1)
    priorities = rng.integers(0, 5, 1000).astype(np.float64)
    tree = filled_tree(priorities)
    edges = np.cumsum(priorities)[:-1]
    targets = np.concatenate([edges[edges < tree.total], rng.random(2000) * tree.total])
    np.testing.assert_array_equal(tree.find(targets), reference_find(priorities, targets))


@pytest.mark.parametrize(
    "index, value, error",
    [
        ([5], [1.0], IndexError),
        ([-1], [1.0], IndexError),
        ([0, 7], [1.0, 1.0], IndexError),
        ([0], [-0.5], ValueError),
        ([0, 1], [1.0, np.nan], ValueError),
        ([2], [np.inf], ValueError),
    ],
)
def test_invalid_update_raises_and_leaves_tree_unchanged(index, value, error):
    tree = filled_tree([1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.raises(error):
        tree.update(index, value)
    np.testing.assert_array_equal(tree.leaves(), [1.0, 2.0, 3.0, 4.0, 5.0])
    assert tree.total == 15.0 and tree.min == 1.0


def test_sampling_an_empty_tree_raises():
    tree = SumTree(4)
    with pytest.raises(ValueError):
        tree.sample(8, np.random.default_rng(0))
    tree.update([1], [1.0])
    tree.update([1], [0.0])
    with pytest.raises(ValueError):
        tree.sample(8, np.random.default_rng(0))


def test_stratified_sample_is_one_draw_per_segment():
    """Each batch draws once in each of B equal segments, so its leaves come out in order and a
    leaf spanning fB segments (f: its share of the mass) is drawn fewer than 2 times off fB."""
    tree = filled_tree([1.0, 0.0, 3.0, 4.0, 0.0, 2.0])  # fractions 0.1, 0.3, 0.4, 0.2
    rng = np.random.default_rng(2)
    for _ in range(50):
        leaves = tree.sample(32, rng)
        assert np.all(np.diff(leaves) >= 0)
        counts = np.bincount(leaves, minlength=6)
        expected = 32 * tree.leaves() / tree.total
        assert np.all(np.abs(counts - expected) < 2.0), counts


def test_sampling_frequencies_match_priorities_chi_square():
    """Many stratified batches reproduce P(i) = p_i / sum p (chi-square goodness of fit), and
    leaves of priority 0 are never drawn."""
    priorities = np.array([1.0, 0.0, 2.5, 7.0, 0.3, 4.0, 0.0, 1.2, 9.0, 3.3, 0.8, 5.0, 2.0])
    tree = filled_tree(priorities)  # 13 leaves: not a power of two
    rng = np.random.default_rng(12345)
    batches, batch_size = 2000, 37
    draws = np.concatenate([tree.sample(batch_size, rng) for _ in range(batches)])
    counts = np.bincount(draws, minlength=len(priorities))
    assert counts[priorities == 0].sum() == 0

    nonzero = priorities > 0
    expected = draws.size * priorities[nonzero] / priorities.sum()
    chi2 = np.sum((counts[nonzero] - expected) ** 2 / expected)
    # 11 non-zero leaves -> 10 degrees of freedom; chi-square critical value at alpha = 0.001 is
    # 29.588. Stratification only lowers the variance, so the multinomial bound is conservative.
    assert chi2 < 29.588, (chi2, counts)
    # Sanity: the same statistic against a slightly wrong distribution is far above the bound,
    # so the test can fail.
    wrong = draws.size * np.roll(priorities[nonzero], 1) / priorities.sum()
    assert np.sum((counts[nonzero] - wrong) ** 2 / wrong) > 29.588

"""The replay rate limiter: minimum fill, then a samples-per-insert ratio with a tolerance."""
import pytest

from replay_server.rate_limit import sampling_allowed


@pytest.mark.parametrize("size, sampled, inserted, batch, expected", [
    (99, 0, 99, 32, False),          # below the minimum fill
    (100, 0, 100, 32, True),         # filled; credit 100 * 2 + 50 = 250
    (100, 218, 100, 32, True),       # 250 exactly reached
    (100, 219, 100, 32, False),      # one past: wait for the actors
    (101, 219, 101, 32, True),       # one more insert buys 2 samples
])
def test_ratio_and_tolerance(size, sampled, inserted, batch, expected):
    assert sampling_allowed(size, sampled, inserted, batch, min_size=100, samples_per_insert=2.0,
                            tolerance=50) is expected


def test_ratio_zero_means_only_the_minimum_fill():
    assert sampling_allowed(10, 10**9, 10, 32, min_size=10, samples_per_insert=0.0, tolerance=0)
    assert not sampling_allowed(9, 0, 9, 32, min_size=10, samples_per_insert=0.0, tolerance=0)
    assert not sampling_allowed(0, 0, 0, 32, min_size=0, samples_per_insert=0.0, tolerance=0), "never empty"

"""The replay rate limiter: minimum fill, then a samples-per-insert ratio held both ways within a tolerance."""

import pytest

from replay_server.rate_limit import RateLimiter


def filled(spi=2.0, tolerance=50, pin=True, min_size=100, inserted=100) -> RateLimiter:
    limiter = RateLimiter(min_size, spi, tolerance, pin)
    limiter.observe(inserted, inserted)
    return limiter


def test_nothing_is_sampled_below_the_minimum_fill_and_inserts_count_from_it():
    limiter = RateLimiter(100, 2.0, 50, True)
    limiter.observe(99, 99)
    assert not limiter.can_sample(99, 1)
    limiter.observe(100, 100)
    assert limiter.origin == 100
    assert limiter.can_sample(100, 50) and not limiter.can_sample(100, 51), "credit is the tolerance only"
    assert not limiter.inserts_wait(100 + 25), "25 inserts buy 50 samples: exactly the tolerance"
    assert limiter.inserts_wait(100 + 26)
    limiter.observe(500, 600)
    assert limiter.origin == 100, "the origin is set once"


@pytest.mark.parametrize(
    "sampled, inserted, batch, expected",
    [
        (0, 100, 32, True),  # credit 0 * 2 + 50
        (18, 100, 32, True),  # 50 exactly reached
        (19, 100, 32, False),  # one past: wait for the actors
        (19, 101, 32, True),  # one more insert buys 2 samples
    ],
)
def test_the_learner_waits_past_the_ratio(sampled, inserted, batch, expected):
    limiter = filled()
    limiter.took(sampled)
    assert limiter.can_sample(inserted, batch) is expected


def test_pinned_actors_wait_when_the_learner_is_behind_and_go_on_once_it_samples():
    limiter = filled(spi=4.0, tolerance=100)
    assert not limiter.inserts_wait(125)  # 25 * 4 = 100 ahead: at the tolerance
    assert limiter.inserts_wait(126)
    limiter.took(4)
    assert not limiter.inserts_wait(126)


def test_unpinned_or_unlimited_actors_never_wait():
    assert not filled(pin=False).inserts_wait(10**9)
    assert not filled(spi=0.0).inserts_wait(10**9)
    unlimited = filled(spi=0.0, tolerance=0)
    unlimited.took(10**9)
    assert unlimited.can_sample(100, 32), "ratio 0: only the minimum fill applies"


def test_a_restored_buffer_gives_no_credit():
    limiter = RateLimiter(100, 1.0, 0, True)
    limiter.observe(5_000, 80_000)  # restored: sampling may begin, counting from here
    assert not limiter.can_sample(80_000, 1)
    assert limiter.can_sample(80_001, 1)

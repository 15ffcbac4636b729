"""Restart and retry timing, with no clock and no sleeping."""

from __future__ import annotations

from meshline.agent.backoff import Backoff, Deadline


def test_envoy_restart_delays_double_up_to_the_cap() -> None:
    b = Backoff()
    assert [b.failed(ran_for=1.0) for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_a_stable_minute_resets_the_backoff() -> None:
    b = Backoff()
    for _ in range(5):
        b.failed(ran_for=2.0)
    assert b.failed(ran_for=59.9) == 10.0
    assert b.failed(ran_for=60.0) == 0.5  # it ran a minute: healthy again
    assert b.failed(ran_for=3.0) == 1.0


def test_reset() -> None:
    b = Backoff(initial=1, cap=4)
    b.failed(0)
    b.failed(0)
    b.reset()
    assert b.failed(0) == 1


def test_deadline_spaces_retries_and_ends_exactly_at_the_timeout() -> None:
    d = Deadline(start=100.0, timeout=3.0, backoff=Backoff(initial=0.5, cap=2.0))
    now, delays = 100.0, []
    while (delay := d.next_delay(now)) is not None:
        delays.append(delay)
        now += delay
    assert delays == [0.5, 1.0, 1.5]  # the last wait is cut to land on the deadline
    assert now == 103.0
    assert d.remaining(now) == 0
    assert d.elapsed(104.0) == 4.0


def test_zero_timeout_means_one_attempt() -> None:
    assert Deadline(start=5.0, timeout=0).next_delay(5.0) is None

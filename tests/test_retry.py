"""The retry arithmetic every HTTP client shares: Retry-After parsing and jittered backoff."""

from __future__ import annotations

import email.utils
import random

import pytest

from llama_agents._retry import backoff_delay, parse_retry_after


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(" 0.5 ", now=now) == 0.5
    assert parse_retry_after(email.utils.formatdate(now + 20, usegmt=True), now=now) == pytest.approx(
        20, abs=1
    )
    assert parse_retry_after(email.utils.formatdate(now - 20, usegmt=True), now=now) == 0.0
    assert parse_retry_after("-3", now=now) is None
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_backoff_is_full_jitter_within_an_exponential_ceiling() -> None:
    rng = random.Random(0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        kwargs = {"base": 0.5, "maximum": 3.0, "retry_after_max": 60.0, "rng": rng}
        delays = [backoff_delay(attempt, None, **kwargs) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert min(delays) < 0.1 * ceiling and max(delays) > 0.9 * ceiling  # spread over the whole range


def test_retry_after_wins_and_is_capped() -> None:
    rng = random.Random(0)
    kwargs = {"base": 0.5, "maximum": 3.0, "retry_after_max": 10.0, "rng": rng}
    assert backoff_delay(1, 7.0, **kwargs) == 7.0
    assert backoff_delay(5, 3600.0, **kwargs) == 10.0
    assert backoff_delay(1, -1.0, **kwargs) == 0.0

"""Retry arithmetic shared by every HTTP client in llama-agents (web tools, remote backends).

Two pure functions: reading a `Retry-After` header, and the wait before a retry (exponential
backoff with full jitter, or the server's `Retry-After`, capped). No I/O, no sleeping, no
settings objects: each client keeps its own settings and loop and calls these.
"""

from __future__ import annotations

import email.utils
import random
import re
import time

__all__ = ["backoff_delay", "parse_retry_after"]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def backoff_delay(
    attempt: int,
    retry_after: float | None,
    *,
    base: float,
    maximum: float,
    retry_after_max: float,
    rng: random.Random,
) -> float:
    """The wait before retry number `attempt` (1 for the first retry).

    The server's `retry_after` wins, capped at `retry_after_max`; otherwise full jitter: uniform in
    [0, min(maximum, base * 2**(attempt - 1))].
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), retry_after_max)
    return rng.uniform(0.0, min(maximum, base * 2 ** (attempt - 1)))

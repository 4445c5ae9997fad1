"""The retry delay formula."""

from __future__ import annotations

from .enums import BackoffPolicy

MAX_BACKOFF_MS = 5 * 60 * 60 * 1000


def backoff_delay_ms(policy: BackoffPolicy, base_ms: int, attempt: int) -> int:
    """Delay before retry ``attempt`` (1 = the first retry): LINEAR d·n, EXPONENTIAL d·2^(n-1), capped at 5 h."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if policy is BackoffPolicy.LINEAR:
        delay = base_ms * attempt
    else:
        # Cap the exponent first: 2**(n-1) for a large n would be a huge int for nothing.
        delay = base_ms * (1 << min(attempt - 1, 40))
    return min(delay, MAX_BACKOFF_MS)

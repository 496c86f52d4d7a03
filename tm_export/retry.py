"""Retry rules: the statuses that are retried, the backoff between attempts, and Retry-After."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import re
from collections.abc import Mapping

from .recipe import Retries

logger = logging.getLogger("tm_export.retry")

#: Statuses that mean "try again later": rate limiting and server or gateway errors.
RETRIED_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_retried(status: int) -> bool:
    """Return whether a response with ``status`` is worth another attempt."""
    return status in RETRIED_STATUSES or 500 <= status <= 599


class Backoff:
    """Exponential backoff with jitter: ``wait_initial * 2**(attempt-1)``, capped at ``wait_max``."""

    def __init__(self, policy: Retries, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._rng = rng or random.Random()

    def wait(self, attempt: int) -> float:
        """Return the seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self._policy.wait_max, self._policy.wait_initial * 2 ** (attempt - 1))
        return float(base + self._rng.uniform(0, self._policy.wait_jitter))


def retry_after_seconds(headers: Mapping[str, str], url: str = "") -> float | None:
    """Return the wait a ``Retry-After`` header requests, in seconds, or None.

    An HTTP-date is measured against the response's own ``Date`` header, not the local
    clock, so a skewed local clock cannot stretch or skip the pause. A date in the past
    means no wait. An unparseable value is logged, with the response's ``url`` when given,
    and returns None, so the caller falls back to backoff.
    """
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()

    # Digits only: float() would also take "nan", "inf" and "1e400", which are no wait.
    if _SECONDS.fullmatch(value):
        return min(max(float(value), 0.0), LONGEST_WAIT)

    until = _http_date(value)
    if until is None:
        logger.warning(
            "ignored unparseable Retry-After value %r%s; using backoff instead",
            value[:60],
            f" at {url}" if url else "",
        )
        return None

    sent = headers.get("date")
    reference = (_http_date(sent) if sent else None) or dt.datetime.now(dt.UTC)
    return max((until - reference).total_seconds(), 0.0)


#: The maximum wait of a Retry-After, in seconds (about 31 years). Hundreds of digits would
#: make an infinite float, which messages would print as "inf s".
LONGEST_WAIT = 1e9

#: Retry-After's delay-seconds: digits, with a fraction and a sign tolerated (a negative
#: delay means no wait).
_SECONDS = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def _http_date(text: str) -> dt.datetime | None:
    """Return an HTTP-date as an aware datetime, or None if it is not one.

    The asctime form and a ``-0000`` zone parse without a zone; HTTP-dates are in UTC.
    """
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)

"""Wall-clock times as tm-export writes them: UTC, whole seconds, ending in ``Z``.

Manifests, run records and snapshots compare and sort these strings, so every writer
goes through one format.
"""

from __future__ import annotations

import datetime as dt


def utc_text(moment: dt.datetime) -> str:
    """Return ``moment`` as ``YYYY-MM-DDTHH:MM:SSZ``; a naive ``moment`` is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def utc_now_text() -> str:
    """Return the current time as ``utc_text`` writes it."""
    return utc_text(dt.datetime.now(dt.UTC))

"""Hide secrets from every text that leaves the process: logs, errors, the manifest."""

from __future__ import annotations

import base64
import logging
import re
import urllib.parse
from collections.abc import Iterable

MASK = "***"

# "Authorization: <anything>" in an echoed header dump or an error text.
_AUTH_HEADER = re.compile(r"(authorization['\"]?\s*[:=]\s*['\"]?)([^'\",}\r\n]+)", re.IGNORECASE)


class Redactor:
    """Replaces each known secret, in its raw, base64 and URL-encoded forms, with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            forms |= _forms(secret)
        # Longest first, so a secret that contains another is masked whole.
        self._forms = sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)

    def redact(self, text: str) -> str:
        """Return ``text`` with every secret form and Authorization header value masked."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return _AUTH_HEADER.sub(lambda m: m.group(1) + MASK, text)


def _forms(secret: str) -> set[str]:
    value = secret.removeprefix("Token ").strip()
    forms = {secret, value}
    for item in list(forms):
        forms.add(urllib.parse.quote(item, safe=""))
        forms.add(urllib.parse.quote_plus(item))
        forms.add(base64.b64encode(item.encode()).decode())
        try:
            decoded = base64.b64decode(item, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
        forms.add(decoded)
    return {form for form in forms if form}


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in each record's final message."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self._redactor.redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True

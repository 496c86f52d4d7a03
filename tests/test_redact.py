"""Secrets are masked in every form they can take."""

from __future__ import annotations

import base64
import urllib.parse

from tm_export.redact import Redactor

TOKEN = "dGVzdC1zZWNyZXQtdG9rZW4tMTIz"  # base64 of "test-secret-token-123"


def test_all_forms_masked() -> None:
    redactor = Redactor([TOKEN])
    raw = base64.b64decode(TOKEN).decode()
    texts = [
        f"token {TOKEN} here",
        f"raw {raw}",
        f"quoted {urllib.parse.quote(TOKEN, safe='')}",
        f"again {base64.b64encode(TOKEN.encode()).decode()}",
    ]

    for text in texts:
        assert TOKEN not in redactor.redact(text)
        assert raw not in redactor.redact(text)
        assert "***" in redactor.redact(text)


def test_authorization_header_masked() -> None:
    redactor = Redactor([])

    assert (
        redactor.redact('{"Authorization": "Token abc", "Host": "x"}')
        == '{"Authorization": "***", "Host": "x"}'
    )
    assert redactor.redact("Authorization: Token abc\r\nHost: x") == "Authorization: ***\r\nHost: x"

"""The TM user id read from an API key, which names whose view a session exported."""

from __future__ import annotations

import base64

import pytest

from tm_export.tokenuser import token_user

#: The form of a TM key: base64 of itsdangerous's "payload.timestamp.signature", where the
#: payload is base64url JSON of the OSM user id (1001 here).
TM_KEY = base64.b64encode(b"MTAwMQ.ZzAbCd.c2lnbmF0dXJl").decode()
#: The bundled mock's form, whose payload is the id in digits.
MOCK_KEY = base64.b64encode(b"2003.c2lnbmF0dXJl").decode()


@pytest.mark.parametrize(
    ("token", "user"),
    [
        (TM_KEY, 1001),
        (f"Token {TM_KEY}", 1001),
        (MOCK_KEY, 2003),
        (f"Token {MOCK_KEY}", 2003),
        (TM_KEY.rstrip("="), 1001),
        (base64.b64encode(b"not-a-key").decode(), None),
        (base64.b64encode(b"InRydWUi.x.y").decode(), None),
        ("not base64!", None),
        ("", None),
    ],
    ids=[
        "tm",
        "tm-prefixed",
        "mock",
        "mock-prefixed",
        "unpadded",
        "no-payload",
        "payload-not-int",
        "not-base64",
        "empty",
    ],
)
def test_token_user(token: str, user: int | None) -> None:
    assert token_user(token) == user

"""The TM user an API token belongs to, read from the token itself.

A TM token is the base64 of a session token that ``itsdangerous`` signed: the user's OSM
id, then a timestamp and a signature, joined by dots. The id is written in the clear, as
base64url JSON, so any holder of the token can read it. It is no secret, so a run records
it to tell whose view of the data each session exported. Two keys of one user, such as a
key renewed after the 7 days, contain the same user id.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

import orjson


def token_user(token: str) -> int | None:
    """Return the OSM user id that ``token`` names, or None when the token does not have
    TM's form. ``token`` is the header value, with or without its ``Token `` prefix."""
    try:
        session_token = _decode(token.strip().removeprefix("Token "), base64.b64decode)
    except ValueError:
        return None
    payload = session_token.split(".", 1)[0]

    # The bundled mock writes the id as digits, and TM as base64url JSON.
    if payload.isdigit() and payload.isascii():
        return int(payload)
    try:
        value = orjson.loads(_decode(payload, base64.urlsafe_b64decode))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _decode(text: str, decode: Callable[[bytes], bytes]) -> str:
    """Return base64 ``text``, padded as needed, decoded to ASCII text.

    Raises:
        ValueError: ``text`` is not base64 of ASCII text.
    """
    padded = text.strip() + "=" * (-len(text.strip()) % 4)
    try:
        return decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError) as error:
        raise ValueError(str(error)) from error

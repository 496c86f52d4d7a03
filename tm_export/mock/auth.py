"""Session tokens of the mock server and the Tasking Manager's rules for the Authorization header.

Clients send ``Authorization: Token <value>`` where the value is the base64 encoding of a
session token. The genuine backend reads the header in a middleware before routing, so:

* a header it cannot split into two words or decode as base64 fails every request with
  400 ``text/plain`` ``Invalid auth credentials``, public endpoints and unknown paths included;
* a decodable token it does not accept makes the caller anonymous, and only endpoints that
  require a login answer 401 ``InvalidToken`` (with ``www-authenticate: Bearer``);
* a scheme other than ``Token`` is ignored by public endpoints, while endpoints whose auth is
  required or optional return 401.

The mock mints one random token per role when it starts; tokens never expire while it runs.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tm_export.mock.model import User

HeaderState = Literal["absent", "valid", "invalid", "wrong_scheme", "malformed"]

#: Users the three tokens belong to: an admin, a mapper on the private projects' allow-list,
#: and a mapper who is not on it.
TOKEN_USERS: Mapping[str, str] = {
    "admin": "tm_admin",
    "mapper": "mapper_ann",
    "other": "mapper_chen",
}


@dataclass(frozen=True, slots=True)
class Caller:
    """Sender of a request, as read from its Authorization header."""

    state: HeaderState
    user: User | None = None
    role: str = "anonymous"
    """Token name (``admin``, ``mapper``, ``other``) or ``anonymous``."""


class TokenStore:
    """The tokens minted for one server run, and the lookup of a header value."""

    def __init__(self, users_by_name: Mapping[str, User]) -> None:
        self.tokens: dict[str, str] = {}
        """Header values by role, ready to send after ``Token ``."""
        self._sessions: dict[str, tuple[str, User]] = {}
        for role, username in TOKEN_USERS.items():
            self._mint(role, users_by_name[username])

    def _mint(self, role: str, user: User) -> None:
        session = f"{user.id}.{secrets.token_urlsafe(24)}"
        self.tokens[role] = base64.b64encode(session.encode("ascii")).decode("ascii")
        self._sessions[session] = (role, user)

    def renew(self, role: str) -> None:
        """Expire the token of ``role`` and mint a new one, as a user who renews it.

        The server then treats the old token as an expired one.
        """
        session = base64.b64decode(self.tokens[role]).decode("ascii")
        _, user = self._sessions.pop(session)
        self._mint(role, user)

    def identify(self, header: str | None) -> Caller:
        """Classify an Authorization header value and find its user."""
        if header is None:
            return Caller("absent")

        words = header.split()
        if len(words) != 2:
            return Caller("malformed")
        scheme, credentials = words
        if scheme.lower() != "token":
            return Caller("wrong_scheme")

        try:
            session = base64.b64decode(credentials).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return Caller("malformed")
        found = self._sessions.get(session)
        if found is None:
            return Caller("invalid")
        role, user = found
        return Caller("valid", user, role)

"""Connection tokens: how a client without a Django session (a mobile app, a CLI, a service)
opens a socket.

`POST /api/connect-token` (a logged-in session, or an API token naming the user) answers a
short-lived JWT, HS256-signed with CONNECT_TOKEN_KEY (by default a key derived from
SECRET_KEY, so there is nothing more to configure or leak): `sub` the user's id, `aud`
"switchboard-socket", `iat` and `exp` (CONNECT_TOKEN_TTL_SECS later), and optionally `streams`,
the only streams besides the user's own that the socket may read. The client opens
`/ws/?token=…` (or `/sse/?token=…`) from an origin in CONNECT_TOKEN_ORIGINS, or from no browser
at all (no Origin header). A token is checked once, at the handshake: an expired, tampered or
foreign one gets an error frame saying which and close code 4401. The socket then lives as a
session's does, except that no session can end it: deactivating the user or changing their
password does (realtime/access.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
from django.conf import settings
from django.utils.crypto import salted_hmac

AUDIENCE = "switchboard-socket"
ALGORITHM = "HS256"


class BadToken(Exception):
    """Why a connection token was refused, in words a client developer can act on."""


@dataclass(frozen=True)
class Claims:
    user_id: int
    streams: frozenset[str] | None  # None: any stream the user may read


def _key() -> str:
    configured: str = getattr(settings, "CONNECT_TOKEN_KEY", "")
    if configured:
        return configured
    return salted_hmac("switchboard.connect-token", "signing key").hexdigest()


def issue(user: Any, *, streams: list[str] | None = None) -> tuple[str, int]:
    """A token for `user` and when it expires (Unix seconds)."""
    now = int(time.time())
    expires = now + settings.CONNECT_TOKEN_TTL_SECS
    claims: dict[str, Any] = {"sub": str(user.pk), "aud": AUDIENCE, "iat": now, "exp": expires}
    if streams is not None:
        claims["streams"] = sorted(set(streams))
    return jwt.encode(claims, _key(), algorithm=ALGORITHM), expires


def verify(token: str) -> Claims:
    """The token's claims, or BadToken saying what is wrong with it."""
    try:
        claims = jwt.decode(
            token,
            _key(),
            algorithms=[ALGORITHM],  # never the token's own choice (no "none", no RS/HS mix-up)
            audience=AUDIENCE,
            options={"require": ["sub", "exp", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise BadToken("The connection token has expired; ask for a new one.") from None
    except jwt.InvalidAudienceError:
        raise BadToken("The token is not a Switchboard connection token.") from None
    except jwt.InvalidSignatureError:
        raise BadToken("The connection token's signature does not match.") from None
    except jwt.InvalidTokenError as exc:
        raise BadToken(f"The connection token is not valid ({exc}).") from None
    subject, streams = claims["sub"], claims.get("streams")
    if not isinstance(subject, str) or not subject.isdigit():
        raise BadToken("The connection token names no user.")
    if streams is not None and (
        not isinstance(streams, list) or not all(isinstance(s, str) for s in streams)
    ):
        raise BadToken("The connection token's streams must be a list of stream names.")
    return Claims(int(subject), None if streams is None else frozenset(streams))

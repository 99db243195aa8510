"""Signing in to the console with an API key, and the session cookie that follows.

The cookie carries a random token, never the key; the server keeps the token's SHA-256, the
key's SHA-256 (a session ends when its key is no longer configured) and the session's CSRF token.
The cookie is HttpOnly and SameSite=Strict, and Secure when the public URL is https. Every POST
of a signed-in page carries the CSRF token too, and a POST whose Origin is another site is
refused: a cross-site form can neither sign someone in nor act in their session.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from fastapi import Request

from status_tracker.console import queries
from status_tracker.deps import principal_for_key
from status_tracker.repository import Executor

COOKIE = "status_tracker_console"
SESSION_LIFETIME = timedelta(hours=8)


class SignInRequired(Exception):
    """No valid session: the browser is sent to the sign-in page, then back to `next_path`."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class Session:
    token_sha256: str
    key_sha256: str
    csrf_token: str

    @property
    def key_fingerprint(self) -> str:
        """Who did something, for the audit: enough of the key's hash to tell keys apart."""
        return self.key_sha256[:12]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def key_signs_in(key: str, request: Request) -> bool:
    """A key signs in if the API takes it for reading (deps.principal_for_key, the API's own
    check), unbound to accounts: the console shows every account's messages."""
    principal = await principal_for_key(request, key)
    return principal is not None and principal.allows("read") and principal.account_sids is None


async def key_still_configured(db: Executor, key_sha256: str, request: Request) -> bool:
    """Whether the session's key would still sign in (not removed from the environment, not
    revoked), known by its hash alone."""
    found = False
    for key in (*request.state.api_keys, *request.state.read_keys):
        found |= hmac.compare_digest(sha256(key), key_sha256)
    return found or bool(
        await db.fetchval(
            # Every scope implies reading.
            "SELECT 1 FROM api_keys "
            "WHERE key_sha256 = $1 AND revoked_at IS NULL AND account_sids IS NULL",
            bytes.fromhex(key_sha256),
        )
    )


def secure_cookie(request: Request) -> bool:
    return str(request.state.settings.public_url).startswith("https://")


async def sign_in(db: Executor, key: str) -> str:
    """A new session for `key` (already checked); the cookie's token."""
    token = secrets.token_urlsafe(32)
    await queries.create_session(
        db,
        sha256(token),
        sha256(key),
        secrets.token_urlsafe(32),
        datetime.now(UTC) + SESSION_LIFETIME,
    )
    return token


async def current_session(db: Executor, request: Request) -> Session | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    row = await queries.get_session(db, sha256(token))
    if row is None or not await key_still_configured(db, row["key_sha256"], request):
        return None
    return Session(sha256(token), row["key_sha256"], row["csrf_token"])


def origin_is_own(request: Request) -> bool:
    """A browser names the page a POST comes from: it must be this service, as the browser
    reached it or as its public URL says. (No Origin: not a browser's cross-site form.)"""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = {f"{request.url.scheme}://{request.headers.get('host', '')}"}
    public = urlsplit(str(request.state.settings.public_url))
    own.add(f"{public.scheme}://{public.netloc}")
    return origin in own


def csrf_matches(session: Session, posted: str | None) -> bool:
    return posted is not None and hmac.compare_digest(posted.encode(), session.csrf_token.encode())

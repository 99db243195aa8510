"""Dependencies of the routes, as `Annotated` aliases so that signatures read as prose."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from status_tracker import api_keys
from status_tracker.accounts import AccountDirectory
from status_tracker.api_keys import Principal
from status_tracker.encryption import SecretBox
from status_tracker.errors import Forbidden, ServiceUnavailable, Unauthorized
from status_tracker.ingest import ReportWriter
from status_tracker.settings import Settings
from status_tracker.twilio_api import TwilioApi


async def _settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.state.pool
    return pool


async def _verifier(request: Request) -> AccountDirectory:
    verifier: AccountDirectory = request.state.verifier
    return verifier


async def _secret_box(request: Request) -> SecretBox:
    box: SecretBox = request.state.secret_box
    return box


async def _writer(request: Request) -> ReportWriter:
    writer: ReportWriter = request.state.writer
    return writer


async def _exports(request: Request) -> asyncio.Semaphore:
    exports: asyncio.Semaphore = request.state.exports
    return exports


async def default_twilio(request: Request) -> TwilioApi:
    """The client of the default account, the one of the environment's settings."""
    twilio: TwilioApi | None = request.state.twilio
    if twilio is None:
        raise ServiceUnavailable(
            "Twilio is not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or run "
            "`status-tracker serve` without them to use the built-in simulator."
        )
    return twilio


SettingsDep = Annotated[Settings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
VerifierDep = Annotated[AccountDirectory, Depends(_verifier)]
AccountsDep = Annotated[AccountDirectory, Depends(_verifier)]
SecretBoxDep = Annotated[SecretBox, Depends(_secret_box)]
WriterDep = Annotated[ReportWriter, Depends(_writer)]
TwilioDep = Annotated[TwilioApi, Depends(default_twilio)]
ExportsDep = Annotated[asyncio.Semaphore, Depends(_exports)]


async def _connection(pool: PoolDep, settings: SettingsDep) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        yield connection


# scope="function": the connection goes back to the pool before the response is sent.
ConnectionDep = Annotated[asyncpg.Connection, Depends(_connection, scope="function")]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key: from STATUS_TRACKER_API_KEYS (admin; or the one the service made "
    "on first start, in its data directory), from STATUS_TRACKER_READ_KEYS (read), or made by "
    "`status-tracker keys create` / POST /v1/keys (its scopes and accounts).",
)


async def resolve_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Who the caller of the API is, from its `Authorization: Bearer` key."""
    if credentials is None:
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    principal = await principal_for_key(request, credentials.credentials)
    if principal is None:
        raise Unauthorized("The API key is not valid.")
    return principal


async def principal_for_key(request: Request, key: str) -> Principal | None:
    """The one place a key becomes a principal (scopes and accounts), for the API and for any
    other sign-in that takes a key: a key of STATUS_TRACKER_API_KEYS (admin), of
    STATUS_TRACKER_READ_KEYS (read), or a stored key that is not revoked; None for any other."""
    principal = api_keys.configured_principal(key, request.state.api_keys, request.state.read_keys)
    if principal is None:
        settings: Settings = request.state.settings
        async with request.state.pool.acquire(timeout=settings.db_timeout_seconds) as connection:
            principal = await api_keys.stored_principal(connection, key)
    return principal


PrincipalDep = Annotated[Principal, Depends(resolve_principal)]


def required_scope(method: str, path: str) -> str:
    """Reading needs `read`; sending or canceling a message `send`; any other change `admin`."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if path.startswith("/v1/messages"):
        return "send"
    return "admin"


async def require_api_key(request: Request, principal: PrincipalDep) -> None:
    scope = required_scope(request.method, request.url.path)
    if not principal.allows(scope):
        raise Forbidden(f"This API key may not do this: it needs the {scope!r} scope.")


async def require_admin(principal: PrincipalDep) -> None:
    # A key bound to accounts could otherwise make itself an unbound one.
    if not principal.allows("admin") or principal.account_sids is not None:
        raise Forbidden("This needs an admin API key bound to no account.")

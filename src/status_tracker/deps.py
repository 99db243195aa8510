"""Dependencies of the routes, as `Annotated` aliases so that signatures read as prose."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from status_tracker import api_keys
from status_tracker.errors import ServiceUnavailable, Unauthorized
from status_tracker.ingest import ReportWriter
from status_tracker.settings import Settings
from status_tracker.signatures import SignatureVerifier
from status_tracker.twilio_api import TwilioApi


async def _settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.state.pool
    return pool


async def _verifier(request: Request) -> SignatureVerifier:
    verifier: SignatureVerifier = request.state.verifier
    return verifier


async def _writer(request: Request) -> ReportWriter:
    writer: ReportWriter = request.state.writer
    return writer


async def _exports(request: Request) -> asyncio.Semaphore:
    exports: asyncio.Semaphore = request.state.exports
    return exports


async def _twilio(request: Request) -> TwilioApi:
    twilio: TwilioApi | None = request.state.twilio
    if twilio is None:
        raise ServiceUnavailable(
            "Twilio is not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or run "
            "`status-tracker serve` without them to use the built-in simulator."
        )
    return twilio


SettingsDep = Annotated[Settings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
VerifierDep = Annotated[SignatureVerifier, Depends(_verifier)]
WriterDep = Annotated[ReportWriter, Depends(_writer)]
TwilioDep = Annotated[TwilioApi, Depends(_twilio)]
ExportsDep = Annotated[asyncio.Semaphore, Depends(_exports)]


async def _connection(pool: PoolDep, settings: SettingsDep) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        yield connection


# scope="function": the connection goes back to the pool before the response is sent.
ConnectionDep = Annotated[asyncpg.Connection, Depends(_connection, scope="function")]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from STATUS_TRACKER_API_KEYS (or the one the service made on "
    "first start, in its data directory).",
)


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if credentials is None:
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    keys: list[str] = request.state.api_keys
    if not api_keys.matches(credentials.credentials, keys):
        raise Unauthorized("The API key is not valid.")

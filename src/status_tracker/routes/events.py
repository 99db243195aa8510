"""`GET /v1/events/stream`: the outbox's events, live, as Server-Sent Events.

`event_stream` is the stream itself; the console serves it too, to a signed-in browser session
(console/routes.py), with events of its own shape."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any
from uuid import uuid4

import asyncpg
from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse

from status_tracker import delivery, outbox
from status_tracker.deps import PoolDep, SettingsDep, require_api_key
from status_tracker.errors import BadRequest
from status_tracker.routes.webhook_endpoints import EventType
from status_tracker.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/events", tags=["webhooks"], dependencies=[Depends(require_api_key)])

# The outbox keeps recording for a stream this long after it was last seen, so that a client
# that reconnects within it resumes without a gap even when no webhook endpoint is enabled.
LEASE_SECONDS = 3600
RENEW_LEASE_SECONDS = 60
POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15
PAGE = 500

# An event's `data:` line, or None to leave it out of this stream.
Render = Callable[[Mapping[str, Any]], str | None]
# Whether the stream may go on; asked whenever its lease is renewed.
StillAllowed = Callable[[asyncpg.Connection], Awaitable[bool]]


def resumes_after(last_event_id: str | None) -> int | None:
    if last_event_id is None:
        return None
    if not last_event_id.strip().isdigit():
        raise BadRequest("Last-Event-ID must be the id of an event this stream sent.")
    return int(last_event_id)


async def event_stream(
    pool: asyncpg.Pool,
    settings: Settings,
    last_event_id: str | None,
    render: Render,
    *,
    lease_seconds: float = LEASE_SECONDS,
    renew_seconds: float = RENEW_LEASE_SECONDS,
    still_allowed: StillAllowed | None = None,
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """The outbox's events after `last_event_id` (or from now), each as `render` writes it."""
    after = resumes_after(last_event_id)
    stream_id = uuid4()
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        await outbox.hold_stream_lease(connection, stream_id, lease_seconds)
        position = await outbox.stream_position(connection, after)

    async def events() -> AsyncIterator[bytes]:
        nonlocal position
        lease_renewed = sent = time.monotonic()
        yield b"retry: 1000\n\n"
        while True:
            try:
                async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
                    if time.monotonic() - lease_renewed > renew_seconds:
                        if still_allowed is not None and not await still_allowed(connection):
                            return
                        await outbox.hold_stream_lease(connection, stream_id, lease_seconds)
                        lease_renewed = time.monotonic()
                    rows = await outbox.events_after(connection, position, PAGE)
            except Exception as error:
                # The client reconnects with Last-Event-ID and misses nothing.
                log.warning("event stream ended: the database failed", exc_info=error)
                return
            for row in rows:
                position = (row["xid"], row["id"])
                data = render(row)
                if data is not None:
                    yield f"id: {row['id']}\nevent: {row['type']}\ndata: {data}\n\n".encode()
                    sent = time.monotonic()
            if len(rows) < PAGE:
                if time.monotonic() - sent > KEEP_ALIVE_SECONDS:
                    yield b": keep-alive\n\n"
                    sent = time.monotonic()
                await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={**(headers or {}), "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/stream",
    summary="Events as they happen (Server-Sent Events); Last-Event-ID resumes",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`id:` the event's id, `event:` its type, `data:` the same JSON body "
            "a webhook gets",
        },
        400: {"description": "A Last-Event-ID that is not an event id (problem+json)"},
        401: {"description": "Missing or wrong API key (problem+json)"},
    },
)
async def stream_events(
    pool: PoolDep,
    settings: SettingsDep,
    type: Annotated[list[EventType] | None, Query(description="Only these types")] = None,
    reference_prefix: Annotated[
        str | None, Query(description="Only messages whose `reference` starts with this")
    ] = None,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this event (browsers send it themselves)")
    ] = None,
) -> StreamingResponse:
    types = set(type or delivery.EVENT_TYPES)

    def render(row: Mapping[str, Any]) -> str | None:
        reference: str = row["reference"] or ""
        if row["type"] in types and reference.startswith(reference_prefix or ""):
            return delivery.render(row).decode()
        return None

    return await event_stream(pool, settings, last_event_id, render)

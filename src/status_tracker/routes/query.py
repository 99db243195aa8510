"""Reading many messages: a filtered list, one timeline, statistics, and a streamed export."""

import asyncio
import base64
import csv
import io
import json
import logging
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import Message, Receive, Scope, Send

from status_tracker import privacy, repository
from status_tracker.deps import ConnectionDep, ExportsDep, PoolDep, SettingsDep, require_api_key
from status_tracker.error_codes import describe
from status_tracker.errors import BadRequest, NotFound, ServiceUnavailable, Unprocessable
from status_tracker.models import Event, MessagePage, rfc3339, summary_view, timeline
from status_tracker.precedence import FINAL_STATUSES, STATUS_ORDER
from status_tracker.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["query"], dependencies=[Depends(require_api_key)])

AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong API key (problem+json)"}
}


def encode_cursor(created_at: datetime, message_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{message_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created_at, message_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), UUID(message_id)
    except ValueError as error:
        raise BadRequest("The cursor is not one this API gave out.") from error


def out_of_range(name: str) -> Unprocessable:
    message = "out of range: give a time between years 1 and 9999 in UTC"
    field = f"query.{name}"
    return Unprocessable(f"{field}: {message}", errors=[{"field": field, "message": message}])


def in_utc(name: str, value: datetime | None) -> datetime | None:
    """`value` in UTC, or 422 if it falls outside what Python (and so the driver) can hold."""
    if value is None or value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC)
    except OverflowError as error:
        raise out_of_range(name) from error


CHANNEL_PREFIXES = ("whatsapp:", "rcs:", "messenger:")


def stored_addresses(number: str | None, settings: Settings) -> list[str]:
    """The stored addresses a number filter matches: a bare number on every channel, a prefixed
    one only on its own."""
    if number is None:
        return []
    wanted = [number]
    if not number.startswith(CHANNEL_PREFIXES):
        wanted += [prefix + number for prefix in CHANNEL_PREFIXES]
    redacted = (privacy.redact_number(address, settings) for address in wanted)
    return [address for address in redacted if address is not None]


def with_time_zones(*moments: datetime | None) -> None:
    if any(moment is not None and moment.tzinfo is None for moment in moments):
        raise BadRequest("Give since and until with a time zone, e.g. 2026-11-24T00:00:00Z.")


def window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """The time window asked for; by default the last 24 hours. Checked whole before anything
    is read or streamed, so that a bad one is a problem answer, never a cut-off download."""
    with_time_zones(since, until)
    until = in_utc("until", until) or datetime.now(UTC)
    try:
        since = in_utc("since", since) or until - timedelta(days=1)
    except OverflowError as error:  # the default since, a day before until
        raise out_of_range("until") from error
    if since >= until:
        raise BadRequest("since must be before until.")
    return since.astimezone(UTC), until.astimezone(UTC)


def known_statuses(statuses: list[str] | None) -> list[str]:
    unknown = sorted(set(statuses or ()) - set(STATUS_ORDER))
    if unknown:
        named = ", ".join(map(repr, unknown))
        message = f"Unknown status {named}; the known ones are {', '.join(STATUS_ORDER)}."
        raise Unprocessable(message, errors=[{"field": "query.status", "message": message}])
    return statuses or []


@router.get(
    "/messages",
    response_model=MessagePage,
    summary="Messages, newest first, filtered and paged",
    responses={**AUTH, 400: {"description": "Invalid cursor (problem+json)"}},
)
async def list_messages(
    connection: ConnectionDep,
    settings: SettingsDep,
    status: Annotated[
        list[str] | None, Query(description=f"Repeatable; one of {', '.join(STATUS_ORDER)}")
    ] = None,
    direction: Annotated[str | None, Query(examples=["outbound-api"])] = None,
    to: Annotated[str | None, Query(examples=["+14155550100"])] = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
    error_code: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    since: Annotated[
        datetime | None, Query(description="Created at or after; with a time zone (…Z)")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="Created before; with a time zone (…Z)")
    ] = None,
    reference: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> MessagePage:
    """Keyset pagination: pages neither skip nor repeat while new messages arrive."""
    with_time_zones(since, until)
    filters = repository.MessageFilter(
        statuses=known_statuses(status),
        direction=direction,
        # A bare number finds the number on every channel (`+1…`, `whatsapp:+1…`, `rcs:+1…`).
        # Numbers are stored as the redaction setting says: they are looked up the same way.
        to=stored_addresses(to, settings),
        from_=stored_addresses(from_, settings),
        error_code=error_code,
        since=in_utc("since", since),
        until=in_utc("until", until),
        reference=reference,
    )
    after = decode_cursor(cursor) if cursor else None
    rows = await repository.list_messages(connection, filters, limit + 1, after)
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    )
    return MessagePage(messages=[summary_view(row) for row in page], next_cursor=next_cursor)


@router.get(
    "/messages/{id_or_sid}/events",
    response_model=list[Event],
    summary="A message's timeline alone, oldest first",
    responses={**AUTH, 404: {"description": "No such message (problem+json)"}},
)
async def message_events(id_or_sid: str, connection: ConnectionDep) -> list[Event]:
    message = await repository.get_message(connection, id_or_sid)
    if message is None:
        raise NotFound(f"No message {id_or_sid!r}.")
    return timeline(await repository.list_events(connection, message["id"]))


class ErrorCount(BaseModel):
    error_code: int
    count: int
    description: str | None


class Bucket(BaseModel):
    start: datetime
    total: int
    delivered: int = Field(description="delivered or read")
    failed: int = Field(description="failed or undelivered")


class Stats(BaseModel):
    since: datetime
    until: datetime
    total: int
    by_status: dict[str, int]
    by_error_code: list[ErrorCount]
    delivery_rate: float | None = Field(
        description="(delivered + read) / messages in a final status"
    )
    sent_to_delivered_median_seconds: float | None
    sent_to_delivered_p95_seconds: float | None
    interval: Literal["hour", "day"]
    series: list[Bucket]


@router.get("/stats", response_model=Stats, summary="Counts, delivery rate and delivery times",
            responses=AUTH)  # fmt: skip
async def stats(
    connection: ConnectionDep,
    since: datetime | None = None,
    until: datetime | None = None,
    interval: Literal["hour", "day"] | None = Query(
        default=None, description="Series bucket; default: hour up to 2 days, else day"
    ),
) -> Stats:
    """Over messages created in [since, until); by default the last 24 hours."""
    since, until = window(since, until)
    interval = interval or ("hour" if until - since <= timedelta(days=2) else "day")
    found = await repository.message_stats(connection, since, until, interval)
    by_status = {row["status"]: row["count"] for row in found["by_status"]}
    final = sum(count for s, count in by_status.items() if s in FINAL_STATUSES - {"received"})
    delivered = by_status.get("delivered", 0) + by_status.get("read", 0)
    return Stats(
        since=since,
        until=until,
        total=sum(by_status.values()),
        by_status=by_status,
        by_error_code=[
            ErrorCount(
                error_code=row["error_code"],
                count=row["count"],
                description=describe(row["error_code"]),
            )
            for row in found["by_error"]
        ],
        delivery_rate=delivered / final if final else None,
        sent_to_delivered_median_seconds=found["timing"]["median"],
        sent_to_delivered_p95_seconds=found["timing"]["p95"],
        interval=interval,
        series=[Bucket(**dict(row)) for row in found["series"]],
    )


MESSAGE_EXPORT_COLUMNS = (
    "id", "sid", "direction", "status", "error_code", "error_description", "to", "from",
    "channel", "reference", "created_at", "updated_at", "sent_at", "delivered_at", "read_at",
    "final_at", "event_count",
)  # fmt: skip
EVENT_EXPORT_COLUMNS = (
    "message_id", "sid", "id", "status", "error_code", "source", "received_at", "carrier_done_at",
)  # fmt: skip


def _export_row(record: Any, events: bool) -> dict[str, Any]:
    if events:
        return {name: record[name] for name in (*EVENT_EXPORT_COLUMNS, "fields", "query")}
    row = {name: record[name] for name in MESSAGE_EXPORT_COLUMNS if name in record}
    row["to"], row["from"] = record["to_number"], record["from_number"]
    row["error_description"] = describe(record["error_code"])
    return row


# What a spreadsheet may read as the start of a formula (OWASP's CSV injection list), and the
# full-width forms some spreadsheets fold into them.
FORMULA_STARTS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")  # full-width = + - @


def _cell(value: Any) -> str:
    text = "" if value is None else rfc3339(value) if isinstance(value, datetime) else str(value)
    # A cell a spreadsheet would run as a formula is kept as text.
    return "'" + text if text[:1] in FORMULA_STARTS else text


def _json_value(value: Any) -> Any:
    return rfc3339(value) if isinstance(value, datetime) else str(value)


@router.get(
    "/export",
    summary="Every message (or event) of a window, streamed as CSV or JSON lines",
    response_class=StreamingResponse,
    responses={
        **AUTH,
        200: {"content": {"text/csv": {}, "application/x-ndjson": {}}},
        400: {"description": "Invalid window (problem+json)"},
        422: {"description": "A time out of range (problem+json)"},
        503: {"description": "Too many exports running, or the database unavailable"},
    },
)
async def export(
    pool: PoolDep,
    exports: ExportsDep,
    settings: SettingsDep,
    since: datetime | None = None,
    until: datetime | None = None,
    format: Literal["csv", "jsonl"] = "csv",
    include: Literal["events"] | None = Query(
        default=None, description="`events`: one row per event instead of per message"
    ),
) -> StreamingResponse:
    """For record keeping: messages created in [since, until), oldest first, with their final
    status, error code and event count. Streamed in constant memory. In CSV, a cell starting
    with `=`, `+`, `-`, `@`, a tab, a carriage return or a full-width = + - @ (phone numbers
    included) is prefixed with `'` so that spreadsheets
    show it as text; the file starts with a UTF-8 byte order mark."""
    since, until = window(since, until)
    events = include == "events"
    columns = EVENT_EXPORT_COLUMNS if events else MESSAGE_EXPORT_COLUMNS

    async def lines() -> AsyncGenerator[bytes, None]:
        async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
            async with connection.transaction(readonly=True):
                if format == "csv":
                    yield ("\ufeff" + ",".join(columns) + "\r\n").encode()
                buffer = io.StringIO()
                writer = csv.writer(buffer)
                async for record in repository.export_rows(connection, since, until, events):
                    row = _export_row(record, events)
                    if format == "csv":
                        writer.writerow(_cell(row[name]) for name in columns)
                    else:
                        buffer.write(json.dumps(row, default=_json_value) + "\n")
                    if buffer.tell() > 64 * 1024:
                        yield buffer.getvalue().encode()
                        buffer.seek(0)
                        buffer.truncate()
                yield buffer.getvalue().encode()

    media_type = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    name = f"messages-{since:%Y%m%dT%H%M%S}-{until:%Y%m%dT%H%M%S}.{format}"
    return ExportResponse(
        lines(), exports, settings.export_stall_timeout_seconds, media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )  # fmt: skip


class ExportStalled(Exception):
    pass


class ExportResponse(StreamingResponse):
    """A streamed export that holds its database connection only while the client reads: one
    that stops reading for `stall_timeout` seconds is aborted (the connection is closed without
    the final chunk) and its connection goes back to the pool. At most `slots` run at once."""

    def __init__(
        self,
        rows: AsyncGenerator[bytes, None],
        slots: asyncio.Semaphore,
        stall_timeout: float,
        **options: Any,
    ) -> None:
        super().__init__(rows, **options)
        self.rows = rows
        self.slots = slots
        self.stall_timeout = stall_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.slots.locked():
            await self.rows.aclose()
            raise ServiceUnavailable("As many exports as allowed are running; retry shortly.")
        async with self.slots:
            await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        async def send_or_give_up(message: Message) -> None:
            try:
                async with asyncio.timeout(self.stall_timeout):
                    await send(message)
            except TimeoutError:
                raise ExportStalled() from None

        try:
            await super().stream_response(send_or_give_up)
        except ExportStalled:
            log.warning("export aborted: the client stopped reading")
        finally:
            # Ends the transaction and returns the connection now, not when collected.
            await self.rows.aclose()

"""Reading many messages: a filtered list, one timeline, statistics, and a streamed export."""

import asyncio
import base64
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
from status_tracker.deps import (
    ConnectionDep,
    ExportsDep,
    PoolDep,
    PrincipalDep,
    SettingsDep,
    require_api_key,
)
from status_tracker.error_codes import describe
from status_tracker.errors import BadRequest, NotFound, ServiceUnavailable, Unprocessable
from status_tracker.models import Event, MessagePage, summary_view, timeline
from status_tracker.precedence import FINAL_STATUSES, STATUS_ORDER
from status_tracker.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["query"], dependencies=[Depends(require_api_key)])

AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong API key (problem+json)"}
}
AccountQuery = Annotated[
    str | None,
    Query(description="Only this Twilio account's messages", pattern=r"^AC[0-9a-f]{32}$"),
]


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


CHANNEL_PREFIXES = privacy.CHANNEL_PREFIXES


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
    account_sid: AccountQuery = None,
    *,
    principal: PrincipalDep,
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
        account_sids=principal.visible_accounts(account_sid),
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
async def message_events(
    id_or_sid: str, connection: ConnectionDep, principal: PrincipalDep
) -> list[Event]:
    message = await repository.get_message(connection, id_or_sid, principal.visible_accounts())
    if message is None:
        raise NotFound(f"No message {id_or_sid!r}.")
    return timeline(await repository.list_events(connection, message))


class ErrorCount(BaseModel):
    error_code: int
    count: int
    description: str | None


class Bucket(BaseModel):
    start: datetime
    total: int
    delivered: int = Field(description="delivered or read")
    failed: int = Field(description="failed or undelivered")


class Group(BaseModel):
    key: str | None = Field(description="The group's value; null: messages without one")
    total: int
    by_status: dict[str, int]
    delivery_rate: float | None = Field(
        description="(delivered + read) / messages in a final status"
    )


class Stats(BaseModel):
    since: datetime
    until: datetime
    total: int
    by_status: dict[str, int]
    by_error_code: list[ErrorCount]
    delivery_rate: float | None = Field(
        description="(delivered + read) / messages in a final status"
    )
    sent_to_delivered_median_seconds: float | None = Field(
        description="Estimated from a histogram of delivery times (see the README)"
    )
    sent_to_delivered_p95_seconds: float | None = Field(
        description="Estimated from a histogram of delivery times (see the README)"
    )
    interval: Literal["hour", "day"]
    series: list[Bucket]
    group_by: str | None = None
    groups: list[Group] | None = Field(
        default=None, description="With `group_by`: one entry per value, the largest first"
    )


# Groups answered at most: a breakdown by reference can have one per message.
MAX_GROUPS = 1000


def delivery_rate(by_status: dict[str, int]) -> float | None:
    final = sum(count for s, count in by_status.items() if s in FINAL_STATUSES - {"received"})
    delivered = by_status.get("delivered", 0) + by_status.get("read", 0)
    return delivered / final if final else None


def percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """The `fraction` percentile of delivery times, from counts per bucket of
    repository.DELIVERY_BOUNDS (bucket i holds [bound i-1, bound i)): linear within the bucket
    where it falls; the last, open-ended bucket answers its lower bound."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    bounds = (0.0, *repository.DELIVERY_BOUNDS)
    target, seen = fraction * total, 0
    for index in sorted(histogram):
        count = histogram[index]
        if seen + count >= target and count > 0:
            low = bounds[index]
            if index + 1 >= len(bounds):
                return low
            return low + (bounds[index + 1] - low) * (target - seen) / count
        seen += count
    return bounds[-1]


@router.get("/stats", response_model=Stats, summary="Counts, delivery rate and delivery times",
            responses=AUTH)  # fmt: skip
async def stats(
    connection: ConnectionDep,
    principal: PrincipalDep,
    account_sid: AccountQuery = None,
    since: datetime | None = None,
    until: datetime | None = None,
    interval: Literal["hour", "day"] | None = Query(
        default=None, description="Series bucket; default: hour up to 2 days, else day"
    ),
    group_by: Literal["country", "from", "messaging_service", "reference", "error_code"]
    | None = Query(
        default=None,
        description="Break the counts down by the customer's country (ISO code), sender "
        "(`from`), Messaging Service, your `reference`, or error code",
        examples=["country"],
    ),
) -> Stats:
    """Over messages created in [since, until); by default the last 24 hours. Whole hours are
    read from hourly rollups, so a month answers as fast as a day."""
    since, until = window(since, until)
    interval = interval or ("hour" if until - since <= timedelta(days=2) else "day")
    accounts = principal.visible_accounts(account_sid)
    rows = await repository.message_stats(connection, since, until, interval, accounts)
    by_status: dict[str, int] = {}
    by_error: dict[int, int] = {}
    histogram: dict[int, int] = {}
    series: dict[datetime, dict[str, int]] = {}
    for row in rows:
        kind, count = row["kind"], row["count"]
        if kind == "status":
            by_status[row["status"]] = count
        elif kind == "error_code" and row["error_code"] is not None:
            by_error[row["error_code"]] = count
        elif kind == "delivery_bucket" and row["delivery_bucket"] is not None:
            histogram[row["delivery_bucket"]] = count
        elif kind == "series":
            series.setdefault(row["start"], {})[row["status"]] = count
    groups: dict[str | None, dict[str, int]] = {}
    if group_by is not None:
        breakdown = await repository.message_breakdown(connection, since, until, group_by, accounts)
        for row in breakdown:
            groups.setdefault(row["value"], {})[row["status"]] = row["count"]
    largest = sorted(groups.items(), key=lambda item: -sum(item[1].values()))[:MAX_GROUPS]
    return Stats(
        since=since,
        until=until,
        total=sum(by_status.values()),
        by_status=dict(sorted(by_status.items(), key=lambda item: -item[1])),
        by_error_code=[
            ErrorCount(error_code=code, count=count, description=describe(code))
            for code, count in sorted(by_error.items(), key=lambda item: -item[1])
        ],
        delivery_rate=delivery_rate(by_status),
        sent_to_delivered_median_seconds=percentile(histogram, 0.5),
        sent_to_delivered_p95_seconds=percentile(histogram, 0.95),
        interval=interval,
        series=[
            Bucket(
                start=start,
                total=sum(counts.values()),
                delivered=counts.get("delivered", 0) + counts.get("read", 0),
                failed=counts.get("failed", 0) + counts.get("undelivered", 0),
            )
            for start, counts in sorted(series.items())
        ],
        group_by=group_by,
        groups=None if group_by is None else [
            Group(key=key, total=sum(counts.values()), by_status=counts,
                  delivery_rate=delivery_rate(counts))
            for key, counts in largest
        ],
    )  # fmt: skip


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
    principal: PrincipalDep,
    account_sid: AccountQuery = None,
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
    accounts = principal.visible_accounts(account_sid)
    columns = repository.EVENT_EXPORT if events else repository.MESSAGE_EXPORT

    async def lines() -> AsyncGenerator[bytes, None]:
        async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
            async with connection.transaction(readonly=True):
                if format == "csv":
                    yield ("\ufeff" + ",".join(name for name, _, _ in columns) + "\r\n").encode()
                codes = (
                    () if events else await repository.export_error_codes(connection, since, until)
                )
                descriptions = {code: describe(code) or "" for code in codes}
                chunks = repository.export_lines(
                    connection, since, until, events=events, format=format,
                    descriptions=descriptions, accounts=accounts,
                )  # fmt: skip
                async for chunk in chunks:
                    yield chunk.encode()

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

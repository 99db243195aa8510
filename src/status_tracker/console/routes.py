"""The console's pages: overview, messages, one message's timeline, reconciliations.

Read-only: the only POSTs are sign-in, sign-out and the audited reveal of a message's numbers.
Every page reads through `repository` (the same queries as the API, index-backed) and is drawn
on the server; the one script only refreshes the page it is on, when `/console/events` (the
event stream, for the session's cookie) says something changed.
"""

import csv
import io
import json
import logging
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from status_tracker import api_keys, repository
from status_tracker.console import auth, charts, masking, queries
from status_tracker.console.auth import Session, SignInRequired
from status_tracker.deps import ConnectionDep, ExportsDep, PoolDep, SettingsDep
from status_tracker.error_codes import describe
from status_tracker.errors import BadRequest
from status_tracker.models import message_view, rfc3339, summary_view
from status_tracker.precedence import STATUS_ORDER
from status_tracker.routes import events, query

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
PREFIX = "/console"
PAGE_SIZE = 50
# Live pages refresh themselves when the event stream says something changed; this often while
# they cannot listen to it.
REFRESH_SECONDS = 15
# What a live page hears of: that something changed, never what (no numbers, no bodies).
LIVE_EVENT_TYPES = ("message.status_changed", "message.inbound", "reconciliation.completed")
LIVE_FIELDS = ("message_id", "status", "reconciliation_id")
# A console listens only while it is open: the outbox records for it (events.LEASE_SECONDS) a few
# minutes after it closes, not an hour.
LIVE_LEASE_SECONDS = 180
# Who reads the figures: the console admits only keys bound to no account.
CONSOLE = api_keys.Principal("console", api_keys.READ)
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7),
           "30d": timedelta(days=30)}  # fmt: skip
# A message still `sent` this long after it was created is shown as stuck.
STUCK_AFTER = timedelta(hours=1)
# What the pages may load: only this service's own files. No inline script or style at all.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages carry personal data: no cache keeps a copy.
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["when"] = lambda moment: (
    "" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
)
templates.env.globals.update(describe=describe, statuses=STATUS_ORDER, prefix=PREFIX)
router = APIRouter(prefix=PREFIX, include_in_schema=False)


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(HEADERS)
    return response


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=HEADERS)


def refuse(request: Request, status_code: int, message: str) -> Response:
    return page(request, "error.html", status_code, message=message, session=None)


async def posted_form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > 4096:
        raise BadRequest("The form is too large.")
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def _session(request: Request, connection: ConnectionDep) -> Session:
    session = await auth.current_session(connection, request)
    if session is None:
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(wanted)
    return session


SessionDep = Annotated[Session, Depends(_session)]


def local_path(next_path: str | None) -> str:
    """Where to go after signing in: a console page of this service, never another site (a
    path that starts with /console cannot name another host)."""
    if next_path and next_path.startswith(PREFIX):
        return next_path
    return PREFIX


# --- Signing in and out ------------------------------------------------------------------------


@router.get("/sign-in")
async def sign_in_form(request: Request, next: str | None = None) -> Response:
    return page(request, "sign_in.html", next=local_path(next), error=None, session=None)


@router.post("/sign-in")
async def sign_in(request: Request, connection: ConnectionDep) -> Response:
    if not auth.origin_is_own(request):
        return refuse(request, 403, "This form was posted from another site.")
    form = await posted_form(request)
    key = form.get("key", "").strip()
    next_path = local_path(form.get("next"))
    if not key or not await auth.key_signs_in(key, request):
        return page(request, "sign_in.html", 401, next=next_path, session=None,
                    error="That API key is not valid.")  # fmt: skip
    token = await auth.sign_in(connection, key)
    log.info("console sign-in", extra={"key": auth.sha256(key)[:12]})
    response = redirect(next_path)
    response.set_cookie(
        auth.COOKIE,
        token,
        max_age=int(auth.SESSION_LIFETIME.total_seconds()),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=auth.secure_cookie(request),
    )
    return response


@router.post("/sign-out")
async def sign_out(request: Request, connection: ConnectionDep, session: SessionDep) -> Response:
    form = await posted_form(request)
    if not auth.origin_is_own(request) or not auth.csrf_matches(session, form.get("csrf")):
        return refuse(request, 403, "The form's token is missing or out of date: reload the page.")
    await queries.delete_session(connection, session.token_sha256)
    response = redirect(f"{PREFIX}/sign-in")
    response.delete_cookie(auth.COOKIE, path=PREFIX, httponly=True, samesite="strict",
                           secure=auth.secure_cookie(request))  # fmt: skip
    return response


# --- Overview ----------------------------------------------------------------------------------


def buckets(since: datetime, until: datetime, interval: str) -> list[datetime]:
    step = timedelta(hours=1) if interval == "hour" else timedelta(days=1)
    start = since.replace(minute=0, second=0, microsecond=0)
    if interval == "day":
        start = start.replace(hour=0)
    starts = []
    while start < until:
        starts.append(start)
        start += step
    return starts


@router.get("")
async def overview(
    request: Request,
    connection: ConnectionDep,
    session: SessionDep,
    window: Literal["1h", "24h", "7d", "30d"] = "24h",
) -> Response:
    until = datetime.now(UTC)
    since = until - WINDOWS[window]
    interval: Literal["hour", "day"] = "hour" if WINDOWS[window] <= timedelta(days=2) else "day"
    reconciliations = await repository.list_reconciliations(connection, 1)
    context: dict[str, Any] = {
        "session": session,
        "window": window,
        "windows": list(WINDOWS),
        "last_reconciliation": reconciliations[0] if reconciliations else None,
        "refresh": REFRESH_SECONDS,
        "live": f"{PREFIX}/events",
        "stats": None,
    }
    try:
        # Signed in with a key bound to no account (auth.key_signs_in): every account's figures.
        stats = await query.stats(
            connection, principal=CONSOLE, account_sid=None, since=since, until=until,
            interval=interval, group_by=None,
        )  # fmt: skip
        stuck_until = until - STUCK_AFTER
        stuck_filter = repository.MessageFilter(statuses=["sent"], since=since, until=stuck_until)
        stuck = await repository.list_messages(connection, stuck_filter, 101)
    except (TimeoutError, asyncpg.QueryCanceledError):
        # Should the figures outlast the database timeout (a busy store), the page still
        # answers, and says so.
        return page(request, "overview.html", **context)
    # Every bucket of the window, empty ones too, so the time axis is even.
    counted = {bucket.start: bucket.model_dump() for bucket in stats.series}
    series = [
        counted.get(start, {"start": start, "total": 0, "delivered": 0, "failed": 0})
        for start in buckets(since, until, interval)
    ]
    stuck_search = {"status": "sent", "since": f"{since:%Y-%m-%dT%H:%M}",
                    "until": f"{stuck_until:%Y-%m-%dT%H:%M}"}  # fmt: skip
    return page(
        request,
        "overview.html",
        **{**context, "stats": stats},
        series=series,
        volume_chart=charts.volume(series, interval),
        rate_chart=charts.delivery_rate(series, interval),
        stuck=len(stuck),
        stuck_link=f"{PREFIX}/messages?{urlencode(stuck_search)}",
    )


# --- Messages ----------------------------------------------------------------------------------

FILTER_NAMES = ("status", "direction", "to", "from", "error_code", "reference", "since", "until")


class Invalid(ValueError):
    pass


def _moment(name: str, text: str) -> datetime:
    """A time from the search form: `datetime-local` (read as UTC) or RFC 3339."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise Invalid(f"{name}: give a time like 2026-12-04T08:00 (UTC).") from error
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def message_filter(request: Request, values: dict[str, str]) -> repository.MessageFilter:
    settings = request.state.settings
    status = values.get("status")
    if status and status not in STATUS_ORDER:
        raise Invalid(f"status: {status!r} is not a known status.")
    error_code = values.get("error_code")
    if error_code and not (error_code.isdigit() and int(error_code) < 2**31):
        raise Invalid("error code: give a number, like 30003.")
    return repository.MessageFilter(
        statuses=[status] if status else [],
        direction=values.get("direction") or None,
        # Exact numbers, looked up as stored (redacted when STATUS_TRACKER_REDACT_NUMBERS says).
        to=query.stored_addresses(values.get("to") or None, settings),
        from_=query.stored_addresses(values.get("from") or None, settings),
        error_code=int(error_code) if error_code else None,
        since=_moment("since", values["since"]) if values.get("since") else None,
        until=_moment("until", values["until"]) if values.get("until") else None,
        reference=values.get("reference") or None,
    )


def summary_row(record: Any) -> dict[str, Any]:
    view = summary_view(record)
    return {**view.model_dump(), "to": masking.number(view.to, False),
            "from_": masking.number(view.from_, False)}  # fmt: skip


@router.get("/messages")
async def messages(request: Request, connection: ConnectionDep, session: SessionDep) -> Response:
    values = {name: request.query_params.get(name, "").strip() for name in FILTER_NAMES}
    values = {name: value for name, value in values.items() if value}
    wanted = request.query_params.get("q", "").strip()
    notice = None
    if wanted:
        found = await repository.get_message(connection, wanted)
        if found is not None:
            return redirect(f"{PREFIX}/messages/{found['id']}")
        notice = f"No message has the SID or id {wanted!r}."
    rows: list[Any] = []
    next_link = None
    try:
        filters = message_filter(request, values)
        cursor = request.query_params.get("cursor")
        after = query.decode_cursor(cursor) if cursor else None
        rows = await repository.list_messages(connection, filters, PAGE_SIZE + 1, after)
    except (Invalid, BadRequest) as error:
        notice = str(error)
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        cursor = query.encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
        next_link = f"{PREFIX}/messages?" + urlencode({**values, "cursor": cursor})
    exported = urlencode(values)
    return page(
        request,
        "messages.html",
        session=session,
        values=values,
        q=wanted,
        notice=notice,
        rows=[summary_row(row) for row in rows],
        next_link=next_link,
        first_link=f"{PREFIX}/messages?{exported}" if request.query_params.get("cursor") else None,
        csv_link=f"{PREFIX}/export?format=csv&{exported}",
        jsonl_link=f"{PREFIX}/export?format=jsonl&{exported}",
    )


def _cell(value: Any) -> str:
    """A CSV cell as /v1/export writes one (its lines are made by PostgreSQL, these after the
    console masked their numbers): a cell a spreadsheet would run as a formula is kept as text."""
    text = "" if value is None else rfc3339(value) if isinstance(value, datetime) else str(value)
    return "'" + text if text[:1] in repository.FORMULA_STARTS else text


def _json_value(value: Any) -> Any:
    return rfc3339(value) if isinstance(value, datetime) else str(value)


EXPORT_COLUMNS = (
    "id", "sid", "direction", "status", "error_code", "error_description", "to", "from",
    "channel", "reference", "created_at", "updated_at", "sent_at", "delivered_at", "read_at",
    "final_at",
)  # fmt: skip


@router.get("/export")
async def export(
    request: Request,
    pool: PoolDep,
    exports: ExportsDep,
    settings: SettingsDep,
    session: SessionDep,
    format: Literal["csv", "jsonl"] = "csv",
) -> Response:
    """The messages of the current search, newest first, numbers masked as on screen (the API's
    /v1/export gives full records to an API key). Paged by the list's own keyset, so each page is
    an index range however large the store."""
    values = {name: request.query_params.get(name, "").strip() for name in FILTER_NAMES}
    try:
        filters = message_filter(request, values)
    except Invalid as error:
        return refuse(request, 400, str(error))

    async def lines() -> AsyncGenerator[bytes, None]:
        async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
            if format == "csv":
                yield ("\ufeff" + ",".join(EXPORT_COLUMNS) + "\r\n").encode()
            after = None
            while True:
                rows = await repository.list_messages(connection, filters, 1000, after)
                buffer = io.StringIO()
                writer = csv.writer(buffer)
                for record in rows:
                    row = summary_row(record)
                    row["from"] = row["from_"]
                    out = {name: row[name] for name in EXPORT_COLUMNS}
                    if format == "csv":
                        writer.writerow(_cell(out[name]) for name in EXPORT_COLUMNS)
                    else:
                        buffer.write(json.dumps(out, default=_json_value) + "\n")
                yield buffer.getvalue().encode()
                if len(rows) < 1000:
                    break
                after = (rows[-1]["created_at"], rows[-1]["id"])

    media_type = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    name = f"messages-{datetime.now(UTC):%Y%m%dT%H%M%S}.{format}"
    return query.ExportResponse(
        lines(), exports, settings.export_stall_timeout_seconds, media_type=media_type,
        headers={**HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
    )  # fmt: skip


def shown_json(value: Any, indent: int | None = None) -> str:
    # ensure_ascii=False: a masked number's dots stay dots, not escape sequences.
    return json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False)


# --- One message -------------------------------------------------------------------------------


async def message_page(
    request: Request, connection: Any, session: Session, id_or_sid: str, reveal: bool
) -> Response:
    message = await repository.get_message(connection, id_or_sid)
    if message is None:
        return page(request, "error.html", 404, session=session,
                    message=f"No message has the SID or id {id_or_sid!r}.")  # fmt: skip
    view = message_view(message, await repository.list_events(connection, message))
    seen: set[tuple[str, int | None]] = set()
    events = []
    for event in view.events:
        key = (event.status, event.error_code)
        # A report that did not raise the status either repeats one before it or came too late.
        mark = None if event.changed_status else ("duplicate" if key in seen else "stale")
        seen.add(key)
        raw = {"fields": masking.fields(event.fields, reveal),
               "query": masking.fields(event.query, reveal)}  # fmt: skip
        events.append({**event.model_dump(), "mark": mark, "raw": shown_json(raw, indent=2)})
    reply = None
    if message["direction"] == "inbound":
        reply = await repository.get_reply(connection, message["id"])
    return page(
        request,
        "message.html",
        session=session,
        message=view,
        to=masking.number(view.to, reveal),
        from_=masking.number(view.from_, reveal),
        body=masking.body(view.body, reveal),
        revealed=reveal,
        events=events,
        reply=reply,
        reveals=await queries.list_reveals(connection, message["id"], 5),
        # A revealed view is the answer to a POST: it is not fetched again.
        refresh=None if reveal else REFRESH_SECONDS,
        live=None if reveal else f"{PREFIX}/events?" + urlencode({"message": str(view.id)}),
    )


@router.get("/messages/{id_or_sid}")
async def message(
    request: Request, id_or_sid: str, connection: ConnectionDep, session: SessionDep
) -> Response:
    return await message_page(request, connection, session, id_or_sid, reveal=False)


@router.post("/messages/{message_id}/reveal")
async def reveal(
    request: Request, message_id: UUID, connection: ConnectionDep, session: SessionDep
) -> Response:
    """This view only, with numbers and body in full; who saw them, and when, is recorded."""
    form = await posted_form(request)
    if not auth.origin_is_own(request) or not auth.csrf_matches(session, form.get("csrf")):
        return refuse(request, 403, "The form's token is missing or out of date: reload the page.")
    if await repository.get_message(connection, str(message_id)) is None:
        return refuse(request, 404, f"No message has the id {str(message_id)!r}.")
    await queries.record_reveal(connection, message_id, session.key_fingerprint)
    log.info("console revealed numbers",
             extra={"message_id": str(message_id), "key": session.key_fingerprint})  # fmt: skip
    return await message_page(request, connection, session, str(message_id), reveal=True)


# --- Reconciliations ---------------------------------------------------------------------------


@router.get("/reconciliations")
async def reconciliations(
    request: Request, connection: ConnectionDep, session: SessionDep
) -> Response:
    passes = await repository.list_reconciliations(connection, 50)
    return page(request, "reconciliations.html", session=session, passes=passes,
                refresh=REFRESH_SECONDS, live=f"{PREFIX}/events")  # fmt: skip


@router.get("/reconciliations/{reconciliation_id}")
async def reconciliation(
    request: Request, reconciliation_id: int, connection: ConnectionDep, session: SessionDep
) -> Response:
    found = None
    if 1 <= reconciliation_id < 2**62:
        found = await repository.get_reconciliation(connection, reconciliation_id)
    if found is None:
        return page(request, "error.html", 404, session=session,
                    message=f"No reconciliation {reconciliation_id}.")  # fmt: skip
    discrepancies = [
        {**dict(row), "detail": shown_json(masking.fields(dict(row["detail"]), False))}
        for row in await repository.list_discrepancies(connection, reconciliation_id)
    ]
    return page(request, "reconciliation.html", session=session, run=found,
                discrepancies=discrepancies)  # fmt: skip


# --- Live updates ------------------------------------------------------------------------------


@router.get("/events")
async def live_events(
    request: Request,
    pool: PoolDep,
    settings: SettingsDep,
    message: UUID | None = None,
) -> Response:
    """The event stream (routes/events.py) for a signed-in page, whose EventSource cannot send
    an API key: each event's type and ids, for the page to fetch itself again (masked, drawn on
    the server). Refused (401, not a redirect to sign in) without a session; ends when the
    session does, at the stream's next lease renewal.

    It starts from now, whatever Last-Event-ID the browser sends: the page fetches itself
    again whenever the stream opens, which shows all that came before, where resuming would
    replay every event since a laptop went to sleep only to cause that one fetch."""
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        session = await auth.current_session(connection, request)
    if session is None:
        return Response("Sign in to the console first.", 401, headers=HEADERS,
                        media_type="text/plain")  # fmt: skip

    async def still_signed_in(connection: asyncpg.Connection) -> bool:
        return await auth.current_session(connection, request) is not None

    def render(row: Mapping[str, Any]) -> str | None:
        payload = row["payload"]
        if row["type"] not in LIVE_EVENT_TYPES:
            return None
        if message is not None and payload.get("message_id") != str(message):
            return None
        return json.dumps({name: payload[name] for name in LIVE_FIELDS if name in payload})

    return await events.event_stream(
        pool, settings, None, render, lease_seconds=LIVE_LEASE_SECONDS,
        still_allowed=still_signed_in, headers=HEADERS,
    )  # fmt: skip


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")

    async def to_sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        return redirect(f"{PREFIX}/sign-in?" + urlencode({"next": exc.next_path}))

    app.add_exception_handler(SignInRequired, to_sign_in)

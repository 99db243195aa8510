"""The operator console: sign-in, its guards (session, CSRF, CSP), its pages, the audit of
revealed numbers, and its event stream. Requests go through the app (ASGI), the stream's through
a real server; the browser tests are in test_console_e2e."""

import asyncio
import re
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from status_tracker import api_keys
from status_tracker.console.auth import COOKIE
from status_tracker.database import downgrade, migrate
from status_tracker.routes import events
from tests.conftest import Server, app_client
from tests.support import API_KEY, PUBLIC_URL, callback_fields, new_sid, signed
from tests.test_webhook_durability import read_events

SIGN_IN = "/console/sign-in"
BEFORE_CONSOLE = "2026_12_09_event_streams"


async def post_callback(client: httpx.AsyncClient, sid: str, status: str, **extra: str) -> None:
    target, body, headers = signed(callback_fields(sid, status, **extra))
    assert (await client.post(target, content=body, headers=headers)).status_code == 204


async def sign_in(client: httpx.AsyncClient, key: str = API_KEY) -> httpx.Response:
    """Sign in, keeping the session cookie (httpx would not send a Secure one over http)."""
    response = await client.post(
        SIGN_IN,
        content=f"key={key}&next=/console/messages",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": PUBLIC_URL},
    )
    if COOKIE in response.cookies:
        client.cookies.set(COOKIE, response.cookies[COOKIE])
    return response


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


@pytest.fixture
async def console(settings):  # type: ignore[no-untyped-def]
    """A browser-like client: no Authorization header, cookies kept."""
    async with app_client(settings) as http:
        del http.headers["Authorization"]
        yield http


async def test_pages_send_a_browser_without_a_session_to_sign_in(console):
    for path in ("/console", "/console/messages?status=sent", "/console/reconciliations"):
        response = await console.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith(SIGN_IN + "?next=%2Fconsole")
    page = await console.get(SIGN_IN)
    assert page.status_code == 200
    assert 'name="key"' in page.text


async def test_signing_in_sets_a_strict_http_only_secure_cookie_without_the_key(console):
    response = await sign_in(console)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/messages"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=")
    assert API_KEY not in cookie
    lowered = cookie.lower()
    # PUBLIC_URL is https: the cookie is Secure.
    assert "httponly" in lowered and "samesite=strict" in lowered and "secure" in lowered
    assert "path=/console" in lowered
    assert (await console.get("/console")).status_code == 200


async def test_a_wrong_key_is_refused_and_no_session_made(console, db):
    response = await sign_in(console, "st_wrong")
    assert response.status_code == 401
    assert "not valid" in response.text
    assert "set-cookie" not in response.headers
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_sign_in_posted_from_another_site_is_refused(console, db):
    response = await console.post(
        SIGN_IN, content=f"key={API_KEY}",
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Origin": "https://evil.example"},
    )  # fmt: skip
    assert response.status_code == 403
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_sign_in_sends_back_only_to_console_pages(console):
    response = await console.post(
        SIGN_IN, content=f"key={API_KEY}&next=//evil.example/console",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert response.headers["location"] == "/console"


async def test_pages_forbid_inline_scripts_and_foreign_sources(console):
    await sign_in(console)
    response = await console.get("/console")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "<script>" not in response.text and "style=" not in response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_sign_out_needs_the_session_token_and_ends_the_session(console, db):
    await sign_in(console)
    page = (await console.get("/console")).text
    forged = await console.post(
        "/console/sign-out", content="csrf=forged",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert forged.status_code == 403
    assert (await console.get("/console")).status_code == 200
    response = await console.post(
        "/console/sign-out", content=f"csrf={csrf_of(page)}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert response.status_code == 303
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0
    console.cookies.clear()
    assert (await console.get("/console")).status_code == 303


async def test_a_session_ends_when_its_key_is_no_longer_configured(settings, console):
    response = await sign_in(console)
    token = response.cookies[COOKIE]
    rotated = settings.model_copy(update={"api_keys": []})
    async with app_client(rotated) as other:
        other.cookies.set(COOKIE, token)
        assert (await other.get("/console")).status_code == 303


async def test_overview_counts_the_window_and_explains_error_codes(client, console):
    for _ in range(3):
        sid = new_sid()
        await post_callback(client, sid, "sent")
        await post_callback(client, sid, "delivered")
    failed = new_sid()
    await post_callback(client, failed, "undelivered", ErrorCode="30003")
    await sign_in(console)
    page = (await console.get("/console?window=1h")).text
    assert 'data-figure="total">4<' in page
    assert 'data-figure="delivery-rate">75.0 %<' in page
    assert "https://www.twilio.com/docs/api/errors/30003" in page
    assert "The handset is unreachable" in page
    # Both charts are drawn, with a bar for the messages of this hour.
    assert page.count('<svg class="chart"') == 2
    assert re.search(
        r'class="bar-delivered" x="[\d.]+" y="[\d.]+" width="[\d.]+" height="[1-9]', page
    )
    assert "No reconciliation has run yet." in page


async def test_overview_shows_messages_stuck_in_sent(client, console, db):
    sid = new_sid()
    await post_callback(client, sid, "sent")
    await db.execute(
        "UPDATE messages SET created_at = now() - interval '3 hours' WHERE sid = $1", sid
    )
    await post_callback(client, new_sid(), "sent")  # just sent: not stuck
    await sign_in(console)
    page = (await console.get("/console")).text
    assert 'data-figure="stuck">1<' in page


async def test_finding_a_message_by_sid_or_id_opens_it(client, console, db):
    sid = new_sid()
    await post_callback(client, sid, "sent")
    message_id = await db.fetchval("SELECT id FROM messages WHERE sid = $1", sid)
    await sign_in(console)
    for wanted in (sid, str(message_id)):
        response = await console.get("/console/messages", params={"q": wanted})
        assert response.status_code == 303
        assert response.headers["location"] == f"/console/messages/{message_id}"
    missing = await console.get("/console/messages", params={"q": new_sid()})
    assert "No message has the SID or id" in missing.text


async def test_search_filters_by_exact_number_and_status_and_masks_numbers(client, console):
    wanted, other = new_sid(), new_sid()
    await post_callback(client, wanted, "delivered", To="+14155550123")
    await post_callback(client, other, "delivered", To="+14155550999")
    await sign_in(console)
    page = (await console.get("/console/messages", params={"to": "+14155550123"})).text
    assert wanted in page and other not in page
    assert "+14155550123" not in page.split("</form>")[-1]  # masked in the list
    assert "+14•••••••23" in page
    by_status = (await console.get("/console/messages", params={"status": "undelivered"})).text
    assert wanted not in by_status and "No message matches." in by_status
    bad = await console.get("/console/messages", params={"error_code": "abc"})
    assert bad.status_code == 200 and "give a number" in bad.text


async def test_search_by_number_finds_numbers_stored_redacted(settings, client):
    redacting = settings.model_copy(update={"redact_numbers": "last4"})
    sid = new_sid()
    async with app_client(redacting) as http:
        await post_callback(http, sid, "sent", To="+14155550123")
        del http.headers["Authorization"]
        await sign_in(http)
        page = (await http.get("/console/messages", params={"to": "+14155550123"})).text
    assert sid in page


async def test_messages_are_paged_by_keyset_without_skipping_or_repeating(client, console):
    sids = [new_sid() for _ in range(55)]
    for sid in sids:
        await post_callback(client, sid, "sent")
    await sign_in(console)
    first = (await console.get("/console/messages")).text
    next_link = re.search(r'href="([^"]+)" rel="next"', first)
    assert next_link is not None
    second = (await console.get(next_link.group(1).replace("&amp;", "&"))).text
    assert 'rel="next"' not in second
    shown = [sid for sid in sids if sid in first] + [sid for sid in sids if sid in second]
    assert sorted(shown) == sorted(sids)


async def test_timeline_marks_duplicate_and_stale_reports_and_masks_raw_fields(client, console, db):
    sid = new_sid()
    # A repeated delivered is a duplicate; a queued after them came too late: stale.
    for status in ("sent", "delivered", "delivered", "queued"):
        await post_callback(client, sid, status, To="+14155550123", RawDlrDoneDate="2612040812")
    message_id = await db.fetchval("SELECT id FROM messages WHERE sid = $1", sid)
    await sign_in(console)
    page = (await console.get(f"/console/messages/{sid}")).text
    assert page.count('class="event"') == 2
    assert page.count('class="event duplicate"') == 1
    assert page.count('class="event stale"') == 1
    assert "2026-12-04 08:12:00Z" in page  # the carrier's time beside the received time
    assert "+14155550123" not in page
    assert f"/console/messages/{message_id}/reveal" in page
    missing = await console.get(f"/console/messages/{new_sid()}")
    assert missing.status_code == 404


async def test_revealing_numbers_is_audited_and_needs_the_session_token(client, console, db):
    sid = new_sid()
    await post_callback(client, sid, "sent", To="+14155550123")
    message_id = await db.fetchval("SELECT id FROM messages WHERE sid = $1", sid)
    await sign_in(console)
    page = (await console.get(f"/console/messages/{sid}")).text
    target = f"/console/messages/{message_id}/reveal"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    forged = await console.post(target, content="csrf=forged", headers=form)
    assert forged.status_code == 403
    assert await db.fetchval("SELECT count(*) FROM console_reveals") == 0
    revealed = await console.post(target, content=f"csrf={csrf_of(page)}", headers=form)
    assert revealed.status_code == 200
    assert "+14155550123" in revealed.text
    audit = await db.fetch("SELECT message_id, key_fingerprint FROM console_reveals")
    assert [row["message_id"] for row in audit] == [message_id]
    assert API_KEY not in audit[0]["key_fingerprint"]
    # Only that view: the page is masked again when opened anew, and says who looked.
    again = (await console.get(f"/console/messages/{sid}")).text
    assert "+14155550123" not in again
    assert f"by key {audit[0]['key_fingerprint']}" in again


async def test_export_of_the_current_search_as_csv_and_json_lines(client, console):
    wanted, other = new_sid(), new_sid()
    await post_callback(client, wanted, "undelivered", ErrorCode="30003", To="+14155550123")
    await post_callback(client, other, "delivered")
    await sign_in(console)
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    csv_export = await console.get(
        "/console/export", params={"format": "csv", "status": "undelivered", "since": since}
    )
    assert csv_export.status_code == 200
    assert csv_export.headers["content-type"].startswith("text/csv")
    lines = csv_export.text.lstrip("\ufeff").strip().split("\r\n")
    assert lines[0].startswith("id,sid,direction,status,error_code")
    assert len(lines) == 2 and wanted in lines[1] and "30003" in lines[1]
    assert "+14155550123" not in csv_export.text and "'+14•••••••23" in csv_export.text
    jsonl = await console.get("/console/export", params={"format": "jsonl", "error_code": "30003"})
    rows = [line for line in jsonl.text.splitlines() if line]
    assert len(rows) == 1 and wanted in rows[0]


async def test_reconciliations_list_and_show_their_discrepancies(console, db):
    pass_id = await db.fetchval(
        "INSERT INTO reconciliations (since, until, dry_run, state, counts, finished_at) "
        "VALUES (now() - interval '1 day', now(), false, 'finished', "
        "'{\"not_at_twilio\": 1}', now()) RETURNING id"
    )
    await db.execute(
        "INSERT INTO discrepancies (reconciliation_id, kind, resolved, sid, detail) "
        "VALUES ($1, 'not_at_twilio', false, 'SMgone', '{\"to\": \"+14155550123\"}')",
        pass_id,
    )
    await sign_in(console)
    listing = (await console.get("/console/reconciliations")).text
    assert f'/console/reconciliations/{pass_id}"' in listing and "not_at_twilio 1" in listing
    detail = (await console.get(f"/console/reconciliations/{pass_id}")).text
    assert "SMgone" in detail and "+14155550123" not in detail
    overview = (await console.get("/console")).text
    assert f"Pass {pass_id}</a>" in overview
    assert (await console.get("/console/reconciliations/999999")).status_code == 404


async def test_static_files_are_served_by_the_service(console):
    script = await console.get("/console/static/console.js")
    assert script.status_code == 200 and "data-refresh" in script.text
    assert (await console.get("/console/static/console.css")).status_code == 200


async def test_a_filled_store_upgrades_to_the_console_without_losing_an_event(client, database_url):
    for _ in range(20):
        sid = new_sid()
        await post_callback(client, sid, "sent")
        await post_callback(client, sid, "delivered")
    await asyncio.to_thread(downgrade, database_url, BEFORE_CONSOLE)
    connection = await asyncpg.connect(database_url)
    try:
        before = await connection.fetch("SELECT * FROM message_events ORDER BY id")
        messages = await connection.fetch("SELECT * FROM messages ORDER BY id")
        await asyncio.to_thread(migrate, database_url, "2026_12_10_console")
        assert await connection.fetch("SELECT * FROM message_events ORDER BY id") == before
        assert await connection.fetch("SELECT * FROM messages ORDER BY id") == messages
        assert len(before) == 40
        assert await connection.fetchval("SELECT count(*) FROM console_reveals") == 0
    finally:
        await connection.close()


async def test_an_inbound_message_and_its_reply_link_to_each_other_with_the_body_hidden(
    settings, db
):
    replying = settings.model_copy(update={"auto_reply": "Thanks, we got it"})
    sid = new_sid("SM")
    fields = {
        "MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "0" * 32, "From": "+14155550123",
        "To": "+15005550006", "Body": "my secret words", "ProfileName": "Ada Lovelace",
    }  # fmt: skip
    async with app_client(replying) as http:
        target, body, headers = signed(fields, path="/webhooks/twilio/inbound")
        assert (await http.post(target, content=body, headers=headers)).status_code == 200
        del http.headers["Authorization"]
        await sign_in(http)
        inbound = (await http.get(f"/console/messages/{sid}")).text
        reply_id = await db.fetchval("SELECT id FROM messages WHERE in_reply_to IS NOT NULL")
        assert f'href="/console/messages/{reply_id}"' in inbound
        assert "my secret words" not in inbound and "Ada Lovelace" not in inbound
        assert "15 characters, hidden" in inbound
        reply = (await http.get(f"/console/messages/{reply_id}")).text
        inbound_id = await db.fetchval("SELECT id FROM messages WHERE sid = $1", sid)
        assert f'href="/console/messages/{inbound_id}"' in reply


async def test_the_cookie_is_not_secure_when_the_public_url_is_plain_http(settings):
    local = settings.model_copy(update={"public_url": "http://127.0.0.1:8000"})
    async with app_client(local) as http:
        del http.headers["Authorization"]
        response = await http.post(
            SIGN_IN, content=f"key={API_KEY}",
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "Origin": "http://127.0.0.1:8000"},
        )  # fmt: skip
    cookie = response.headers["set-cookie"].lower()
    assert response.status_code == 303
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie


async def test_overview_still_answers_when_its_figures_outlast_the_database_timeout(
    settings, database_url
):
    """A lock on messages holds the figures' queries past the timeout, as a scan of a long
    window over a large store would: the page answers, says so, and still shows the rest."""
    impatient = settings.model_copy(update={"db_timeout_seconds": 0.5})
    locker = await asyncpg.connect(database_url)
    try:
        async with app_client(impatient) as http:
            del http.headers["Authorization"]
            await sign_in(http)
            async with locker.transaction():
                await locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                response = await http.get("/console")
            assert response.status_code == 200
            assert 'data-figure="unavailable"' in response.text
            assert "No reconciliation has run yet." in response.text
            # The connection went back to the pool in a usable state.
            assert 'data-figure="total">0<' in (await http.get("/console")).text
    finally:
        await locker.close()


async def test_a_read_only_key_reads_the_console_and_is_refused_a_send(settings):
    read_key = "st_read_only_console_key"
    reading = settings.model_copy(update={"read_keys": [SecretStr(read_key)]})
    async with app_client(reading) as http:
        del http.headers["Authorization"]
        assert (await sign_in(http, read_key)).status_code == 303
        assert (await http.get("/console/messages")).status_code == 200
        refused = await http.post(
            "/v1/messages",
            json={"to": "+14155550100", "body": "hi"},
            headers={"Authorization": f"Bearer {read_key}"},
        )
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"


async def test_a_key_bound_to_an_account_cannot_sign_in_to_every_accounts_console(console, db):
    _, key = await api_keys.create(db, "bound", ["read"], ["AC" + "b" * 32])
    assert (await sign_in(console, key)).status_code == 401
    assert COOKIE not in console.cookies


async def test_a_signed_in_page_hears_of_a_callback_on_the_console_stream(server: Server, db):
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as browser:
        signed_in = await browser.post(
            SIGN_IN, content=f"key={API_KEY}",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": server.url},
        )  # fmt: skip
        assert signed_in.status_code == 303 and COOKIE in browser.cookies
        watched, other = new_sid(), new_sid()
        for sid in (watched, other):
            target, body, headers = signed(callback_fields(sid, "sent"), public_url=server.url)
            assert (await browser.post(target, content=body, headers=headers)).status_code == 204
        watched_id = await db.fetchval("SELECT id FROM messages WHERE sid = $1", watched)
        async with (
            browser.stream("GET", "/console/events") as everything,
            browser.stream("GET", "/console/events", params={"message": str(watched_id)}) as one,
        ):
            assert everything.status_code == one.status_code == 200
            assert everything.headers["content-type"].startswith("text/event-stream")
            assert "connect-src 'self'" in everything.headers["content-security-policy"]
            await asyncio.sleep(0.5)
            for sid in (other, watched):
                fields = callback_fields(sid, "delivered", To="+14155550123")
                target, body, headers = signed(fields, public_url=server.url)
                assert (
                    await browser.post(target, content=body, headers=headers)
                ).status_code == 204
            heard = await read_events(everything, 2)
            heard_one = await read_events(one, 1)
    assert [event["type"] for event in heard] == ["message.status_changed"] * 2
    assert heard_one[0]["data"] == {"message_id": str(watched_id), "status": "delivered"}
    # Only what changed, never the numbers: the page fetches its own masked view again.
    assert {event["data"]["message_id"] for event in heard} == {
        str(watched_id),
        str(await db.fetchval("SELECT id FROM messages WHERE sid = $1", other)),
    }
    assert all(set(event["data"]) == {"message_id", "status"} for event in heard)


async def test_the_console_stream_is_refused_without_a_session(console, db):
    refused = await console.get("/console/events")
    assert refused.status_code == 401
    assert not refused.headers["content-type"].startswith("text/event-stream")
    # An API key is no console session (and the API's own stream is /v1/events/stream).
    with_key = await console.get("/console/events", headers={"Authorization": f"Bearer {API_KEY}"})
    assert with_key.status_code == 401
    await sign_in(console)
    page = (await console.get("/console")).text
    assert 'data-live="/console/events"' in page
    signed_out = await console.post(
        "/console/sign-out", content=f"csrf={csrf_of(page)}",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": PUBLIC_URL},
    )  # fmt: skip
    assert signed_out.status_code == 303
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0
    assert (await console.get("/console/events")).status_code == 401


async def test_a_stream_ends_once_it_may_no_longer_go_on(database_url, settings):
    """What ends a console's stream when its session ends (asked at each renewal of the lease,
    every minute in the service)."""
    checks: list[bool] = []

    async def still_allowed(connection: asyncpg.Connection) -> bool:
        checks.append(len(checks) < 2)
        return checks[-1]

    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        response = await events.event_stream(
            pool, settings, None, lambda row: None, renew_seconds=0, still_allowed=still_allowed
        )
        async with asyncio.timeout(10):
            sent = [chunk async for chunk in response.body_iterator]
    assert sent == [b"retry: 1000\n\n"]
    assert checks == [True, True, False]

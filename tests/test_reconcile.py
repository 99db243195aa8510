"""Reconciliation against the simulator losing callbacks and timing out creates."""

import asyncio
import itertools
import random
import re
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import orjson
import pytest
from pydantic import SecretStr

from status_tracker.database import create_pool, downgrade, migrate
from status_tracker.precedence import FINAL_STATUSES
from status_tracker.reconcile import PassNotDue, PassRunning, run_pass
from status_tracker.repository import RECONCILE_LOCK, STALE_MESSAGES
from status_tracker.settings import Settings
from status_tracker.twilio_api import TwilioApi
from status_tracker.twilio_http import RetryPolicy
from tests.conftest import COMMAND, ENV_PREFIXES, Server, Simulator, sending_environment
from tests.support import ACCOUNT_SID, API_KEY, AUTH_TOKEN, callback_fields, new_sid, signed

SUFFIXES = ["0100", "0100", "0001", "0002", "0005", "0006", "0007"]


@pytest.fixture
def lossy_simulator(tmp_path) -> AsyncIterator[Simulator]:
    simulator = Simulator(tmp_path, "--seed", "5", "--loss", "0.4", "--create-timeout", "2",
                          "--delay-min", "0", "--delay-max", "0.05")  # fmt: skip
    yield simulator
    simulator.close()


@pytest.fixture
def pass_settings(database_url, lossy_simulator) -> Settings:
    return Settings(
        database_url=SecretStr(database_url),
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=SecretStr(AUTH_TOKEN),
        twilio_api_base_url=lossy_simulator.url,
    )


@pytest.fixture
async def twilio(lossy_simulator) -> AsyncIterator[TwilioApi]:
    api = TwilioApi(ACCOUNT_SID, AUTH_TOKEN, base_url=lossy_simulator.url)
    yield api
    await api.close()


@pytest.fixture
async def pool(pass_settings, database_url) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(pass_settings, database_url)
    yield created
    await created.close()


async def send_through_the_service(
    database_url, lossy_simulator, tmp_path, count: int
) -> list[dict]:
    rng = random.Random(9)
    with Server(
        sending_environment(database_url, tmp_path, lossy_simulator.url), tmp_path
    ) as server:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
            gate = asyncio.Semaphore(16)

            async def send(to: str) -> dict:
                async with gate:
                    response = await client.post("/v1/messages", json={"to": to, "body": "b"})
                    return {"to": to, "code": response.status_code, **response.json()}

            sent = await asyncio.gather(
                *(send(f"+1415555{rng.choice(SUFFIXES)}") for _ in range(count))
            )
            await asyncio.sleep(2)  # the simulator finishes its lifecycles (and loses callbacks)
    return list(sent)


async def twilio_statuses(twilio: TwilioApi) -> dict[str, tuple[str, int | None]]:
    """Every message the simulator has, sent or not (no date filter)."""
    return {m.sid: (m.status, m.error_code) async for m in twilio.list_messages()}


async def stored(db) -> dict[str, tuple[str, int | None]]:
    rows = await db.fetch("SELECT sid, status, error_code FROM messages WHERE sid IS NOT NULL")
    return {row["sid"]: (row["status"], row["error_code"]) for row in rows}


async def test_one_pass_settles_everything_it_can_and_reports_the_rest(
    database_url, lossy_simulator, tmp_path, twilio, pool, pass_settings, db, client
):
    started = datetime.now(UTC) - timedelta(minutes=1)
    sent = await send_through_the_service(database_url, lossy_simulator, tmp_path, 150)
    direct = await twilio.create_message(to="+14155559100", from_="+15005550006", body="elsewhere")
    await asyncio.sleep(0.5)

    truth = await twilio_statuses(twilio)
    before = await stored(db)
    assert any(before.get(sid) != status for sid, status in truth.items()), "nothing was lost"

    window = {"since": started, "until": datetime.now(UTC) + timedelta(minutes=1)}
    report = await run_pass(pool, twilio, pass_settings, **window)
    assert report.state == "finished", report.errors

    after = await stored(db)
    assert {sid: after.get(sid) for sid in truth} == truth
    assert direct.sid in after
    assert report.counts["missing_locally"] >= 1
    unknown = await db.fetch(
        "SELECT id, to_number, sid, send_outcome FROM messages WHERE to_number LIKE '%0007'"
    )
    assert unknown and all(row["sid"] is not None for row in unknown)
    assert all(row["send_outcome"] == "accepted" for row in unknown)
    never_created = {m["message_id"] for m in sent if m["to"].endswith("0006")}
    assert never_created
    assert {str(d.message_id) for d in report.unresolved} == never_created
    assert {d.kind for d in report.unresolved} == {"not_sent"}

    events = await db.fetchval("SELECT count(*) FROM message_events")
    again = await run_pass(pool, twilio, pass_settings, **window)
    assert await db.fetchval("SELECT count(*) FROM message_events") == events
    assert again.counts["status_differs"] == again.counts["missing_locally"] == 0
    assert again.counts["unknown_attempt_matched"] == 0
    assert len(again.unresolved) == len(report.unresolved)

    listed = (await client.get("/v1/reconciliations")).json()
    assert [r["id"] for r in listed] == [again.reconciliation_id, report.reconciliation_id]
    detail = (await client.get(f"/v1/reconciliations/{report.reconciliation_id}")).json()
    assert detail["state"] == "finished"
    assert detail["counts"] == dict(report.counts)
    assert {d["message_id"] for d in detail["unresolved"]} == never_created
    assert (await client.get("/v1/reconciliations/999999")).status_code == 404


async def test_dry_run_reports_but_changes_nothing(
    database_url, lossy_simulator, tmp_path, twilio, pool, pass_settings, db
):
    started = datetime.now(UTC) - timedelta(minutes=1)
    await send_through_the_service(database_url, lossy_simulator, tmp_path, 40)
    before = await stored(db)
    events = await db.fetchval("SELECT count(*) FROM message_events")
    report = await run_pass(
        pool, twilio, pass_settings, since=started,
        until=datetime.now(UTC) + timedelta(minutes=1), dry_run=True,
    )  # fmt: skip
    assert report.counts["status_differs"] + report.counts["unknown_attempt_matched"] > 0
    assert await stored(db) == before
    assert await db.fetchval("SELECT count(*) FROM message_events") == events


async def test_stale_messages_are_polled(
    database_url, lossy_simulator, tmp_path, twilio, pool, pass_settings, db
):
    await send_through_the_service(database_url, lossy_simulator, tmp_path, 40)
    stale_now = pass_settings.model_copy(update={"stale_after": timedelta(0)})
    far_past = datetime(2000, 1, 1, tzinfo=UTC)
    report = await run_pass(pool, twilio, stale_now, since=far_past, until=far_past)
    assert report.state == "finished"
    polled = await db.fetchval("SELECT count(*) FROM message_events WHERE source = 'poll'")
    assert polled == report.counts["status_differs"] > 0


async def test_only_one_pass_runs_at_a_time(twilio, pool, pass_settings, database_url):
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", RECONCILE_LOCK)
        now = datetime.now(UTC)
        with pytest.raises(PassRunning):
            await run_pass(pool, twilio, pass_settings, since=now - timedelta(hours=1), until=now)
    finally:
        await holder.close()
    report = await run_pass(pool, twilio, pass_settings, since=now - timedelta(hours=1), until=now)
    assert report.state == "finished"


def test_reconcile_command_prints_a_summary(database_url, lossy_simulator):
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    environment.update({
        "DATABASE_URL": database_url, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_API_BASE_URL": lossy_simulator.url,
    })  # fmt: skip
    done = subprocess.run(
        [*COMMAND, "reconcile", "--dry-run"], env=environment, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout and "dry run" in done.stdout


SERVICE = "MG" + "1" * 32
SENDER = "+15005550006"


async def unknown_attempt(db, to: str, *, service: str | None = None, sender: str | None = None):
    """A send recorded locally whose answer never came (Twilio timed out or answered 5xx)."""
    return await db.fetchval(
        """
        INSERT INTO messages (status, status_rank, to_number, from_number,
                              messaging_service_sid, body, send_outcome)
        VALUES ('pending', 5, $1, $2, $3, 'b', 'unknown') RETURNING id
        """,
        to,
        sender,
        service,
    )


def around_now() -> dict[str, datetime]:
    now = datetime.now(UTC)
    return {"since": now - timedelta(hours=1), "until": now + timedelta(minutes=1)}


async def test_an_unknown_send_twilio_has_not_sent_yet_still_gets_its_sid(
    twilio, pool, pass_settings, db
):
    # Scheduled: Twilio's list by date sent leaves it out, so only a look-up by number finds it.
    attempt = await unknown_attempt(db, "+14155550100", service=SERVICE)
    scheduled = await twilio.create_message(
        to="+14155550100", messaging_service_sid=SERVICE, body="b", schedule_type="fixed",
        send_at=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip
    report = await run_pass(pool, twilio, pass_settings, **around_now())
    assert report.counts["unknown_attempt_matched"] == 1
    assert report.unresolved == []
    row = await db.fetchrow("SELECT sid, status, send_outcome FROM messages WHERE id = $1", attempt)
    assert tuple(row) == (scheduled.sid, "scheduled", "accepted")


async def test_two_sends_that_fit_one_twilio_message_are_reported_not_guessed(
    twilio, pool, pass_settings, db
):
    first = await unknown_attempt(db, "+14155550100", sender=SENDER)
    second = await unknown_attempt(db, "+14155550100", sender=SENDER)
    message = await twilio.create_message(to="+14155550100", from_=SENDER, body="b")
    await asyncio.sleep(0.5)  # sent: in the window listing
    window = around_now()
    reports = [await run_pass(pool, twilio, pass_settings, **window) for _ in range(2)]
    for report in reports:
        assert {(d.kind, d.message_id) for d in report.unresolved} == {
            ("ambiguous_match", first),
            ("ambiguous_match", second),
        }
        assert all(d.detail["candidates"] == [message.sid] for d in report.unresolved)
        assert report.counts["missing_locally"] == 0
    assert await db.fetchval("SELECT count(*) FROM messages WHERE sid IS NOT NULL") == 0


async def test_a_local_message_twilio_does_not_know_is_reported(twilio, pool, pass_settings, db):
    sid = "SM" + "0" * 32
    await db.execute(
        "INSERT INTO messages (sid, status, status_rank, to_number) "
        "VALUES ($1, 'sent', 50, '+14155550100')",
        sid,
    )
    report = await run_pass(pool, twilio, pass_settings, **around_now())
    assert [(d.kind, d.sid) for d in report.unresolved] == [("not_at_twilio", sid)]
    assert await db.fetchval("SELECT status FROM messages WHERE sid = $1", sid) == "sent"


async def test_a_stale_message_inside_the_window_is_applied_once(
    database_url, lossy_simulator, tmp_path, twilio, pool, pass_settings, db
):
    started = datetime.now(UTC) - timedelta(minutes=1)
    await send_through_the_service(database_url, lossy_simulator, tmp_path, 60)
    last_event = await db.fetchval("SELECT max(id) FROM message_events")
    stale_now = pass_settings.model_copy(update={"stale_after": timedelta(0)})
    report = await run_pass(
        pool, twilio, stale_now, since=started, until=datetime.now(UTC) + timedelta(minutes=1)
    )
    added = await db.fetch(
        "SELECT message_id, source FROM message_events WHERE id > $1", last_event
    )
    assert report.counts["status_differs"] > 0
    assert len(added) == len({row["message_id"] for row in added})
    assert len(added) == sum(report.counts[kind] for kind in
                             ("status_differs", "unknown_attempt_matched", "missing_locally"))  # fmt: skip
    assert "poll" in {row["source"] for row in added}


async def test_an_interrupted_pass_is_marked_so_by_the_next(twilio, pool, pass_settings, db):
    await db.execute(
        "INSERT INTO reconciliations (since, until, dry_run) VALUES (now(), now(), false)"
    )
    report = await run_pass(pool, twilio, pass_settings, **around_now())
    states = await db.fetch("SELECT id, state FROM reconciliations ORDER BY id")
    assert [row["state"] for row in states] == ["interrupted", "finished"]
    assert states[1]["id"] == report.reconciliation_id


async def test_a_scheduled_pass_is_skipped_right_after_another_workers(twilio, pool, pass_settings):
    window = around_now()
    await run_pass(pool, twilio, pass_settings, **window)
    with pytest.raises(PassNotDue):
        await run_pass(pool, twilio, pass_settings, **window,
                       unless_finished_after=datetime.now(UTC) - timedelta(minutes=30))  # fmt: skip
    report = await run_pass(pool, twilio, pass_settings, **window,
                            unless_finished_after=datetime.now(UTC))  # fmt: skip
    assert report.state == "finished"


def test_reconcile_command_fails_while_another_pass_runs(database_url, lossy_simulator):
    import os

    async def hold_and_run() -> subprocess.CompletedProcess[str]:
        holder = await asyncpg.connect(database_url)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", RECONCILE_LOCK)
            return await asyncio.to_thread(
                subprocess.run, [*COMMAND, "reconcile"], env=environment,
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            await holder.close()

    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    environment.update({
        "DATABASE_URL": database_url, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_API_BASE_URL": lossy_simulator.url,
    })  # fmt: skip
    done = asyncio.run(hold_and_run())
    assert done.returncode != 0
    assert "another reconciliation pass is running" in done.stderr


async def test_stale_messages_are_polled_for_a_week_then_left_alone(
    twilio, pool, pass_settings, db
):
    for sid, age in (("SM" + "1" * 32, timedelta(days=1)), ("SM" + "2" * 32, timedelta(days=9))):
        await db.execute(
            "INSERT INTO messages (sid, status, status_rank, to_number, created_at) "
            "VALUES ($1, 'sent', 50, '+14155550100', now() - $2::interval)",
            sid,
            age,
        )
    report = await run_pass(pool, twilio, pass_settings, **around_now())
    assert [(d.kind, d.sid) for d in report.unresolved] == [("not_at_twilio", "SM" + "1" * 32)]


async def test_the_stale_query_and_its_index_know_exactly_the_final_statuses(
    db: asyncpg.Connection,
) -> None:
    """Both write the final statuses out; if either drifts from FINAL_STATUSES, stale messages
    are missed or final ones polled, and if they drift apart, the query scans the table."""
    predicate = await db.fetchval(
        "SELECT pg_get_expr(indpred, indrelid) FROM pg_index "
        "WHERE indexrelid = 'messages_not_final'::regclass"
    )
    assert set(re.findall(r"'(\w+)'", predicate)) == FINAL_STATUSES
    assert set(re.findall(r"'(\w+)'", STALE_MESSAGES)) - {"inbound"} == FINAL_STATUSES
    async with db.transaction():
        await db.execute("SET LOCAL enable_seqscan = off")
        now = datetime.now(UTC)
        plan = await db.fetch(f"EXPLAIN {STALE_MESSAGES}", now - timedelta(days=1), now)
    assert "messages_not_final" in "\n".join(row[0] for row in plan)


FAST_RETRY = RetryPolicy(backoff_seconds=0.01, max_wait_seconds=0.05)


@pytest.fixture
def faulty_simulator(tmp_path) -> AsyncIterator[Simulator]:
    """Loses callbacks, and answers a fifth of GETs 429 and a tenth 503."""
    simulator = Simulator(tmp_path, "--seed", "11", "--loss", "0.4", "--create-timeout", "2",
                          "--delay-min", "0", "--delay-max", "0.05",
                          "--get-429", "0.2", "--get-5xx", "0.1")  # fmt: skip
    yield simulator
    simulator.close()


def faulty_settings(database_url: str, simulator: Simulator) -> Settings:
    return Settings(
        database_url=SecretStr(database_url),
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=SecretStr(AUTH_TOKEN),
        twilio_api_base_url=simulator.url,
    )


async def test_a_pass_through_429s_and_503s_on_every_get_completes_with_every_status_right(
    database_url, faulty_simulator, tmp_path, db
):
    settings = faulty_settings(database_url, faulty_simulator)
    started = datetime.now(UTC) - timedelta(minutes=1)
    await send_through_the_service(database_url, faulty_simulator, tmp_path, 80)
    # Small pages: the listing crosses many of them, each a GET that may be refused.
    api = TwilioApi(ACCOUNT_SID, AUTH_TOKEN, base_url=faulty_simulator.url,
                    get_retry=FAST_RETRY, page_size=10)  # fmt: skip
    pool = await create_pool(settings, database_url)
    try:
        truth = await twilio_statuses(api)
        stale_now = settings.model_copy(update={"stale_after": timedelta(0)})
        report = await run_pass(pool, api, stale_now, since=started,
                                until=datetime.now(UTC) + timedelta(minutes=1))  # fmt: skip
    finally:
        await api.close()
        await pool.close()
    assert (report.state, report.errors) == ("finished", [])
    assert report.counts["status_differs"] > 0
    after = await stored(db)
    assert {sid: after.get(sid) for sid in truth} == truth


async def test_a_pass_stopped_by_an_outage_is_resumed_where_it_stopped(
    database_url, faulty_simulator, db
):
    settings = faulty_settings(database_url, faulty_simulator)
    # Twilio's own, sent elsewhere: every one is missing locally, none has callbacks.
    direct = TwilioApi(ACCOUNT_SID, AUTH_TOKEN, base_url=faulty_simulator.url, get_retry=FAST_RETRY)
    sids = [
        (await direct.create_message(to=f"+1415555{n:04d}", from_=SENDER, body="b")).sid
        for n in range(100, 160)
    ]
    await asyncio.sleep(1)
    truth = await twilio_statuses(direct)
    await direct.close()
    # No retries at all: every refused GET stops the pass, as a long outage would.
    impatient = TwilioApi(ACCOUNT_SID, AUTH_TOKEN, base_url=faulty_simulator.url,
                          get_retry=RetryPolicy(attempts=0), page_size=10)  # fmt: skip
    pool = await create_pool(settings, database_url)
    window = around_now()
    reports = []
    try:
        while len(reports) < 40 and not (reports and reports[-1].state == "finished"):
            reports.append(await run_pass(pool, impatient, settings, **window))
            saved = await db.fetchval(
                "SELECT resume FROM reconciliations WHERE id = $1", reports[-1].reconciliation_id
            )
            if reports[-1].state == "finished":
                assert saved is None
            elif saved is not None:
                assert "PageToken=" in saved["next_page_url"]
    finally:
        await impatient.close()
        await pool.close()
    assert reports[-1].state == "finished"
    stopped_mid_listing = [
        later for earlier, later in itertools.pairwise(reports)
        if await db.fetchval("SELECT resume IS NOT NULL FROM reconciliations WHERE id = $1",
                             earlier.reconciliation_id)
    ]  # fmt: skip
    assert stopped_mid_listing, "no pass stopped mid-listing: pick another seed"
    assert all(report.counts["resumed"] == 1 for report in stopped_mid_listing)
    # Progress kept: together the passes added every message once, none twice.
    assert sum(report.counts["missing_locally"] for report in reports) == len(sids)
    after = await stored(db)
    assert {sid: after.get(sid) for sid in sids} == {sid: truth[sid] for sid in sids}


async def test_a_lower_twilio_status_is_logged_and_reported_as_a_conflict_not_applied(
    twilio, pool, pass_settings, db, client
):
    # Twilio's resource ends `undelivered` 30003 (one segment failed); our only callback said
    # `delivered`.
    message = await twilio.create_message(to="+14155550011", from_=SENDER, body="b" * 400)
    await asyncio.sleep(0.5)
    assert (await twilio.fetch_message(message.sid)).status == "undelivered"
    path, body, headers = signed(callback_fields(message.sid, "delivered", To="+14155550011"))
    assert (await client.post(path, content=body, headers=headers)).status_code == 204

    reports = [await run_pass(pool, twilio, pass_settings, **around_now()) for _ in range(2)]
    for report in reports:
        assert report.state == "finished"
        assert report.counts["status_conflict"] == 1
        [conflict] = [d for d in report.unresolved if d.kind == "status_conflict"]
        assert conflict.sid == message.sid
        assert conflict.detail["stored_status"] == "delivered"
        assert (conflict.detail["twilio_status"], conflict.detail["twilio_error_code"]) == (
            "undelivered",
            30003,
        )
    shown = (await client.get(f"/v1/messages/{message.sid}")).json()
    assert (shown["status"], shown["error_code"]) == ("delivered", None)
    assert shown["reports_conflict"] is True
    assert [(c["status"], c["error_code"], c["source"]) for c in shown["conflicts"]] == [
        ("undelivered", 30003, "reconcile")
    ]
    # Logged once, flagged as not changing the status, however many passes see it.
    assert [(e["status"], e["source"], e["changed_status"]) for e in shown["events"]] == [
        ("delivered", "callback", True),
        ("undelivered", "reconcile", False),
    ]
    recorded = (await client.get(f"/v1/reconciliations/{reports[0].reconciliation_id}")).json()
    assert [d["kind"] for d in recorded["unresolved"]] == ["status_conflict"]


async def test_a_read_message_that_twilio_calls_delivered_is_no_conflict(client) -> None:
    sid = new_sid()
    for status in ("delivered", "read"):
        path, body, headers = signed(callback_fields(sid, status))
        assert (await client.post(path, content=body, headers=headers)).status_code == 204
    shown = (await client.get(f"/v1/messages/{sid}")).json()
    assert (shown["status"], shown["reports_conflict"], shown["conflicts"]) == ("read", False, [])


async def test_a_store_with_passes_upgrades_to_resumable_passes_and_back(database_url):
    await asyncio.to_thread(downgrade, database_url, "2026_12_04_layout")
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO reconciliations (since, until, dry_run, state, counts) "
            "SELECT now() - g * interval '1 day', now(), false, 'finished', '{\"x\": 1}' "
            "FROM generate_series(1, 50) g"
        )
        before = [dict(row) for row in await connection.fetch("SELECT * FROM reconciliations")]
        # The fidelity migration's own upgrade: later ones add columns of their own.
        await asyncio.to_thread(migrate, database_url, "2026_12_05_fidelity")
        after = [dict(row) for row in await connection.fetch("SELECT * FROM reconciliations")]
        assert [{**row, "resume": None} for row in before] == after
        await asyncio.to_thread(downgrade, database_url, "2026_12_04_layout")
        again = [dict(row) for row in await connection.fetch("SELECT * FROM reconciliations")]
        assert again == before
    finally:
        await connection.close()


def test_reconcile_command_resumes_the_pass_that_stopped_mid_listing(database_url, lossy_simulator):
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    environment.update({
        "DATABASE_URL": database_url, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_API_BASE_URL": lossy_simulator.url,
    })  # fmt: skip

    def resume() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["status-tracker", "reconcile", "--resume"], env=environment,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    nothing = resume()
    assert nothing.returncode != 0 and "did not stop mid-listing" in nothing.stderr

    async def stopped_pass() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            page = f"{lossy_simulator.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
            await connection.execute(
                "INSERT INTO reconciliations (since, until, dry_run, state, resume) "
                "VALUES ('2026-11-23T00:00:00Z', '2026-11-24T00:00:00Z', false, 'failed', $1)",
                orjson.dumps(
                    {"next_page_url": page + "?PageSize=10&Page=0", "unknown": []}
                ).decode(),
            )
        finally:
            await connection.close()

    asyncio.run(stopped_pass())
    done = resume()
    assert done.returncode == 0, done.stderr
    assert "window 2026-11-23T00:00:00+00:00 .. 2026-11-24T00:00:00+00:00" in done.stdout
    assert "resumed" in done.stdout

"""Reconciliation against the simulator losing callbacks and timing out creates."""

import asyncio
import random
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from status_tracker.database import create_pool
from status_tracker.reconcile import PassRunning, run_pass
from status_tracker.repository import RECONCILE_LOCK
from status_tracker.settings import Settings
from status_tracker.twilio_api import TwilioApi
from tests.conftest import ENV_PREFIXES, Server, Simulator, sending_environment
from tests.support import ACCOUNT_SID, API_KEY, AUTH_TOKEN

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
    with Server(sending_environment(database_url, lossy_simulator, tmp_path), tmp_path) as server:
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


async def twilio_statuses(twilio: TwilioApi, since: datetime) -> dict[str, tuple[str, int | None]]:
    return {
        m.sid: (m.status, m.error_code)
        async for m in twilio.list_messages(since, datetime.now(UTC) + timedelta(minutes=1))
    }


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

    truth = await twilio_statuses(twilio, started)
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
        ["status-tracker", "reconcile", "--dry-run"], env=environment, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout and "dry run" in done.stdout

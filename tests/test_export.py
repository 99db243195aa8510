"""The export written by PostgreSQL: the same cells as Python's csv and json modules wrote, and an
event count kept by every statement that appends an event."""

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from status_tracker import repository
from status_tracker.callbacks import StatusReport
from status_tracker.database import downgrade, init_connection, migrate
from status_tracker.error_codes import describe
from status_tracker.models import rfc3339
from tests.conftest import Simulator, app_client
from tests.support import ACCOUNT_SID, callback_fields, new_sid, signed

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
WINDOW = {"since": (NOW - timedelta(days=1)).isoformat(), "until": NOW.isoformat()}
TRICKY = [
    "plain", "with, comma", 'with "quotes"', "two\nlines", "carriage\rreturn", "=1+1", "+1",
    "-1", "@SUM(A1)", "\tTab", "\uff1d1", "\uff0b1", "\uff0d1", "\uff201", "caf\u00e9 \u2603",
    "", "back\\slash", "'quoted", "\x01control",
]  # fmt: skip
FORMULA_STARTS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")


def cell(value: Any) -> str:
    """A CSV cell as the export wrote it in Python, before PostgreSQL wrote it."""
    text = "" if value is None else rfc3339(value) if isinstance(value, datetime) else str(value)
    return "'" + text if text[:1] in FORMULA_STARTS else text


async def seed_tricky(db) -> None:  # type: ignore[no-untyped-def]
    """A message per tricky reference, at whole and fractional seconds, with and without
    error codes (known and not) and timestamps."""
    for n, reference in enumerate(TRICKY):
        created = NOW - timedelta(hours=1, seconds=n, microseconds=(n % 3) * 120_000)
        await db.execute(
            """
            INSERT INTO messages (sid, direction, status, status_rank, error_code, to_number,
                                  from_number, channel, reference, created_at, updated_at,
                                  sent_at, event_count)
            VALUES ($1, 'outbound-api', 'undelivered', 70, $2, $3, '+15005550006', 'sms', $4,
                    $5, $5, $6, $7)
            """,
            new_sid() if n % 4 else None,
            (None, 30003, 39999)[n % 3],
            f"whatsapp:+1415555{n:04d}" if n % 2 else f"+1415555{n:04d}",
            reference,
            created,
            created + timedelta(microseconds=1) if n % 2 else None,
            n,
        )


async def test_csv_export_is_what_pythons_csv_module_wrote(client, db):
    await seed_tricky(db)
    rows = await db.fetch(
        "SELECT * FROM messages WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at, id",
        NOW - timedelta(days=1),
        NOW,
    )
    expected = io.StringIO()
    writer = csv.writer(expected)
    columns = [name for name, _, _ in repository.MESSAGE_EXPORT]
    writer.writerow(columns)
    for row in rows:
        values = {**dict(row), "to": row["to_number"], "from": row["from_number"],
                  "error_description": describe(row["error_code"])}  # fmt: skip
        writer.writerow(cell(values[name]) for name in columns)

    response = await client.get("/v1/export", params=WINDOW)

    assert response.status_code == 200
    assert response.content.decode("utf-8") == "\ufeff" + expected.getvalue()
    parsed = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"), newline="")))
    assert sorted(row["reference"] for row in parsed) == sorted(cell(t) for t in TRICKY)


async def test_jsonl_export_holds_the_same_values_as_before(client, db):
    await seed_tricky(db)
    rows = await db.fetch(
        "SELECT * FROM messages WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at, id",
        NOW - timedelta(days=1),
        NOW,
    )

    response = await client.get("/v1/export", params={**WINDOW, "format": "jsonl"})

    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.text.endswith("\n") and len(lines) == len(TRICKY)
    for line, row in zip(lines, rows, strict=True):
        assert list(line) == [name for name, _, _ in repository.MESSAGE_EXPORT]
        times = ("created_at", "updated_at", "sent_at", "delivered_at", "read_at", "final_at")
        assert line == {
            "id": str(row["id"]), "sid": row["sid"], "direction": row["direction"],
            "status": row["status"], "error_code": row["error_code"],
            "error_description": describe(row["error_code"]), "to": row["to_number"],
            "from": row["from_number"], "channel": row["channel"], "reference": row["reference"],
            **{name: row[name] and rfc3339(row[name]) for name in times},
            "event_count": row["event_count"],
        }  # fmt: skip


async def test_event_export_carries_fields_and_query_as_stored(client, db):
    sid = new_sid()
    for status in ("sent", "delivered"):
        target, body, headers = signed(
            callback_fields(sid, status, Extra='a "b", c\u00e9'), query="ref=x%2Cy"
        )
        assert (await client.post(target, content=body, headers=headers)).status_code == 204
    window = {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}
    events = await db.fetch("SELECT id, status, fields, query FROM message_events ORDER BY id")

    as_jsonl = (await client.get("/v1/export", params={**window, "include": "events",
                                                         "format": "jsonl"})).text  # fmt: skip
    as_csv = (await client.get("/v1/export", params={**window, "include": "events"})).content

    lines = [json.loads(line) for line in as_jsonl.splitlines()]
    assert [(e["id"], e["fields"], e["query"]) for e in lines] == [
        (e["id"], e["fields"], e["query"]) for e in events
    ]
    rows = list(csv.DictReader(io.StringIO(as_csv.decode("utf-8-sig"), newline="")))
    assert [(r["sid"], r["status"], r["id"]) for r in rows] == [
        (sid, e["status"], str(e["id"])) for e in events
    ]


@pytest.fixture
async def sending(settings, tmp_path):
    simulator = Simulator(tmp_path, "--delay-min", "0", "--delay-max", "0.05")
    configured = settings.model_copy(update={
        "twilio_account_sid": ACCOUNT_SID, "twilio_api_base_url": simulator.url,
        "twilio_from": "+15005550006", "auto_reply": "Thanks",
    })  # fmt: skip
    try:
        async with app_client(configured) as client:
            yield client
    finally:
        simulator.close()


async def test_every_path_that_appends_an_event_counts_it(sending, db):
    client = sending
    assert (await client.post("/v1/messages", json={"to": "+14155550100", "body": "hi"})).is_success
    sid = new_sid()
    for status, token in (("sent", "t1"), ("sent", "t1"), ("delivered", "t2"), ("read", None)):
        target, body, headers = signed(callback_fields(sid, status))
        headers = {**headers, **({"I-Twilio-Idempotency-Token": token} if token else {})}
        assert (await client.post(target, content=body, headers=headers)).status_code == 204
    inbound = {"MessageSid": new_sid(), "AccountSid": ACCOUNT_SID, "From": "+14155550100",
               "To": "+15005550006", "Body": "hello"}  # fmt: skip
    for _ in range(2):  # Twilio sending it again
        target, body, headers = signed(inbound, path="/webhooks/twilio/inbound")
        assert (await client.post(target, content=body, headers=headers)).status_code == 200
    # A callback that outran the send's answer made its own record: the send merges it.
    attempt, early_sid = uuid4(), new_sid()
    await repository.record_attempt(
        db, message_id=attempt, to="+14155550100", from_=None, messaging_service_sid=None,
        channel="sms", body="x", media_urls=None, content_sid=None, content_variables=None,
        send_at=None, validity_period=None, reference=None, metadata=None, idempotency_key=None,
        request_hash="h", created_at=datetime.now(UTC), fields={},
    )  # fmt: skip
    await repository.record_report(db, StatusReport(early_sid, "sent", None, datetime.now(UTC),
                                                    "callback"))  # fmt: skip
    await repository.record_send_result(
        db,
        StatusReport(early_sid, "queued", None, datetime.now(UTC), "send", message_id=attempt),
        "accepted",
    )
    await asyncio.sleep(0.3)  # the auto-reply

    counts = await db.fetch(
        "SELECT m.sid, m.event_count, (SELECT count(*) FROM message_events e "
        "WHERE e.message_id = m.id) AS events FROM messages m"
    )
    assert len(counts) >= 5
    assert [(r["sid"], r["event_count"]) for r in counts] == [
        (r["sid"], r["events"]) for r in counts
    ]
    assert {r["sid"]: r["event_count"] for r in counts}[sid] == 3
    assert {r["sid"]: r["event_count"] for r in counts}[early_sid] == 3


async def test_a_filled_store_upgrades_and_its_messages_export_their_event_counts(database_url):
    await asyncio.to_thread(downgrade, database_url, "2026_12_05_fidelity")
    connection = await asyncpg.connect(database_url)
    await init_connection(connection)
    try:
        await connection.execute(
            """
            WITH m AS (
                INSERT INTO messages (sid, status, status_rank, created_at)
                SELECT 'SM' || g, 'delivered', 90, now() FROM generate_series(1, 500) g
                RETURNING id, sid
            )
            INSERT INTO message_events (message_id, status, status_rank, source, received_at,
                                        fields)
            SELECT m.id, 'sent', 50, 'callback', now(), jsonb_build_object('n', k)
            FROM m, generate_series(1, (substr(m.sid, 3)::int % 4)) k
            """
        )
        before = await connection.fetch("SELECT * FROM message_events ORDER BY id")
        await asyncio.to_thread(migrate, database_url)
        after = await connection.fetch("SELECT * FROM message_events ORDER BY id")
        # Not counted by the migration (that would rewrite every message): null, and counted
        # by the export.
        assert await connection.fetchval("SELECT count(event_count) FROM messages") == 0
        async with connection.transaction():
            lines = [
                chunk
                async for chunk in repository.export_lines(
                    connection, datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC),
                    events=False, format="csv", descriptions={},
                )
            ]  # fmt: skip
    finally:
        await connection.close()
    # Every event as it was (later migrations may add columns).
    assert [{k: r[k] for k in before[0].keys()} for r in after] == [dict(r) for r in before]
    names = [name for name, _, _ in repository.MESSAGE_EXPORT]
    exported = [
        dict(zip(names, row, strict=True)) for row in csv.reader(io.StringIO("".join(lines)))
    ]
    assert len(exported) == 500
    assert all(int(row["event_count"]) == int(row["sid"][2:]) % 4 for row in exported)

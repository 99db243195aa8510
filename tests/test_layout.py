"""The storage layout: time-ordered ids, races between writers of one SID, the event log's link
to its message, and the upgrade of a store filled by the previous layout."""

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from status_tracker import repository
from status_tracker.callbacks import StatusReport
from status_tracker.database import downgrade, init_connection, migrate
from status_tracker.ids import uuid7
from tests.support import callback_fields, new_sid, signed

PREVIOUS_LAYOUT = "2026_11_25_events_link"


def report(
    sid: str | None, status: str, message_id: UUID | None = None, source: str = "callback"
) -> StatusReport:
    return StatusReport(
        sid=sid,
        status=status,
        error_code=None,
        received_at=datetime.now(UTC),
        source=source,
        message_id=message_id,
    )


async def post(client, fields, query: str = "", **headers):  # type: ignore[no-untyped-def]
    target, body, signed_headers = signed(fields, query=query)
    return await client.post(target, content=body, headers={**signed_headers, **headers})


def test_python_and_database_ids_are_uuidv7_of_their_time():
    at = datetime(2026, 12, 4, 5, 6, 7, 890000, tzinfo=UTC)
    ids = [uuid7(at) for _ in range(100)]
    assert len(set(ids)) == 100
    assert all(i.version == 7 and i.variant == "specified in RFC 4122" for i in ids)
    assert {i.int >> 80 for i in ids} == {int(at.timestamp() * 1000)}
    assert uuid7(at + timedelta(milliseconds=1)) > max(ids)


async def test_database_uuid7_matches_python(db):
    at = datetime(2026, 12, 4, 5, 6, 7, 890000, tzinfo=UTC)
    made: UUID = await db.fetchval("SELECT uuid7($1)", at)
    assert made.version == 7 and made.variant == "specified in RFC 4122"
    assert made.int >> 80 == uuid7(at).int >> 80


async def test_messages_first_seen_in_callbacks_get_time_ordered_ids(client, db):
    sids = [new_sid() for _ in range(5)]
    for sid in sids:
        assert (await post(client, callback_fields(sid, "sent"))).status_code == 204
    rows = await db.fetch("SELECT id, sid, created_at FROM messages ORDER BY id")
    assert [row["sid"] for row in rows] == sids
    assert all(row["id"].version == 7 for row in rows)
    assert all(row["id"].int >> 80 == int(row["created_at"].timestamp() * 1000) for row in rows)


async def test_an_event_cannot_be_appended_to_a_message_that_does_not_exist(db):
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute(
            "INSERT INTO message_events (message_id, status, status_rank, source, received_at) "
            "VALUES ($1, 'sent', 50, 'manual', now())",
            uuid4(),
        )
    assert await db.fetchval("SELECT count(*) FROM message_events") == 0


async def test_two_writers_of_a_new_sid_agree_on_one_message(database_url, db):
    """Two first callbacks for one SID, in two transactions at once: the second waits for the
    first's key, loses the race, runs again and lands on the same message."""
    sid = new_sid()
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    for connection in (first, second):
        await init_connection(connection)
    try:
        transaction = first.transaction()
        await transaction.start()
        await repository.record_reports(first, [report(sid, "sent")])
        racing = asyncio.create_task(repository.record_reports(second, [report(sid, "delivered")]))
        await asyncio.sleep(0.3)
        assert not racing.done()  # waiting for the first writer's key
        await transaction.commit()
        await racing
    finally:
        await first.close()
        await second.close()
    assert await db.fetchval("SELECT count(*) FROM messages WHERE sid = $1", sid) == 1
    assert await db.fetchval("SELECT status FROM messages WHERE sid = $1", sid) == "delivered"
    assert await db.fetchval("SELECT count(*) FROM message_events") == 2


async def test_callback_arriving_while_a_send_result_is_merged_is_not_lost(database_url, db):
    """A Messaging Service callback created an early record of the SID; while the send's answer
    folds it into the attempt, another callback for the SID arrives: it lands on the attempt."""
    sid, attempt = new_sid(), uuid7(datetime.now(UTC))
    await repository.record_attempt(
        db, message_id=attempt, to="+14155550100", from_=None, messaging_service_sid="MG" + "0" * 32,
        channel="sms", body="hi", media_urls=None, content_sid=None, content_variables=None,
        send_at=None, validity_period=None, reference=None, metadata=None, idempotency_key=None,
        request_hash="x", created_at=datetime.now(UTC), fields={},
    )  # fmt: skip
    await repository.record_reports(db, [report(sid, "sent")])  # the early record
    merging, ingesting = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    for connection in (merging, ingesting):
        await init_connection(connection)
    try:
        transaction = merging.transaction()
        await transaction.start()
        await repository.record_send_result(
            merging, report(sid, "accepted", message_id=attempt, source="send"), "accepted"
        )
        late = asyncio.create_task(repository.record_reports(ingesting, [report(sid, "delivered")]))
        await asyncio.sleep(0.3)
        assert not late.done()  # waiting on the early record the merge is deleting
        await transaction.commit()
        await late
    finally:
        await merging.close()
        await ingesting.close()
    rows = await db.fetch("SELECT id, status FROM messages WHERE sid = $1", sid)
    assert [(row["id"], row["status"]) for row in rows] == [(attempt, "delivered")]
    statuses = await db.fetch(
        "SELECT status FROM message_events WHERE message_id = $1 ORDER BY id", attempt
    )
    assert [row["status"] for row in statuses] == ["pending", "sent", "accepted", "delivered"]


async def test_the_local_id_of_another_message_does_not_rewrite_it(client, db):
    first, other = new_sid(), new_sid()
    assert (await post(client, callback_fields(first, "delivered"))).status_code == 204
    first_id = await db.fetchval("SELECT id FROM messages WHERE sid = $1", first)
    response = await post(client, callback_fields(other, "undelivered", ErrorCode="30003"),
                          query=f"mid={first_id}")  # fmt: skip
    assert response.status_code == 204
    rows = await db.fetch("SELECT id, sid, status FROM messages ORDER BY created_at")
    assert [(row["sid"], row["status"]) for row in rows] == [
        (first, "delivered"),
        (other, "undelivered"),
    ]
    assert rows[1]["id"] != first_id
    assert await db.fetchval("SELECT count(*) FROM message_events WHERE message_id = $1",
                             first_id) == 1  # fmt: skip


async def test_a_replayed_callback_with_the_same_idempotency_token_is_stored_once(client, db):
    sid = new_sid()
    fields = callback_fields(sid, "delivered")
    for _ in range(3):
        response = await post(client, fields, **{"I-Twilio-Idempotency-Token": "retry-1"})
        assert response.status_code == 204
    response = await post(client, fields, **{"I-Twilio-Idempotency-Token": "retry-2"})
    assert response.status_code == 204
    tokens = await db.fetch("SELECT idempotency_token FROM message_events ORDER BY id")
    assert [row["idempotency_token"] for row in tokens] == ["retry-1", "retry-2"]


async def test_a_store_filled_by_the_previous_layout_upgrades_without_losing_an_event(
    database_url,
):
    await asyncio.to_thread(downgrade, database_url, PREVIOUS_LAYOUT)
    connection = await asyncpg.connect(database_url)
    await init_connection(connection)
    try:
        # Messages as the previous layout made them: random ids, md5 ids for unknown SIDs.
        await connection.execute(
            """
            WITH m AS (
                INSERT INTO messages (id, sid, status, status_rank, to_number, created_at,
                                      idempotency_key)
                SELECT CASE WHEN g % 2 = 0 THEN gen_random_uuid()
                            ELSE md5('SM' || md5(g::text))::uuid END,
                       'SM' || md5(g::text), 'sent', 50, '+14155550100',
                       now() - g * interval '1 minute',
                       CASE WHEN g % 3 = 0 THEN 'key-' || g END
                FROM generate_series(1, 300) g
                RETURNING id, created_at
            )
            INSERT INTO message_events (message_id, status, status_rank, source, received_at)
            SELECT id, s, 50, 'callback', created_at FROM m, unnest(ARRAY['sent', 'sent']) s
            """
        )
        before = await connection.fetch("SELECT * FROM message_events ORDER BY id")
        await asyncio.to_thread(migrate, database_url)
        after = await connection.fetch("SELECT * FROM message_events ORDER BY id")
        # Later migrations may add columns; those the previous layout had are unchanged.
        columns = list(before[0].keys())
        assert [{name: row[name] for name in columns} for row in after] == [
            dict(row) for row in before
        ]
        # The upgraded store takes reports for its old messages and new ones alike.
        old_sid = "SM" + await connection.fetchval("SELECT md5('1')")
        await repository.record_reports(
            connection, [report(old_sid, "delivered"), report(new_sid(), "sent")]
        )
        assert await connection.fetchval(
            "SELECT status FROM messages WHERE sid = $1", old_sid
        ) == "delivered"  # fmt: skip
        assert await connection.fetchval("SELECT count(*) FROM messages") == 301
        assert await connection.fetchval("SELECT count(*) FROM message_events") == 602
        # Idempotency keys stay unique.
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(
                "INSERT INTO messages (sid, status, status_rank, idempotency_key) "
                "VALUES ('SMx', 'sent', 50, 'key-3')"
            )
        await asyncio.to_thread(downgrade, database_url, PREVIOUS_LAYOUT)
        assert await connection.fetchval("SELECT count(*) FROM message_events") == 602
    finally:
        await connection.close()

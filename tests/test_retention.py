"""Retention: whole days of the event log dropped past the horizon (archived first when asked),
their messages with them, bodies forgotten sooner; rollups keep counting what is gone."""

import asyncio
import gzip
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from status_tracker import repository, retention
from status_tracker.callbacks import StatusReport
from status_tracker.database import downgrade, init_connection, migrate
from tests.conftest import COMMAND
from tests.support import new_sid

DAY = timedelta(days=1)


async def _days(db) -> dict[str, datetime]:
    """The partitions there are, by name, with their end."""
    rows = await db.fetch("SELECT name, until FROM event_partitions WHERE dropped_at IS NULL")
    return {row["name"]: row["until"] for row in rows}


async def _tables(db) -> set[str]:
    rows = await db.fetch(
        "SELECT relname FROM pg_class WHERE relname LIKE 'message_events_%' AND relkind = 'r'"
    )
    return {row["relname"] for row in rows}


async def _store(db, received_at: datetime, count: int = 3) -> list[str]:
    """`count` messages with a report or two each, received on `received_at`'s day."""
    sids = []
    for number in range(count):
        sid = new_sid()
        sids.append(sid)
        for step, status in enumerate(("sent", "delivered")[: 1 + number % 2]):
            report = StatusReport(
                sid=sid, status=status, error_code=None,
                received_at=received_at + timedelta(minutes=step), source="callback",
                to=f"+1415555{number:04d}", from_="+15005550006",
                fields={"MessageSid": sid, "MessageStatus": status},
            )  # fmt: skip
            await repository.record_reports(db, [report])
    return sids


@pytest.fixture
async def days(db):
    """A store with events on five days from the first whole day after the migration's
    partitions begin, partitions made well ahead; the day after the first, as `start`."""
    first = min(until for until in (await _days(db)).values())  # the legacy partition's end
    for ahead in range(0, 21, retention.DAYS_AHEAD):  # partitions for the next 28 days
        await retention.ensure_partitions(db, first + ahead * DAY)
    stored = {}
    for offset in (1, 2, 4, 5, 9):
        stored[offset] = await _store(db, first + offset * DAY + timedelta(hours=6))
    await repository.fold_rollup_deltas(db)
    return first, stored


async def _rollup_totals(db) -> list[tuple]:
    await repository.fold_rollup_deltas(db)
    rows = await db.fetch(
        "SELECT hour, status, sum(messages) FROM message_rollups GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return [tuple(row) for row in rows]


async def test_retention_drops_exactly_the_days_past_the_horizon(db, settings, days):
    first, stored = days
    rollups = await _rollup_totals(db)
    before = await _days(db)
    now = first + 10 * DAY + timedelta(hours=3)
    keep = settings.model_copy(update={"retention": timedelta(days=5)})

    await retention.maintain(db, keep, now=now)

    horizon = now - timedelta(days=5)
    after = await _days(db)
    assert set(after) == {name for name, until in before.items() if until > horizon} | {
        name
        for name in after
        if after[name] > max(before.values())  # made ahead since
    }
    assert all(until > horizon for until in after.values())
    assert await _tables(db) == set(after)
    # Days 1, 2 and 4 are gone with their messages; days 5 and 9 are whole.
    for offset, sids in stored.items():
        found = await db.fetchval("SELECT count(*) FROM messages WHERE sid = ANY($1)", sids)
        events = await db.fetchval(
            "SELECT count(*) FROM message_events e JOIN messages m ON m.id = e.message_id "
            "WHERE m.sid = ANY($1)",
            sids,
        )
        if first + (offset + 1) * DAY <= horizon:
            assert found == 0, offset
        else:
            assert (found, events) == (3, 4), offset
    assert await _rollup_totals(db) == rollups  # the counts outlive the rows

    # Again: nothing more is due.
    await retention.maintain(db, keep, now=now)
    assert set(await _days(db)) == set(after)


async def test_a_day_that_is_missing_ahead_is_made_again(db, days):
    first, _ = days
    name = repository.partition_name(first + 3 * DAY)
    await repository.drop_event_partition(db, name)
    assert name not in await _days(db)
    await retention.ensure_partitions(db, first + 3 * DAY)
    assert name in await _days(db) and name in await _tables(db)


async def test_an_archive_round_trips_the_same_rows_and_bytes(db, settings, days, tmp_path):
    first, stored = days
    day = first + DAY
    name = repository.partition_name(day)
    events_before = await db.fetch(f"SELECT to_jsonb(e)::text FROM {name} e ORDER BY id")
    messages_before = await db.fetch(
        "SELECT to_jsonb(m)::text FROM messages m WHERE sid = ANY($1) ORDER BY id", stored[1]
    )
    keep = settings.model_copy(
        update={"retention": timedelta(days=1), "archive_dir": tmp_path / "archive"}
    )
    await retention.maintain(db, keep, now=day + 2 * DAY)  # the legacy day, day 1 past it
    path = tmp_path / "archive" / f"{name}.jsonl.gz"
    manifest = json.loads((tmp_path / "archive" / "MANIFEST.json").read_text())
    assert manifest[name]["rows"] == {"message_events": 4, "messages": 3}
    first_bytes = path.read_bytes()
    assert not await db.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
    assert not await db.fetchval("SELECT count(*) FROM messages WHERE sid = ANY($1)", stored[1])

    added = await retention.restore(db, path)
    assert added == {"messages": 3, "message_events": 4}
    assert await db.fetch(f"SELECT to_jsonb(e)::text FROM {name} e ORDER BY id") == events_before
    assert (
        await db.fetch(
            "SELECT to_jsonb(m)::text FROM messages m WHERE sid = ANY($1) ORDER BY id", stored[1]
        )
        == messages_before
    )
    assert await retention.restore(db, path) == {"messages": 0, "message_events": 0}

    # Archived again, the restored day gives the same bytes.
    path.rename(path.with_suffix(".first"))
    partition = await db.fetchrow("SELECT * FROM event_partitions WHERE name = $1", name)
    await retention.archive(db, name, partition["until"], tmp_path / "archive")
    assert path.read_bytes() == first_bytes


async def test_an_archive_that_fails_or_does_not_check_out_drops_nothing(
    db, settings, days, tmp_path, monkeypatch
):
    first, stored = days
    name = repository.partition_name(first + DAY)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    keep = settings.model_copy(update={"retention": timedelta(days=1), "archive_dir": blocked})
    with pytest.raises(OSError):
        await retention.maintain(db, keep, now=first + 3 * DAY)
    assert name in await _days(db)
    assert await db.fetchval("SELECT count(*) FROM messages WHERE sid = ANY($1)", stored[1]) == 3

    # The file lost its end between writing and reading back (a disk, a crash): not dropped.
    def truncate_then_rename(partial, path):
        with partial.open("r+b") as file:
            file.truncate(os.path.getsize(partial) // 2)
        partial.replace(path)

    monkeypatch.setattr(retention, "_sync_and_rename", truncate_then_rename)
    keep = keep.model_copy(update={"archive_dir": tmp_path / "archive"})
    with pytest.raises((EOFError, gzip.BadGzipFile)):
        await retention.maintain(db, keep, now=first + 3 * DAY)
    assert name in await _days(db)
    assert await db.fetchval(f"SELECT count(*) FROM {name}") == 4
    monkeypatch.undo()

    # Once an archive checks out, the day goes.
    await retention.maintain(db, keep, now=first + 3 * DAY)
    assert name not in await _days(db)


async def test_bodies_go_before_the_messages(db, settings):
    old, recent = datetime.now(UTC) - timedelta(days=40), datetime.now(UTC) - timedelta(days=2)
    for at, body in ((old, "old news"), (recent, "fresh")):
        await db.execute(
            """
            WITH m AS (
                INSERT INTO messages (status, status_rank, body, media_urls, created_at)
                VALUES ('received', 130, $1, '["https://example.com/a.jpg"]', $2) RETURNING id
            )
            INSERT INTO message_events (message_id, status, status_rank, source, received_at,
                                        fields)
            SELECT id, 'received', 130, 'inbound', $2,
                   jsonb_build_object('Body', $1::text, 'MediaUrl0', 'https://example.com/a.jpg',
                                      'From', '+14155550100')
            FROM m
            """,
            body,
            at,
        )
    keep = settings.model_copy(update={"body_retention": timedelta(days=30)})
    await retention.maintain(db, keep)
    rows = await db.fetch("SELECT body, media_urls IS NULL FROM messages ORDER BY created_at")
    assert [tuple(row) for row in rows] == [(None, True), ("fresh", False)]
    fields = await db.fetch("SELECT fields FROM message_events ORDER BY received_at")
    assert [json.loads(row["fields"]) if isinstance(row["fields"], str) else row["fields"]
            for row in fields] == [
        {"From": "+14155550100"},
        {"Body": "fresh", "MediaUrl0": "https://example.com/a.jpg", "From": "+14155550100"},
    ]  # fmt: skip
    # Outside retention (and erasure), the event log stays append-only.
    with pytest.raises(asyncpg.RaiseError):
        await db.execute("UPDATE message_events SET fields = '{}'")


def test_archive_and_restore_commands(database_url, tmp_path):
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "STATUS_TRACKER_DATA_DIR": str(tmp_path),
    }
    listed = subprocess.run(
        [*COMMAND, "archive", "--list"],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "message_events_legacy" in listed.stdout
    missing = subprocess.run(
        [*COMMAND, "restore", str(tmp_path / "nothing.jsonl.gz")],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode != 0


async def test_a_filled_store_upgrades_to_rollups_and_day_partitions_without_losing_an_event(
    database_url,
):
    await asyncio.to_thread(downgrade, database_url, "2026_12_05_fidelity")
    connection = await asyncpg.connect(database_url)
    await init_connection(connection)
    try:
        await connection.execute(
            """
            WITH m AS (
                INSERT INTO messages (sid, direction, status, status_rank, error_code, to_number,
                                      from_number, created_at, sent_at, delivered_at)
                SELECT 'SM' || md5(g::text), CASE WHEN g % 7 = 0 THEN 'inbound'
                       ELSE 'outbound-api' END,
                       (ARRAY['sent', 'delivered', 'undelivered'])[g % 3 + 1], 50,
                       CASE WHEN g % 3 = 2 THEN 30003 END,
                       (ARRAY['+14155550100', 'whatsapp:+447700900123', '+3361234****'])[g % 3 + 1],
                       (ARRAY['+15005550006', '+491701234567'])[g % 2 + 1],
                       now() - g * interval '7 minutes', now() - g * interval '7 minutes',
                       CASE WHEN g % 3 = 1 THEN now() - g * interval '7 minutes'
                            + g * interval '1 second' END
                FROM generate_series(1, 500) g
                RETURNING id, created_at
            )
            INSERT INTO message_events (message_id, status, status_rank, source, received_at)
            SELECT id, s, 50, 'callback', created_at FROM m, unnest(ARRAY['sent', 'sent']) s
            """
        )
        before = await connection.fetch("SELECT * FROM message_events ORDER BY id")
        await asyncio.to_thread(migrate, database_url)
        after = await connection.fetch("SELECT * FROM message_events ORDER BY id")
        # Every event as it was (later migrations may add columns).
        assert [{k: row[k] for k in before[0].keys()} for row in after] == [
            dict(row) for row in before
        ]
        assert await connection.fetchval(
            "SELECT count(*) FROM message_events_legacy"
        ) == len(before)  # fmt: skip
        # Existing messages get no country (that would rewrite them all); new ones do.
        assert await connection.fetchval("SELECT count(country) FROM messages") == 0
        recount = await connection.fetch(
            "SELECT status, country, count(*) FROM messages GROUP BY 1, 2 ORDER BY 1, 2"
        )
        rolled = await connection.fetch(
            "SELECT status, value, sum(messages) FROM message_rollups WHERE breakdown = 'country' "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
        assert [tuple(r) for r in rolled] == [tuple(r) for r in recount]
        # Events from tomorrow on go to the day partitions (today's to the first), and the ids
        # go on.
        await repository.record_reports(connection, [StatusReport(
            sid=new_sid(), status="sent", error_code=None, received_at=datetime.now(UTC) + DAY,
            source="callback")])  # fmt: skip
        newest = await connection.fetchrow(
            "SELECT tableoid::regclass::text AS partition, id FROM message_events "
            "ORDER BY id DESC LIMIT 1"
        )
        assert newest["partition"] != "message_events_legacy"
        assert newest["id"] > before[-1]["id"]

        await asyncio.to_thread(downgrade, database_url, "2026_12_05_fidelity")
        assert await connection.fetchval("SELECT count(*) FROM message_events") == len(after) + 1
    finally:
        await connection.close()

"""The precedence rule, alone and as PostgreSQL applies it to callbacks in any order."""

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from status_tracker import repository
from status_tracker.callbacks import StatusReport
from status_tracker.precedence import STATUS_ORDER, Report, normalise_status, rank, winner
from tests.support import callback_fields, new_sid, signed

OUTBOUND = [s for s in STATUS_ORDER if s not in ("receiving", "received")]
ERROR_CODES = [None, 30003, 30005, 30007]
reports = st.lists(
    st.builds(
        Report, st.sampled_from([*OUTBOUND, "brand_new_status"]), st.sampled_from(ERROR_CODES)
    ),
    min_size=1,
    max_size=12,
)


def test_order_is_the_documented_one():
    assert rank("scheduled") < rank("accepted") < rank("queued") < rank("sending") < rank("sent")
    assert rank("sent") < rank("canceled") < rank("failed") < rank("undelivered")
    assert rank("undelivered") < rank("partially_delivered") < rank("delivered") < rank("read")
    assert rank("receiving") < rank("received")


def test_late_sent_does_not_undo_delivered():
    assert winner([Report("delivered"), Report("sent")]).status == "delivered"


def test_late_undelivered_after_delivered_does_not_win():
    assert winner([Report("delivered"), Report("undelivered", 30003)]).status == "delivered"


def test_unknown_status_never_overrides_a_known_one():
    assert winner([Report("queued"), Report("teleported")]).status == "queued"
    assert winner([Report("teleported")]).status == "teleported"


def test_error_code_comes_with_the_winning_status():
    result = winner([Report("sent"), Report("undelivered", 30003), Report("failed", 30007)])
    assert (result.status, result.error_code) == ("undelivered", 30003)


def test_read_event_type_means_read():
    assert normalise_status("delivered", "READ") == "read"
    assert normalise_status("Delivered", None) == "delivered"


@given(reports, st.randoms())
def test_winner_depends_only_on_the_set(received, rng):
    shuffled = received * 2
    rng.shuffle(shuffled)
    assert winner(shuffled) == winner(received)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(received=reports, seed=st.integers(0, 2**32), duplicates=st.integers(1, 3))
async def test_stored_state_is_the_rule_for_any_order_and_duplicates(
    client, db, received, seed, duplicates
):
    """Any permutation of any multiset of callbacks ends in the state the rule names."""
    sid = new_sid()
    sends = received * duplicates
    random.Random(seed).shuffle(sends)
    for report in sends:
        extra = {"ErrorCode": str(report.error_code)} if report.error_code else {}
        target, body, headers = signed(callback_fields(sid, report.status, **extra))
        assert (await client.post(target, content=body, headers=headers)).status_code == 204
    expected = winner(received)
    row = await db.fetchrow("SELECT status, error_code FROM messages WHERE sid = $1", sid)
    assert (row["status"], row["error_code"]) == (expected.status, expected.error_code)
    stored = await db.fetchval(
        "SELECT count(*) FROM message_events e JOIN messages m ON m.id = e.message_id "
        "WHERE m.sid = $1",
        sid,
    )
    assert stored == len(sends)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(received=st.lists(reports, min_size=1, max_size=4), seed=st.integers(0, 2**32))
async def test_one_batch_with_many_reports_per_message_is_the_rule(db, received, seed):
    """The ingest writer stores whatever arrived together in one call: several reports of one
    message in one batch end as if they had come one by one."""
    start = datetime(2026, 11, 24, 12, tzinfo=UTC)
    rng = random.Random(seed)
    batch = []
    for per_message in received:
        sid = new_sid()
        for report in per_message * rng.randint(1, 2):
            at = start + timedelta(seconds=rng.randint(0, 600))
            batch.append(StatusReport(sid, report.status, report.error_code, at, "callback"))
    rng.shuffle(batch)
    await repository.record_reports(db, batch)
    for sid in {report.sid for report in batch}:
        mine = [r for r in batch if r.sid == sid]
        expected = winner(Report(r.status, r.error_code) for r in mine)
        row = await db.fetchrow(
            "SELECT id, status, error_code, created_at, updated_at, sent_at FROM messages "
            "WHERE sid = $1",
            sid,
        )
        assert (row["status"], row["error_code"]) == (expected.status, expected.error_code)
        assert row["created_at"] == min(r.received_at for r in mine)
        assert row["updated_at"] == max(r.received_at for r in mine)
        sent = [r.received_at for r in mine if r.status == "sent"]
        assert row["sent_at"] == (min(sent) if sent else None)
        events = await db.fetchval(
            "SELECT count(*) FROM message_events WHERE message_id = $1", row["id"]
        )
        assert events == len(mine)


@pytest.mark.parametrize("repeat", range(3))
async def test_concurrent_callbacks_for_one_sid_race_to_the_rule(client, db, repeat):
    """Real concurrency against the real database: many callbacks for one SID at once."""
    sid = new_sid()
    statuses = ["queued", "sent", "delivered", "undelivered", "sent", "failed", "read", "sent"]
    requests = []
    for status in statuses * 4:
        extra = {"ErrorCode": "30003"} if status in ("undelivered", "failed") else {}
        requests.append(signed(callback_fields(sid, status, **extra)))
    random.Random(repeat).shuffle(requests)
    responses = await asyncio.gather(
        *(client.post(target, content=body, headers=headers) for target, body, headers in requests)
    )
    assert [r.status_code for r in responses] == [204] * len(requests)
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
    assert await db.fetchval("SELECT status FROM messages WHERE sid = $1", sid) == "read"
    assert await db.fetchval("SELECT count(*) FROM message_events") == len(requests)

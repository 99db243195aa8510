"""Rollups and breakdowns: what /v1/stats answers from them equals a recount of the messages,
whatever order, repetition and lateness the reports came with."""

import random
from datetime import UTC, datetime, timedelta

from status_tracker import repository
from status_tracker.callbacks import StatusReport
from status_tracker.precedence import FINAL_STATUSES
from tests.conftest import app_client
from tests.support import callback_fields, new_sid, signed

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
# Customers in several countries; senders: two numbers and a Messaging Service.
CUSTOMERS = {
    "US": "+1415555{:04d}",
    "CA": "+1416555{:04d}",
    "GB": "+4477009{:05d}",
    "FR": "+3361234{:04d}",
    "BR": "+5511987{:06d}",
}
SENDERS = [("+15005550006", None), ("+15005550007", None), (None, "MG" + "a" * 32)]
# A message's life: what Twilio may report, in order, with the final status's error code.
ENDINGS = [("delivered", None), ("read", None), ("undelivered", 30003), ("failed", 30007),
           ("undelivered", 30005), ("sent", None)]  # fmt: skip


def _life(rng: random.Random) -> list[tuple[str, int | None]]:
    ending, code = rng.choice(ENDINGS)
    steps: list[tuple[str, int | None]] = [("queued", None), ("sent", None)]
    if ending == "read":
        steps.append(("delivered", None))
    if ending != "sent":
        steps.append((ending, code))
    # A late report that changes the final status: an `undelivered` message later `delivered`.
    if ending == "undelivered" and rng.random() < 0.3:
        steps.append(("delivered", None))
    return steps


def _reports(rng: random.Random, count: int) -> list[StatusReport]:
    reports = []
    for number in range(count):
        sid = new_sid()
        country = rng.choice(list(CUSTOMERS))
        to = CUSTOMERS[country].format(number)
        from_, service = rng.choice(SENDERS)
        sent = NOW - timedelta(hours=rng.randrange(72), minutes=rng.randrange(60))
        for step, (status, code) in enumerate(_life(rng)):
            at = sent + timedelta(seconds=step * rng.uniform(0.2, 900))
            report = StatusReport(
                sid=sid, status=status, error_code=code, received_at=at, source="callback",
                account_sid="AC" + "0" * 32, to=to, from_=from_, messaging_service_sid=service,
            )  # fmt: skip
            reports.append(report)
            if rng.random() < 0.2:  # Twilio sends some twice
                reports.append(report)
    rng.shuffle(reports)
    return reports


async def _recount(db, since: datetime, until: datetime, group: str) -> dict:
    """Counts by (group, status) straight from the messages."""
    rows = await db.fetch(
        f"SELECT ({group})::text AS grp, status, count(*) AS n FROM messages "
        "WHERE created_at >= $1 AND created_at < $2 GROUP BY 1, 2",
        since,
        until,
    )
    counts: dict = {}
    for row in rows:
        counts.setdefault(row["grp"], {})[row["status"]] = row["n"]
    return counts


# Written out again, not taken from the code under test.
EXPRESSIONS = {
    "country": "country",
    "from": "CASE WHEN direction <> 'inbound' THEN from_number END",
    "messaging_service": "messaging_service_sid",
    "reference": "reference",
    "error_code": "error_code",
}


async def test_stats_equal_a_recount_after_shuffled_duplicated_and_late_reports(client, db):
    rng = random.Random(1124)
    reports = _reports(rng, 400)
    # Stored in batches as the writer does, with the rollups folded now and then in between.
    position = 0
    while position < len(reports):
        size = rng.randrange(1, 60)
        batch = reports[position : position + size]
        position += size
        # One report per message per statement, as the writer gives them.
        await repository.record_reports(db, batch)
        if rng.random() < 0.3:
            await repository.fold_rollup_deltas(db)
    # And a few through the real webhook, now.
    for _ in range(20):
        sid = new_sid()
        for status in rng.sample(["queued", "sent", "delivered"], 3):
            target, body, headers = signed(callback_fields(sid, status, To="+33612345678"))
            assert (await client.post(target, content=body, headers=headers)).status_code == 204

    windows = [
        (NOW - timedelta(days=4), NOW + timedelta(hours=1)),  # everything, whole hours
        (NOW - timedelta(hours=30, minutes=17), NOW - timedelta(hours=2, minutes=41)),
        (NOW - timedelta(minutes=50), NOW - timedelta(minutes=10)),  # inside one hour
        # Days read whole from the daily rollups, hours and minutes around them.
        (NOW - timedelta(days=3, hours=5, minutes=3), NOW - timedelta(hours=1, minutes=8)),
    ]
    for since, until in windows:
        for group_by, expression in [(None, "NULL"), *EXPRESSIONS.items()]:
            params = {"since": since.isoformat(), "until": until.isoformat()}
            if group_by:
                params["group_by"] = group_by
            response = await client.get("/v1/stats", params=params)
            assert response.status_code == 200, response.text
            stats = response.json()
            expected = await _recount(db, since, until, expression)
            everything: dict = {}
            for counts in expected.values():
                for status, n in counts.items():
                    everything[status] = everything.get(status, 0) + n
            assert stats["by_status"] == everything, (since, until, group_by)
            assert stats["total"] == sum(everything.values())
            if group_by:
                got = {group["key"]: group["by_status"] for group in stats["groups"]}
                assert got == expected, (since, until, group_by)
                for group in stats["groups"]:
                    final = {s: n for s, n in group["by_status"].items() if s in FINAL_STATUSES}
                    delivered = final.get("delivered", 0) + final.get("read", 0)
                    rate = delivered / sum(final.values()) if final else None
                    assert group["delivery_rate"] == rate


async def test_the_rollup_table_equals_the_messages_grouped_its_way(db):
    for report in _reports(random.Random(8), 200):
        await repository.record_reports(db, [report])
    await repository.fold_rollup_deltas(db)
    assert not await db.fetchval("SELECT count(*) FROM message_rollup_deltas")
    hour = "date_trunc('hour', created_at, 'UTC')"
    cases = {
        "": (f"{hour}, account_sid, NULL::text, status, error_code, "
             "message_delivery_bucket(sent_at, delivered_at)"),
        **{name: f"{hour}, account_sid, ({expression})::text, status, NULL::integer, NULL::smallint"
           for name, expression in repository.BREAKDOWNS.items()},
    }  # fmt: skip
    for breakdown, columns in cases.items():
        counted = await db.fetch(
            f"SELECT {columns}, count(*) FROM messages GROUP BY 1, 2, 3, 4, 5, 6"
        )
        rolled = await db.fetch(
            "SELECT hour, account_sid, value, status, error_code, delivery_bucket, messages "
            "FROM message_rollups WHERE breakdown = $1 AND messages <> 0",
            breakdown,
        )
        assert sorted(map(tuple, counted), key=repr) == sorted(map(tuple, rolled), key=repr)
    # The daily rollups are the hourly ones summed by day.
    hourly = await db.fetch(
        "SELECT date_trunc('day', hour, 'UTC'), account_sid, breakdown, value, status, "
        "error_code, delivery_bucket, sum(messages) FROM message_rollups "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7 HAVING sum(messages) <> 0"
    )
    daily = await db.fetch(
        "SELECT day, account_sid, breakdown, value, status, error_code, delivery_bucket, "
        "messages FROM message_rollups_daily WHERE messages <> 0"
    )
    assert sorted(map(tuple, hourly), key=repr) == sorted(map(tuple, daily), key=repr)


async def test_delivery_buckets_are_the_same_in_python_and_sql(db):
    for index, bound in enumerate(repository.DELIVERY_BOUNDS):
        sent = NOW
        assert (
            await db.fetchval(
                "SELECT message_delivery_bucket($1, $2)", sent, sent + timedelta(seconds=bound)
            )
            == index + 1
        )
        assert await db.fetchval(
            "SELECT message_delivery_bucket($1, $2)", sent,
            sent + timedelta(seconds=bound - 0.001),
        ) == index  # fmt: skip


async def test_country_breakdown_survives_redacted_numbers(settings, db):
    redacting = settings.model_copy(update={"redact_numbers": "last4"})
    async with app_client(redacting) as client:
        for to in ("+14155550123", "+447700900123", "+447700900456", "+33612345678"):
            target, body, headers = signed(callback_fields(new_sid(), "delivered", To=to))
            assert (await client.post(target, content=body, headers=headers)).status_code == 204
        stats = (await client.get("/v1/stats", params={"group_by": "country"})).json()
    assert {g["key"]: g["total"] for g in stats["groups"]} == {"US": 1, "GB": 2, "FR": 1}
    assert all(g["delivery_rate"] == 1.0 for g in stats["groups"])
    stored = await db.fetch("SELECT to_number FROM messages")
    assert all(row["to_number"].endswith("****") for row in stored)


async def test_an_unknown_group_is_a_422_problem(client):
    response = await client.get("/v1/stats", params={"group_by": "to"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"

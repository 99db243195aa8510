"""`/v1/stats` over 30 days of rollups shaped as 10 million messages a day would leave them.

    python bench/rollups.py [--days 30] [--countries 60] [--senders 200] [--accounts 3]

The rollups' size grows with the values of each dimension seen in an hour, not with the number
of messages: at 10 M messages a day (over 400,000 an hour) every combination a busy sender
mixes is present in every hour. This fills `message_rollups` (and the daily rollups from them)
with every such combination for each hour of `--days` (the totals by account, status, error
code and delivery-time bucket; the breakdowns by country, sender and Messaging Service, by
status), in an embedded throwaway
cluster, and times what `/v1/stats` runs (`repository.message_stats`, `message_breakdown`)
over the whole window, hour-aligned and not (the part-hours at either end are read from an
empty `messages`). Needs nothing else.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from status_tracker import repository
from status_tracker.database import migrate
from status_tracker.embedded_postgres import EmbeddedPostgres

# Status, the error codes it carries (None: none), and whether it has delivery times.
STATUSES = [
    ("delivered", [None], True), ("read", [None], True), ("sent", [None], False),
    ("queued", [None], False), ("accepted", [None], False), ("received", [None], False),
    ("undelivered", [30003, 30005, 30006, 30008, 30007, 30034, 30032, 30044], False),
    ("failed", [30007, 21610, 30034, 21408, 21211, 30001, 30002, 21614], False),
]  # fmt: skip
BUCKETS = len(repository.DELIVERY_BOUNDS) + 1


async def fill(dsn: str, args: argparse.Namespace, start: datetime) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        rows = []
        for account in range(args.accounts):
            account_sid = f"AC{account:032d}"
            for status, codes, timed in STATUSES:
                for code in codes:
                    for bucket in range(BUCKETS) if timed else [None]:
                        rows.append((account_sid, "", None, status, code, bucket))
            for breakdown, values in (
                ("country", [f"C{n:02d}" for n in range(args.countries)]),
                ("from", [f"+1500555{n:04d}" for n in range(args.senders)]),
                ("messaging_service", [f"MG{n:032d}" for n in range(10)]),
            ):
                for value in values:
                    for status, _, _ in STATUSES:
                        rows.append((account_sid, breakdown, value, status, None, None))
        await connection.execute(
            """
            INSERT INTO message_rollups (hour, account_sid, breakdown, value, status, error_code,
                                         delivery_bucket, messages)
            SELECT h, r.account_sid, r.breakdown, r.value, r.status, r.error_code,
                   r.delivery_bucket, 1 + (hashint4(extract(epoch FROM h)::int) & 1023)
            FROM generate_series($1::timestamptz, $2::timestamptz - interval '1 hour',
                                 interval '1 hour') h,
                 unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
                        $8::smallint[])
                 AS r(account_sid, breakdown, value, status, error_code, delivery_bucket)
            """,
            start,
            start + timedelta(days=args.days),
            *(list(column) for column in zip(*rows, strict=True)),
        )
        # The daily rollups, as the service's fold keeps them beside the hourly ones.
        await connection.execute(
            """
            INSERT INTO message_rollups_daily (day, account_sid, breakdown, value, status,
                                               error_code, delivery_bucket, messages)
            SELECT date_trunc('day', hour, 'UTC'), account_sid, breakdown, value, status,
                   error_code, delivery_bucket, sum(messages)
            FROM message_rollups GROUP BY 1, 2, 3, 4, 5, 6, 7
            """
        )
        await connection.execute("VACUUM ANALYZE message_rollups")
        await connection.execute("VACUUM ANALYZE message_rollups_daily")
        return len(rows) * args.days * 24
    finally:
        await connection.close()


async def timed(dsn: str, name: str, call, repeat: int = 7) -> None:  # type: ignore[no-untyped-def]
    connection = await asyncpg.connect(dsn)
    try:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            rows = await call(connection)
            times.append((time.perf_counter() - started) * 1000)
        print(f"  {name:44} p50 {statistics.median(times):6.1f} ms   max {max(times):6.1f} ms"
              f"   ({len(rows)} rows)")  # fmt: skip
    finally:
        await connection.close()


async def measure(dsn: str, args: argparse.Namespace) -> None:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=args.days)
    count = await fill(dsn, args, start)
    print(f"{count:,} rollup rows for {args.days} days")
    until = start + timedelta(days=args.days)
    ragged = (start + timedelta(minutes=17), until - timedelta(minutes=43))
    await timed(
        dsn, "stats, whole hours", lambda c: repository.message_stats(c, start, until, "day")
    )
    await timed(dsn, "stats, part-hours at both ends",
                lambda c: repository.message_stats(c, *ragged, "day"))  # fmt: skip
    await timed(
        dsn,
        "stats, one account",
        lambda c: repository.message_stats(c, start, until, "day", [f"AC{0:032d}"]),
    )
    for group in ("country", "from", "messaging_service", "error_code"):
        await timed(
            dsn,
            f"breakdown by {group}",
            lambda c, g=group: repository.message_breakdown(c, start, until, g),
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--countries", type=int, default=60)
    parser.add_argument("--senders", type=int, default=200)
    parser.add_argument("--accounts", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rollups-") as directory:
        Path(directory).chmod(0o755)
        cluster = EmbeddedPostgres(Path(directory) / "postgres")
        dsn = cluster.start()
        try:
            migrate(dsn)
            asyncio.run(measure(dsn, args))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()

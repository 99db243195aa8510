"""A one-day export of a million messages: rows a second before and after, in the same run.

    python bench/export.py [--messages 1000000] [--store .bench-export] [--reload] [--rounds 3]

Loads `--messages` messages, all created within one day (at microseconds as a clock gives
them), each with three events, into an
embedded cluster kept under `--store` (fsync on, the service's own settings); a later run reuses
it after migrating it, `--reload` loads it again. Then, `--rounds` times each, it streams the
day's export:

- before: the export as it was until the erasure migration (a count of each message's events in
  the query, each row formatted by Python's csv/json modules), run in this process straight on
  the database, with no HTTP in the way;
- after: `GET /v1/export` of `status-tracker serve` (one worker), CSV and JSON lines, read by
  an HTTP client as fast as it can.

Prints rows/s (median round) and MB/s of each.
"""

import argparse
import asyncio
import csv
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

# Run as a script, this file's directory is on the path: its sibling is importable.
from ingest import start_server, stop_server

from status_tracker.database import init_connection, migrate
from status_tracker.embedded_postgres import EmbeddedPostgres
from status_tracker.error_codes import describe
from status_tracker.models import rfc3339
from status_tracker.ports import free_port
from status_tracker.precedence import rank

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench"
DATABASE = "export_loaded"
CHUNK = 100_000

LOAD = f"""
WITH message AS (
    INSERT INTO messages (
        id, sid, account_sid, direction, status, status_rank, error_code, to_number, from_number,
        channel, reference, created_at, updated_at, sent_at, delivered_at, final_at, body,
        send_outcome, event_count
    )
    SELECT uuid7(at), 'SM' || md5(i::text || 'export'), 'AC' || repeat('0', 32), 'outbound-api',
           CASE WHEN i % 20 = 0 THEN 'undelivered' ELSE 'delivered' END,
           CASE WHEN i % 20 = 0 THEN {rank("undelivered")} ELSE {rank("delivered")} END,
           CASE WHEN i % 20 = 0 THEN (ARRAY[30003, 30005, 30006, 30008])[1 + i % 4] END,
           '+1415' || lpad((abs(hashint4(i)) % 200000)::text, 7, '0'),
           '+1500555' || lpad((i % 50)::text, 4, '0'), 'sms',
           CASE WHEN i % 3 = 0 THEN 'order-' || i END,
           at, at + interval '9 seconds', at + interval '2 seconds',
           CASE WHEN i % 20 <> 0 THEN at + interval '7 seconds' END,
           at + interval '7 seconds', 'Your code is ' || i % 1000, 'accepted', 3
    FROM generate_series($1::int, $2::int) AS i,
         LATERAL (SELECT $4::timestamptz - make_interval(secs => ($3 - i) * 86400.0 / $3)
                          - (abs(hashint4(i)) % 50000) * interval '1 microsecond' AS at) t
    RETURNING id, sid, status, status_rank, error_code, to_number, from_number, created_at
)
INSERT INTO message_events (message_id, status, status_rank, error_code, source, received_at,
                            fields)
SELECT m.id, e.status, e.status_rank, e.error_code, e.source, m.created_at + e.k * interval '3 s',
       jsonb_build_object('MessageSid', m.sid, 'MessageStatus', e.status, 'To', m.to_number,
                          'From', m.from_number, 'ApiVersion', '2010-04-01')
FROM message m CROSS JOIN LATERAL (VALUES
    (0, 'queued', {rank("queued")}, NULL::integer, 'send'),
    (1, 'sent', {rank("sent")}, NULL, 'callback'),
    (2, m.status, m.status_rank, m.error_code, 'callback')
) AS e(k, status, status_rank, error_code, source)
"""

# The export before the erasure migration: a count per message, formatted row by row in Python.
BEFORE_QUERY = """
    SELECT id, sid, direction, status, error_code, to_number, from_number, channel, reference,
           created_at, updated_at, sent_at, delivered_at, read_at, final_at,
           (SELECT count(*) FROM message_events e WHERE e.message_id = m.id) AS event_count
    FROM messages m WHERE created_at >= $1 AND created_at < $2
    ORDER BY created_at, id
"""
COLUMNS = (
    "id", "sid", "direction", "status", "error_code", "error_description", "to", "from",
    "channel", "reference", "created_at", "updated_at", "sent_at", "delivered_at", "read_at",
    "final_at", "event_count",
)  # fmt: skip
FORMULA_STARTS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")


def _cell(value: Any) -> str:
    text = "" if value is None else rfc3339(value) if isinstance(value, datetime) else str(value)
    return "'" + text if text[:1] in FORMULA_STARTS else text


def _json_value(value: Any) -> Any:
    return rfc3339(value) if isinstance(value, datetime) else str(value)


async def export_before(
    dsn: str, since: datetime, until: datetime, as_csv: bool
) -> tuple[int, int]:
    """The old export's work, without HTTP: the rows and bytes it would have sent."""
    connection = await asyncpg.connect(dsn)
    await init_connection(connection)
    rows = size = 0
    try:
        async with connection.transaction(readonly=True):
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            async for record in connection.cursor(BEFORE_QUERY, since, until, prefetch=1000):
                rows += 1
                row = {name: record[name] for name in COLUMNS if name in record}
                row["to"], row["from"] = record["to_number"], record["from_number"]
                row["error_description"] = describe(record["error_code"])
                if as_csv:
                    writer.writerow(_cell(row[name]) for name in COLUMNS)
                else:
                    buffer.write(json.dumps(row, default=_json_value) + "\n")
                if buffer.tell() > 64 * 1024:
                    size += len(buffer.getvalue().encode())
                    buffer.seek(0)
                    buffer.truncate()
            size += len(buffer.getvalue().encode())
    finally:
        await connection.close()
    return rows, size


async def export_after(url: str, since: datetime, until: datetime, as_csv: bool) -> tuple[int, int]:
    """`GET /v1/export`, read as fast as it comes: the rows and bytes received."""
    params = {"since": since.isoformat(), "until": until.isoformat()}
    if not as_csv:
        params["format"] = "jsonl"
    lines = size = 0
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        async with client.stream("GET", "/v1/export", params=params) as response:
            response.raise_for_status()
            async for chunk in response.aiter_raw():
                size += len(chunk)
                lines += chunk.count(b"\n")
    return lines - 1 if as_csv else lines, size  # the header


async def prepare(admin_dsn: str, dsn: str, messages: int, reload: bool) -> tuple[datetime, float]:
    """The loaded day's end, and the seconds a load took (0 when the kept store was reused)."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        if reload:
            await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()
    await asyncio.to_thread(migrate, dsn)
    connection = await asyncpg.connect(dsn)
    try:
        if await connection.fetchval("SELECT to_regclass('bench_export_loaded') IS NOT NULL"):
            count, end = await connection.fetchrow(
                "SELECT messages, until FROM bench_export_loaded"
            )
            if count != messages:
                raise SystemExit(f"the kept store holds {count:,} messages, not {messages:,}")
            print(f"reusing the kept store of {count:,} messages")
            return end, 0.0
        started, end = time.monotonic(), datetime.now(UTC).replace(microsecond=0)
        for low in range(1, messages + 1, CHUNK):
            high = min(messages, low + CHUNK - 1)
            await connection.execute(LOAD, low, high, messages, end)
            print(f"  loaded {high:,} messages in {time.monotonic() - started:.0f} s", flush=True)
        await connection.execute("VACUUM (ANALYZE) messages")
        await connection.execute("VACUUM (ANALYZE) message_events")
        await connection.execute(
            "CREATE TABLE bench_export_loaded (messages int, until timestamptz)"
        )
        await connection.execute("INSERT INTO bench_export_loaded VALUES ($1, $2)", messages, end)
        return end, time.monotonic() - started
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages in the day")
    parser.add_argument("--store", type=Path, default=REPO / ".bench-export",
                        help="where the embedded cluster is kept between runs")  # fmt: skip
    parser.add_argument("--reload", action="store_true", help="load the store again")
    parser.add_argument("--rounds", type=int, default=3, help="exports of each kind; median shown")
    args = parser.parse_args()
    args.store.mkdir(parents=True, exist_ok=True)
    args.store.chmod(0o755)
    cluster = EmbeddedPostgres(args.store / "postgres")
    admin_dsn = cluster.start()
    directory = Path(tempfile.mkdtemp(prefix="bench-export-"))
    directory.chmod(0o755)
    url = f"http://127.0.0.1:{free_port()}"
    server = None
    try:
        dsn = f"{admin_dsn.rsplit('/', 1)[0]}/{DATABASE}"
        until, load_seconds = asyncio.run(prepare(admin_dsn, dsn, args.messages, args.reload))
        if load_seconds:
            print(f"loaded {args.messages:,} messages in {load_seconds:.0f} s")
        since = until - timedelta(days=1)
        ours = ("DATABASE_URL", "STATUS_TRACKER_", "TWILIO_")
        environment = {key: value for key, value in os.environ.items() if not key.startswith(ours)}
        environment.update({
            "DATABASE_URL": dsn, "STATUS_TRACKER_API_KEYS": API_KEY,
            "STATUS_TRACKER_DATA_DIR": str(directory), "STATUS_TRACKER_PUBLIC_URL": url,
        })  # fmt: skip
        port = url.rsplit(":", 1)[1]
        command = [sys.executable, "-m", "status_tracker.cli", "serve", "--port", port]
        server = start_server(command, environment, url, "/readyz")
        print(f"{'export':<22} {'rows/s':>10} {'MB/s':>7}  (median of {args.rounds}; every round)")
        for name, as_csv in (("csv", True), ("jsonl", False)):
            for when, run in (("before", export_before), ("after", export_after)):
                target = dsn if when == "before" else url
                rates, sizes = [], []
                for _ in range(args.rounds):
                    started = time.monotonic()
                    rows, size = asyncio.run(run(target, since, until, as_csv))
                    seconds = time.monotonic() - started
                    rates.append(rows / seconds)
                    sizes.append(size / seconds / 1e6)
                every = ", ".join(f"{rate:,.0f}" for rate in rates)
                print(f"{when + ' ' + name:<22} {statistics.median(rates):>10,.0f} "
                      f"{statistics.median(sizes):>7.1f}  ({every})", flush=True)  # fmt: skip
    finally:
        if server is not None:
            stop_server(server)
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

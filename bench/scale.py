"""Ingest and queries on a full store against an empty one, in the same run.

    python bench/scale.py [--messages 10000000] [--duration 15] [--concurrency 32] [--rate 1000]

Loads `--messages` messages (3 events each; created over the last 30 days, in insertion order; a
realistic mix of statuses and error codes; about 200,000 distinct numbers) into an embedded
cluster kept under `--store` (default `.bench-scale/`), with the server settings the service
gives its own embedded cluster, fsync on. A later run reuses the loaded database (migrating it
to the current schema first, as `status-tracker migrate` would); `--reload` loads it again.

Then, for an empty database and for the loaded one, each under `status-tracker serve` with one
worker, it measures ingest of fresh signed callbacks (closed loop with wrk, open loop at
`--rate`), replays one more shuffled, duplicated set and checks every message ends with the
status the precedence rule calls for, and times `GET /v1/messages/{sid}`, a first list page per
filter, `/v1/stats` over 24 hours and 30 days (and broken down by country, sender and error
code), a one-hour export, and each page of the console (`/console`); and runs the open loop
again while retention drops a day partition of a million events. Needs `wrk`.
"""

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import asyncpg
import httpx

# Run as a script, this file's directory is on the path: its sibling is importable.
from ingest import (
    INGEST_SETTINGS,
    closed_loop_with_memory,
    open_loop,
    rss_mib,
    signed_requests,
    start_server,
    stop_server,
    wrk_script,
)
from ingest import TOKEN as AUTH_TOKEN

from status_tracker import repository, retention
from status_tracker.database import migrate
from status_tracker.embedded_postgres import EmbeddedPostgres
from status_tracker.ports import free_port
from status_tracker.precedence import FINAL_STATUSES, rank

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench"
NUMBERS = 200_000
DAYS = 30
CHUNK = 250_000
LOADED, EMPTY = "scale_loaded", "scale_empty"

# Of 1,000 messages: the status they end in and, for failures, the error codes they carry.
MIX = (
    (45, "received", ()),
    (800, "delivered", ()),
    (30, "read", ()),
    (50, "sent", ()),
    (40, "undelivered", (30003, 30005, 30006, 30008)),
    (30, "failed", (30007, 21610, 30034)),
    (5, "queued", ()),
)


def _status_sql() -> tuple[str, str, str]:
    """SQL CASE expressions over `roll` (0-999): the status, its rank and its error code."""
    status, errors, bound = [], [], 0
    for share, name, codes in MIX:
        bound += share
        status.append(f"WHEN roll < {bound} THEN '{name}'")
        if codes:
            picks = ", ".join(str(code) for code in codes)
            errors.append(f"WHEN roll < {bound} THEN (ARRAY[{picks}])[1 + roll % {len(codes)}]")
    ranks = " ".join(f"WHEN '{name}' THEN {rank(name)}" for _, name, _ in MIX)
    return (
        f"CASE {' '.join(status)} END",
        f"CASE status {ranks} END",
        f"CASE {' '.join(errors)} END",
    )


def load_sql(id_expression: str) -> str:
    """One chunk of messages ($1..$2 of $3, ending at $4), each with three events."""
    status, status_rank, error = _status_sql()
    final = ", ".join(f"'{name}'" for name in sorted(FINAL_STATUSES))
    return f"""
    WITH src AS (
        SELECT i, $4::timestamptz - make_interval(secs => ($3 - i) * {DAYS * 86400}.0 / $3)
                   AS created_at,
               abs(hashint4(i)) % 1000 AS roll, abs(hashint4(i + 7919)) % {NUMBERS} AS number
        FROM generate_series($1::int, $2::int) AS i
    ), shaped AS (
        SELECT *, {status} AS status FROM src
    ), ranked AS (
        SELECT *, {status_rank} AS status_rank, {error} AS error_code,
               'SM' || md5(i::text || 'scale') AS sid,
               '+1415' || lpad(number::text, 7, '0') AS customer,
               '+1500555' || lpad((roll % 50)::text, 4, '0') AS sender
        FROM shaped
    ), message AS (
        INSERT INTO messages (
            id, sid, account_sid, direction, status, status_rank, error_code, to_number,
            from_number, channel, created_at, updated_at, sent_at, delivered_at, read_at,
            final_at, body, send_outcome, event_count
        )
        SELECT {id_expression}, sid, 'AC' || repeat('0', 32),
               CASE WHEN status = 'received' THEN 'inbound' ELSE 'outbound-api' END,
               status, status_rank, error_code,
               CASE WHEN status = 'received' THEN sender ELSE customer END,
               CASE WHEN status = 'received' THEN customer ELSE sender END,
               'sms', created_at, created_at + interval '9 seconds',
               CASE WHEN status NOT IN ('queued', 'received', 'failed')
                    THEN created_at + interval '2 seconds' END,
               CASE WHEN status IN ('delivered', 'read') THEN created_at + interval '7 seconds' END,
               CASE WHEN status = 'read' THEN created_at + interval '9 seconds' END,
               CASE WHEN status IN ({final}) THEN created_at + interval '7 seconds' END,
               'Your code is ' || (roll * 7 + i % 1000),
               CASE WHEN status = 'received' THEN NULL ELSE 'accepted' END, 3
        FROM ranked
        RETURNING id, sid, status, status_rank, error_code, to_number, from_number, created_at,
                  direction
    )
    INSERT INTO message_events (
        message_id, status, status_rank, error_code, source, received_at, fields
    )
    SELECT m.id, e.status, e.rank, e.error_code, e.source,
           m.created_at + e.k * interval '3 seconds',
           jsonb_build_object(
               'MessageSid', m.sid, 'SmsSid', m.sid, 'MessageStatus', e.status,
               'SmsStatus', e.status, 'AccountSid', 'AC' || repeat('0', 32),
               'From', m.from_number, 'To', m.to_number, 'ApiVersion', '2010-04-01')
    FROM message m CROSS JOIN LATERAL (VALUES
        (0, CASE WHEN m.direction = 'inbound' THEN 'received' ELSE 'queued' END,
            CASE WHEN m.direction = 'inbound' THEN m.status_rank ELSE {rank("queued")} END,
            NULL::integer, CASE WHEN m.direction = 'inbound' THEN 'inbound' ELSE 'send' END),
        (1, CASE WHEN m.status IN ('failed', 'queued', 'received') THEN m.status ELSE 'sent' END,
            CASE WHEN m.status IN ('failed', 'queued', 'received') THEN m.status_rank
                 ELSE {rank("sent")} END,
            CASE WHEN m.status = 'failed' THEN m.error_code END, 'callback'),
        (2, m.status, m.status_rank, m.error_code, 'callback')
    ) AS e(k, status, rank, error_code, source)
    """


async def _table_keys(connection: asyncpg.Connection, tables: tuple[str, ...]) -> list[tuple]:
    """(table, name, kind, definition) of the foreign keys into `tables`, then their keys, then
    their other indexes: the order to drop them in (and the reverse, to build them)."""
    rows = await connection.fetch(
        """
        SELECT c.conrelid::regclass::text AS tab, c.conname AS name, 'constraint' AS kind,
               pg_get_constraintdef(c.oid) AS definition, c.contype = 'f' AS first
        FROM pg_constraint c
        WHERE (c.contype IN ('p', 'u') AND c.conrelid = ANY($1::regclass[]))
           OR (c.contype = 'f' AND c.confrelid = ANY($1::regclass[]))
        UNION ALL
        SELECT i.indrelid::regclass::text, x.relname, 'index', pg_get_indexdef(i.indexrelid), false
        FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
        WHERE i.indrelid = ANY($1::regclass[])
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        ORDER BY first DESC, kind
        """,
        list(tables),
    )
    return [(r["tab"], r["name"], r["kind"], r["definition"]) for r in rows]


def _as_grown(definition: str, kind: str, random_columns: set[str]) -> str:
    """The definition of a key or index, built at the fill that a store grown callback by
    callback leaves it at. An index whose leading column takes random values (a SID, a phone
    number, a random id) gets its entries all over it; its pages split when full and end about
    70 % full (ln 2, for random inserts). One whose keys grow with time (created_at, a UUIDv7)
    only ever splits its last page, and ends at the default fill (90 %). Built after the load at
    the default fill, a random index would be denser than any real one, and each insert would
    split a page."""
    columns = re.search(r"\((\w+)", definition)
    if definition.startswith("FOREIGN KEY") or columns is None:
        return definition
    if columns.group(1) not in random_columns:
        return definition
    at = definition.index(")", columns.start()) + 1
    return f"{definition[:at]} WITH (fillfactor = 70){definition[at:]}"


async def load(dsn: str, messages: int) -> float:
    """Fill the (migrated, empty) database; the seconds it took. Indexes and keys are dropped
    during the load and built after, at the fill an organically grown store has them
    (`_as_grown`)."""
    started = time.monotonic()
    connection = await asyncpg.connect(dsn)
    try:
        tables = ("messages", "message_events")
        keys = await _table_keys(connection, tables)
        for table, name, kind, _ in keys:
            if kind == "constraint":
                await connection.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
            else:
                await connection.execute(f"DROP INDEX {name}")
        # Ids as the schema assigns them: time-ordered where it has uuid7(), random before.
        has_uuid7 = await connection.fetchval("SELECT to_regproc('uuid7') IS NOT NULL")
        sql = load_sql("uuid7(created_at)" if has_uuid7 else "gen_random_uuid()")
        random_columns = {"sid", "to_number"} | (set() if has_uuid7 else {"id", "message_id"})
        # The loader writes consistent rows; the triggers' checks would probe missing indexes.
        await connection.execute("SET session_replication_role = replica")
        end = datetime.now(UTC)
        for low in range(1, messages + 1, CHUNK):
            high = min(messages, low + CHUNK - 1)
            await connection.execute(sql, low, high, messages, end)
            print(f"  loaded {high:,} messages in {time.monotonic() - started:.0f} s", flush=True)
        await connection.execute("RESET session_replication_role")
        await connection.execute("SET maintenance_work_mem = '1GB'")
        for table, name, kind, definition in reversed(keys):
            grown = _as_grown(definition, kind, random_columns)
            if kind == "constraint":
                await connection.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {grown}")
            else:
                await connection.execute(grown)
            if grown != definition:  # the fill is the load's, not the schema's
                await connection.execute(f"ALTER INDEX {name} RESET (fillfactor)")
        print(f"  indexes built in {time.monotonic() - started:.0f} s", flush=True)
        await connection.execute("VACUUM (ANALYZE) messages")
        await connection.execute("VACUUM (ANALYZE) message_events")
        await connection.execute("CREATE TABLE bench_scale_loaded (messages bigint)")
        await connection.execute("INSERT INTO bench_scale_loaded VALUES ($1)", messages)
    finally:
        await connection.close()
    return time.monotonic() - started


async def prepare(admin_dsn: str, dsn_of: dict[str, str], messages: int, reload: bool) -> float:
    """Create the empty database afresh and the loaded one if missing; seconds spent loading."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {EMPTY} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {EMPTY}")
        if reload:
            await admin.execute(f"DROP DATABASE IF EXISTS {LOADED} WITH (FORCE)")
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", LOADED)
        if not exists:
            await admin.execute(f"CREATE DATABASE {LOADED}")
    finally:
        await admin.close()
    # Alembic runs its own event loop: in a thread.
    await asyncio.to_thread(migrate, dsn_of[EMPTY])
    loaded_before = time.monotonic()
    await asyncio.to_thread(
        migrate, dsn_of[LOADED]
    )  # an existing store is upgraded, as `status-tracker migrate` would
    migrated = time.monotonic() - loaded_before
    connection = await asyncpg.connect(dsn_of[LOADED])
    try:
        count = await connection.fetchval(
            "SELECT messages FROM bench_scale_loaded"
            if await connection.fetchval("SELECT to_regclass('bench_scale_loaded') IS NOT NULL")
            else "SELECT NULL"
        )
    finally:
        await connection.close()
    if count is not None and count != messages:
        raise SystemExit(f"the kept store holds {count:,} messages, not {messages:,}: --reload")
    if count is None:
        print(f"loading {messages:,} messages", flush=True)
        return await load(dsn_of[LOADED], messages)
    print(f"reusing the kept store of {count:,} messages (migrations took {migrated:.0f} s)")
    return 0.0


def expected_statuses(requests: list[tuple[str, str]]) -> dict[str, str]:
    """Each SID's status by the precedence rule, from the callbacks sent."""
    best: dict[str, str] = {}
    for body, _ in requests:
        fields = dict(parse_qsl(body))
        sid, status = fields["MessageSid"], fields["MessageStatus"]
        if sid not in best or rank(status) > rank(best[sid]):
            best[sid] = status
    return best


async def replay_and_check(url: str, dsn: str, requests: list[tuple[str, str]]) -> str:
    """Send every request (again), then compare each message with the rule."""
    result = await open_loop(url, requests, rate=2000, duration=-(-len(requests) // 2000))
    expected = expected_statuses(requests)
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT sid, status FROM messages WHERE sid = ANY($1::text[])", list(expected)
        )
    finally:
        await connection.close()
    stored = {row["sid"]: row["status"] for row in rows}
    wrong = sum(1 for sid, status in expected.items() if stored.get(sid) != status)
    return f"{len(expected):,} messages replayed, {result['errors']} errors, {wrong} mis-ranked"


async def timed(client: httpx.AsyncClient, path: str, params: dict[str, str] | None = None,
                repeat: int = 20) -> tuple[float, float]:  # fmt: skip
    """p50 and p95 of `repeat` sequential requests, in ms; NaN if any was not answered 200
    (a query past the service's database timeout is a 503)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = await client.get(path, params=params)
        if response.status_code != 200:
            print(f"  {path} {params}: {response.status_code}", flush=True)
            return float("nan"), float("nan")
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


async def query_latencies(url: str, dsn: str) -> dict[str, tuple[float, float]]:
    connection = await asyncpg.connect(dsn)
    try:
        sampled = await connection.fetch(
            "SELECT sid FROM messages TABLESAMPLE SYSTEM (1) WHERE sid IS NOT NULL LIMIT 200"
        )
        sampled = sampled or await connection.fetch("SELECT sid FROM messages LIMIT 200")
        sids = [row["sid"] for row in sampled]
        sample = await connection.fetchrow(
            "SELECT to_number, from_number, created_at FROM messages "
            "WHERE direction <> 'inbound' ORDER BY created_at DESC LIMIT 1"
        )
    finally:
        await connection.close()
    now = datetime.now(UTC)
    day_ago = (now - timedelta(days=1)).isoformat()
    results: dict[str, tuple[float, float]] = {}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        random.Random(3).shuffle(sids)
        times = []
        for sid in sids:
            started = time.perf_counter()
            (await client.get(f"/v1/messages/{sid}")).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        results["GET /v1/messages/{sid}"] = (
            statistics.median(times),
            times[min(len(times) - 1, int(0.95 * len(times)))],
        )
        filters = {
            "none": {},
            "status=delivered": {"status": "delivered"},
            "status=undelivered": {"status": "undelivered"},
            "status=queued": {"status": "queued"},
            "direction=inbound": {"direction": "inbound"},
            "to": {"to": sample["to_number"]},
            "from": {"from": sample["from_number"]},
            "error_code=30007": {"error_code": "30007"},
            "since/until 1 h": {
                "since": (now - timedelta(days=3)).isoformat(),
                "until": (now - timedelta(days=3) + timedelta(hours=1)).isoformat(),
            },
        }
        for name, params in filters.items():
            results[f"list page, {name}"] = await timed(
                client, "/v1/messages", {**params, "limit": "50"}
            )
        results["stats, 24 h"] = await timed(client, "/v1/stats", {"since": day_ago}, repeat=5)
        month_ago = (now - timedelta(days=DAYS)).isoformat()
        results["stats, 30 days"] = await timed(client, "/v1/stats", {"since": month_ago}, repeat=5)
        for group in ("country", "from", "error_code"):
            results[f"stats, 30 days by {group}"] = await timed(
                client, "/v1/stats", {"since": month_ago, "group_by": group}, repeat=5
            )
        export_since = now - timedelta(days=2)
        results["export, 1 h (CSV)"] = await timed(
            client,
            "/v1/export",
            {"since": export_since.isoformat(),
             "until": (export_since + timedelta(hours=1)).isoformat()},
            repeat=3,
        )  # fmt: skip
    results.update(await console_latencies(url, sids, sample))
    return results


async def console_latencies(
    url: str, sids: list[str], sample: asyncpg.Record
) -> dict[str, tuple[float, float]]:
    """Each console page (issue 18: under 300 ms with 10 M messages), signed in as a browser."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        signed_in = await client.post("/console/sign-in", data={"key": API_KEY})
        assert signed_in.status_code == 303, signed_in.status_code
        pages = {
            "overview, 24 h": ("/console", {"window": "24h"}, 5),
            "overview, 30 days": ("/console", {"window": "30d"}, 3),
            "messages, first page": ("/console/messages", {}, 20),
            "messages, status=undelivered": ("/console/messages", {"status": "undelivered"}, 20),
            "messages, to": ("/console/messages", {"to": sample["to_number"]}, 20),
            "message timeline": (f"/console/messages/{sids[0]}", {}, 20),
            "reconciliations": ("/console/reconciliations", {}, 20),
        }
        return {
            f"console {name}": await timed(client, path, params, repeat=repeat)
            for name, (path, params, repeat) in pages.items()
        }


async def wal_and_events(dsn: str) -> dict[str, int]:
    """The cluster's WAL written so far (bytes, full-page images) and the events stored."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT wal_bytes::bigint AS bytes, wal_fpi AS fpi, "
            "(SELECT coalesce(max(id), 0) FROM message_events) AS events FROM pg_stat_wal"
        )
    finally:
        await connection.close()
    return dict(row)


def start_service(dsn: str, url: str, directory: Path) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TWILIO_", "STATUS_")) or k.startswith(INGEST_SETTINGS)
    }
    env.update({
        "DATABASE_URL": dsn,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_PUBLIC_URL": url,
        "STATUS_TRACKER_API_KEYS": API_KEY,
        "STATUS_TRACKER_DATA_DIR": str(directory / "data"),
        "STATUS_TRACKER_LOG_LEVEL": "WARNING",
        "STATUS_TRACKER_RECONCILE_INTERVAL": "0",
    })  # fmt: skip
    port = url.rsplit(":", 1)[1]
    command = ["status-tracker", "serve", "--port", port, "--workers", "1"]
    return start_server(command, env, url, "/readyz")


def closed_loop_round(
    args: argparse.Namespace, dsn: str, url: str, script: Path, pid: int
) -> dict[str, float]:
    """One closed loop of fresh callbacks, with the WAL it wrote per callback."""
    before = asyncio.run(wal_and_events(dsn))
    result = closed_loop_with_memory(url, script, args.duration, args.concurrency, pid)
    after = asyncio.run(wal_and_events(dsn))
    events = max(1, after["events"] - before["events"])
    result["wal_kib_per_callback"] = (after["bytes"] - before["bytes"]) / events / 1024
    result["fpi_per_callback"] = (after["fpi"] - before["fpi"]) / events
    return result


def measure(args: argparse.Namespace, dsn_of: dict[str, str], directory: Path) -> list[dict]:
    """Both services run side by side; their closed loops alternate, `--rounds` times, so that
    a machine that gets busier or quieter during the run weighs on both alike."""
    urls = {name: f"http://127.0.0.1:{free_port()}" for name in dsn_of}
    for name in dsn_of:
        for round_ in range(args.rounds):
            (directory / f"{name}-{round_}").mkdir()
    scripts = {
        (name, round_): wrk_script(
            signed_requests(urls[name], args.callback_messages, seed=round_, numbers=NUMBERS),
            directory / f"{name}-{round_}",
        )
        for round_ in range(args.rounds)
        for name in dsn_of
    }
    servers = {}
    try:
        for name, dsn in dsn_of.items():
            servers[name] = start_service(dsn, urls[name], directory / name)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in dsn_of}
        for round_ in range(args.rounds):
            for name, dsn in dsn_of.items():
                result = closed_loop_round(
                    args, dsn, urls[name], scripts[name, round_], servers[name].pid
                )
                rounds[name].append(result)
                print(f"  round {round_ + 1}, {name}: {result['per_second']:,.0f} cb/s, "
                      f"p99 {result['p99_ms']:.1f} ms", flush=True)  # fmt: skip
        results = []
        for name, dsn in dsn_of.items():
            url = urls[name]
            replay = signed_requests(url, 5_000, seed=99, numbers=NUMBERS)
            ranked = sorted(rounds[name], key=lambda r: r["per_second"])
            results.append({
                "store": name,
                "closed": ranked[len(ranked) // 2],  # the median round
                "rounds": rounds[name],
                "open": asyncio.run(open_loop(url, replay, args.rate, args.duration)),
                "replay": asyncio.run(replay_and_check(url, dsn, replay)),
                "queries": {} if args.ingest_only else asyncio.run(query_latencies(url, dsn)),
                "while dropping": asyncio.run(
                    open_loop_while_dropping(url, dsn, replay, args.rate, args.duration)
                ),
                "peak_rss_mib": round(rss_mib(servers[name].pid, "VmHWM"), 1),
            })  # fmt: skip
    finally:
        for server in servers.values():
            stop_server(server)
    return results


# Events copied into a day partition ahead of the clock, which is then dropped mid-load.
DROPPED_EVENTS = 1_000_000


async def open_loop_while_dropping(
    url: str, dsn: str, requests: list[tuple[str, str]], rate: int, duration: int
) -> dict[str, float]:
    """The open loop again, while retention drops a day partition of DROPPED_EVENTS events a
    third of the way in: what ingest sees of a drop."""
    connection = await asyncpg.connect(dsn)
    try:
        await retention.ensure_partitions(connection, datetime.now(UTC))
        day = (datetime.now(UTC) + timedelta(days=6)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        name = repository.partition_name(day)
        await connection.execute(
            f"""
            INSERT INTO message_events (message_id, status, status_rank, error_code, source,
                                        received_at, fields)
            SELECT message_id, status, status_rank, error_code, source,
                   $1::timestamptz + (id % 86400) * interval '1 second', fields
            FROM message_events ORDER BY id DESC LIMIT {DROPPED_EVENTS}
            """,
            day,
        )

        async def drop() -> float:
            await asyncio.sleep(duration / 3)
            started = time.perf_counter()
            await repository.drop_event_partition(connection, name)
            return time.perf_counter() - started

        dropping = asyncio.create_task(drop())
        result = await open_loop(url, requests, rate, duration)
        result["drop_seconds"] = await dropping
        await retention.ensure_partitions(connection, datetime.now(UTC))  # made again
    finally:
        await connection.close()
    return result


def report(results: list[dict[str, object]]) -> None:
    empty, loaded = results
    print(f"\n{'':34} {'empty':>18} {'loaded':>18}")

    def row(label: str, a: str, b: str) -> None:
        print(f"{label:44} {a:>18} {b:>18}")

    ce, cl = empty["closed"], loaded["closed"]
    oe, ol = empty["open"], loaded["open"]
    assert isinstance(ce, dict) and isinstance(cl, dict)
    assert isinstance(oe, dict) and isinstance(ol, dict)
    row("ingest, closed loop (cb/s), median", f"{ce['per_second']:,.0f}",
        f"{cl['per_second']:,.0f}")  # fmt: skip
    row("  every round", *(" ".join(f"{x['per_second'] / 1000:.1f}k" for x in r["rounds"])  # type: ignore[attr-defined]
                           for r in results))  # fmt: skip
    row("  full-page images per cb, by round",
        *(" ".join(f"{x['fpi_per_callback']:.2f}" for x in r["rounds"])  # type: ignore[attr-defined]
          for r in results))  # fmt: skip
    row("  ratio loaded/empty", "", f"{cl['per_second'] / ce['per_second']:.2f}")
    row("  p50 / p99 (ms)", f"{ce['p50_ms']:.1f} / {ce['p99_ms']:.1f}",
        f"{cl['p50_ms']:.1f} / {cl['p99_ms']:.1f}")  # fmt: skip
    row("  errors", str(ce["errors"]), str(cl["errors"]))
    row("  WAL KiB / full-page images per cb", f"{ce['wal_kib_per_callback']:.1f} / "
        f"{ce['fpi_per_callback']:.2f}", f"{cl['wal_kib_per_callback']:.1f} / "
        f"{cl['fpi_per_callback']:.2f}")  # fmt: skip
    row(f"open loop {oe['rate']}/s p50 / p99 (ms)", f"{oe['p50_ms']:.1f} / {oe['p99_ms']:.1f}",
        f"{ol['p50_ms']:.1f} / {ol['p99_ms']:.1f}")  # fmt: skip
    row(
        "RSS quarter / end / peak (MiB)",
        *(f"{c['rss_quarter_mib']:.0f} / {c['rss_end_mib']:.0f} / {r['peak_rss_mib']:.0f}"
          for c, r in ((ce, empty), (cl, loaded))),
    )  # fmt: skip
    de, dl = empty["while dropping"], loaded["while dropping"]
    assert isinstance(de, dict) and isinstance(dl, dict)
    row(f"  while a day of {DROPPED_EVENTS:,} events drops", f"{de['p50_ms']:.1f} / "
        f"{de['p99_ms']:.1f}", f"{dl['p50_ms']:.1f} / {dl['p99_ms']:.1f}")  # fmt: skip
    row("  drop took (s)", f"{de['drop_seconds']:.2f}", f"{dl['drop_seconds']:.2f}")
    qe, ql = empty["queries"], loaded["queries"]
    assert isinstance(qe, dict) and isinstance(ql, dict)
    for label in qe:
        row(f"{label} p50/p95 ms"[:44], f"{qe[label][0]:.1f} / {qe[label][1]:.1f}",
            f"{ql[label][0]:.1f} / {ql[label][1]:.1f}")  # fmt: skip
    print(f"replay, empty:  {empty['replay']}\nreplay, loaded: {loaded['replay']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000_000, help="messages to load")
    parser.add_argument("--store", type=Path, default=REPO / ".bench-scale",
                        help="where the embedded cluster is kept between runs")  # fmt: skip
    parser.add_argument("--reload", action="store_true", help="load the store again")
    parser.add_argument("--ingest-only", action="store_true", help="skip the query timings")
    parser.add_argument("--pg", action="append", default=[], metavar="NAME=VALUE",
                        help="a PostgreSQL server setting over the embedded defaults "
                        "(repeatable), to compare settings")  # fmt: skip
    parser.add_argument("--duration", type=int, default=15, help="seconds per load")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=1000, help="open-loop callbacks per second")
    parser.add_argument("--callback-messages", type=int, default=60_000,
                        help="fresh message SIDs in each closed loop")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3,
                        help="closed loops per store, alternating; median shown")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/scale.py needs wrk: apt-get install wrk")
    args.store.mkdir(parents=True, exist_ok=True)
    args.store.chmod(0o755)
    options = dict(option.split("=", 1) for option in args.pg)
    cluster = EmbeddedPostgres(args.store / "postgres", server_options=options)
    admin_dsn = cluster.start()
    directory = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    directory.chmod(0o755)
    try:
        base = admin_dsn.rsplit("/", 1)[0]
        dsn_of = {name: f"{base}/{name}" for name in (EMPTY, LOADED)}
        load_seconds = asyncio.run(prepare(admin_dsn, dsn_of, args.messages, args.reload))
        if load_seconds:
            print(f"loaded in {load_seconds:.0f} s")
        results = measure(args, dsn_of, directory)
        report(results)
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

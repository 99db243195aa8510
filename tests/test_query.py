"""The query side on tens of thousands of messages: filters, paging, stats, export."""

import asyncio
import csv
import io
import json
import math
import socket
import statistics
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import pytest

from status_tracker import repository
from tests.conftest import Server
from tests.support import API_KEY, AUTH_TOKEN, callback_fields, new_sid, signed, wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}

STATUSES = ["delivered", "undelivered", "failed", "sent", "read"]

SEED = """
INSERT INTO messages (id, sid, direction, status, status_rank, error_code, to_number, from_number,
                      channel, reference, created_at, updated_at, sent_at, delivered_at)
SELECT gen_random_uuid(), 'SM' || md5(g::text || $3),
       CASE WHEN g % 10 = 0 THEN 'inbound' ELSE 'outbound-api' END,
       (ARRAY['delivered', 'undelivered', 'failed', 'sent', 'read'])[g % 5 + 1], 50,
       CASE g % 5 WHEN 1 THEN 30003 WHEN 2 THEN 30007 END,
       '+1415555' || lpad((g % 100)::text, 4, '0'), '+15005550006', 'sms', 'ref-' || (g % 1000),
       $2::timestamptz - make_interval(mins => g), $2::timestamptz, $2::timestamptz - make_interval(mins => g) + interval '1 second',
       CASE WHEN g % 5 IN (0, 4)
            THEN $2::timestamptz - make_interval(mins => g) + make_interval(secs => 1 + g % 60) END
FROM generate_series(1, $1) AS g
"""
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def seed(db, count: int, tag: str = "a") -> None:
    await db.execute(SEED, count, NOW, tag)


async def all_pages(client, **params) -> list[dict]:
    found, cursor = [], None
    while True:
        query = {**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/messages", params=query)).json()
        found.extend(page["messages"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def test_every_filter_returns_exactly_what_sql_counts(client, db):
    await seed(db, 20_000)
    cases = [
        ({"status": ["failed"]}, "status = 'failed'"),
        ({"status": ["failed", "undelivered"]}, "status IN ('failed', 'undelivered')"),
        ({"direction": "inbound"}, "direction = 'inbound'"),
        ({"to": "+14155550042"}, "to_number = '+14155550042'"),
        ({"from": "+15005550006", "status": ["read"]}, "status = 'read'"),
        ({"error_code": 30003}, "error_code = 30003"),
        ({"reference": "ref-7"}, "reference = 'ref-7'"),
        ({"since": (NOW - timedelta(days=3)).isoformat(), "until": (NOW - timedelta(days=1)).isoformat()},
         f"created_at >= '{(NOW - timedelta(days=3)).isoformat()}' AND created_at < '{(NOW - timedelta(days=1)).isoformat()}'"),
    ]  # fmt: skip
    for params, where in cases:
        expected = {r["id"] for r in await db.fetch(f"SELECT id::text FROM messages WHERE {where}")}
        found = await all_pages(client, **params)
        assert len(found) == len({m["id"] for m in found}), params
        assert {m["id"] for m in found} == expected, params
        stamps = [m["created_at"] for m in found]
        assert stamps == sorted(stamps, reverse=True)


async def test_pages_neither_skip_nor_repeat_while_messages_arrive(client, db):
    await seed(db, 5_000)
    before = {r["id"] for r in await db.fetch("SELECT id::text FROM messages")}
    seen: list[str] = []
    cursor = None
    for batch in range(100):
        params = {"limit": 250, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/messages", params=params)).json()
        seen.extend(m["id"] for m in page["messages"])
        cursor = page["next_cursor"]
        # Newer messages arrive between pages.
        await db.execute(
            SEED.replace("$2::timestamptz - make_interval(mins => g)", "now() + make_interval(secs => g)"),
            20, NOW, f"new{batch}",
        )  # fmt: skip
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert set(seen) == before


async def test_bad_cursor_and_limits_are_problems(client):
    nul = await client.get("/v1/messages", params={"reference": "a\x00b"})
    assert nul.status_code == 400
    assert (await client.get("/v1/messages/SM%00x")).status_code in (400, 404)
    assert (await client.get("/v1/messages", params={"cursor": "nonsense"})).status_code == 400
    assert (await client.get("/v1/messages", params={"limit": 1001})).status_code == 422
    response = await client.get("/v1/messages", params={"error_code": "x"})
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["/v1/stats", "/v1/export", "/v1/messages"])
@pytest.mark.parametrize(
    "params",
    [
        {"until": "0001-01-01T00:00:00Z"},
        {"since": "0001-01-01T00:00:00+14:00"},
        {"since": "2026-11-24T00:00:00Z", "until": "9999-12-31T23:59:59-14:00"},
    ],
    ids=["default-since-before-year-1", "since-before-year-1-in-utc", "until-after-9999-in-utc"],
)
async def test_out_of_range_times_are_a_422_problem_before_anything_is_streamed(
    client, path, params
):
    response = await client.get(path, params=params)
    if path == "/v1/messages" and "since" not in params:
        # A list has no default window: year 1 itself is a fine upper bound.
        assert response.status_code == 200
        return
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] in ("query.since", "query.until")


async def test_stats_match_an_independent_count(client, db):
    await seed(db, 10_000)
    since, until = NOW - timedelta(days=2), NOW
    rows = await db.fetch(
        "SELECT status, error_code, sent_at, delivered_at, created_at FROM messages "
        "WHERE created_at >= $1 AND created_at < $2",
        since,
        until,
    )
    stats = (
        await client.get(
            "/v1/stats", params={"since": since.isoformat(), "until": until.isoformat()}
        )
    ).json()
    assert stats["total"] == len(rows)
    for status in STATUSES:
        assert stats["by_status"].get(status, 0) == sum(r["status"] == status for r in rows)
    codes = {e["error_code"]: e["count"] for e in stats["by_error_code"]}
    assert codes == {c: sum(r["error_code"] == c for r in rows) for c in (30003, 30007)}
    assert all(e["description"] for e in stats["by_error_code"])
    final = [r for r in rows if r["status"] != "sent"]
    delivered = [r for r in rows if r["status"] in ("delivered", "read")]
    assert abs(stats["delivery_rate"] - len(delivered) / len(final)) < 1e-9
    times = [(r["delivered_at"] - r["sent_at"]).total_seconds() for r in rows if r["delivered_at"]]
    # Estimated from a histogram: within the buckets of the samples the median lies between.
    bounds = (0.0, *repository.DELIVERY_BOUNDS, math.inf)
    times.sort()
    middle = (times[(len(times) - 1) // 2], times[len(times) // 2])
    low = max(b for b in bounds if b <= middle[0])
    high = min(b for b in bounds if b > middle[1])
    assert low <= stats["sent_to_delivered_median_seconds"] <= high
    assert low <= statistics.median(times) <= high
    assert stats["interval"] == "hour"
    assert sum(bucket["total"] for bucket in stats["series"]) == len(rows)
    assert len(stats["series"]) == 48


async def test_events_endpoint_is_the_timeline(client, db):
    from tests.support import callback_fields, new_sid, signed

    sid = new_sid()
    for status in ("sent", "delivered", "sent"):
        target, body, headers = signed(callback_fields(sid, status))
        await client.post(target, content=body, headers=headers)
    events = (await client.get(f"/v1/messages/{sid}/events")).json()
    assert [(e["status"], e["changed_status"]) for e in events] == [
        ("sent", True), ("delivered", True), ("sent", False)
    ]  # fmt: skip
    assert (await client.get(f"/v1/messages/{new_sid()}/events")).status_code == 404


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_export_streams_100_000_rows_in_constant_memory(server: Server, db):
    await seed(db, 100_000)
    params = {"since": (NOW - timedelta(days=100)).isoformat(), "until": NOW.isoformat()}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120) as client:
        warm = await client.get(
            "/v1/export", params={**params, "until": (NOW - timedelta(days=60)).isoformat()}
        )
        assert warm.status_code == 200
        before = peak_rss_kib(server.process.pid)
        size, lines, first = 0, 0, b""
        async with client.stream("GET", "/v1/export", params=params) as response:
            assert response.headers["content-type"].startswith("text/csv")
            async for chunk in response.aiter_bytes():
                first = first or chunk
                size += len(chunk)
                lines += chunk.count(b"\n")
        grown = peak_rss_kib(server.process.pid) - before
    assert lines == 100_000 + 1
    assert first.startswith("\ufeffid,sid,".encode())
    assert size > 20 * 1024 * 1024
    assert grown * 1024 < size / 4, f"server grew {grown} KiB for {size} bytes of export"


async def test_export_csv_and_jsonl_agree_and_cells_are_safe(client, db):
    await seed(db, 300)
    params = {"since": (NOW - timedelta(days=1)).isoformat(), "until": NOW.isoformat()}
    as_csv = (await client.get("/v1/export", params=params)).content.decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    as_jsonl = (await client.get("/v1/export", params={**params, "format": "jsonl"})).text
    records = [json.loads(line) for line in as_jsonl.splitlines()]
    assert len(rows) == len(records) == 300
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    assert all(r["to"].startswith("'+1415555") for r in rows)  # not a formula
    assert records[0]["to"].startswith("+1415555")
    events = (
        await client.get("/v1/export", params={**params, "include": "events", "format": "jsonl"})
    ).text
    assert events == ""  # seeded rows have no events


async def test_export_neutralises_every_cell_a_spreadsheet_could_run(client, db):
    starts = ["=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20"]
    await seed(db, len(starts))
    await db.execute(
        "UPDATE messages SET reference = ($1::text[])[n] FROM "
        "(SELECT id, row_number() OVER (ORDER BY created_at) AS n FROM messages) AS ranked "
        "WHERE messages.id = ranked.id",
        [start + "1+1" for start in starts],
    )
    params = {"since": (NOW - timedelta(days=1)).isoformat(), "until": NOW.isoformat()}
    as_csv = (await client.get("/v1/export", params=params)).content.decode("utf-8-sig")
    references = [row["reference"] for row in csv.DictReader(io.StringIO(as_csv, newline=""))]
    assert sorted(references) == sorted("'" + start + "1+1" for start in starts)


async def test_many_requests_at_once_keep_pages_consistent(client, db):
    await seed(db, 3_000)
    pages = await asyncio.gather(
        *(client.get("/v1/messages", params={"limit": 1000}) for _ in range(5))
    )
    assert len({tuple(m["id"] for m in p.json()["messages"]) for p in pages}) == 1


def stalled_export(port: int, query: str) -> socket.socket:
    """An export asked for by a client that then reads nothing (its receive window stays tiny)."""
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.connect(("127.0.0.1", port))
    connection.sendall(
        f"GET /v1/export?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()
    )
    return connection


def has_final_chunk(answer: bytes) -> bool:
    """Whether a chunked HTTP response ends as a complete one does, with a zero-size chunk."""
    rest = answer.split(b"\r\n\r\n", 1)[1]
    while b"\r\n" in rest:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return True
        rest = rest[size + 2 :]
    return False


def read_to_end(connection: socket.socket) -> bytes:
    connection.settimeout(30)
    answer = b""
    while chunk := connection.recv(1 << 20):
        answer += chunk
    connection.close()
    return answer


async def test_stalled_exports_starve_neither_ingest_nor_the_api_and_are_aborted(
    database_url: str, tmp_path, db
):
    await seed(db, 40_000)  # some 8 MB of CSV: more than the socket buffers hold
    environment = {
        "DATABASE_URL": database_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_API_KEYS": API_KEY,
        "STATUS_TRACKER_DATA_DIR": str(tmp_path / "data"),
        "DB_POOL_MAX_SIZE": "4",
        "STATUS_TRACKER_EXPORT_STALL_TIMEOUT": "3",
    }
    query = urlencode({"since": (NOW - timedelta(days=40)).isoformat(), "until": NOW.isoformat()})
    idle = "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND datname = current_database()"

    def idle_exports_are(expected: int) -> Callable[[], Awaitable[bool]]:
        """Whether `expected` exports hold a transaction while they wait for their client."""

        async def check() -> bool:
            return bool(await db.fetchval(idle) == expected)

        return check

    with Server(environment, tmp_path) as server:
        stalled = [stalled_export(server.port, query) for _ in range(4)]
        try:
            await wait_until(idle_exports_are(2), 30)  # a loaded machine fills buffers slowly
            async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
                target, body, headers = signed(
                    callback_fields(new_sid(), "sent"), public_url=server.url
                )
                assert (await client.post(target, content=body, headers=headers)).status_code == 204
                assert (await client.get("/readyz")).status_code == 200
                assert (await client.get("/v1/messages", params={"limit": 1})).status_code == 200
            assert await db.fetchval(idle) == 2  # half the pool, no more
            await wait_until(idle_exports_are(0), 3 + 15)  # the stall timeout, and some
            answers = [read_to_end(connection) for connection in stalled]
            server.stop()
        finally:
            for connection in stalled:  # closed already, unless the test failed
                connection.close()
    assert (
        sorted(answer[:12] for answer in answers) == [b"HTTP/1.1 200"] * 2 + [b"HTTP/1.1 503"] * 2
    )
    for answer in answers:
        if answer.startswith(b"HTTP/1.1 200"):
            assert not has_final_chunk(answer)  # aborted, and a client can tell
            assert len(answer) < 7_000_000
    assert "export aborted: the client stopped reading" in server.log.read_text()

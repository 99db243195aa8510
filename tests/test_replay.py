"""A replay of thousands of signed callbacks, shuffled and duplicated, against a real server."""

import asyncio
import random

import asyncpg
import httpx

from status_tracker.precedence import Report, winner
from tests.conftest import Server
from tests.support import callback_fields, new_sid, signed

LIFECYCLES = [
    [("sent", None), ("delivered", None)],
    [("sent", None), ("undelivered", 30003)],
    [("failed", 30007)],
    [("queued", None), ("sent", None), ("delivered", None), ("read", None)],
    [("sent", None)],
]


async def test_replay_loses_nothing_and_misranks_nothing(server: Server, database_url: str):
    rng = random.Random(20261124)
    expected: dict[str, Report] = {}
    requests = []
    for _ in range(1200):
        sid = new_sid()
        lifecycle = rng.choice(LIFECYCLES)
        expected[sid] = winner(Report(status, code) for status, code in lifecycle)
        for status, code in lifecycle:
            extra = {"ErrorCode": str(code)} if code else {}
            request = signed(callback_fields(sid, status, **extra), public_url=server.url)
            requests.extend([request] * rng.choice([1, 1, 2]))
    rng.shuffle(requests)
    assert len(requests) > 3000

    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
        semaphore = asyncio.Semaphore(32)

        async def post(target: str, body: bytes, headers: dict[str, str]) -> int:
            async with semaphore:
                return (await client.post(target, content=body, headers=headers)).status_code

        codes = await asyncio.gather(*(post(*request) for request in requests))
    assert set(codes) == {204}

    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT sid, status, error_code FROM messages")
        events = await connection.fetchval("SELECT count(*) FROM message_events")
    finally:
        await connection.close()
    stored = {row["sid"]: Report(row["status"], row["error_code"]) for row in rows}
    assert stored == expected
    assert events == len(requests)

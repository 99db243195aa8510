"""Faults: the database going away under load, overload, shutdown. No acknowledged callback lost."""

import asyncio
import shutil
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from status_tracker.app import create_app
from status_tracker.database import migrate
from status_tracker.embedded_postgres import EmbeddedPostgres
from tests.conftest import Server, world_readable_tempdir
from tests.support import AUTH_TOKEN, callback_fields, new_sid, signed


@pytest.fixture
def own_cluster() -> Iterator[EmbeddedPostgres]:
    """A cluster of this test's own, with fsync on, that the test may stop and start."""
    directory = world_readable_tempdir("faults-")
    cluster = EmbeddedPostgres(directory / "postgres")
    migrate(cluster.start())
    try:
        yield cluster
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(directory, ignore_errors=True)


async def stored_pairs(dsn: str) -> set[tuple[str, str]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT m.sid, e.status FROM message_events e JOIN messages m ON m.id = e.message_id"
        )
    finally:
        await connection.close()
    return {(row["sid"], row["status"]) for row in rows}


async def test_database_crash_under_load_loses_no_acknowledged_callback(own_cluster, tmp_path):
    environment = {
        "DATABASE_URL": own_cluster.dsn,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_API_KEYS": "k",
        "STATUS_TRACKER_DB_TIMEOUT": "2",
    }
    with Server(environment, tmp_path) as server:
        answers: dict[tuple[str, str], int] = {}
        slow_503s = 0
        stop = asyncio.Event()

        async def load(client: httpx.AsyncClient) -> None:
            nonlocal slow_503s
            while not stop.is_set():
                sid, status = new_sid(), "delivered"
                target, body, headers = signed(callback_fields(sid, status), public_url=server.url)
                started = time.monotonic()
                try:
                    response = await client.post(target, content=body, headers=headers)
                except httpx.TransportError:
                    continue
                answers[sid, status] = response.status_code
                if response.status_code == 503 and time.monotonic() - started > 3:
                    slow_503s += 1

        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            workers = [asyncio.create_task(load(client)) for _ in range(8)]
            try:
                await asyncio.sleep(1)
                # A crash, not a polite shutdown; then the same server comes back.
                await asyncio.to_thread(own_cluster.stop, "immediate")
                await asyncio.sleep(1.5)
                await asyncio.to_thread(own_cluster.start)
                await asyncio.sleep(2)
            finally:
                stop.set()
                await asyncio.gather(*workers)

        codes = list(answers.values())
        assert set(codes) <= {204, 503}
        assert codes.count(503) > 0, "the outage was never noticed"
        assert list(answers.values())[-20:] == [204] * 20, "the service did not recover by itself"
        assert slow_503s == 0, "a 503 must come quickly, not after a long wait"
    acknowledged = {pair for pair, code in answers.items() if code == 204}
    stored = await stored_pairs(own_cluster.dsn)
    assert acknowledged <= stored
    refused = {pair for pair, code in answers.items() if code == 503}
    # A 503 may be a commit whose answer was lost with the connection; never the other way round.
    assert len(refused - stored) >= len(refused) - 8


async def test_overload_is_refused_at_once_not_queued_without_bound(settings, database_url):
    crowded = settings.model_copy(
        update={"ingest_max_pending": 10, "ingest_flushers": 1, "ingest_max_batch": 5}
    )
    blocker = await asyncpg.connect(database_url)
    async with LifespanManager(create_app(crowded)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://internal") as client:
            requests = [signed(callback_fields(new_sid(), "sent")) for _ in range(60)]
            # Hold the table: the writer's batches wait, and the queue fills.
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
            tasks = [
                asyncio.create_task(client.post(t, content=b, headers=h)) for t, b, h in requests
            ]
            await asyncio.sleep(1)
            refused_while_blocked = [t for t in tasks if t.done()]
            await transaction.rollback()
            responses = await asyncio.gather(*tasks)
    await blocker.close()
    codes = [r.status_code for r in responses]
    assert set(codes) == {204, 503}
    assert len(refused_while_blocked) >= 60 - 10 - 5
    assert all(t.result().status_code == 503 for t in refused_while_blocked)
    stored = {sid for sid, _ in await stored_pairs(database_url)}
    for (_, body, _), response in zip(requests, responses, strict=True):
        sid = body.decode().split("MessageSid=")[1].split("&")[0]
        assert (sid in stored) == (response.status_code == 204)


async def test_sigterm_finishes_the_callbacks_in_flight(server, database_url):
    blocker = await asyncpg.connect(database_url)
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
    requests = [
        signed(callback_fields(new_sid(), "sent"), public_url=server.url) for _ in range(20)
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        tasks = [asyncio.create_task(client.post(t, content=b, headers=h)) for t, b, h in requests]
        await asyncio.sleep(0.5)
        assert not any(t.done() for t in tasks)
        stopping = asyncio.create_task(asyncio.to_thread(server.stop))
        await asyncio.sleep(0.5)
        await transaction.rollback()
        responses = await asyncio.gather(*tasks)
        code, _ = await stopping
    await blocker.close()
    assert code == 0
    assert [r.status_code for r in responses] == [204] * 20
    assert len(await stored_pairs(database_url)) == 20

"""Outbound webhooks and the event stream against the real `serve` process: kill -9 between
commit and delivery, replicas sharing the work, shuffled callbacks, and a stream that resumes."""

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import Server
from tests.receiver import Receiver
from tests.support import API_KEY, AUTH_TOKEN, callback_fields, new_sid, signed, wait_until

LIFECYCLES = [
    [("sent", None), ("delivered", None)],
    [("sent", None), ("undelivered", "30003")],
    [("failed", "30007")],
    [("queued", None), ("sent", None), ("delivered", None), ("read", None)],
]


def environment(database_url: str, directory: Path, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_API_KEYS": API_KEY,
        "STATUS_TRACKER_DATA_DIR": str(directory / "data"),
        "STATUS_TRACKER_WEBHOOKS_ALLOW_PRIVATE": "true",
        "STATUS_TRACKER_WEBHOOKS_RETRY_SCALE": "0.0002",
        "STATUS_TRACKER_RECONCILE_INTERVAL": "0",
        **extra,
    }


def shuffled_callbacks(messages: int, seed: int) -> list[tuple[str, str, str | None]]:
    """(sid, status, error code): whole lifecycles, shuffled, a tenth sent twice."""
    rng = random.Random(seed)
    callbacks = []
    for _ in range(messages):
        sid = new_sid()
        callbacks += [(sid, status, code) for status, code in rng.choice(LIFECYCLES)]
    callbacks += rng.sample(callbacks, len(callbacks) // 10)
    rng.shuffle(callbacks)
    return callbacks


async def post_all(
    server: Server, callbacks: list[tuple[str, str, str | None]], servers: list[Server] | None
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for i, (sid, status, code) in enumerate(callbacks):
            target = (servers or [server])[i % len(servers or [server])]
            extra = {"ErrorCode": code} if code else {}
            path, body, headers = signed(
                callback_fields(sid, status, **extra), public_url=target.url
            )
            response = await http.post(target.url + path, content=body, headers=headers)
            assert response.status_code == 204


def register(server: Server, url: str, **fields: Any) -> dict[str, Any]:
    response = httpx.post(
        server.url + "/v1/webhook-endpoints",
        json={"url": url, **fields},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


def delivered(receiver: Receiver, secret: str) -> dict[str, dict[str, Any]]:
    """Payloads the receiver accepted, verified by standardwebhooks, by webhook-id."""
    return {
        request.headers["webhook-id"]: Webhook(secret).verify(request.body, request.headers)
        for request in receiver.received
        if request.status == 200
    }


async def check_complete(db: asyncpg.Connection, payloads: dict[str, dict[str, Any]]) -> None:
    """Every message's events arrived, numbered 1..n with no gap, and ordered by their sequence
    they end on the status the store holds."""
    by_message: dict[str, list[dict[str, Any]]] = {}
    for payload in payloads.values():
        by_message.setdefault(payload["data"]["message_id"], []).append(payload["data"])
    stored = {
        str(row["id"]): row["status"] for row in await db.fetch("SELECT id, status FROM messages")
    }
    assert set(by_message) == set(stored)
    for message_id, events in by_message.items():
        events.sort(key=lambda data: data["sequence"])
        assert [data["sequence"] for data in events] == list(range(1, len(events) + 1))
        assert events[-1]["status"] == stored[message_id]


async def told(db: asyncpg.Connection) -> int:
    """How many events the outbox holds, once every report stored so far has been derived (by
    the servers running)."""

    async def derived() -> bool:
        return await db.fetchval("SELECT count(*) FROM webhook_pending_reports") == 0

    await wait_until(derived, within=30)
    count: int = await db.fetchval("SELECT count(*) FROM webhook_events")
    return count


async def test_kill_9_between_commit_and_delivery_loses_no_webhook(database_url, db, tmp_path):
    receiver = Receiver(answer=lambda: (200, 0.3)).start()
    env = environment(database_url, tmp_path, STATUS_TRACKER_WEBHOOKS_TIMEOUT="2")
    try:
        with Server(env, tmp_path) as first:
            endpoint = register(first, receiver.url)
            await post_all(first, shuffled_callbacks(40, seed=3), None)
            pending = await db.fetchval(
                "SELECT (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending') "
                "+ (SELECT count(*) FROM webhook_pending_reports)"
            )
            assert pending > 0  # some are in flight, most not yet attempted or derived
            first.process.kill()  # kill -9
            first.process.wait()
        with Server(env, tmp_path):
            total = await told(db)

            async def all_delivered() -> bool:
                return len(delivered(receiver, endpoint["secret"])) == total

            # A delivery claimed by the killed process waits out its lease (3 timeouts + 10 s).
            await wait_until(all_delivered, within=60)
        await check_complete(db, delivered(receiver, endpoint["secret"]))
    finally:
        receiver.stop()


async def test_replicas_share_the_deliveries_each_delivered_once(database_url, db, tmp_path):
    receiver = Receiver().start()
    env = environment(database_url, tmp_path)
    try:
        with Server(env, tmp_path) as one, Server(env, tmp_path) as two:
            endpoint = register(one, receiver.url)
            await post_all(one, shuffled_callbacks(30, seed=5), [one, two])
            total = await told(db)

            async def all_delivered() -> bool:
                return len(delivered(receiver, endpoint["secret"])) == total

            await wait_until(all_delivered, within=60)
            await asyncio.sleep(1)
        ids = [request.headers["webhook-id"] for request in receiver.received]
        assert len(ids) == len(set(ids)) == total  # claimed with SKIP LOCKED: no double sends
        await check_complete(db, delivered(receiver, endpoint["secret"]))
    finally:
        receiver.stop()


async def read_events(
    response: httpx.Response, count: int, within: float = 20
) -> list[dict[str, Any]]:
    """The next `count` events of an SSE response: their id, type and JSON data."""
    events: list[dict[str, Any]] = []
    event: dict[str, Any] = {}
    async with asyncio.timeout(within):
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("event: "):
                event["type"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and "id" in event:
                events.append(event)
                event = {}
                if len(events) == count:
                    return events
    raise AssertionError("the stream ended")


@pytest.mark.parametrize("filtered", [False, True])
async def test_the_stream_resumes_after_last_event_id_without_gaps(
    database_url, db, tmp_path, filtered
):
    env = environment(database_url, tmp_path)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    params = {"type": "message.final"} if filtered else {}
    with Server(env, tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
            async with http.stream("GET", "/v1/events/stream", params=params) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                await asyncio.sleep(0.5)
                await post_all(server, shuffled_callbacks(10, seed=7), None)
                finals = 10
                first = await read_events(response, finals if filtered else 3)
            # Disconnected: what happens now must come on the next connection.
            await post_all(server, shuffled_callbacks(10, seed=8), None)
            await told(db)
            resume = {"Last-Event-ID": str(first[-1]["id"])}
            expected = await db.fetch(
                "SELECT id FROM webhook_events WHERE id > $1 AND ($2 OR type = 'message.final')"
                " ORDER BY id",
                first[-1]["id"],
                not filtered,
            )
            async with http.stream(
                "GET", "/v1/events/stream", params=params, headers=resume
            ) as response:
                rest = await read_events(response, len(expected))
    every = await db.fetch(
        "SELECT id, type FROM webhook_events WHERE $1 OR type = 'message.final'", not filtered
    )
    seen = [event["id"] for event in first + rest]
    assert sorted(seen) == sorted(row["id"] for row in every)  # no gap, no repeat
    assert len(seen) == len(set(seen))
    assert all(event["data"]["type"] == event["type"] for event in first + rest)
    if filtered:
        assert {event["type"] for event in first + rest} == {"message.final"}

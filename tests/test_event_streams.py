"""The Event Streams webhook sink: signed CloudEvents batches into the one event log."""

import asyncio
import hashlib
import json
import random
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from status_tracker.app import create_app
from status_tracker.database import downgrade, migrate
from status_tracker.embedded_postgres import EmbeddedPostgres
from status_tracker.settings import Settings
from status_tracker.simulator import Simulator, SimulatorConfig
from status_tracker.twilio_http import HttpxTwilioClient
from tests.conftest import FAST_SIMULATOR, Server, app_client, throwaway_database
from tests.conftest import Simulator as SimulatorProcess
from tests.support import (
    ACCOUNT_SID,
    API_KEY,
    AUTH_TOKEN,
    PUBLIC_URL,
    callback_fields,
    new_sid,
    signed,
)

EVENTS_PATH = "/webhooks/twilio/events"
API_HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def cloud_event(sid: str, status: str, **data: Any) -> dict[str, Any]:
    kind = "com.twilio.messaging.message." + status
    return {
        "specversion": "1.0",
        "type": kind,
        "source": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
        "id": "EZ" + secrets.token_hex(16),
        "dataschema": "https://events-schemas.twilio.com/Messaging.MessageStatus/8",
        "datacontenttype": "application/json",
        "data": {
            "messageSid": sid,
            "timestamp": "2026-11-24T11:30:00.812Z",
            "accountSid": ACCOUNT_SID,
            "eventName": kind,
            "from": "+15005550006",
            "to": "+14155550100",
            "messageStatus": status.upper(),
            "numberOfSegments": 1,
            "mcc": "310",
            "mnc": "260",
            "tags": {},
            **data,
        },
    }


def signed_batch(
    events: Any, *, token: str = AUTH_TOKEN, query: str = ""
) -> tuple[str, str, dict[str, str]]:
    """(path with query, body, headers) of a batch as Event Streams posts it to PUBLIC_URL."""
    body = json.dumps(events)
    digest = hashlib.sha256(body.encode()).hexdigest()
    target = f"{EVENTS_PATH}?{query + '&' if query else ''}bodySHA256={digest}"
    signature = RequestValidator(token).compute_signature(PUBLIC_URL + target, {})
    headers = {"Content-Type": "application/json", "X-Twilio-Signature": signature}
    return target, body, headers


async def post_batch(client: httpx.AsyncClient, events: Any) -> httpx.Response:
    target, body, headers = signed_batch(events)
    return await client.post(target, content=body, headers=headers)


async def stored_counts(db: asyncpg.Connection) -> tuple[int, int, int]:
    row = await db.fetchrow(
        """SELECT (SELECT count(*) FROM messages) AS messages,
                  (SELECT count(*) FROM message_events) AS events,
                  (SELECT count(*) FROM stream_events) AS claimed"""
    )
    assert row is not None
    return row["messages"], row["events"], row["claimed"]


async def test_batch_is_applied_by_precedence_with_its_event_time(
    client: httpx.AsyncClient,
) -> None:
    sid = new_sid()
    batch = [
        cloud_event(sid, "delivered", rawDlrDoneDate="2611241130"),
        cloud_event(sid, "sent", timestamp="2026-11-24T11:29:58.000Z"),
    ]

    response = await post_batch(client, batch)

    assert response.status_code == 200, response.text
    assert response.json() == {"events": 2, "stored": 2, "duplicates": 0}
    message = (await client.get(f"/v1/messages/{sid}")).json()
    assert message["status"] == "delivered"
    assert message["channel"] == "sms"
    events = {event["status"]: event for event in message["events"]}
    assert events["delivered"]["source"] == "event_stream"
    assert events["delivered"]["occurred_at"] == "2026-11-24T11:30:00.812000Z"
    assert events["sent"]["occurred_at"] == "2026-11-24T11:29:58Z"
    assert events["delivered"]["received_at"] != events["delivered"]["occurred_at"]
    assert events["delivered"]["carrier_done_at"] == "2026-11-24T11:30:00Z"
    assert events["delivered"]["fields"]["data"]["mcc"] == "310"
    assert events["delivered"]["fields"]["id"] == batch[0]["id"]


async def test_single_event_and_error_code_are_taken(client: httpx.AsyncClient) -> None:
    sid = new_sid()

    response = await post_batch(client, cloud_event(sid, "undelivered", errorCode=30003))

    assert response.status_code == 200, response.text
    message = (await client.get(f"/v1/messages/{sid}")).json()
    assert (message["status"], message["error_code"]) == ("undelivered", 30003)


async def test_redelivered_batch_is_acknowledged_and_stores_nothing_twice(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    sid = new_sid()
    batch = [cloud_event(sid, "sent"), cloud_event(sid, "delivered")]
    assert (await post_batch(client, batch)).status_code == 200
    before = await stored_counts(db)

    again = await post_batch(client, [batch[1], batch[0], batch[1]])

    assert again.status_code == 200
    assert again.json() == {"events": 2, "stored": 0, "duplicates": 2}
    assert await stored_counts(db) == before == (1, 2, 2)


async def test_local_id_comes_from_the_status_callback_url(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    attempt = UUID("0193a000-0000-7000-8000-000000000001")
    await db.execute(
        """INSERT INTO messages (id, status, status_rank, to_number, send_outcome)
           VALUES ($1, 'pending', 5, '+14155550100', 'unknown')""",
        attempt,
    )
    sid = new_sid()
    url = f"{PUBLIC_URL}/webhooks/twilio/status?mid={attempt}&tenant=acme"

    response = await post_batch(client, [cloud_event(sid, "sent", statusCallBackUrl=url)])

    assert response.status_code == 200, response.text
    message = (await client.get(f"/v1/messages/{attempt}")).json()
    assert (message["sid"], message["status"], message["send_outcome"]) == (sid, "sent", "accepted")
    assert message["events"][-1]["query"] == {"mid": str(attempt), "tenant": "acme"}


async def test_unknown_event_type_is_kept_logged_and_acknowledged(
    client: httpx.AsyncClient, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    voice = {
        "specversion": "1.0",
        "type": "com.twilio.voice.status-callback.call.ringing",
        "id": "EZ" + secrets.token_hex(16),
        "data": {"callSid": "CA" + secrets.token_hex(16), "to": "+14155550100"},
    }
    sid = new_sid()
    future = cloud_event(sid, "sent")
    future["type"] = "com.twilio.messaging.message.rerouted"
    future["data"]["messageStatus"] = "REROUTED"

    response = await post_batch(client, [voice, future])

    assert response.status_code == 200, response.text
    kept = await db.fetchval("SELECT event FROM stream_events WHERE id = $1", voice["id"])
    assert kept["data"]["callSid"] == voice["data"]["callSid"]
    message = (await client.get(f"/v1/messages/{sid}")).json()
    assert message["events"][0]["status"] == "rerouted"
    assert message["events"][0]["known_status"] is False
    logged = {getattr(record, "event_type", None) for record in caplog.records}
    assert {voice["type"], future["type"]} <= logged


async def test_inbound_message_event_creates_an_inbound_message(
    client: httpx.AsyncClient,
) -> None:
    sid = new_sid()
    event = cloud_event(sid, "received", body="Ahoy!", numMedia=0)
    event["type"] = "com.twilio.messaging.inbound-message.received"
    del event["data"]["messageStatus"]

    response = await post_batch(client, [event])

    assert response.status_code == 200, response.text
    message = (await client.get(f"/v1/messages/{sid}")).json()
    assert (message["direction"], message["status"]) == ("inbound", "received")
    assert message["events"][0]["source"] == "event_stream"
    assert message["events"][0]["occurred_at"] == "2026-11-24T11:30:00.812000Z"


async def test_forged_or_tampered_batches_are_refused_and_nothing_stored(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    batch = [cloud_event(new_sid(), "delivered")]
    target, body, headers = signed_batch(batch)
    forged_target, _, forged_headers = signed_batch(batch, token="not-the-auth-token")
    without_hash = target.split("?")[0]
    unsigned = {"Content-Type": "application/json"}
    # Same signature and hash, one field changed: the body no longer matches bodySHA256.
    tampered = body.replace("DELIVERED", "UNDELIVERED")
    # A body re-hashed to match, under the original signature: the URL no longer matches it.
    rehashed = target.split("=")[0] + "=" + hashlib.sha256(tampered.encode()).hexdigest()

    answers = [
        await client.post(forged_target, content=body, headers=forged_headers),
        await client.post(target, content=tampered, headers=headers),
        await client.post(rehashed, content=tampered, headers=headers),
        await client.post(without_hash, content=body, headers=headers),
        await client.post(target, content=body, headers=unsigned),
    ]

    assert [answer.status_code for answer in answers] == [403] * 5
    assert answers[0].headers["content-type"] == "application/problem+json"
    assert await stored_counts(db) == (0, 0, 0)


async def test_batch_with_a_malformed_event_is_refused_whole(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    good = cloud_event(new_sid(), "sent")
    no_id = cloud_event(new_sid(), "sent")
    del no_id["id"]

    answers = [await post_batch(client, [good, no_id]), await post_batch(client, [good, 7])]

    assert [answer.status_code for answer in answers] == [400, 400]
    assert "id" in answers[0].json()["detail"]
    assert await stored_counts(db) == (0, 0, 0)


async def test_stream_and_callbacks_of_one_message_end_as_either_alone(
    client: httpx.AsyncClient,
) -> None:
    sid = new_sid()
    target, body, headers = signed(callback_fields(sid, "undelivered", ErrorCode="30003"))
    assert (await client.post(target, content=body, headers=headers)).status_code == 204
    batch = [cloud_event(sid, "sent"), cloud_event(sid, "undelivered", errorCode=30003)]

    assert (await post_batch(client, batch)).status_code == 200

    message = (await client.get(f"/v1/messages/{sid}")).json()
    assert (message["status"], message["error_code"]) == ("undelivered", 30003)
    assert [event["source"] for event in message["events"]] == [
        "callback",
        "event_stream",
        "event_stream",
    ]


async def test_numbers_and_bodies_are_scrubbed_as_for_callbacks(settings: Settings) -> None:
    strict = settings.model_copy(update={"redact_numbers": "last4", "store_bodies": False})
    sid = new_sid()
    event = cloud_event(sid, "delivered", body="secret text")
    async with app_client(strict) as client:
        assert (await post_batch(client, [event])).status_code == 200
        message = (await client.get(f"/v1/messages/{sid}")).json()

    assert message["to"] == "+1415555****"
    stored = message["events"][0]["fields"]["data"]
    assert stored["to"] == "+1415555****"
    assert stored["from"] == "+1500555****"
    assert "body" not in stored


async def test_oversized_batch_is_refused(settings: Settings, db: asyncpg.Connection) -> None:
    small = settings.model_copy(update={"event_streams_max_body_bytes": 1000})
    batch = [cloud_event(new_sid(), "sent") for _ in range(5)]
    async with app_client(small) as client:
        response = await post_batch(client, batch)

    assert response.status_code == 413
    assert await stored_counts(db) == (0, 0, 0)


# --- Through the simulator ---------------------------------------------------------------------

SENDER = "+15005550006"
SERVICE_SID = "MG" + "fedcba9876543210" * 2
# One of each lifecycle: delivered, undelivered 30003 and 30007, sent for ever, failed 30001,
# delivered then undelivered, read, and one through a Messaging Service (`queued` reported).
NUMBERS = ("+14155550100", "+14155550001", "+14155550002", "+14155550005", "+14155550010",
           "+14155550011", "whatsapp:+14155550123")  # fmt: skip
UNRULY = {"duplicate_probability": 0.5, "reorder_probability": 1.0}


@pytest.fixture
async def other_database(postgres: EmbeddedPostgres, template_url: str) -> AsyncIterator[str]:
    """A second database, for a second service whose results are compared with the first's."""
    async with throwaway_database(postgres) as url:
        yield url


async def run_simulated_traffic(
    settings: Settings, *, callbacks: bool, event_streams: bool, **faults: float
) -> tuple[dict[str, tuple[str, int | None]], Simulator]:
    """Send NUMBERS through a seeded simulator whose callbacks and/or Event Streams batches go
    to a service on `settings`; each SID's stored (status, error code)."""
    async with LifespanManager(create_app(settings)) as manager:
        config = SimulatorConfig(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            seed=11,
            callback_delay_min=0.001,
            callback_delay_max=0.01,
            event_streams_url=PUBLIC_URL + EVENTS_PATH if event_streams else None,
            # Several batches: they are posted at once, so they arrive in any order too.
            event_streams_max_batch=5,
            status_callbacks=callbacks,
            **faults,
        )
        simulator = Simulator(config, callback_transport=httpx.ASGITransport(app=manager.app))
        try:
            for to in NUMBERS:
                sender = {"From": ["whatsapp:" + SENDER if ":" in to else SENDER]}
                if to.endswith("0100"):
                    sender = {"MessagingServiceSid": [SERVICE_SID]}
                simulator.create({
                    "To": [to], "Body": ["Your order has shipped"], **sender,
                    "StatusCallback": [PUBLIC_URL + "/webhooks/twilio/status"],
                })  # fmt: skip
            await simulator.drain()
        finally:
            await simulator.close()
    assert settings.database_url is not None
    connection = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        rows = await connection.fetch("SELECT sid, status, error_code FROM messages")
    finally:
        await connection.close()
    return {row["sid"]: (row["status"], row["error_code"]) for row in rows}, simulator


async def test_shuffled_duplicated_batches_end_as_the_equivalent_callbacks(
    settings: Settings, other_database: str, db: asyncpg.Connection
) -> None:
    by_callbacks, _ = await run_simulated_traffic(
        settings.model_copy(update={"database_url": SecretStr(other_database)}),
        callbacks=True,
        event_streams=False,
        **UNRULY,
    )
    by_streams, simulator = await run_simulated_traffic(
        settings, callbacks=False, event_streams=True, **UNRULY
    )

    assert by_streams == by_callbacks
    assert sorted(by_streams.values(), key=str) == sorted([
        ("delivered", None), ("delivered", None), ("failed", 30001), ("read", None),
        ("sent", None), ("undelivered", 30003), ("undelivered", 30007),
    ], key=str)  # fmt: skip
    sender = simulator.event_streams
    assert sender is not None
    batches = sender.batches
    assert all(batch.outcome == "delivered" for batch in batches)
    # The faults happened: redelivered batches, events repeated within one, shuffled ones.
    assert any(batch.redelivery for batch in batches)
    assert any(batch.shuffled for batch in batches)
    assert any(len(set(batch.event_ids)) < len(batch.event_ids) for batch in batches)
    distinct = {event_id for batch in batches for event_id in batch.event_ids}
    stored = await db.fetchval("SELECT count(*) FROM message_events WHERE source = 'event_stream'")
    assert stored == len(distinct) == await db.fetchval("SELECT count(*) FROM stream_events")
    assert await db.fetchval("SELECT count(*) FROM message_events WHERE source = 'callback'") == 0


async def test_callbacks_beside_event_streams_end_as_either_alone(
    settings: Settings, other_database: str
) -> None:
    alone, _ = await run_simulated_traffic(
        settings.model_copy(update={"database_url": SecretStr(other_database)}),
        callbacks=True,
        event_streams=False,
        **UNRULY,
    )
    both, _ = await run_simulated_traffic(settings, callbacks=True, event_streams=True, **UNRULY)

    assert both == alone
    assert len(both) == len(NUMBERS)


async def test_simulator_command_posts_event_streams_instead_of_callbacks(
    server: Server, tmp_path: Path
) -> None:
    sink = server.url + EVENTS_PATH
    simulator = SimulatorProcess(
        tmp_path, *FAST_SIMULATOR, "--event-streams", sink, "--no-status-callbacks"
    )
    http = HttpxTwilioClient(timeout=5)
    try:
        twilio = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http)
        twilio.api.base_url = simulator.url
        sent = await twilio.messages.create_async(
            to="+14155550001", from_=SENDER, body="hello",
            status_callback=server.url + "/webhooks/twilio/status",
        )  # fmt: skip
        async with httpx.AsyncClient(base_url=server.url, headers=API_HEADERS) as api:
            for _ in range(100):
                message = (await api.get(f"/v1/messages/{sent.sid}")).json()
                if message.get("status") == "undelivered":
                    break
                await asyncio.sleep(0.1)
    finally:
        await http.close()
        simulator.close()

    assert (message["status"], message["error_code"]) == ("undelivered", 30003)
    sources = {event["source"] for event in message["events"]}
    assert sources == {"event_stream"}
    assert [event["status"] for event in message["events"]].count("queued") == 1


async def test_concurrent_batches_sharing_messages_are_all_stored(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    sids = [new_sid() for _ in range(60)]
    # Batches posted at once, each holding two reports of many of the same messages, in another
    # order: without a common lock order, their transactions would deadlock.
    lifecycle = ["queued", "sent", "delivered", "read"]
    batches = []
    for first, second in [(0, 1), (2, 3), (1, 2), (0, 3), (3, 1), (2, 0)]:
        batch = [cloud_event(sid, lifecycle[i]) for sid in sids for i in (first, second)]
        random.Random(first * 4 + second).shuffle(batch)
        batches.append(batch)

    answers = await asyncio.gather(*(post_batch(client, batch) for batch in batches))

    assert [answer.status_code for answer in answers] == [200] * len(batches)
    statuses = await db.fetch("SELECT status FROM messages")
    assert [row["status"] for row in statuses] == ["read"] * len(sids)
    events = sum(len(batch) for batch in batches)
    assert await stored_counts(db) == (len(sids), events, events)


async def test_a_filled_store_upgrades_without_losing_an_event_and_takes_batches(
    database_url: str, db: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    await asyncio.to_thread(downgrade, database_url, "2026_12_05_fidelity")
    await db.execute(
        """
        WITH m AS (
            INSERT INTO messages (sid, status, status_rank, to_number, created_at)
            SELECT 'SM' || md5(g::text), 'sent', 50, '+14155550100', now() - g * interval '1 s'
            FROM generate_series(1, 200) g
            RETURNING id, created_at
        )
        INSERT INTO message_events (message_id, status, status_rank, source, received_at,
                                    carrier_done_at, fields)
        SELECT id, s, 50, 'callback', created_at, created_at, '{"MessageStatus": "sent"}'
        FROM m, unnest(ARRAY['sent', 'sent']) s
        """
    )
    before = [dict(row) for row in await db.fetch("SELECT * FROM message_events ORDER BY id")]

    await asyncio.to_thread(migrate, database_url)

    after = await db.fetch("SELECT * FROM message_events ORDER BY id")
    assert [{name: row[name] for name in before[0]} for row in after] == before
    assert {row["occurred_at"] for row in after} == {None}
    old_sid = "SM" + await db.fetchval("SELECT md5('1')")
    assert (await post_batch(client, [cloud_event(old_sid, "delivered")])).status_code == 200
    assert await db.fetchval("SELECT status FROM messages WHERE sid = $1", old_sid) == "delivered"
    await asyncio.to_thread(downgrade, database_url, "2026_12_05_fidelity")
    assert await db.fetchval("SELECT count(*) FROM message_events") == len(before) + 1

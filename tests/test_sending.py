"""Sending through the service to the simulator, both real servers, callbacks and all."""

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from status_tracker.ports import free_port
from status_tracker.simulator import SimulatorConfig, create_simulator_app
from tests.conftest import Server, sending_environment
from tests.support import ACCOUNT_SID, API_KEY, AUTH_TOKEN

SERVICE_SID = "MG" + "1" * 32


@pytest.fixture
async def api(sending_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(
        base_url=sending_server.url, headers=headers, timeout=30
    ) as client:
        yield client


async def eventually(
    api: httpx.AsyncClient, message_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        message: dict[str, Any] = (await api.get(f"/v1/messages/{message_id}")).json()
        if done(message) or time.monotonic() > deadline:
            return message
        await asyncio.sleep(0.05)


def final(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message["status"] == status


async def test_accepted_send_reaches_delivered_with_its_timeline(api):
    response = await api.post(
        "/v1/messages",
        json={"to": "+14155550100", "body": "hello", "reference": "order-17", "metadata": {"a": 1}},
    )
    assert response.status_code == 201
    sent = response.json()
    assert sent["sid"].startswith("SM")
    assert sent["status"] in ("queued", "sent", "delivered")
    assert sent["send_outcome"] == "accepted"
    assert (sent["reference"], sent["metadata"], sent["body"]) == ("order-17", {"a": 1}, "hello")
    message = await eventually(api, sent["id"], final("delivered"))
    assert message["status"] == "delivered"
    sources = [(e["source"], e["status"]) for e in message["events"]]
    assert sources[:2] == [("send", "pending"), ("send", "queued")]
    assert ("callback", "delivered") in sources
    callback = next(e for e in message["events"] if e["source"] == "callback")
    assert callback["query"] == {"mid": sent["id"]}
    assert (await api.get(f"/v1/messages/{sent['sid']}")).json()["id"] == sent["id"]


@pytest.mark.parametrize(
    ("to", "status", "code"),
    [
        ("+14155550001", "undelivered", 30003),
        ("+14155550002", "undelivered", 30007),
        ("+14155550010", "failed", 30001),
        ("whatsapp:+14155550100", "read", None),
        ("+14155550008", "delivered", None),  # 429 twice, retried with backoff
    ],
)
async def test_outcome_chosen_by_the_to_number(api, to, status, code):
    response = await api.post("/v1/messages", json={"to": to, "body": "hi"})
    assert response.status_code == 201, response.text
    message = await eventually(api, response.json()["id"], final(status))
    assert (message["status"], message["error_code"]) == (status, code)
    if code:
        assert message["error_description"]


async def test_stays_sent_when_no_receipt_comes(api):
    response = await api.post("/v1/messages", json={"to": "+14155550005", "body": "hi"})
    message = await eventually(api, response.json()["id"], final("sent"))
    await asyncio.sleep(0.5)
    assert (await api.get(f"/v1/messages/{message['id']}")).json()["status"] == "sent"


@pytest.mark.parametrize(("to", "code"), [("+14155550003", 21610), ("+14155550004", 21211)])
async def test_refused_by_twilio_is_stored_as_failed(api, to, code):
    response = await api.post("/v1/messages", json={"to": to, "body": "hi"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["twilio_code"] == code
    assert problem["error_description"]
    message = (await api.get(f"/v1/messages/{problem['message_id']}")).json()
    assert (message["status"], message["error_code"], message["send_outcome"]) == (
        "failed",
        code,
        "refused",
    )
    assert message["sid"] is None


async def test_twilio_5xx_leaves_an_unknown_outcome(api):
    response = await api.post("/v1/messages", json={"to": "+14155550006", "body": "hi"})
    assert response.status_code == 502
    problem = response.json()
    assert "do not resend" in problem["detail"]
    message = (await api.get(f"/v1/messages/{problem['message_id']}")).json()
    assert (message["status"], message["send_outcome"], message["sid"]) == (
        "pending",
        "unknown",
        None,
    )
    assert [e["source"] for e in message["events"]] == ["send", "send"]


async def test_timed_out_send_is_settled_by_its_own_callbacks(api):
    """Twilio took the message but its answer never came: the callbacks, carrying the local id,
    still find the attempt and give it its SID."""
    response = await api.post("/v1/messages", json={"to": "+14155550007", "body": "hi"})
    assert response.status_code == 504
    message_id = response.json()["message_id"]
    message = await eventually(api, message_id, final("delivered"))
    assert message["status"] == "delivered"
    assert message["sid"] is not None
    assert message["send_outcome"] == "accepted"


async def test_idempotency_key_sends_once(api, database_url):
    headers = {"Idempotency-Key": "order-17-sms"}
    body = {"to": "+14155550100", "body": "once"}
    first = await api.post("/v1/messages", json=body, headers=headers)
    second = await api.post("/v1/messages", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == second.json()["id"]
    different = await api.post("/v1/messages", json={**body, "body": "twice"}, headers=headers)
    assert different.status_code == 409
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM messages") == 1
    finally:
        await connection.close()


async def test_callback_that_outruns_the_send_response_lands_on_the_same_message(api, database_url):
    response = await api.post("/v1/messages", json={"to": "+14155550009", "body": "race"})
    assert response.status_code == 201
    sent = response.json()
    # The simulator answered the create only once its `sent` callback had been answered.
    assert any(e["source"] == "callback" for e in sent["events"])
    message = await eventually(api, sent["id"], final("delivered"))
    assert message["sid"] == sent["sid"]
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM messages") == 1
    finally:
        await connection.close()


async def test_scheduled_message_can_be_canceled(api):
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = await api.post(
        "/v1/messages",
        json={"to": "+14155550100", "body": "later", "messaging_service_sid": SERVICE_SID,
              "send_at": send_at},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    scheduled = response.json()
    assert scheduled["status"] == "scheduled"
    canceled = await api.delete(f"/v1/messages/{scheduled['id']}")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    again = await api.delete(f"/v1/messages/{scheduled['id']}")
    assert again.status_code == 409


async def test_invalid_input_is_a_422_naming_the_field(api, database_url):
    cases = [
        ({"to": "0044 1234", "body": "x"}, "to"),
        ({"to": "+14155550100"}, "body"),
        ({"to": "+14155550100", "body": "x", "content_variables": {"1": "a"}}, "content_variables"),
        ({"to": "+14155550100", "body": "x", "send_at": "2030-01-01T00:00:00Z"}, "send_at"),
        ({"to": "+14155550100", "media_urls": ["https://x.test/a.png"] * 11}, "media_urls"),
        ({"to": "+14155550100", "body": "x", "colour": "red"}, "colour"),
    ]
    for body, field in cases:
        response = await api.post("/v1/messages", json=body)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"
        assert any(field in error["field"] for error in response.json()["errors"]), response.json()
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM messages") == 0
    finally:
        await connection.close()


async def test_burst_of_sends_ends_in_the_states_the_numbers_call_for(tmp_path, database_url):
    """2,000 sends with callbacks reordered and duplicated: every message ends where its
    To number says.

    The simulator runs in this process, so the test waits for exactly what it needs, every
    lifecycle finished and every callback answered (`drain`), then looks once: no deadline
    that a loaded machine can overrun."""

    unruly = SimulatorConfig(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, seed=11,
                             callback_delay_min=0, callback_delay_max=0.2,
                             duplicate_probability=0.3, reorder_probability=0.5)  # fmt: skip
    app = create_simulator_app(unruly)
    simulator = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), ws="none", log_level="warning")
    )
    running = asyncio.create_task(simulator.serve())
    while not simulator.started:
        assert not running.done(), running.result()
        await asyncio.sleep(0.01)
    environment = {
        **sending_environment(database_url, tmp_path, f"http://127.0.0.1:{simulator.config.port}"),
        # A burst may slow the simulator's answers past the 1 s the other tests allow.
        "TWILIO_TIMEOUT": "10",
    }
    expected_by_suffix = {"0100": "delivered", "0001": "undelivered", "0002": "undelivered",
                          "0005": "sent"}  # fmt: skip
    rng = random.Random(3)
    tos = [f"+1415555{rng.choice(list(expected_by_suffix))}" for _ in range(2000)]
    try:
        with Server(environment, tmp_path) as server:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            limits = httpx.Limits(max_connections=16)
            async with httpx.AsyncClient(
                base_url=server.url, headers=headers, limits=limits, timeout=60
            ) as client:
                gate = asyncio.Semaphore(16)

                async def send(index: int, to: str) -> int:
                    # As a careful client does: a send whose answer was lost in transit (a
                    # connection reset under load) is retried under the same idempotency key,
                    # so that it is sent once whatever happens to the answer.
                    headers = {"Idempotency-Key": f"burst-{index}"}
                    async with gate:
                        for attempt in range(3):
                            try:
                                response = await client.post(
                                    "/v1/messages", json={"to": to, "body": "b"}, headers=headers
                                )
                                return response.status_code
                            except httpx.TransportError:
                                if attempt == 2:
                                    raise
                    raise AssertionError("unreachable")

                codes = await asyncio.gather(*(send(i, to) for i, to in enumerate(tos)))
            await app.state.simulator.drain()
            # A callback is answered only once it is committed: what the store shows now is final.
            callbacks = app.state.simulator.callbacks
            unanswered = [c for c in callbacks if c.outcome != "delivered"]
            connection = await asyncpg.connect(database_url)
            try:
                rows = await connection.fetch("SELECT to_number, status FROM messages")
                duplicates = await connection.fetchval(
                    "SELECT count(*) FROM message_events e WHERE source = 'callback' AND EXISTS ("
                    " SELECT 1 FROM message_events d WHERE d.message_id = e.message_id"
                    " AND d.status = e.status AND d.id < e.id AND d.source = 'callback')"
                )
            finally:
                await connection.close()
    finally:
        simulator.should_exit = True
        await running
    assert set(codes) <= {201, 200}  # 200: a retried send answered as the first one was
    assert unanswered == []
    assert len(rows) == 2000
    assert [r for r in rows if r["status"] != expected_by_suffix[r["to_number"][-4:]]] == []
    assert duplicates > 0  # the simulator really did send some twice


async def test_service_callback_that_outruns_the_send_response_is_merged_into_the_attempt(
    client, db
):
    """With a Messaging Service's own callback URL the callbacks carry no local id; one that
    arrives before the send's response creates a record, which the response folds into the
    attempt: one message, every event kept."""
    from status_tracker import repository
    from status_tracker.callbacks import StatusReport
    from tests.support import callback_fields, new_sid, signed

    attempt = uuid.uuid4()
    now = datetime.now(UTC)
    await repository.record_attempt(
        db, message_id=attempt, to="+14155550100", from_=None,
        messaging_service_sid=SERVICE_SID, channel="sms", body="hi", media_urls=None,
        content_sid=None, content_variables=None, send_at=None, validity_period=None,
        reference="r-1", metadata=None, idempotency_key=None, request_hash="h",
        created_at=now, fields={},
    )  # fmt: skip
    sid = new_sid()
    for status in ("queued", "delivered"):
        target, body, headers = signed(callback_fields(sid, status))
        assert (await client.post(target, content=body, headers=headers)).status_code == 204
    assert await db.fetchval("SELECT count(*) FROM messages") == 2

    accepted = StatusReport(sid=sid, status="accepted", error_code=None, received_at=now,
                            source="send", message_id=attempt)  # fmt: skip
    await repository.record_send_result(db, accepted, "accepted")

    rows = await db.fetch("SELECT id, sid, status, reference, delivered_at FROM messages")
    assert len(rows) == 1
    assert (rows[0]["id"], rows[0]["sid"], rows[0]["status"]) == (attempt, sid, "delivered")
    assert rows[0]["reference"] == "r-1"
    assert rows[0]["delivered_at"] is not None
    statuses = await db.fetch("SELECT status FROM message_events ORDER BY id")
    assert [r["status"] for r in statuses] == ["pending", "queued", "delivered", "accepted"]

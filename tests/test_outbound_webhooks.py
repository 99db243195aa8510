"""Outbound webhooks: endpoints, Standard Webhooks signatures, retries, disabling, replay, and an
outbox that loses nothing. Every delivery is checked with the `standardwebhooks` package."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from status_tracker import delivery, outbox, repository
from status_tracker.callbacks import StatusReport
from status_tracker.database import create_pool, downgrade, migrate
from status_tracker.settings import Settings
from tests.conftest import app_client
from tests.receiver import Receiver, answers
from tests.support import callback_fields, new_sid, signed
from tests.test_metrics import delta, scrape

INBOUND = "/webhooks/twilio/inbound"
# Retries within milliseconds instead of minutes.
FAST = {"webhooks_retry_scale": 0.0002}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    try:
        yield running
    finally:
        running.stop()


@asynccontextmanager
async def service(settings: Settings, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings.model_copy(update={**FAST, **changes})) as http:
        yield http


async def register(http: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    response = await http.post("/v1/webhook-endpoints", json={"url": url, **fields})
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


async def post_callback(http: httpx.AsyncClient, sid: str, status: str, **extra: str) -> None:
    target, body, headers = signed(callback_fields(sid, status, **extra))
    response = await http.post(target, content=body, headers=headers)
    assert response.status_code == 204


async def eventually(check: Callable[[], bool], within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def verified(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """Every successful delivery, checked by the standardwebhooks package, one per webhook-id."""
    payloads: dict[str, dict[str, Any]] = {}
    for request in receiver.received:
        if request.status == 200:
            payload = Webhook(secret).verify(request.body, request.headers)
            payloads[request.headers["webhook-id"]] = payload
    return list(payloads.values())


async def test_every_status_change_is_delivered_signed_once_each(settings, receiver, db):
    async with service(settings) as http:
        endpoint = await register(http, receiver.url)
        assert endpoint["secret"].startswith("whsec_")
        sid = new_sid()
        await post_callback(http, sid, "sent")
        await post_callback(http, sid, "delivered")
        await post_callback(http, sid, "sent")  # stale: no change, no webhook
        await eventually(lambda: len(verified(receiver, endpoint["secret"])) == 3)
        await asyncio.sleep(0.6)
        listed = (await http.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
        deliveries = (await http.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries")).json()
    payloads = sorted(verified(receiver, endpoint["secret"]), key=lambda p: p["data"]["sequence"])
    assert len(receiver.received) == 3
    assert [(p["type"], p["data"]["status"], p["data"]["sequence"]) for p in payloads] == [
        ("message.status_changed", "sent", 1),
        ("message.status_changed", "delivered", 2),
        ("message.final", "delivered", 3),
    ]
    message_id = await db.fetchval("SELECT id FROM messages WHERE sid = $1", sid)
    data = payloads[1]["data"]
    assert data["message_id"] == str(message_id) and data["sid"] == sid
    assert data["previous_status"] == "sent" and data["event"]["source"] == "callback"
    assert data["event"]["received_at"].endswith("Z")
    assert "secret" not in listed
    assert {d["state"] for d in deliveries} == {"delivered"}
    assert all(d["attempt_log"][0]["status_code"] == 200 for d in deliveries)
    assert all(d["attempt_log"][0]["response_excerpt"] == "ok" for d in deliveries)
    with pytest.raises(WebhookVerificationError):
        Webhook(delivery.new_secret()).verify(
            receiver.received[0].body, receiver.received[0].headers
        )


async def test_an_error_code_comes_with_its_description(settings, receiver):
    async with service(settings) as http:
        endpoint = await register(http, receiver.url, event_types=["message.final"])
        await post_callback(http, new_sid(), "undelivered", ErrorCode="30003")
        await eventually(lambda: len(verified(receiver, endpoint["secret"])) == 1)
    (payload,) = verified(receiver, endpoint["secret"])
    assert payload["data"]["error_code"] == 30003
    assert "unreachable" in payload["data"]["error_description"]


async def test_a_failing_receiver_gets_the_same_webhook_id_until_it_answers(settings, receiver):
    receiver.answer = answers((500, 0), (503, 0))
    async with service(settings) as http:
        endpoint = await register(http, receiver.url, event_types=["message.status_changed"])
        await post_callback(http, new_sid(), "sent")
        await eventually(lambda: len(verified(receiver, endpoint["secret"])) == 1)
        await asyncio.sleep(0.2)
        (delivered,) = (await http.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries")).json()
    assert [r.status for r in receiver.received] == [500, 503, 200]
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    assert [a["status_code"] for a in delivered["attempt_log"]] == [500, 503, 200]
    assert delivered["attempts"] == 3 and delivered["state"] == "delivered"


async def test_attempts_and_the_backlog_are_in_the_metrics(settings, receiver):
    receiver.answer = answers((500, 0))
    async with service(settings) as http:
        before = await scrape(http)
        endpoint = await register(http, receiver.url, event_types=["message.status_changed"])
        await post_callback(http, new_sid(), "sent")
        await eventually(lambda: len(verified(receiver, endpoint["secret"])) == 1)
        await asyncio.sleep(0.2)
        after = await scrape(http)
    attempts = "status_tracker_webhook_deliveries_total"
    assert delta(before, after, attempts, result="error") == 1
    assert delta(before, after, attempts, result="delivered") == 1
    assert ("status_tracker_webhook_oldest_undelivered_seconds", frozenset()) in after


async def test_a_receiver_that_times_out_is_tried_again(settings, receiver):
    receiver.answer = answers((200, 1.5))
    async with service(settings, webhooks_timeout_seconds=0.5) as http:
        endpoint = await register(http, receiver.url, event_types=["message.status_changed"])
        await post_callback(http, new_sid(), "sent")
        await eventually(lambda: len(receiver.received) == 2)
        await asyncio.sleep(0.3)
        (delivered,) = (await http.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries")).json()
    first, second = delivered["attempt_log"]
    assert first["status_code"] is None and "no answer within 0.5 s" in first["error"]
    assert second["status_code"] == 200 and delivered["state"] == "delivered"


async def test_410_disables_the_endpoint_at_once_and_enabling_it_resumes(settings, receiver):
    receiver.answer = answers((410, 0))
    async with service(settings) as http:
        endpoint = await register(http, receiver.url, event_types=["message.status_changed"])
        url = f"/v1/webhook-endpoints/{endpoint['id']}"
        await post_callback(http, new_sid(), "sent")
        await eventually(lambda: len(receiver.received) == 1)
        await asyncio.sleep(1)
        disabled = (await http.get(url)).json()
        assert len(receiver.received) == 1  # nothing more while disabled
        enabled = (await http.patch(url, json={"enabled": True})).json()
        await eventually(lambda: len(verified(receiver, endpoint["secret"])) == 1)
    assert disabled["enabled"] is False and "410" in disabled["disabled_reason"]
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None


async def test_an_endpoint_failing_for_five_days_is_disabled_with_a_reason(settings, receiver, db):
    receiver.answer = lambda: (500, 0.0)
    async with service(settings, webhooks_retry_scale=1) as http:
        endpoint = await register(http, receiver.url, event_types=["message.status_changed"])
        await db.execute(
            "UPDATE webhook_endpoints SET failing_since = now() - interval '5 days 1 minute'"
        )
        await post_callback(http, new_sid(), "sent")
        await eventually(lambda: len(receiver.received) == 1)
        await asyncio.sleep(0.3)
        disabled = (await http.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
    assert disabled["enabled"] is False
    assert disabled["disabled_reason"].startswith("every delivery failed since")


async def test_a_delivery_is_given_up_after_the_whole_schedule(settings, receiver, db):
    receiver.answer = lambda: (500, 0.0)
    async with service(settings, webhooks_retry_scale=0.000001) as http:
        endpoint = await register(http, receiver.url, event_types=["message.status_changed"])
        # Scaled down, 5 days of failures would pass within the first attempts: the endpoint
        # must stay enabled for the schedule to run out, as it does in real time.
        await db.execute("UPDATE webhook_endpoints SET failing_since = now() + interval '1 day'")
        await post_callback(http, new_sid(), "sent")
        attempts = len(delivery.RETRY_SCHEDULE) + 1
        await eventually(lambda: len(receiver.received) == attempts, within=30)
        await asyncio.sleep(1)
        (given_up,) = (await http.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries")).json()
    assert len(receiver.received) == attempts
    assert given_up["state"] == "failed" and given_up["attempts"] == attempts
    assert given_up["next_attempt_at"] is None


def test_the_retry_schedule_spans_about_three_days():
    assert 2.9 * 86400 < sum(delivery.RETRY_SCHEDULE) < 3.3 * 86400
    assert delivery.retry_delay(len(delivery.RETRY_SCHEDULE) + 1, 1) is None
    delays = {delivery.retry_delay(1, 1) for _ in range(20)}
    assert len(delays) > 1 and all(d is not None and 4 <= d <= 6 for d in delays)


async def test_a_receiver_killed_mid_run_gets_everything_once_back(settings, receiver):
    async with service(settings) as http:
        endpoint = await register(http, receiver.url, event_types=["message.status_changed"])
        sids = [new_sid() for _ in range(10)]
        for sid in sids[:5]:
            await post_callback(http, sid, "sent")
        await eventually(lambda: len(receiver.received) >= 1)
        receiver.stop()
        for sid in sids[5:]:
            await post_callback(http, sid, "sent")
        await asyncio.sleep(1)
        receiver.start()
        await eventually(lambda: len(verified(receiver, endpoint["secret"])) == 10)
    assert {p["data"]["sid"] for p in verified(receiver, endpoint["secret"])} == set(sids)


async def test_rotation_signs_with_both_secrets_for_a_day(settings, receiver):
    async with service(settings) as http:
        endpoint = await register(http, receiver.url, event_types=["message.status_changed"])
        rotated = (await http.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret")).json()
        await post_callback(http, new_sid(), "sent")
        await eventually(lambda: len(receiver.received) == 1)
    assert rotated["secret"] != endpoint["secret"]
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
    request = receiver.received[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(rotated["secret"]).verify(request.body, request.headers)
    assert Webhook(endpoint["secret"]).verify(request.body, request.headers)


async def test_filters_by_type_and_reference_prefix(settings, receiver, db):
    async with service(settings) as http:
        endpoint = await register(
            http, receiver.url, event_types=["message.final"], reference_prefix="order-"
        )
        ours, theirs = uuid4(), uuid4()
        for message_id, reference in ((ours, "order-17"), (theirs, "invoice-3")):
            await record_attempt(db, message_id, reference)
            # As our own StatusCallback URL carries it: `mid`, the local id.
            sid = new_sid()
            await post_with_mid(http, sid, "sent", message_id)
            await post_with_mid(http, sid, "delivered", message_id)
        await eventually(lambda: len(receiver.received) >= 1)
        await asyncio.sleep(1)
    (payload,) = verified(receiver, endpoint["secret"])
    assert payload["type"] == "message.final"
    assert payload["data"]["reference"] == "order-17"
    assert payload["data"]["metadata"] == {"customer": 42}


async def record_attempt(db: asyncpg.Connection, message_id: Any, reference: str) -> None:
    await repository.record_attempt(
        db, message_id=message_id, to="+14155550100", from_="+15005550006",
        messaging_service_sid=None, channel="sms", body="hi", media_urls=None, content_sid=None,
        content_variables=None, send_at=None, validity_period=None, reference=reference,
        metadata={"customer": 42}, idempotency_key=None, request_hash="x",
        created_at=datetime.now(UTC), fields={},
    )  # fmt: skip


async def post_with_mid(http: httpx.AsyncClient, sid: str, status: str, message_id: Any) -> None:
    target, body, headers = signed(callback_fields(sid, status), query=f"mid={message_id}")
    assert (await http.post(target, content=body, headers=headers)).status_code == 204


async def test_inbound_messages_and_reconciliation_passes_are_delivered(settings, receiver, db):
    async with service(settings) as http:
        endpoint = await register(
            http, receiver.url, event_types=["message.inbound", "reconciliation.completed"]
        )
        fields = {
            "MessageSid": (sid := new_sid()), "SmsSid": sid, "AccountSid": "AC" + "0" * 32,
            "From": "+14155550123", "To": "+15005550006", "Body": "hello", "NumMedia": "0",
        }  # fmt: skip
        target, body, headers = signed(fields, path=INBOUND)
        assert (await http.post(target, content=body, headers=headers)).status_code == 200
        assert (await http.post(target, content=body, headers=headers)).status_code == 200
        now = datetime.now(UTC)
        pass_id = await repository.start_reconciliation(db, now - timedelta(days=1), now, False)
        await repository.finish_reconciliation(
            db, pass_id, state="finished", counts={"status_differs": 2}, errors=[],
            duration_seconds=1.5, discrepancies=[],
        )  # fmt: skip
        await eventually(lambda: len(verified(receiver, endpoint["secret"])) == 2)
        await asyncio.sleep(0.5)
    payloads = {p["type"]: p["data"] for p in verified(receiver, endpoint["secret"])}
    assert len(receiver.received) == 2  # the retried inbound is no new message
    assert payloads["message.inbound"]["body"] == "hello"
    assert payloads["message.inbound"]["sequence"] == 1
    assert payloads["reconciliation.completed"]["reconciliation_id"] == pass_id
    assert payloads["reconciliation.completed"]["counts"] == {"status_differs": 2}


async def test_bodies_and_numbers_follow_the_privacy_settings(settings, receiver):
    async with service(settings, redact_numbers="last4", store_bodies=False) as http:
        endpoint = await register(http, receiver.url, event_types=["message.inbound"])
        fields = {
            "MessageSid": new_sid(), "AccountSid": "AC" + "0" * 32,
            "From": "+14155550123", "To": "+15005550006", "Body": "secret", "NumMedia": "0",
        }  # fmt: skip
        target, body, headers = signed(fields, path=INBOUND)
        assert (await http.post(target, content=body, headers=headers)).status_code == 200
        await eventually(lambda: len(verified(receiver, endpoint["secret"])) == 1)
    (payload,) = verified(receiver, endpoint["secret"])
    assert payload["data"]["body"] is None
    assert payload["data"]["from"] == "+1415555****"
    assert b"secret" not in receiver.received[0].body and b"0123" not in receiver.received[0].body


async def test_replay_sends_a_window_again_with_the_same_ids(settings, receiver, db):
    async with service(settings) as http:
        endpoint = await register(http, receiver.url, event_types=["message.status_changed"])
        await post_callback(http, new_sid(), "sent")
        await eventually(lambda: len(receiver.received) == 1)
        since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        response = await http.post(
            f"/v1/webhook-endpoints/{endpoint['id']}/replay", params={"since": since}
        )
        await eventually(lambda: len(receiver.received) == 2)
        naive = await http.post(
            f"/v1/webhook-endpoints/{endpoint['id']}/replay", params={"since": "2026-01-01T00:00"}
        )
        await asyncio.sleep(0.2)
        deleted = await http.delete(f"/v1/webhook-endpoints/{endpoint['id']}")
    # An endpoint's deliveries and their attempts go with it.
    assert deleted.status_code == 204
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_attempts") == 0
    assert response.status_code == 202 and response.json() == {"deliveries": 1}
    first, again = receiver.received
    assert first.headers["webhook-id"] == again.headers["webhook-id"]
    assert first.body == again.body
    assert naive.status_code == 400


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hooks",
        "http://localhost/hooks",
        "http://10.1.2.3/hooks",
        "http://192.168.0.1/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://100.64.0.1/hooks",
    ],
)
async def test_private_destinations_are_refused_by_default(settings, url):
    async with service(settings, webhooks_allow_private=False) as http:
        response = await http.post("/v1/webhook-endpoints", json={"url": url})
        listed = (await http.get("/v1/webhook-endpoints")).json()
    assert response.status_code == 422
    assert "STATUS_TRACKER_WEBHOOKS_ALLOW_PRIVATE" in response.json()["detail"]
    assert listed == []


async def test_a_public_address_passes_the_check():
    await delivery.check_destination("https://93.184.215.14/hooks", allow_private=False)
    with pytest.raises(delivery.UnsafeDestination):
        await delivery.check_destination("ftp://93.184.215.14/", allow_private=True)


async def test_redirects_are_not_followed(settings, receiver):
    receiver.answer = answers((302, 0))
    async with service(settings) as http:
        endpoint = await register(http, receiver.url, event_types=["message.status_changed"])
        await post_callback(http, new_sid(), "sent")
        await eventually(lambda: len(verified(receiver, endpoint["secret"])) == 1)
        await asyncio.sleep(0.2)
        (delivered,) = (await http.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries")).json()
    assert "redirects are not followed" in delivered["attempt_log"][0]["error"]


async def test_endpoints_are_listed_changed_and_deleted(settings, receiver):
    async with service(settings) as http:
        endpoint = await register(http, receiver.url, description="crm")
        url = f"/v1/webhook-endpoints/{endpoint['id']}"
        changed = await http.patch(url, json={"event_types": ["message.final"], "enabled": False})
        bad = await http.patch(url, json={"event_types": ["message.unknown"]})
        listed = (await http.get("/v1/webhook-endpoints")).json()
        deleted = await http.delete(url)
        gone = await http.get(url)
        unauthorized = await http.get("/v1/webhook-endpoints", headers={"Authorization": "x"})
    assert endpoint["event_types"] == list(delivery.EVENT_TYPES)
    assert changed.json()["event_types"] == ["message.final"] and not changed.json()["enabled"]
    assert bad.status_code == 422
    assert [e["id"] for e in listed] == [endpoint["id"]]
    assert deleted.status_code == 204 and gone.status_code == 404
    assert unauthorized.status_code == 401


async def test_no_outbox_rows_without_a_listener(client, db):
    await post_callback(client, new_sid(), "sent")
    assert await db.fetchval("SELECT count(*) FROM webhook_pending_reports") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0


async def test_the_outbox_is_pruned_past_its_retention(settings, receiver, db):
    async with service(settings) as http:
        await register(http, receiver.url)
        await post_callback(http, new_sid(), "sent")
        await eventually(lambda: len(receiver.received) == 1)
    await db.execute("UPDATE webhook_events SET created_at = now() - interval '8 days'")
    await db.execute("UPDATE webhook_deliveries SET created_at = now() - interval '8 days'")
    await post_callback_direct(db)
    assert await outbox.derive_events(db, 10) == 1
    assert await outbox.prune(db, 7 * 86400) == 2  # the old event and its delivery
    assert await db.fetchval("SELECT count(*) FROM webhook_attempts") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 1
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 1


async def test_a_process_busy_with_callbacks_still_delivers_in_small_steps(
    database_url, settings, receiver, db
):
    await outbox.create_endpoint(
        db,
        endpoint_id=uuid4(),
        url=receiver.url,
        description=None,
        event_types=delivery.EVENT_TYPES,
        reference_prefix=None,
        secret=delivery.new_secret(),
    )
    for _ in range(settings.webhooks_concurrency + 3):
        await post_callback_direct(db)
    pool = await create_pool(settings, database_url)
    deliverer = delivery.Deliverer(pool, settings, busy=lambda: True)
    try:
        await eventually(lambda: len(receiver.received) == settings.webhooks_concurrency + 3)
    finally:
        await deliverer.close()
        await pool.close()
    states = await db.fetch("SELECT state, count(*) FROM webhook_deliveries GROUP BY state")
    assert [tuple(row) for row in states] == [("delivered", settings.webhooks_concurrency + 3)]


async def attach_endpoint(db: asyncpg.Connection) -> None:
    await outbox.create_endpoint(
        db,
        endpoint_id=uuid4(),
        url="http://127.0.0.1:9/",
        description=None,
        event_types=delivery.EVENT_TYPES,
        reference_prefix=None,
        secret=delivery.new_secret(),
    )


def lifecycles(messages: int) -> list[StatusReport]:
    """`sent` then `delivered` of fresh messages: each a status change, each `delivered` one and
    a final."""
    now = datetime.now(UTC)
    return [
        StatusReport(sid=sid, status=status, error_code=None, received_at=now, source="callback")
        for sid in (new_sid() for _ in range(messages))
        for status in ("sent", "delivered")
    ]


async def test_the_outbox_reads_each_message_by_its_key_whatever_the_plan_kept(db):
    await attach_endpoint(db)
    # Past five runs PL/pgSQL keeps a generic plan of the derivation's statement for the session.
    for _ in range(8):
        await repository.record_reports(db, lifecycles(16))
        await outbox.derive_events(db, 100)
    async with db.transaction():
        for _ in range(4):
            await repository.record_reports(db, lifecycles(16))
            await outbox.derive_events(db, 100)
        scans = await db.fetchval(
            "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'messages'"
        )
    assert scans == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 12 * (16 + 16 * 2)


async def test_the_callbacks_transaction_only_notes_what_to_tell(db):
    await attach_endpoint(db)
    async with db.transaction():
        await repository.record_reports(db, lifecycles(3))
        # One note for the statement, no event yet: those are derived off the callback's path.
        notes = await db.fetch("SELECT event_ids FROM webhook_pending_reports")
        assert [len(note["event_ids"]) for note in notes] == [3, 3]  # two rounds: sent, delivered
        assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0
    assert await outbox.derive_events(db, 4) == 6  # whole notes, up to (here past) 4 reports
    assert await db.fetchval("SELECT count(*) FROM webhook_pending_reports") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 3 * 3


async def events_told(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        "SELECT message_id, sequence, type, payload->>'status' AS status, "
        "payload->>'previous_status' AS previous FROM webhook_events ORDER BY message_id, sequence"
    )
    return [tuple(row) for row in rows]


@pytest.mark.parametrize("reports_at_a_time", [1, 7, 1000])
async def test_derived_alike_in_steps_of_any_size(db, reports_at_a_time):
    """A message's reports noted by many statements (shuffled, repeated, out of order) are judged
    and numbered in the order they were stored, however many a derivation takes."""
    await attach_endpoint(db)
    sids = [new_sid() for _ in range(5)]
    statuses = ["delivered", "sent", "queued", "read", "sent", "undelivered", "failed"]
    for i, status in enumerate(statuses * 2):
        reports = [
            StatusReport(sid=sid, status=status, error_code=None, received_at=datetime.now(UTC),
                         source="callback")
            for sid in sids[i % 2 :]
        ]  # fmt: skip
        await repository.record_reports(db, reports)
    while await outbox.derive_events(db, reports_at_a_time):
        pass
    told = await events_told(db)
    for sid in sids:
        message_id = await db.fetchval("SELECT id FROM messages WHERE sid = $1", sid)
        mine = [row[1:] for row in told if row[0] == message_id]
        # Only what raised the status: delivered (also final), then read; `sent`, `queued`,
        # `undelivered`, `failed` came after a higher status and change nothing.
        assert mine == [
            (1, "message.status_changed", "delivered", None),
            (2, "message.final", "delivered", None),
            (3, "message.status_changed", "read", "delivered"),
        ]


async def test_one_derivation_at_a_time(database_url, db):
    await attach_endpoint(db)
    await repository.record_reports(db, lifecycles(2))
    other = await asyncpg.connect(database_url)
    try:
        async with db.transaction():
            assert await outbox.derive_events(db, 1) == 2  # the first note, of 2 reports
            # Until this transaction ends, a second caller takes nothing instead of waiting.
            assert await outbox.derive_events(other, 10) == 0
        assert await outbox.derive_events(other, 10) == 2
    finally:
        await other.close()


async def post_callback_direct(db: asyncpg.Connection, sid: str = "", status: str = "sent") -> None:
    report = StatusReport(
        sid=sid or new_sid(),
        status=status,
        error_code=None,
        received_at=datetime.now(UTC),
        source="callback",
    )
    await repository.record_report(db, report)


async def test_upgrade_keeps_every_event_of_a_filled_store(database_url, db):
    await asyncio.to_thread(downgrade, database_url, "2026_12_11_erasure")
    sids = (new_sid(), new_sid())
    for status in ("sent", "delivered", "read"):
        for sid in sids:
            await post_callback_direct(db, sid, status)
    before = await db.fetch("SELECT * FROM message_events ORDER BY id")
    await asyncio.to_thread(migrate, database_url)
    after = await db.fetch("SELECT * FROM message_events ORDER BY id")
    assert [dict(row) for row in after] == [dict(row) for row in before] and len(before) == 6
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0


async def test_downgrade_derives_what_is_noted_and_puts_the_trigger_back(database_url, db):
    await attach_endpoint(db)
    await repository.record_reports(db, lifecycles(2))  # noted, not derived: 6 events to tell
    await asyncio.to_thread(downgrade, database_url, "2026_12_12_daily_rollups")
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 6
    await repository.record_reports(db, lifecycles(1))  # the previous trigger tells at once
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 9
    await asyncio.to_thread(migrate, database_url)
    await repository.record_reports(db, lifecycles(1))
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 9
    assert await outbox.derive_events(db, 10) == 2
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 12


def test_stream_lines_carry_the_webhook_body():
    row = {
        "type": "message.final",
        "payload": {"status": "delivered", "error_code": None},
        "created_at": datetime(2026, 12, 4, tzinfo=UTC),
    }
    body = json.loads(delivery.render(row))
    assert body == {
        "type": "message.final",
        "timestamp": "2026-12-04T00:00:00.000000Z",
        "data": {"status": "delivered", "error_code": None, "error_description": None},
    }

"""Numbers stored redacted and bodies not at all, when the settings say so."""

import json

import pytest

from tests.conftest import Simulator, app_client
from tests.support import ACCOUNT_SID, callback_fields, new_sid, signed

NUMBER = "+14155550100"


@pytest.fixture
async def private(settings, tmp_path):
    simulator = Simulator(tmp_path, "--delay-min", "0", "--delay-max", "0.05")
    strict = settings.model_copy(update={
        "redact_numbers": "last4", "store_bodies": False, "auto_reply": "Thanks",
        "twilio_account_sid": ACCOUNT_SID, "twilio_api_base_url": simulator.url,
        "twilio_from": "+15005550006",
    })  # fmt: skip
    try:
        async with app_client(strict) as client:
            yield client
    finally:
        simulator.close()


async def everything_stored(db) -> str:
    messages = await db.fetch("SELECT * FROM messages")
    events = await db.fetch("SELECT * FROM message_events")
    return json.dumps([dict(r) for r in [*messages, *events]], default=str)


async def test_nothing_personal_is_stored_under_a_strict_policy(private, db):
    sent = await private.post("/v1/messages", json={"to": NUMBER, "body": "secret words"})
    assert sent.status_code == 201, sent.text
    sid = new_sid()
    target, body, headers = signed(
        callback_fields(sid, "delivered", To=NUMBER, Body="secret words")
    )
    assert (await private.post(target, content=body, headers=headers)).status_code == 204
    inbound = {
        "MessageSid": new_sid(),
        "From": NUMBER,
        "To": "+15005550006",
        "Body": "secret words",
    }
    target, body, headers = signed(inbound, path="/webhooks/twilio/inbound")
    assert (await private.post(target, content=body, headers=headers)).status_code == 200

    stored = await everything_stored(db)
    assert NUMBER not in stored
    assert "secret words" not in stored
    assert "+1415555****" in stored

    # Filters redact the value the same way, so lookups by number still work.
    found = (await private.get("/v1/messages", params={"to": NUMBER})).json()["messages"]
    assert {m["to"] for m in found} == {"+1415555****"}
    assert len(found) >= 2


async def test_by_default_numbers_and_bodies_are_kept(client, db):
    sid = new_sid()
    target, body, headers = signed(callback_fields(sid, "delivered", To=NUMBER, Body="kept"))
    assert (await client.post(target, content=body, headers=headers)).status_code == 204
    stored = await everything_stored(db)
    assert NUMBER in stored and "kept" in stored

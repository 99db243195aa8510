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


WHATSAPP_USER = "+14155550123"
WHATSAPP_SENDER = "whatsapp:+14155238886"
PROFILE_NAME = "Alice Quenneville"


def whatsapp_inbound(sid: str) -> dict[str, str]:
    """An inbound WhatsApp message as Twilio posts it: a reply to one of ours, with the
    sender's profile in ChannelMetadata."""
    return {
        "SmsMessageSid": sid, "NumMedia": "0", "ProfileName": PROFILE_NAME,
        "MessageType": "text", "SmsSid": sid, "WaId": WHATSAPP_USER[1:], "SmsStatus": "received",
        "Body": "Yes please", "To": WHATSAPP_SENDER, "NumSegments": "1",
        "ReferralNumMedia": "0", "MessageSid": sid, "AccountSid": ACCOUNT_SID,
        "From": "whatsapp:" + WHATSAPP_USER, "ApiVersion": "2010-04-01",
        "ChannelMetadata": json.dumps({"type": "whatsapp", "data": {"context": {
            "ProfileName": PROFILE_NAME, "WaId": WHATSAPP_USER[1:]}}}),
        "OriginalRepliedMessageSender": WHATSAPP_SENDER,
        "OriginalRepliedMessageSid": new_sid(),
        "ButtonText": "Yes", "ButtonPayload": "confirm",
        "Latitude": "37.7807", "Longitude": "-122.3917", "Address": "1 Quenneville Lane",
        # Fields Twilio may add tomorrow: a number and a name under new names.
        "ForwardedByNumber": "whatsapp:" + WHATSAPP_USER, "ContactDisplayName": PROFILE_NAME,
    }  # fmt: skip


async def every_table(db) -> str:
    """Every row of every table of the service, as text."""
    tables = await db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> "
        "'alembic_version'"
    )
    rows = []
    for table in tables:
        rows += [dict(r) for r in await db.fetch(f'SELECT * FROM "{table["tablename"]}"')]
    return json.dumps(rows, default=str)


async def test_no_whatsapp_name_or_number_is_stored_under_last4(settings, db):
    strict = settings.model_copy(update={"redact_numbers": "last4", "auto_reply": "Hi $from"})
    async with app_client(strict) as client:
        inbound = whatsapp_inbound(new_sid())
        target, body, headers = signed(inbound, path="/webhooks/twilio/inbound")
        answer = await client.post(target, content=body, headers=headers)
        assert answer.status_code == 200
        assert "Hi whatsapp:" + WHATSAPP_USER in answer.text  # the reply itself is Twilio's
        callback = callback_fields(
            new_sid(), "read", To="whatsapp:" + WHATSAPP_USER, From=WHATSAPP_SENDER,
            ChannelToAddress=WHATSAPP_USER, ChannelPrefix="whatsapp", EventType="READ",
        )  # fmt: skip
        target, body, headers = signed(callback)
        assert (await client.post(target, content=body, headers=headers)).status_code == 204

    stored = await every_table(db)
    for personal in (WHATSAPP_USER[1:], "Alice", "Quenneville", "37.7807"):
        assert personal not in stored
    assert "1415555****" in stored
    events = await db.fetch("SELECT fields FROM message_events WHERE source = 'inbound'")
    [fields] = [row["fields"] for row in events]
    assert fields["ProfileName"] == fields["ContactDisplayName"] == "<redacted>"
    assert fields["From"] == fields["ForwardedByNumber"] == "whatsapp:+1415555****"
    assert fields["WaId"] == "1415555****"
    assert json.loads(fields["ChannelMetadata"])["data"]["context"] == {
        "ProfileName": "<redacted>", "WaId": "1415555****"
    }  # fmt: skip
    # What is not personal stays.
    assert (fields["ButtonPayload"], fields["MessageType"]) == ("confirm", "text")


async def test_a_bare_number_filter_finds_the_number_on_every_channel(client):
    for to in (NUMBER, "whatsapp:" + NUMBER, "rcs:" + NUMBER, "+14155550199"):
        target, body, headers = signed(callback_fields(new_sid(), "delivered", To=to))
        assert (await client.post(target, content=body, headers=headers)).status_code == 204

    async def found(**params: str) -> list[str]:
        page = (await client.get("/v1/messages", params=params)).json()
        return [m["to"] for m in page["messages"]]

    assert sorted(await found(to=NUMBER)) == sorted([NUMBER, "whatsapp:" + NUMBER, "rcs:" + NUMBER])
    assert await found(to="whatsapp:" + NUMBER) == ["whatsapp:" + NUMBER]
    # Paged across channels, newest first, none skipped or repeated.
    first = (await client.get("/v1/messages", params={"to": NUMBER, "limit": 2})).json()
    rest = (
        await client.get("/v1/messages", params={"to": NUMBER, "cursor": first["next_cursor"]})
    ).json()
    paged = [m["to"] for m in first["messages"] + rest["messages"]]
    assert paged == ["rcs:" + NUMBER, "whatsapp:" + NUMBER, NUMBER]
